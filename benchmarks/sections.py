# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The benchmark sections: the `align` training step (`training.training_step`, the step `train()` runs), vision-tower
features and their share of an epoch, batched generation, early against cross-attention fusion, seed 000's experiment
end to end, the COCO-Karpathy epoch extrapolated from the step rate, and the labelled-positions loss lever.

Accelerate holds one mixed precision per process: every section that trains runs in the recipe's (`training_precision`:
bf16 on CUDA, none on CPU), seed 000's experiment included.
"""

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from PIL import Image
from transformers import get_scheduler

from benchmarks.measure import PeakMemory, autocast, counted_flops, release_memory, time_calls
from benchmarks.workloads import BenchmarkSettings, build_benchmark_model, synthetic_images, training_batch
from configuration_vlm import DEFAULT_TEXT_CONFIG, DEFAULT_VISION_CONFIG
from evaluation.captioning import generate_captions
from modeling_vlm import VLMForConditionalGeneration
from processing_vlm import VLMProcessor
from training import VLMTrainingArguments, run_comparison, training_step
from training.checkpointing import TrainerState, keep_checkpoints_lean, save_checkpoint
from training.comparison import run_settings
from training.integrity import FrozenWeights
from training.model_setup import build_optimizer, configure_trainable_parameters


KARPATHY_TRAIN_PAIRS = 566_747
SEED_EXPERIMENT_PROJECTORS = ("mlp", "qformer", "perceiver")
NOT_MEASURED = "not yet measured — no GPU was lent in this session"


def training_precision(device: torch.device) -> str:
    """The recipe's mixed precision: bf16 on CUDA, none elsewhere."""
    return "bf16" if device.type == "cuda" else "no"


def benchmark_training(settings: BenchmarkSettings, device: torch.device) -> list[dict[str, Any]]:
    """
    One optimizer step of the `align` stage per projector and batch size, as `train()` runs it: `training_step`
    (forward with `labels`, backward, gradient clipping, AdamW and scheduler steps) on Accelerate-prepared objects,
    under the recipe's mixed precision, with the defaults of [`VLMTrainingArguments`].
    """
    accelerator = Accelerator(cpu=device.type != "cuda", mixed_precision=training_precision(device))
    rows = []
    for run_name in settings.projectors:
        rows += time_training_steps(accelerator, run_name, settings, device)
        accelerator.free_memory()  # the prepared model and optimizer of this projector
        release_memory()
    return rows


