# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The checkpoints of a run:

- [`save_checkpoint`]: `accelerator.save_state` (the trainable weights, optimizer, scheduler, RNG states), the
  [`TrainerState`] (data position, history), a reference to the frozen weights and a checksum manifest, written to
  `tmp-checkpoint-{step}` and renamed into place, so [`latest_checkpoint`] never picks a half-written one; the oldest
  are rotated out.
- [`keep_checkpoints_lean`]: the accelerator's save and load hooks that leave the frozen weights out (they come from
  the model source, checked by fingerprint). FSDP checkpoints are as lean, in shards (`training.fsdp`); DeepSpeed
  saves its own sharded state, whole.
- [`find_checkpoint`], [`load_checkpoint`]: verifies a checkpoint (checksums, frozen weights) before anything is
  loaded, then restores it into the prepared objects.

`transformers.trainer_utils.get_last_checkpoint` would take any `checkpoint-N` directory; [`latest_checkpoint`] takes
only complete ones (renamed into place, with a `trainer_state.json`).
"""

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list, extract_model_from_parallel
from accelerate.utils.constants import SAFE_MODEL_NAME
from safetensors.torch import load_file
from torch import nn

from .fsdp import load_sharded_state, save_sharded_state
from .integrity import CheckpointError, FrozenWeights, verify_manifest, write_manifest


CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = "tmp-"  # checkpoints being written or deleted; never picked by `latest`
TRAINER_STATE_NAME = "trainer_state.json"


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
    run_settings: dict = field(default_factory=dict)  # what must not change on resume (see `check_run_settings`)


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


def save_checkpoint(
    accelerator: Accelerator,
    state: TrainerState,
    output_dir: str,
    save_total_limit: int,
    frozen: FrozenWeights | None = None,
) -> str:
    """
    `accelerator.save_state` (model, optimizer, scheduler, RNG states), `trainer_state.json`, the `frozen` weights'
    reference and a checksum manifest into `tmp-checkpoint-{step}`, then an atomic rename to `checkpoint-{step}`; keeps
    the newest `save_total_limit`.
    """
    name = f"{CHECKPOINT_PREFIX}{state.global_step}"
    temporary, final = os.path.join(output_dir, f"{TMP_PREFIX}{name}"), os.path.join(output_dir, name)
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    if accelerator.distributed_type == DistributedType.FSDP:
        save_sharded_state(accelerator, temporary)
    else:
        accelerator.save_state(temporary)
    accelerator.wait_for_everyone()  # every process's files are in before the manifest sums them up
    if accelerator.is_main_process:
        with open(os.path.join(temporary, TRAINER_STATE_NAME), "w", encoding="utf-8") as file:
            json.dump(asdict(state), file, indent=2)
        if frozen is not None:
            frozen.save(temporary)
        write_manifest(temporary)
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


def find_checkpoint(
    accelerator: Accelerator, checkpoint: str | None, output_dir: str, frozen: FrozenWeights | None = None
) -> str | None:
    """
    The checkpoint to resume from: `checkpoint` (`"latest"` in `output_dir`, a directory, or `None` for a fresh
    start), verified by the main process before anything is loaded: every file against its manifest and, with
    `frozen`, the frozen weights it was trained on. Every process raises the same [`CheckpointError`] otherwise.
    """
    if checkpoint == "latest":
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is None:
            accelerator.print(f"No checkpoint in {output_dir} yet: starting from scratch.")
    if checkpoint is None:
        return None
    problem = None
    if accelerator.is_main_process:
        try:
            if not os.path.isdir(checkpoint):
                raise CheckpointError(f"resume_from_checkpoint={checkpoint!r} is not a checkpoint directory.")
            verify_manifest(checkpoint)
            if frozen is not None:
                frozen.check(checkpoint)
        except CheckpointError as error:
            problem = str(error)
    problem = broadcast_object_list([problem])[0]
    if problem is not None:
        raise CheckpointError(problem)
    return checkpoint


def load_checkpoint(accelerator: Accelerator, checkpoint: str, output_dir: str, settings: dict) -> TrainerState:
    """
    Restores the prepared objects from a verified `checkpoint` and returns the state to continue from, once its run's
    `settings` are found equal to this run's (see [`check_run_settings`]). Checkpoints of `output_dir` newer than it
    belong to the run being abandoned: they are removed, so that they can neither rotate the new ones out nor be
    resumed later.
    """
    with open(os.path.join(checkpoint, TRAINER_STATE_NAME), encoding="utf-8") as file:
        state = TrainerState(**json.load(file))
    check_run_settings(state.run_settings, settings, checkpoint)
    if accelerator.distributed_type == DistributedType.FSDP:
        load_sharded_state(accelerator, checkpoint)
    else:
        accelerator.load_state(checkpoint)
    if accelerator.is_main_process:
        for step, path in _checkpoints(output_dir):
            if step > state.global_step:
                accelerator.print(f"Removing {path}: it continues past the checkpoint this run resumes from.")
                _remove_checkpoint(str(path))
    accelerator.wait_for_everyone()
    accelerator.print(f"Resumed from {checkpoint}: step {state.global_step}, epoch {state.epoch}.")
    return state


def check_run_settings(saved: dict, current: dict, checkpoint: str) -> None:
    """
    Raises [`CheckpointError`] naming every setting whose value differs between the run that wrote `checkpoint`
    (`saved`) and this one (`current`): each of them changes the data order, the batches or the schedule, so the
    resumed run would not be the run it continues. A setting the checkpoint did not record is not compared.
    """
    changed = [
        f"{name} {saved[name]!r} -> {value!r}" for name, value in current.items() if saved.get(name, value) != value
    ]
    if changed:
        raise CheckpointError(
            f"{checkpoint} was written by a run with other settings ({'; '.join(changed)}): resuming would change "
            "its data order, batches or schedule. Resume with the checkpoint's settings, or start afresh with "
            "--overwrite_output_dir."
        )


def keep_checkpoints_lean(accelerator: Accelerator) -> None:
    """
    Registers save and load hooks so that checkpoints hold the trainable parameters only: the frozen ones are left
    out on save (they come from the model source, see [`~training.integrity.FrozenWeights`]) and kept as they are on
    load, where the checkpoint must hold exactly the trainable parameters. FSDP checkpoints go through
    `training.fsdp` instead, and DeepSpeed saves its own states.
    """

    # The unwrapped model's names (no `module.` of DDP, no `_orig_mod.` of torch.compile): a checkpoint resumes on any
    # number of processes.
    def save_trainable_only(models: list[nn.Module], weights: list[dict], output_dir: str) -> None:
        for index, model in enumerate(models):
            unwrapped = extract_model_from_parallel(model)
            weights[index] = {name: parameter.detach() for name, parameter in trainable_parameters(unwrapped).items()}

    def load_trainable_only(models: list[nn.Module], input_dir: str) -> None:
        for index, model in enumerate(models):
            path = os.path.join(input_dir, f"{SAFE_MODEL_NAME}{f'_{index}' if index else ''}.safetensors")
            load_trainable_parameters(extract_model_from_parallel(model), load_file(path), path)
        models.clear()  # loaded: accelerate must not load them again

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return  # FSDP checkpoints go through `training.fsdp`; DeepSpeed saves its own sharded state, whole
    accelerator.register_save_state_pre_hook(save_trainable_only)
    accelerator.register_load_state_pre_hook(load_trainable_only)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """`model`'s parameters that train (`requires_grad`), by name."""
    return {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}


