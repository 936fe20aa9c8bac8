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
from dataclasses import dataclass

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

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.micro_batches


class StepWindow:
    """
    What happened since the last log: loss sum, micro-batches, samples, tokens and skipped images, kept on the device
    so that no training step waits for them, and the seconds this process spent waiting for data and in total.
    """

    COUNTERS = ("loss_sum", "micro_batches", "samples", "tokens", "skipped_images")

    def __init__(self, device: torch.device):
        self.counters = torch.zeros(len(self.COUNTERS), dtype=torch.float64, device=device)
        self.data_wait_s = self.time_s = 0.0

    def _add(self, name: str, value: torch.Tensor | float) -> None:
        self.counters[self.COUNTERS.index(name)] += value

    def add_batch(self, loss: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        """Counts a trained micro-batch: its loss `()`, samples and the unpadded tokens of its `attention_mask`."""
        self._add("loss_sum", loss.detach())
        self._add("micro_batches", 1)
        self._add("samples", batch["input_ids"].shape[0])
        self._add("tokens", batch["attention_mask"].sum())

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
        counts = dict(zip(self.COUNTERS, accelerator.reduce(self.counters.clone()).tolist()))
        totals = WindowTotals(
            loss_sum=counts["loss_sum"],
            micro_batches=int(counts["micro_batches"]),
            samples=int(counts["samples"]),
            tokens=int(counts["tokens"]),
            skipped_images=int(counts["skipped_images"]),
            data_wait_s=self.data_wait_s,
            time_s=self.time_s,
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