def prepared_align_model(
    accelerator: Accelerator, run_name: str, small: bool, device: torch.device
) -> tuple[torch.nn.Module, VLMProcessor, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """A benchmark model in the `align` stage with AdamW (the defaults of a run) and a constant schedule, prepared."""
    defaults = VLMTrainingArguments(model="tiny")
    model, processor = build_benchmark_model(run_name, small)
    model = configure_trainable_parameters(model.to(device), "align")
    betas, eps = (defaults.adam_beta1, defaults.adam_beta2), defaults.adam_epsilon
    optimizer = build_optimizer(model, defaults.learning_rate, None, defaults.weight_decay, betas, eps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, get_scheduler("constant", optimizer))
    return model.train(), processor, optimizer, scheduler


def time_training_steps(
    accelerator: Accelerator, run_name: str, settings: BenchmarkSettings, device: torch.device
) -> list[dict[str, Any]]:
    """The training-step measurements of one run (a projector and its fusion), one row per batch size."""
    model, processor, optimizer, scheduler = prepared_align_model(accelerator, run_name, settings.small, device)
    max_grad_norm = VLMTrainingArguments(model="tiny").max_grad_norm
    rows = []
    for batch_size in settings.batch_sizes:
        batch = training_batch(accelerator.unwrap_model(model), processor, batch_size, device)

        def step() -> None:
            training_step(model, batch, accelerator, optimizer, scheduler, max_grad_norm)

        flops = counted_flops(step)  # also the first warm-up step
        with PeakMemory(device) as memory:
            seconds = time_calls(step, device, settings.warmup_steps, settings.timed_steps)
        rows.append(
            {
                "projector": run_name,
                "batch_size": batch_size,
                "sequence_length": batch["input_ids"].shape[1],
                "labelled_tokens": int((batch["labels"] != -100).sum()),
                "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "samples_per_s": batch_size / seconds,
                "step_s": seconds,
                "flops_per_step": flops,
                "tflops_per_s": flops / seconds / 1e12,
                "peak_memory_mb": memory.peak_mb,
            }
        )
    return rows


def benchmark_vision(settings: BenchmarkSettings, device: torch.device) -> list[dict[str, Any]]:
    """
    Images/s of the vision tower (`get_vision_features` under the training precision, as the feature cache computes
    them), per batch size; image decoding and preprocessing are excluded. The tower does not depend on the projector.
    """
    model, processor = build_benchmark_model("mlp", settings.small)
    model.to(device)
    rows = []
    for batch_size in settings.batch_sizes:
        pixel_values = processor.image_processor(synthetic_images(batch_size), return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(device)

        def extract() -> None:
            with torch.inference_mode(), autocast(device):
                model.get_vision_features(pixel_values)

        seconds = time_calls(extract, device, settings.warmup_steps, settings.timed_steps)
        rows.append({"batch_size": batch_size, "images_per_s": batch_size / seconds})
    return rows


def largest_batch_rates(training: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training row of each projector's largest batch size, in projector order."""
    largest: dict[str, dict[str, Any]] = {}
    for row in training:
        if row["projector"] not in largest or row["batch_size"] > largest[row["projector"]]["batch_size"]:
            largest[row["projector"]] = row
    return list(largest.values())


def vision_epoch_share(
    vision: list[dict[str, Any]], training: list[dict[str, Any]], num_epochs: int = 10
) -> list[dict[str, Any]]:
    """
    Share of training time spent on the vision tower with the feature cache on, derived from the measured rates at
    the largest batch size: the tower runs once per dataset, so it is its share of the first epoch, and of a
    `num_epochs`-epoch run; every later epoch reads the cache (share 0).
    """
    images_per_s = max(vision, key=lambda row: row["batch_size"])["images_per_s"]
    rows = []
    for rate in largest_batch_rates(training):
        projector_type = rate["projector"]
        vision_s, epoch_s = 1 / images_per_s, 1 / rate["samples_per_s"]  # seconds per image / per sample
        rows.append(
            {
                "projector": projector_type,
                "batch_size": rate["batch_size"],
                "first_epoch_share": vision_s / (vision_s + epoch_s),
                "run_share": vision_s / (vision_s + num_epochs * epoch_s),
                "num_epochs": num_epochs,
            }
        )
    return rows


def benchmark_generation(settings: BenchmarkSettings, device: torch.device) -> list[dict[str, Any]]:
    """
    Captions/s of `captioning.generate_captions` (greedy, KV cache, batched, left padded) per projector, bf16 on CUDA.
    With random weights the end-of-turn token is practically never drawn, so captions run to `max_new_tokens`.
    """
    images = synthetic_images(settings.generation_images)
    rows = []
    for run_name in settings.projectors:
        seconds = generation_seconds(run_name, images, settings, device)
        rows.append(
            {
                "projector": run_name,
                "batch_size": settings.generation_batch_size,
                "num_captions": len(images),
                "max_new_tokens": settings.max_new_tokens,
                "captions_per_s": len(images) / seconds,
            }
        )
        release_memory()
    return rows


def generation_seconds(
    run_name: str, images: list[Image.Image], settings: BenchmarkSettings, device: torch.device
) -> float:
    """Seconds to caption `images` with the model of `run_name`, after a short untimed warm-up."""
    model, processor = build_benchmark_model(run_name, settings.small)
    model.to(device, torch.bfloat16 if device.type == "cuda" else torch.float32)

    def caption() -> None:
        generate_captions(model, processor, images, settings.generation_batch_size, settings.max_new_tokens)

    generate_captions(model, processor, images[: settings.generation_batch_size], settings.generation_batch_size, 2)
    return time_calls(caption, device, warmup=0, repeats=1)


def fusion_comparison(training: list[dict[str, Any]], generation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    Early against the other fusions at the same visual budget, derived from the measured rows: every `<projector>` run
    measured beside runs of the same projector with another fusion (`<projector>_xattn`, `_expert`, `_adapter`; the
    tokenized run beside `mlp`, which keeps its 196 tokens per image too), then those runs, with their language-model
    sequence length, trainable parameters, training samples/s and peak memory at the largest batch size, and
    generation captions/s.
    """
    train = {row["projector"]: row for row in largest_batch_rates(training)}
    captions = {row["projector"]: row["captions_per_s"] for row in generation}
    runs = []
    for name in train:
        settings = run_settings(name)
        peer = "mlp" if settings["fusion"] == "tokenized" else settings["projector_type"]
        if name != peer and peer in train:
            runs += [run for run in (peer, name) if run not in runs]
    rows = []
    for run in runs:
        row = train[run]
        rows.append(
            {
                "run": run,
                "fusion": run_settings(run)["fusion"],
                "batch_size": row["batch_size"],
                "sequence_length": row["sequence_length"],
                "trainable_parameters": row["trainable_parameters"],
                "samples_per_s": row["samples_per_s"],
                "peak_memory_mb": row["peak_memory_mb"],
                "captions_per_s": captions.get(run),
            }
        )
    return rows


def benchmark_seed_experiment(settings: BenchmarkSettings, device: torch.device) -> dict[str, Any]:
    """
    Wall time of seed 000's experiment (mlp, qformer, perceiver; `align`; evaluation after every epoch) through
    `training.run_comparison`, the code path of `train_accelerate.py --compare`. Real size (3 x 10 epochs x 1,000
    samples, captions and metrics of 1,000 validation images per epoch) needs a GPU, COCO and the pretrained towers.
    With `small` it runs the tiny model on the offline shapes data, scaled down to a smoke test: 1 epoch, and the
    evaluation computes the validation loss only (captioning and the Java metric scorers would dominate its time;
    generation has its own section).
    """
    if not settings.small:
        on_gpu = "needs COCO and the pretrained towers: time train_accelerate.py"
        reason = NOT_MEASURED if device.type != "cuda" else on_gpu
        return {"measured": False, "reason": reason}
    epochs, train_samples, eval_samples = 1, 8, 4
    with tempfile.TemporaryDirectory() as output_dir:
        runs = [
            VLMTrainingArguments(
                model="tiny",
                stage="align",
                dataset="shapes",
                max_train_samples=train_samples,
                max_eval_samples=eval_samples,
                num_train_epochs=epochs,
                per_device_train_batch_size=4,
                per_device_eval_batch_size=4,
                predict_with_generate=False,
                mixed_precision=training_precision(device),
                use_cpu=device.type != "cuda",
                report_to="none",
                save_steps=0,
                output_dir=os.path.join(output_dir, projector_type),
                projector_type=projector_type,
                feature_cache_dir=os.path.join(output_dir, "feature_cache"),
            )
            for projector_type in SEED_EXPERIMENT_PROJECTORS
        ]
        start = time.perf_counter()
        results = run_comparison(runs)
        wall_s = time.perf_counter() - start
    return {
        "measured": True,
        "projectors": list(SEED_EXPERIMENT_PROJECTORS),
        "num_train_epochs": epochs,
        "max_train_samples": train_samples,
        "max_eval_samples": eval_samples,
        "wall_s": wall_s,
        "runs": [
            {"projector": r.projector_type, "wall_s": r.wall_time_s, "samples_per_s": r.samples_per_second}
            for r in results
        ],
    }


def karpathy_epoch_extrapolation(training: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hours of one COCO-Karpathy epoch (566,747 pairs) per projector at its measured rate of the largest batch size."""
    rows = []
    for rate in largest_batch_rates(training):
        rows.append(
            {
                "projector": rate["projector"],
                "batch_size": rate["batch_size"],
                "samples_per_s": rate["samples_per_s"],
                "extrapolated_epoch_s": KARPATHY_TRAIN_PAIRS / rate["samples_per_s"],
            }
        )
    return rows


def full_vocabulary_loss(model: VLMForConditionalGeneration, batch: dict[str, Any]) -> torch.Tensor:
    """
    The baseline the lever replaces: logits `(batch, seq, vocab)` of every position, then the shifted cross-entropy
    over the labelled positions; a scalar, as `model(**batch).loss`.
    """
    inputs = {name: value for name, value in batch.items() if name != "labels"}
    logits = model(**inputs, logits_to_keep=0).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=-100)


def benchmark_loss_lever(settings: BenchmarkSettings, device: torch.device) -> list[dict[str, Any]]:
    """
    Forward + backward (`align`, mlp) with the loss on labelled positions only (`model(**batch).loss`) and with
    full-vocabulary logits. Real size keeps the 151,936-token vocabulary and widths but only 2 language-model and
    2 vision layers, so it fits a CPU; the losses of both variants are reported to show they agree.
    """
    layers = {} if settings.small else {
        "vision_config": {**DEFAULT_VISION_CONFIG, "num_hidden_layers": 2},
        "text_config": {**DEFAULT_TEXT_CONFIG, "num_hidden_layers": 2},
    }  # fmt: skip
    model, processor = build_benchmark_model("mlp", settings.small, **layers)
    model.to(device)
    model = configure_trainable_parameters(model, "align")
    model.train()
    batch = training_batch(model, processor, settings.lever_batch_size, device)
    variants = {
        "labelled positions only": lambda: model(**batch).loss,
        "full-vocabulary logits": lambda: full_vocabulary_loss(model, batch),
    }
    rows = []
    for name, loss_fn in variants.items():
        losses = []

        def forward_backward() -> None:
            with autocast(device):
                loss = loss_fn()
            loss.backward()
            model.zero_grad(set_to_none=True)
            losses.append(loss.item())

        forward_backward()
        with PeakMemory(device) as memory:
            seconds = time_calls(forward_backward, device, 0, settings.timed_steps)
        rows.append(
            {
                "variant": name,
                "vocab_size": model.config.text_config.vocab_size,
                "batch_size": settings.lever_batch_size,
                "sequence_length": batch["input_ids"].shape[1],
                "step_s": seconds,
                "peak_memory_mb": memory.peak_mb,
                "memory_increase_mb": memory.increase_mb,
                "loss": losses[-1],
            }
        )
    return rows


def benchmark_checkpoints(settings: BenchmarkSettings, device: torch.device) -> list[dict[str, Any]]:
    """
    Size and save time of one `align` checkpoint of the mlp model after a training step: accelerate's whole state
    (frozen towers included), then the lean checkpoint `train()` writes (trainable weights, optimizer, scheduler,
    RNG, trainer state, the frozen weights' reference and the checksum manifest).
    """
    rows = []
    for lean in (False, True):
        accelerator = Accelerator(cpu=device.type != "cuda", mixed_precision=training_precision(device))
        model, processor, optimizer, scheduler = prepared_align_model(accelerator, "mlp", settings.small, device)
        batch = training_batch(accelerator.unwrap_model(model), processor, 2, device)
        training_step(model, batch, accelerator, optimizer, scheduler, max_grad_norm=1.0)
        if lean:
            keep_checkpoints_lean(accelerator)
        frozen = FrozenWeights.of(accelerator.unwrap_model(model), {"model": "benchmark"})
        with tempfile.TemporaryDirectory() as output_dir:
            start = time.perf_counter()
            checkpoint = Path(save_checkpoint(accelerator, TrainerState(global_step=1), output_dir, 1, frozen))
            seconds = time.perf_counter() - start
            files = {path.name: path.stat().st_size for path in checkpoint.rglob("*") if path.is_file()}
        rows.append(
            {
                "checkpoint": "lean (train())" if lean else "whole accelerate state",
                "total_mb": sum(files.values()) / 2**20,
                "weights_mb": files["model.safetensors"] / 2**20,
                "save_s": seconds,
            }
        )
        accelerator.free_memory()
        release_memory()
    return rows