def load_trainable_parameters(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Loads `state_dict` into `model`, which must hold exactly `model`'s trainable parameters (read from `source`)."""
    trainable = set(trainable_parameters(model))
    if set(state_dict) != trainable:
        missing, unexpected = sorted(trainable - set(state_dict)), sorted(set(state_dict) - trainable)
        raise CheckpointError(
            f"{source} holds other parameters than this run trains (missing: {missing[:5]}, unexpected: "
            f"{unexpected[:5]}): resume with the stage, projector and LoRA settings it was trained with."
        )
    model.load_state_dict(state_dict, strict=False)


@dataclass
class Checkpointer:
    """
    The checkpoints of a run: one every `save_steps` optimizer steps (0: none) into `output_dir`, the newest
    `save_total_limit` kept, each holding what trains (see [`keep_checkpoints_lean`]) and referencing the `frozen`
    weights it was trained on.
    """

    accelerator: Accelerator
    output_dir: str
    save_steps: int
    save_total_limit: int
    frozen: FrozenWeights | None = None

    def __post_init__(self) -> None:
        keep_checkpoints_lean(self.accelerator)

    def due(self, global_step: int) -> bool:
        """Whether a checkpoint is due after optimizer step `global_step`."""
        return self.save_steps > 0 and global_step % self.save_steps == 0

    def save(self, state: TrainerState) -> str:
        """Writes the checkpoint of `state` (see [`save_checkpoint`]); returns its directory."""
        return save_checkpoint(self.accelerator, state, self.output_dir, self.save_total_limit, self.frozen)

    def find(self, checkpoint: str | None) -> str | None:
        """The verified checkpoint to resume from, or `None` (see [`find_checkpoint`])."""
        return find_checkpoint(self.accelerator, checkpoint, self.output_dir, self.frozen)

    def load(self, checkpoint: str | None, settings: dict) -> TrainerState:
        """
        The state to continue from: restored from `checkpoint` (see [`load_checkpoint`]) if its run had these
        `settings`, or a fresh one that records them.
        """
        if checkpoint is None:
            return TrainerState(run_settings=settings)
        return load_checkpoint(self.accelerator, checkpoint, self.output_dir, settings)

    def saved(self, global_step: int) -> str | None:
        """The checkpoint written after optimizer step `global_step`, if one was."""
        path = os.path.join(self.output_dir, f"{CHECKPOINT_PREFIX}{global_step}")
        return path if self.due(global_step) and os.path.isdir(path) else None
