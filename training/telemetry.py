# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
What a run reports while it trains: [`StepWindow`] counts the micro-batches since the last log on the device (no
training step waits for it), [`StepWindow.flush`] reduces them over the processes into [`WindowTotals`], and
[`training_logs`] turns those into the tracker's `train/*` and `perf/*` values. Nothing here changes the run's state:
the loop adds the totals to its [`~training.checkpointing.TrainerState`] itself.
"""

import contextlib
import os
import platform
import resource
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator


@dataclass
class WindowTotals:
    """The micro-batches since the last log, summed over every process."""

    loss_sum: float
    micro_batches: int
    samples: int
    tokens: int
    skipped_images: int
    data_wait_s: float
    time_s: float
    objective_sums: dict[str, float] = field(default_factory=dict)  # per objective of a multi-objective loss

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.micro_batches


class StepWindow:
    """
    What happened since the last log: loss sum, micro-batches, samples, tokens and skipped images, and the sum of
    each objective of a multi-objective loss (`objectives`, e.g. Q-Former stage 1's `("itc", "itm", "itg")`), kept on
    the device so that no training step waits for them, and the seconds this process spent waiting for data and in
    total.
    """

    COUNTERS = ("loss_sum", "micro_batches", "samples", "tokens", "skipped_images")

    def __init__(self, device: torch.device, objectives: tuple[str, ...] = ()):
        self.objectives = objectives
        self.counters = torch.zeros(len(self.COUNTERS) + len(objectives), dtype=torch.float64, device=device)
        self.data_wait_s = self.time_s = 0.0

    def _add(self, name: str, value: torch.Tensor | float) -> None:
        self.counters[self.COUNTERS.index(name)] += value

    def add_batch(
        self, loss: torch.Tensor, batch: dict[str, torch.Tensor], objectives: dict[str, torch.Tensor] | None = None
    ) -> None:
        """
        Counts a trained micro-batch: its loss `()`, samples, the unpadded tokens of its `attention_mask`, and the
        losses `()` of the window's objectives.
        """
        self._add("loss_sum", loss.detach())
        self._add("micro_batches", 1)
        self._add("samples", batch["input_ids"].shape[0])
        self._add("tokens", batch["attention_mask"].sum())
        for index, name in enumerate(self.objectives):
            self.counters[len(self.COUNTERS) + index] += objectives[name].detach()

    def add_skipped_images(self, count: int) -> None:
        self._add("skipped_images", count)

    def timed(self, batches: Iterable[dict]) -> Iterator[dict]:
        """Yields `batches`, adding the time spent waiting for each one to `data_wait_s` (and to `time_s`)."""
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            waited = time.perf_counter() - start
            self.data_wait_s += waited
            self.time_s += waited
            yield batch

    @contextlib.contextmanager
    def computing(self) -> Iterator[None]:
        """Adds the time spent inside the block to `time_s`: a training step, without logging and checkpoints."""
        start = time.perf_counter()
        yield
        self.time_s += time.perf_counter() - start

    def flush(self, accelerator: Accelerator) -> WindowTotals:
        """The totals over every process (a collective: call it on every process), after which the window is empty."""
        reduced = accelerator.reduce(self.counters.clone()).tolist()
        counts = dict(zip(self.COUNTERS, reduced))
        totals = WindowTotals(
            loss_sum=counts["loss_sum"],
            micro_batches=int(counts["micro_batches"]),
            samples=int(counts["samples"]),
            tokens=int(counts["tokens"]),
            skipped_images=int(counts["skipped_images"]),
            data_wait_s=self.data_wait_s,
            time_s=self.time_s,
            objective_sums=dict(zip(self.objectives, reduced[len(self.COUNTERS) :])),
        )
        self.counters.zero_()
        self.data_wait_s = self.time_s = 0.0
        return totals


def training_logs(
    totals: WindowTotals,
    epoch: int,
    skipped_train_images: int,
    optimizer: torch.optim.Optimizer,
    grad_norm: torch.Tensor | None,
    device: torch.device,
) -> dict[str, float]:
    """The tracker values of a window: loss, throughput, learning rate per component, gradient norm, time and memory."""
    elapsed = max(totals.time_s, 1e-9)
    logs = {
        "train/loss": totals.mean_loss,
        "train/epoch": epoch + 1,
        "train/samples_per_second": totals.samples / elapsed,
        "train/tokens_per_second": totals.tokens / elapsed,
        "train/skipped_images": skipped_train_images,
        "perf/data_wait_s": totals.data_wait_s,
        "perf/compute_s": totals.time_s - totals.data_wait_s,
        "perf/data_wait_fraction": totals.data_wait_s / elapsed,
        "perf/peak_memory_mb": peak_memory_mb(device),
    }
    for name, total in totals.objective_sums.items():
        logs[f"train/loss_{name}"] = total / totals.micro_batches
    for group in optimizer.param_groups:
        logs[f"train/lr_{group['name']}"] = group["lr"]
    if grad_norm is not None:
        logs["train/grad_norm"] = float(grad_norm)
    return logs


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA memory allocated on GPU, resident set size elsewhere (Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hardware_description(device: torch.device, num_processes: int = 1) -> str:
    """`"2 x NVIDIA H100 80GB HBM3"` on CUDA, `"CPU (AMD EPYC, 2 cores)"` elsewhere."""
    if device.type == "cuda":
        return f"{num_processes} x {torch.cuda.get_device_name(device)}"
    return f"CPU ({cpu_model_name()}, {os.cpu_count()} cores)"


def cpu_model_name() -> str:
    """The CPU's model name from `/proc/cpuinfo` (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            names = [line.split(":", 1)[1].strip() for line in file if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()
