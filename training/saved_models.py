# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The models a run leaves in its output directory, as `save_pretrained` directories that the Auto classes load:

- the final model in `output_dir` (for `lora`, merged, with the adapter alone in `output_dir/adapter`);
- the best model by the chosen metric in `output_dir/best`. While the run trains, `best/` holds only the trainable
  parameters of the best evaluation so far (`trainable.safetensors`); [`finish_best_model`] writes the complete
  model there once, at the end. FSDP and DeepSpeed runs save `best/` complete every time.
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
from .model_setup import bare_model


ADAPTER_DIR = "adapter"
BEST_DIR = "best"
BEST_TRAINABLE_NAME = "trainable.safetensors"
SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


def save_model(accelerator: Accelerator, model: nn.Module, processor: VLMProcessor, directory: str) -> None:
    """`save_pretrained` of the model (a `PeftModel` saves its adapter only) and the processor, from every process."""
    bare = bare_model(accelerator, model)
    # FSDP and DeepSpeed gather the full state from their wrapper; otherwise the bare model's names are the saved ones.
    state_dict = accelerator.get_state_dict(model if accelerator.distributed_type in SHARDED else bare)
    if accelerator.is_main_process:
        bare.save_pretrained(directory, state_dict=state_dict)
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


def discard_stale_best(accelerator: Accelerator, output_dir: str, best_step: int | None) -> None:
    """
    Removes `output_dir/best/trainable.safetensors` unless it holds the best evaluation `best_step` of the state a
    run resumes from: one saved after that checkpoint belongs to the run being abandoned.
    """
    best_file = os.path.join(output_dir, BEST_DIR, BEST_TRAINABLE_NAME)
    if accelerator.is_main_process and os.path.isfile(best_file):
        with safe_open(best_file, framework="pt") as file:
            step = (file.metadata() or {}).get("step")
        if step != str(best_step):
            accelerator.print(f"Removing {best_file}: it is from step {step}, the resumed run's best is {best_step}.")
            os.remove(best_file)
    accelerator.wait_for_everyone()


def finish_best_model(accelerator: Accelerator, model: nn.Module, processor: VLMProcessor, output_dir: str) -> None:
    """
    Writes the complete best model into `output_dir/best` from the trainable parameters kept there, then puts the
    model's own (final) parameters back. Call it before [`save_final_model`], which merges LoRA adapters.
    """
    best_dir = os.path.join(output_dir, BEST_DIR)
    best_file = os.path.join(best_dir, BEST_TRAINABLE_NAME)
    if not os.path.isfile(best_file):
        return
    bare = bare_model(accelerator, model)
    final = trainable_state_dict(accelerator, model)
    load_trainable_parameters(bare, load_file(best_file), best_file)
    save_model(accelerator, model, processor, best_dir)
    load_trainable_parameters(bare, final, "the final parameters")
    if accelerator.is_main_process:
        os.remove(best_file)
    accelerator.wait_for_everyone()


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
