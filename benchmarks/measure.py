# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""How the benchmarks measure: timed calls, counted FLOPs, peak memory, and the environment of a run."""

import contextlib
import gc
import json
import os
import platform
import resource
import threading
import time
from collections.abc import Callable
from datetime import date
from typing import Any

import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

from training.telemetry import hardware_description


# Operators left out of the FLOP count on every device: FlopCounterMode has formulas for the CUDA SDPA kernels but not
# for the CPU one, so attention scores and weighted values are excluded everywhere to keep devices comparable.
EXCLUDED_FLOP_OPS = ("scaled_dot_product",)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (the training recipe's mixed precision); fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_bytes() -> int:
    """Resident set size of this process now (Linux `/proc/self/statm`)."""
    with open("/proc/self/statm", encoding="ascii") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """
    Peak memory inside the `with` block: `torch.cuda.max_memory_allocated` on CUDA; on CPU the resident set size
    sampled every millisecond, since `resource.getrusage`'s `ru_maxrss` is the peak of the whole process and cannot
    tell the configurations of one run apart. `peak_mb` is the absolute peak, `increase_mb` the rise over the start.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = self.peak = rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc_info: object) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    @property
    def increase_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Seconds per call of `fn`, over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def counted_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` as counted by `FlopCounterMode`, without the operators of `EXCLUDED_FLOP_OPS`."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return sum(
        flops
        for op, flops in counter.get_flop_counts()["Global"].items()
        if not any(name in str(op) for name in EXCLUDED_FLOP_OPS)
    )


def release_memory() -> None:
    """Returns the memory of the previous configuration (already dereferenced by the caller) before the next one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def environment(device: torch.device) -> dict[str, Any]:
    """Hardware and software of the run."""
    return {
        "date": date.today().isoformat(),
        "device": device.type,
        "hardware": hardware_description(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def software_line(env: dict[str, Any]) -> str:
    """The hardware and library versions of an [`environment`], as a report's header starts."""
    return f"{env['hardware']} ({env['device']}), torch {env['torch']}, transformers {env['transformers']}"


def publish_report(tables: str, report: dict[str, Any], output: str | None) -> None:
    """Prints a benchmark's `tables` and writes its `report` as JSON to `output` when given."""
    print(tables)
    if output:
        with open(output, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=2)
