# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Checkpoints and saved models of a run:

- [`save_checkpoint`]: `accelerator.save_state` (model, optimizer, scheduler, RNG states) plus the [`TrainerState`],
  written to `tmp-checkpoint-{step}` and renamed into place, so [`latest_checkpoint`] never picks a half-written one;
  the oldest are rotated out.
- [`resume`]: restores a checkpoint into the prepared objects and returns its [`TrainerState`].
- [`save_model`], [`save_best_model`], [`save_final_model`]: `save_pretrained` directories that the Auto classes load.

`transformers.trainer_utils.get_last_checkpoint` would take any `checkpoint-N` directory; [`latest_checkpoint`] takes
only complete ones (renamed into place, with a `trainer_state.json`).
"""

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from accelerate import Accelerator
from torch import nn

from processing_vlm import VLMProcessor


CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = "tmp-"  # checkpoints being written or deleted; never picked by `latest`
TRAINER_STATE_NAME = "trainer_state.json"
ADAPTER_DIR = "adapter"
BEST_DIR = "best"


@dataclass
class TrainerState:
    """Progress of a run, stored as `trainer_state.json` in each checkpoint."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0  # micro-batches of `epoch` already trained on
    samples_seen: int = 0
    train_time_s: float = 0.0
    skipped_train_images: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    history: list[dict] = field(default_factory=list)


def latest_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """
    The complete checkpoint with the highest step in `output_dir`, or `None`. Checkpoints are renamed into place only
    once fully written, so `tmp-checkpoint-*` directories (an interrupted save) and directories without a
    `trainer_state.json` are never picked.
    """
    steps = [(step, path) for step, path in _checkpoints(output_dir) if (path / TRAINER_STATE_NAME).is_file()]
    return str(max(steps)[1]) if steps else None


def _checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """`(step, path)` of every `checkpoint-{step}` directory of `output_dir`, by step."""
    found = []
    for path in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        step = path.name[len(CHECKPOINT_PREFIX) :]
        if step.isdigit():
            found.append((int(step), path))
    return sorted(found)


def save_checkpoint(accelerator: Accelerator, state: TrainerState, output_dir: str, save_total_limit: int) -> str:
    """
    `accelerator.save_state` (model, optimizer, scheduler, RNG states) plus `trainer_state.json` into
    `tmp-checkpoint-{step}`, then an atomic rename to `checkpoint-{step}`; keeps the newest `save_total_limit`.
    """
    name = f"{CHECKPOINT_PREFIX}{state.global_step}"
    temporary, final = os.path.join(output_dir, f"{TMP_PREFIX}{name}"), os.path.join(output_dir, name)
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(temporary)
    if accelerator.is_main_process:
        with open(os.path.join(temporary, TRAINER_STATE_NAME), "w", encoding="utf-8") as file:
            json.dump(asdict(state), file, indent=2)
        if os.path.exists(final):
            _remove_checkpoint(final)
        os.replace(temporary, final)
        complete = _checkpoints(output_dir)
        for _, old in complete[: max(len(complete) - save_total_limit, 0)]:
            _remove_checkpoint(str(old))
    accelerator.wait_for_everyone()
    return final


def _remove_checkpoint(path: str) -> None:
    """Renames the checkpoint out of `latest`'s sight before deleting it: a crash midway leaves no half checkpoint."""
    doomed = os.path.join(os.path.dirname(path), f"{TMP_PREFIX}{os.path.basename(path)}-deleting")
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def resume(accelerator: Accelerator, checkpoint: str | None, output_dir: str) -> tuple[str | None, TrainerState]:
    """
    Restores the prepared objects from `checkpoint` (`"latest"` in `output_dir`, a directory, or `None` for a fresh
    start); returns the checkpoint used and the state to continue from.
    """
    if checkpoint == "latest":
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is None:
            accelerator.print(f"No checkpoint in {output_dir} yet: starting from scratch.")
    if checkpoint is None:
        return None, TrainerState()
    accelerator.load_state(checkpoint)
    with open(os.path.join(checkpoint, TRAINER_STATE_NAME), encoding="utf-8") as file:
        state = TrainerState(**json.load(file))
    accelerator.print(f"Resumed from {checkpoint}: step {state.global_step}, epoch {state.epoch}.")
    return checkpoint, state


def save_model(accelerator: Accelerator, model: nn.Module, processor: VLMProcessor, directory: str) -> None:
    """`save_pretrained` of the model (a `PeftModel` saves its adapter only) and the processor, from every process."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(directory, state_dict=state_dict)
        processor.save_pretrained(directory)
    accelerator.wait_for_everyone()


def save_best_model(
    accelerator: Accelerator,
    model: nn.Module,
    processor: VLMProcessor,
    state: TrainerState,
    record: dict[str, float],
    metric: str,
    output_dir: str,
) -> None:
    """Saves the model to `output_dir/best` and notes it in `state` when `record[metric]` beats the best so far."""
    value = record.get(metric)
    if value is None:
        return
    lower_is_better = "loss" in metric
    if state.best_metric is None or (value < state.best_metric if lower_is_better else value > state.best_metric):
        state.best_metric, state.best_step = value, state.global_step
        save_model(accelerator, model, processor, os.path.join(output_dir, BEST_DIR))


def save_final_model(
    accelerator: Accelerator, model: nn.Module, processor: VLMProcessor, output_dir: str, merge_adapter: bool
) -> None:
    """
    The final model in `output_dir`. With `merge_adapter` (the `lora` stage), the adapter goes to `output_dir/adapter`
    and the model with the adapter merged into its weights to `output_dir`.
    """
    if not merge_adapter:
        save_model(accelerator, model, processor, output_dir)
        return
    save_model(accelerator, model, processor, os.path.join(output_dir, ADAPTER_DIR))
    if accelerator.is_main_process:
        merged = accelerator.unwrap_model(model).merge_and_unload()
        merged.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    accelerator.wait_for_everyone()
