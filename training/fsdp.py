# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
What a run needs beyond `accelerator.prepare` under FSDP (accelerate's FSDP2 plugin, `configs/accelerate/fsdp.yaml`):

- [`save_sharded_state`] / [`load_sharded_state`]: checkpoints as lean as the unsharded ones. `accelerator.save_state`
  writes every parameter's shards, the frozen towers' too, and has no option to leave them out; here each process
  writes the shards of the trainable parameters and of their optimizer state through `torch.distributed.checkpoint`
  (`StateDictOptions(ignore_frozen_params=True)`), and accelerate's own `save_accelerator_state` the scheduler, RNG
  and sampler states beside them, as `save_state` would.
- [`whole_model`]: the model whole on every process, for generation and for the saved models.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed.checkpoint as dcp
from accelerate import Accelerator
from accelerate.checkpointing import load_accelerator_state, save_accelerator_state
from accelerate.utils import DistributedType
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import FSDPModule

from .integrity import CheckpointError
from .model_setup import bare_model


SHARDED_STATE_DIR = "sharded_trainable"  # the trainable parameters' and optimizer's shards, in a checkpoint
TRAINABLE_ONLY = StateDictOptions(ignore_frozen_params=True, strict=False)


def _prepared(accelerator: Accelerator) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model and the (inner) optimizer that `accelerator.prepare` registered: the objects `save_state` saves."""
    (model,), (optimizer,) = accelerator._models, accelerator._optimizers
    return model, optimizer.optimizer


def trainable_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """
    This process's shards of the trainable parameters of the prepared `model` (by name) and of `optimizer`'s state.
    A tied weight such as Qwen2.5's `lm_head.weight` is a second name of the frozen embeddings that
    `ignore_frozen_params` does not see: only the trainable parameters' own names are kept.
    """
    model_state, optimizer_state = get_state_dict(model, optimizer, options=TRAINABLE_ONLY)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    return {name: value for name, value in model_state.items() if name in trainable}, optimizer_state


def save_sharded_state(accelerator: Accelerator, directory: str) -> None:
    """
    Every process's shards of the trainable parameters and of their optimizer state into `directory/sharded_trainable`
    (`torch.distributed.checkpoint`), and the scheduler, RNG and sampler states as `accelerator.save_state` writes
    them.
    """
    model, optimizer = _prepared(accelerator)
    os.makedirs(directory, exist_ok=True)
    model_state, optimizer_state = trainable_state(model, optimizer)
    path = os.path.join(directory, SHARDED_STATE_DIR)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=path)
    save_accelerator_state(
        directory, [], [], accelerator._schedulers, accelerator._dataloaders, accelerator.process_index,
        accelerator.step, accelerator.scaler,
    )  # fmt: skip


def load_sharded_state(accelerator: Accelerator, directory: str) -> None:
    """Restores what [`save_sharded_state`] wrote into the prepared model, optimizer, scheduler and loaders."""
    model, optimizer = _prepared(accelerator)
    model_state, optimizer_state = trainable_state(model, optimizer)
    path = os.path.join(directory, SHARDED_STATE_DIR)
    keys = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    saved, trainable = {key[len("model.") :] for key in keys if key.startswith("model.")}, set(model_state)
    if saved != trainable:
        missing, unexpected = sorted(trainable - saved), sorted(saved - trainable)
        raise CheckpointError(
            f"{path} holds other parameters than this run trains (missing: {missing[:5]}, unexpected: "
            f"{unexpected[:5]}): resume with the stage, projector and fusion settings it was trained with."
        )
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=TRAINABLE_ONLY)  # fmt: skip
    overrides = load_accelerator_state(
        directory, [], [], accelerator._schedulers, accelerator._dataloaders, accelerator.process_index,
        accelerator.scaler,
    )  # fmt: skip
    accelerator.step = overrides.get("step", accelerator.step)


@contextmanager
def whole_model(accelerator: Accelerator, model: nn.Module) -> Iterator[nn.Module]:
    """
    The prepared `model` whole, for what sharded parameters cannot do: generation (a forward pass outside the model's
    own `forward`, such as the image features that the questions about one image share, finds its parameters
    sharded: a conversation-only run crashed there; and every decoding step would gather every layer again) and
    `save_pretrained` (of the model's own class: FSDP2 swaps in one of its own, whose module `save_pretrained` would
    copy as remote code). Under FSDP, a copy built from the model's config on the device holding every parameter in
    full, gathered from the shards on every process, for the time of the block; otherwise the bare model itself.
    """
    bare = bare_model(accelerator, model)
    if accelerator.distributed_type != DistributedType.FSDP:
        yield bare
        return
    model_class = next(cls for cls in type(bare).__mro__ if not issubclass(cls, FSDPModule))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    with torch.device(accelerator.device):
        whole = model_class._from_config(bare.config).to(bare.dtype)
    whole.load_state_dict(full)
    whole.generation_config = bare.generation_config
    yield whole.eval()
