# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Preemption-safe training. SIGTERM (what SLURM, Kubernetes and spot instances send before they kill a job) and SIGINT
(Ctrl-C) ask the run to stop: it finishes the optimizer step in progress, writes a checkpoint, says so and raises
[`TrainingInterrupted`], which `train_accelerate.py` turns into exit status [`INTERRUPTED_EXIT_STATUS`]. A second
signal stops at once, as it would have without this. With several processes, a signal on any of them stops all of
them after the same optimizer step.
"""

import os
import signal
import threading
from types import FrameType

import torch
from accelerate import Accelerator


# sysexits.h's EX_TEMPFAIL, "a temporary failure; the user is invited to retry": resume with `--resume_from_checkpoint
# latest`. Killed without this handler, a run ends with 128 + 15 = 143 and loses all since its last checkpoint.
INTERRUPTED_EXIT_STATUS = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """The run stopped on a signal after writing `checkpoint` at optimizer step `step`."""

    def __init__(self, signal_name: str, checkpoint: str, step: int):
        self.signal_name, self.checkpoint, self.step = signal_name, checkpoint, step
        super().__init__(
            f"Stopped by {signal_name} after optimizer step {step}, with a checkpoint in {checkpoint}: continue with "
            f"--resume_from_checkpoint latest (exit status {INTERRUPTED_EXIT_STATUS})."
        )


class StopRequests:
    """
    While entered (`with`), SIGTERM and SIGINT are recorded instead of ending the process; the handlers in place
    before come back on exit. Signal handlers can only be set from the main thread: elsewhere nothing is installed.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self.previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:  # the second signal: what it would have done without us
            self._restore()
            signal.raise_signal(signum)
            return
        self.received = name
        # `os.write`, not `print`: a signal handler may interrupt a `print` in progress.
        os.write(2, f"\n{name} received: stopping after this optimizer step, with a checkpoint.\n".encode())

    def should_stop(self, accelerator: Accelerator) -> bool:
        """Whether any process received a stop signal (every process must call this after the same step)."""
        local = self.received is not None
        if accelerator.num_processes == 1:
            return local
        flag = torch.tensor([float(local)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
