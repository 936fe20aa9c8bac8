# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The models a run leaves in its output directory, as `save_pretrained` directories that the Auto classes load:

- one complete model in `output_dir` (for `lora`, merged, with the adapter alone in `output_dir/adapter`): the last
  one, or with `load_best_model_at_end` (transformers' Trainer convention) the best one by the chosen metric;
- `output_dir/best`, lean as a checkpoint: the trainable parameters of the best evaluation (`trainable.safetensors`)
  and the reference to the frozen weights they go with (`frozen_weights.json`), so that a run's disk holds one
  complete model. FSDP and DeepSpeed runs save `best/` complete, from their shards.
"""

import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from processing_vlm import VLMProcessor

from .checkpointing import TrainerState, load_trainable_parameters, trainable_parameters
from .fsdp import whole_model
from .integrity import FrozenWeights
from .model_setup import bare_model


ADAPTER_DIR = "adapter"
BEST_DIR = "best"
BEST_TRAINABLE_NAME = "trainable.safetensors"
SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


def save_model(accelerator: Accelerator, model: nn.Module, processor: VLMProcessor, directory: str) -> None:
    """`save_pretrained` of the model (a `PeftModel` saves its adapter only) and the processor, from every process."""
    with whole_model(accelerator, model) as whole:
        # DeepSpeed gathers the full state from its engine; otherwise the whole model's names are the saved ones.
        deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
        state_dict = accelerator.get_state_dict(model) if deepspeed else whole.state_dict()
        if accelerator.is_main_process:
            whole.save_pretrained(directory, state_dict=state_dict)
            processor.save_pretrained(directory)
    accelerator.wait_for_everyone()


def trainable_state_dict(accelerator: Accelerator, model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the trainable parameters of the bare `model` (see `bare_model`), by name."""
    trainable = trainable_parameters(bare_model(accelerator, model))
    return {name: parameter.detach().cpu().clone() for name, parameter in trainable.items()}


def keeps_best_lean(accelerator: Accelerator) -> bool:
    """Whether `best/` holds the trainable parameters only until the end (not with FSDP or DeepSpeed shards)."""
    return accelerator.distributed_type not in SHARDED


def save_best_model(
    accelerator: Accelerator,
    model: nn.Module,
    processor: VLMProcessor,
    state: TrainerState,
    record: dict[str, float],
    metric: str,
    output_dir: str,
) -> None:
    """Keeps the model in `output_dir/best` and notes it in `state` when `record[metric]` beats the best so far."""
    value = record.get(metric)
    if value is None:
        return
    best = state.best_metric
    if best is not None and not (value < best if "loss" in metric else value > best):
        return
    state.best_metric, state.best_step = value, state.global_step
    best_dir = os.path.join(output_dir, BEST_DIR)
    if not keeps_best_lean(accelerator):
        save_model(accelerator, model, processor, best_dir)
        return
    if accelerator.is_main_process:
        os.makedirs(best_dir, exist_ok=True)
        temporary = os.path.join(best_dir, f"{BEST_TRAINABLE_NAME}.tmp")
        save_file(trainable_state_dict(accelerator, model), temporary, metadata={"step": str(state.global_step)})
        os.replace(temporary, os.path.join(best_dir, BEST_TRAINABLE_NAME))  # a kill mid-save leaves the last best
    accelerator.wait_for_everyone()


def best_file_step(best_file: str) -> int | None:
    """The optimizer step whose trainable parameters `best/trainable.safetensors` holds (its metadata)."""
    with safe_open(best_file, framework="pt") as file:
        step = (file.metadata() or {}).get("step")
    return None if step is None else int(step)


def discard_stale_best(accelerator: Accelerator, output_dir: str, best_step: int | None) -> None:
    """
    Removes `output_dir/best/trainable.safetensors` unless it holds the best evaluation `best_step` of the state a
    run resumes from: one saved after that checkpoint belongs to the run being abandoned.
    """
    best_file = os.path.join(output_dir, BEST_DIR, BEST_TRAINABLE_NAME)
    if accelerator.is_main_process and os.path.isfile(best_file):
        step = best_file_step(best_file)
        if step is None or step != best_step:
            accelerator.print(f"Removing {best_file}: it is from step {step}, the resumed run's best is {best_step}.")
            os.remove(best_file)
    accelerator.wait_for_everyone()


def finish_best_model(
    accelerator: Accelerator, model: nn.Module, output_dir: str, frozen: FrozenWeights | None, load_best: bool
) -> int | None:
    """
    Leaves `output_dir/best` lean (its trainable parameters and the `frozen` weights' reference). With `load_best`,
    loads the best parameters into `model`, so that [`save_final_model`], called next, saves the best model; returns
    the step of the parameters `model` holds then: the best one, or `None` when they are the last ones.
    """
    best_file = os.path.join(output_dir, BEST_DIR, BEST_TRAINABLE_NAME)
    if not os.path.isfile(best_file):
        return None
    if accelerator.is_main_process and frozen is not None:
        frozen.save(os.path.join(output_dir, BEST_DIR))
    accelerator.wait_for_everyone()
    if not load_best:
        return None
    load_trainable_parameters(bare_model(accelerator, model), load_file(best_file), best_file)
    return best_file_step(best_file)


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
        merged = bare_model(accelerator, model).merge_and_unload()
        merged.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    accelerator.wait_for_everyone()
