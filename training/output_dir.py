# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The output directory of a run, checked before anything is written to it: one that holds a run is refused unless the
new run resumes it or starts afresh (`overwrite_output_dir`, which removes the old run's checkpoints, results, logs
and weights first, so that they can neither rotate the new checkpoints out nor be resumed by mistake).
"""

import os
import shutil
from pathlib import Path

from accelerate import Accelerator

from .checkpointing import latest_checkpoint


# What only a run writes: a directory holding any of these holds a run.
RUN_MARKERS = ("checkpoint-*", "tmp-checkpoint-*", "training_results.json", "best", "adapter", "logs")
# What starting afresh removes; the configuration, processor and card files are rewritten by the new run.
RUN_OUTPUTS = (*RUN_MARKERS, "*.safetensors", "*.safetensors.index.json")


def holds_a_run(output_dir: str | os.PathLike) -> bool:
    """Whether `output_dir` holds what a run writes (other files, such as a `.gitkeep`, do not count)."""
    return any(next(Path(output_dir).glob(pattern), None) is not None for pattern in RUN_MARKERS)


def is_inside(path: str | os.PathLike, directory: str | os.PathLike) -> bool:
    """Whether the existing `path` is `directory` or lies below it (links resolved)."""
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory + os.sep)


def prepare_output_dir(
    accelerator: Accelerator,
    output_dir: str,
    overwrite: bool,
    resume_from_checkpoint: str | None,
    model_sources: list[str | None],
) -> None:
    """
    Checks `output_dir` before the run writes to it, on every process (they see the same directory):

    - a directory that holds a run is refused unless the run resumes (`resume_from_checkpoint`) or `overwrite`s it;
    - resuming the `latest` checkpoint of a directory that holds a run but no complete checkpoint is refused: it would
      start from scratch beside the old run's results;
    - overwriting is refused while one of the `model_sources` (directories the model is built from) lies inside it;
      otherwise the main process removes the old run's outputs ([`RUN_OUTPUTS`]).
    """
    if not holds_a_run(output_dir):
        return
    fix = "--overwrite_output_dir to start afresh (its checkpoints, results, logs and weights are removed first)"
    if not (overwrite or resume_from_checkpoint):
        raise ValueError(
            f"The output directory {output_dir} already holds a run. Pass --resume_from_checkpoint latest to continue "
            f"it, {fix}, or choose another --output_dir."
        )
    if resume_from_checkpoint == "latest" and latest_checkpoint(output_dir) is None:
        raise ValueError(
            f"The output directory {output_dir} holds a run but no complete checkpoint to resume from. Pass {fix}, or "
            "choose another --output_dir."
        )
    if overwrite:
        existing = [source for source in model_sources if source and os.path.exists(source)]
        inside = [source for source in existing if is_inside(source, output_dir)]
        if inside:
            raise ValueError(
                f"--overwrite_output_dir would remove {inside[0]}, which the model is built from: copy it out of "
                f"{output_dir}, or choose another --output_dir."
            )
        if accelerator.is_main_process:
            remove_run_outputs(output_dir)
    accelerator.wait_for_everyone()


def remove_run_outputs(output_dir: str) -> None:
    """Removes what a run wrote into `output_dir` ([`RUN_OUTPUTS`]), and nothing else."""
    for pattern in RUN_OUTPUTS:
        for path in Path(output_dir).glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
