"""`training.telemetry`: the window of steps since the last log, reduced into named totals and tracker values."""

import time

import pytest
import torch
from accelerate import Accelerator

from training.telemetry import StepWindow, training_logs


def test_window_totals_are_named_and_the_window_starts_over(monkeypatch):
    accelerator = Accelerator(cpu=True)
    window = StepWindow(accelerator.device)
    batch = {"input_ids": torch.ones(4, 6, dtype=torch.long), "attention_mask": torch.ones(4, 6, dtype=torch.long)}
    batch["attention_mask"][:, :2] = 0  # left padding
    window.add_batch(torch.tensor(2.0), batch)
    window.add_batch(torch.tensor(1.0), batch)
    window.add_skipped_images(3)
    # A clock read before the batch is fetched (0), after (0.5), around the step (1 to 3), and at the loader's end.
    clock = iter([0.0, 0.5, 1.0, 3.0, 10.0])
    with monkeypatch.context() as patch:
        patch.setattr(time, "perf_counter", lambda: next(clock))
        for _ in window.timed([batch]):
            with window.computing():
                pass
    totals = window.flush(accelerator)
    assert (totals.loss_sum, totals.micro_batches, totals.samples, totals.tokens, totals.skipped_images) == (
        3.0, 2, 8, 32, 3
    )  # fmt: skip
    # Waiting for data: 0.5 s; in all: the wait and the 2 s step, without the time after the loader's end.
    assert (totals.mean_loss, totals.data_wait_s, totals.time_s) == (1.5, 0.5, 2.5)
    empty = window.flush(accelerator)
    assert (empty.micro_batches, empty.samples, empty.time_s) == (0, 0, 0.0)


def test_training_logs_report_rates_and_every_learning_rate():
    accelerator = Accelerator(cpu=True)
    window = StepWindow(accelerator.device)
    window.add_batch(torch.tensor(0.5), {"input_ids": torch.ones(2, 3), "attention_mask": torch.ones(2, 3)})
    window.time_s, window.data_wait_s = 2.0, 0.5
    parameters = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.AdamW([{"name": "projector", "params": parameters, "lr": 1e-3}])
    logs = training_logs(window.flush(accelerator), 0, 7, optimizer, torch.tensor(0.25), accelerator.device)
    assert logs["train/loss"] == 0.5 and logs["train/epoch"] == 1 and logs["train/skipped_images"] == 7
    assert (logs["train/samples_per_second"], logs["train/tokens_per_second"]) == (1.0, 3.0)
    assert (logs["perf/data_wait_s"], logs["perf/compute_s"], logs["perf/data_wait_fraction"]) == (0.5, 1.5, 0.25)
    assert logs["train/lr_projector"] == 1e-3 and logs["train/grad_norm"] == pytest.approx(0.25)


def test_each_objective_of_a_multi_objective_loss_is_averaged_and_logged_on_its_own():
    accelerator = Accelerator(cpu=True)
    window = StepWindow(accelerator.device, objectives=("itc", "itg"))
    batch = {"input_ids": torch.ones(2, 3), "attention_mask": torch.ones(2, 3)}
    window.add_batch(torch.tensor(3.0), batch, {"itc": torch.tensor(1.0), "itg": torch.tensor(2.0)})
    window.add_batch(torch.tensor(5.0), batch, {"itc": torch.tensor(2.0), "itg": torch.tensor(3.0)})
    window.time_s = 1.0
    optimizer = torch.optim.AdamW([{"name": "projector", "params": [torch.nn.Parameter(torch.zeros(1))]}])
    logs = training_logs(window.flush(accelerator), 0, 0, optimizer, None, accelerator.device)
    assert (logs["train/loss"], logs["train/loss_itc"], logs["train/loss_itg"]) == (4.0, 1.5, 2.5)
    assert "train/loss_itm" not in logs
    assert window.flush(accelerator).objective_sums == {"itc": 0.0, "itg": 0.0}
