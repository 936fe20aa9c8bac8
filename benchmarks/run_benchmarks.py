# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Performance benchmarks of [`VLMForConditionalGeneration`], built from configs only (random weights, synthetic 224 px
images), so that they run without the Hub:

1. `training`: an `align`-stage training step (projector trainable only, vision features from the cache) per projector
   and batch size: samples/s, model TFLOP/s and peak memory;
2. `vision`: vision-tower feature extraction (images/s) and, with the feature cache on, the share of a training epoch
   spent on the vision tower;
3. `generation`: batched greedy captioning with the KV cache (`eval.generate_captions`): captions/s;
4. `seed_experiment`: wall time of seed 000's experiment (mlp, qformer and perceiver, `align` stage, evaluation every
   epoch) through `training_vlm.run_comparison`, the entry point of `train_accelerate.py --compare`; only with
   `--small` on CPU, at tiny sizes;
5. `karpathy_epoch`: one COCO-Karpathy epoch (566,747 pairs) per projector, extrapolated from the measured step rate;
6. `loss_lever`: the loss on labelled positions only (the model's `labels` path) against full-vocabulary logits.

Real sizes are SigLIP-base-patch16-224 + Qwen2.5-0.5B-Instruct ([`VLMConfig`] defaults, 151,936-token vocabulary);
`--small` runs the same code on the tiny towers of `tiny_vlm.py`. Text goes through the tiny offline tokenizer at
both sizes. Warm-up steps are never timed. On CUDA, training runs under bf16 autocast and generation in bf16; on
CPU everything runs in fp32.

    PYTHONPATH=. python benchmarks/run_benchmarks.py --small                       # smoke test, seconds, not timed
    PYTHONPATH=. python benchmarks/run_benchmarks.py --batch_sizes 32 128 --output benchmarks.json   # GPU
"""

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import GenerationConfig, SiglipImageProcessor

from configuration_vlm import DEFAULT_TEXT_CONFIG, DEFAULT_VISION_CONFIG, PROJECTOR_TYPES, VLMConfig
from eval import generate_captions
from modeling_vlm import VLMForConditionalGeneration
from processing_vlm import VLMProcessor, make_chat_template
from tiny_vlm import ENDOFTEXT, IM_END, IMAGE_TOKEN, build_tiny_tokenizer, build_tiny_vlm
from training_vlm import (
    CaptionCollator,
    VLMTrainingArguments,
    build_optimizer,
    configure_trainable_parameters,
    run_comparison,
)

KARPATHY_TRAIN_PAIRS = 566_747
SEED_EXPERIMENT_PROJECTORS = ("mlp", "qformer", "perceiver")
SYNTHETIC_CAPTION = "A man riding a wave on top of a surfboard in the ocean."
IMAGE_SIZE = 224
NOT_MEASURED = "not yet measured — no GPU was lent in this session"
# Operators left out of the FLOP count on every device: FlopCounterMode has formulas for the CUDA SDPA kernels but not
# for the CPU one, so attention scores and weighted values are excluded everywhere to keep devices comparable.
EXCLUDED_FLOP_OPS = ("scaled_dot_product",)


@dataclass
class BenchmarkSettings:
    """Sizes and repetitions of one benchmark run (see [`benchmark_settings`])."""

    small: bool
    projectors: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    warmup_steps: int
    timed_steps: int
    generation_images: int
    generation_batch_size: int
    max_new_tokens: int
    lever_batch_size: int


def benchmark_settings(
    small: bool, projectors: Sequence[str] | None = None, batch_sizes: Sequence[int] | None = None
) -> BenchmarkSettings:
    """Defaults per size and device: tiny and quick with `small`, CPU-feasible real size, or the H100 targets."""
    cuda = torch.cuda.is_available()
    if small:
        default_batches, repetitions, generation = (2, 4), (1, 2), (4, 2, 8)
    elif cuda:
        default_batches, repetitions, generation = (32, 128), (3, 10), (512, 128, 32)
    else:
        default_batches, repetitions, generation = (2,), (1, 2), (2, 2, 8)
    return BenchmarkSettings(
        small=small,
        projectors=tuple(projectors or PROJECTOR_TYPES),
        batch_sizes=tuple(batch_sizes or default_batches),
        warmup_steps=repetitions[0],
        timed_steps=repetitions[1],
        generation_images=generation[0],
        generation_batch_size=generation[1],
        max_new_tokens=generation[2],
        lever_batch_size=2,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Models, inputs, measurement
# ---------------------------------------------------------------------------------------------------------------------


def build_benchmark_model(
    projector_type: str, small: bool, **config_overrides
) -> tuple[VLMForConditionalGeneration, VLMProcessor]:
    """
    The tiny VLM of `tiny_vlm.py` with `small`, else a real-size one from [`VLMConfig`] defaults (SigLIP-base +
    Qwen2.5-0.5B shapes, random weights) with SigLIP's 224 px preprocessing and the tiny offline tokenizer.
    `config_overrides` are [`VLMConfig`] arguments of the real-size model.
    """
    if small:
        return build_tiny_vlm(projector_type)
    tokenizer = build_tiny_tokenizer(IMAGE_TOKEN)
    config = VLMConfig(
        projector_type=projector_type,
        image_token=IMAGE_TOKEN,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        **config_overrides,
    )
    torch.manual_seed(0)
    model = VLMForConditionalGeneration(config)
    end_of_turn, pad = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    model.generation_config = GenerationConfig(eos_token_id=[end_of_turn, pad], pad_token_id=pad, bos_token_id=None)
    processor = VLMProcessor(
        image_processor=SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer,
        chat_template=make_chat_template(IMAGE_TOKEN),
        num_image_tokens=config.num_image_tokens,
        image_token=IMAGE_TOKEN,
    )
    return model.eval(), processor


def synthetic_images(count: int, seed: int = 0) -> list[Image.Image]:
    """`count` random-noise RGB images of 224x224 pixels."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)) for _ in range(count)]


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

    def __exit__(self, *exc_info) -> None:
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


# ---------------------------------------------------------------------------------------------------------------------
# 1. Training step
# ---------------------------------------------------------------------------------------------------------------------


def align_training_args(projector_type: str) -> VLMTrainingArguments:
    """Seed 000's `align` settings; the model source field is a placeholder, the benchmark builds its own model."""
    return VLMTrainingArguments(model="tiny", projector_type=projector_type, stage="align")


def training_batch(
    model: VLMForConditionalGeneration, processor: VLMProcessor, batch_size: int, device: torch.device
) -> dict[str, Any]:
    """A training batch as `train()` sees it with the feature cache on: `CaptionCollator` over cached features."""
    pixel_values = processor.image_processor(synthetic_images(batch_size), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        features = model.get_vision_features(pixel_values.to(device)).float()
    examples = [
        {"image_id": str(i), "caption": SYNTHETIC_CAPTION, "ignore": False, "vision_features": features[i].clone()}
        for i in range(batch_size)
    ]
    batch = CaptionCollator(processor)(examples)
    batch.pop("num_skipped_images")
    return {name: value.to(device) for name, value in batch.items()}


def benchmark_training(settings: BenchmarkSettings, device: torch.device) -> list[dict[str, Any]]:
    """
    One optimizer step of the `align` stage per projector and batch size, assembled from `training_vlm`'s
    `configure_trainable_parameters`, `build_optimizer` and `CaptionCollator` (its `train()` is one loop with no
    step function to call): forward with `labels`, backward, gradient clipping, AdamW step. The learning-rate scheduler
    and Accelerate's wrappers are left out.
    """
    rows = []
    for projector_type in settings.projectors:
        model, processor = build_benchmark_model(projector_type, settings.small)
        model.to(device)
        args = align_training_args(projector_type)
        model = configure_trainable_parameters(model, args)
        optimizer = build_optimizer(model, args)
        trainable = [p for p in model.parameters() if p.requires_grad]
        model.train()
        for batch_size in settings.batch_sizes:
            batch = training_batch(model, processor, batch_size, device)

            def step() -> None:
                with autocast(device):
                    loss = model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            flops = counted_flops(step)  # also the first warm-up step
            with PeakMemory(device) as memory:
                seconds = time_calls(step, device, settings.warmup_steps, settings.timed_steps)
            rows.append(
                {
                    "projector": projector_type,
                    "batch_size": batch_size,
                    "sequence_length": batch["input_ids"].shape[1],
                    "labelled_tokens": int((batch["labels"] != -100).sum()),
                    "trainable_parameters": sum(p.numel() for p in trainable),
                    "samples_per_s": batch_size / seconds,
                    "step_s": seconds,
                    "flops_per_step": flops,
                    "tflops_per_s": flops / seconds / 1e12,
                    "peak_memory_mb": memory.peak_mb,
                }
            )
        del model, optimizer
        release_memory()
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# 2. Vision features, 3. generation
# ---------------------------------------------------------------------------------------------------------------------


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
    del model
    release_memory()
    return rows


def vision_epoch_share(
    vision_rows: list[dict[str, Any]], training_rows: list[dict[str, Any]], num_epochs: int = 10
) -> list[dict[str, Any]]:
    """
    Share of training time spent on the vision tower with the feature cache on, derived from the measured rates at
    the largest batch size: the tower runs once per dataset, so it is its share of the first epoch, and of a
    `num_epochs`-epoch run; every later epoch reads the cache (share 0).
    """
    images_per_s = max(vision_rows, key=lambda row: row["batch_size"])["images_per_s"]
    rows = []
    for projector_type in dict.fromkeys(row["projector"] for row in training_rows):
        rate = max((r for r in training_rows if r["projector"] == projector_type), key=lambda r: r["batch_size"])
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
    Captions/s of `eval.generate_captions` (greedy, KV cache, batched, left padded) per projector, bf16 on CUDA. With
    random weights the end-of-turn token is practically never drawn, so captions run to `max_new_tokens`.
    """
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    images = synthetic_images(settings.generation_images)
    rows = []
    for projector_type in settings.projectors:
        model, processor = build_benchmark_model(projector_type, settings.small)
        model.to(device, dtype)

        def caption() -> None:
            generate_captions(model, processor, images, settings.generation_batch_size, settings.max_new_tokens)

        generate_captions(model, processor, images[: settings.generation_batch_size], settings.generation_batch_size, 2)
        seconds = time_calls(caption, device, warmup=0, repeats=1)
        rows.append(
            {
                "projector": projector_type,
                "batch_size": settings.generation_batch_size,
                "num_captions": len(images),
                "max_new_tokens": settings.max_new_tokens,
                "captions_per_s": len(images) / seconds,
            }
        )
        del model
        release_memory()
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# 4. Seed 000's experiment, 5. Karpathy epoch
# ---------------------------------------------------------------------------------------------------------------------


def benchmark_seed_experiment(settings: BenchmarkSettings, device: torch.device) -> dict[str, Any]:
    """
    Wall time of seed 000's experiment (mlp, qformer, perceiver; `align`; evaluation after every epoch) through
    `training_vlm.run_comparison`, the code path of `train_accelerate.py --compare`. Real size (3 x 10 epochs x 1,000
    samples, captions and metrics of 1,000 validation images per epoch) needs a GPU, COCO and the pretrained towers.
    With `small` it runs the tiny model on the offline shapes data, scaled down to a smoke test: 1 epoch, and the
    evaluation computes the validation loss only (captioning and the Java metric scorers would dominate its time;
    generation has its own section).
    """
    if not settings.small:
        reason = NOT_MEASURED if device.type != "cuda" else "needs COCO and the pretrained towers: time train_accelerate.py"
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
                mixed_precision="no",
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
            {"projector": r["projector_type"], "wall_s": r["wall_time_s"], "samples_per_s": r["samples_per_second"]}
            for r in results
        ],
    }


def karpathy_epoch_extrapolation(training_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hours of one COCO-Karpathy epoch (566,747 pairs) per projector at its measured rate of the largest batch size."""
    rows = []
    for projector_type in dict.fromkeys(row["projector"] for row in training_rows):
        rate = max((r for r in training_rows if r["projector"] == projector_type), key=lambda r: r["batch_size"])
        rows.append(
            {
                "projector": projector_type,
                "batch_size": rate["batch_size"],
                "samples_per_s": rate["samples_per_s"],
                "extrapolated_epoch_s": KARPATHY_TRAIN_PAIRS / rate["samples_per_s"],
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# 6. Lever: loss on labelled positions only
# ---------------------------------------------------------------------------------------------------------------------


def full_vocabulary_loss(model: VLMForConditionalGeneration, batch: dict[str, Any]) -> torch.Tensor:
    """The baseline the lever replaces: logits of every position over the whole vocabulary, then the shifted loss."""
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
    model = configure_trainable_parameters(model, align_training_args("mlp"))
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
    del model
    release_memory()
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict[str, Any]:
    """Hardware and software of the run."""
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            model_names = [line.split(":", 1)[1].strip() for line in file if line.startswith("model name")]
        hardware = f"{model_names[0] if model_names else platform.processor()}, {os.cpu_count()} cores"
    return {
        "date": date.today().isoformat(),
        "device": device.type,
        "hardware": hardware,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_benchmarks(
    small: bool = False, projectors: Sequence[str] | None = None, batch_sizes: Sequence[int] | None = None
) -> dict[str, Any]:
    """Runs every section and returns the report (see the module docstring)."""
    settings = benchmark_settings(small, projectors, batch_sizes)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    training = benchmark_training(settings, device)
    vision = benchmark_vision(settings, device)
    report = {
        "settings": vars(settings),
        "training": training,
        "vision": {"extraction": vision, "epoch_share": vision_epoch_share(vision, training)},
        "generation": benchmark_generation(settings, device),
        "seed_experiment": benchmark_seed_experiment(settings, device),
        "karpathy_epoch": karpathy_epoch_extrapolation(training),
        "loss_lever": benchmark_loss_lever(settings, device),
    }
    report["environment"] = environment(device)
    return report


def _table(columns: Sequence[str], rows: Iterator[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    """Markdown tables of a [`run_benchmarks`] report, one per section."""
    env = report["environment"]
    seed = report["seed_experiment"]
    sections = [
        f"{env['hardware']} ({env['device']}), python {env['python']}, torch {env['torch']}, "
        f"transformers {env['transformers']}, {env['date']}, small={report['settings']['small']}",
        "Training step (align):\n" + _table(
            ("projector", "batch", "seq len", "trainable params", "samples/s", "step s", "GFLOP/step", "TFLOP/s",
             "peak MB"),
            ((r["projector"], r["batch_size"], r["sequence_length"], f"{r['trainable_parameters']:,}",
              f"{r['samples_per_s']:.2f}", f"{r['step_s']:.3f}", f"{r['flops_per_step'] / 1e9:.1f}",
              f"{r['tflops_per_s']:.3f}", f"{r['peak_memory_mb']:.0f}") for r in report["training"]),
        ),
        "Vision features:\n" + _table(
            ("batch", "images/s"),
            ((r["batch_size"], f"{r['images_per_s']:.2f}") for r in report["vision"]["extraction"]),
        ),
        "Vision share with the feature cache on (derived from the measured rates):\n" + _table(
            ("projector", "batch", "share of epoch 1", "share of a 10-epoch run"),
            ((r["projector"], r["batch_size"], f"{r['first_epoch_share']:.1%}", f"{r['run_share']:.1%}")
             for r in report["vision"]["epoch_share"]),
        ),
        "Generation:\n" + _table(
            ("projector", "batch", "captions", "max new tokens", "captions/s"),
            ((r["projector"], r["batch_size"], r["num_captions"], r["max_new_tokens"], f"{r['captions_per_s']:.2f}")
             for r in report["generation"]),
        ),
        "Seed 000 experiment: " + (
            f"{seed['wall_s']:.1f} s wall for {', '.join(seed['projectors'])} x {seed['num_train_epochs']} epochs x "
            f"{seed['max_train_samples']} samples, {seed['max_eval_samples']} eval images per epoch"
            if seed["measured"] else seed["reason"]
        ),
        "COCO-Karpathy epoch (566,747 pairs), extrapolated from the measured step rate:\n" + _table(
            ("projector", "batch", "samples/s (measured)", "epoch (extrapolated)"),
            ((r["projector"], r["batch_size"], f"{r['samples_per_s']:.2f}",
              f"{r['extrapolated_epoch_s'] / 3600:.1f} h") for r in report["karpathy_epoch"]),
        ),
        "Loss on labelled positions only vs full-vocabulary logits (forward + backward):\n" + _table(
            ("variant", "vocab", "batch", "seq len", "s", "peak MB", "increase MB", "loss"),
            ((r["variant"], f"{r['vocab_size']:,}", r["batch_size"], r["sequence_length"], f"{r['step_s']:.3f}",
              f"{r['peak_memory_mb']:.0f}", f"{r['memory_increase_mb']:.0f}", f"{r['loss']:.4f}")
             for r in report["loss_lever"]),
        ),
    ]  # fmt: skip
    return "\n\n".join(sections) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: runs the benchmarks, prints the tables and writes the JSON report to `--output`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny sizes: a smoke test on CPU, not a timing")
    parser.add_argument("--projectors", nargs="+", choices=PROJECTOR_TYPES, help="default: all")
    parser.add_argument("--batch_sizes", nargs="+", type=int, help="training and vision batch sizes")
    parser.add_argument("--output", help="JSON file for the report")
    args = parser.parse_args(argv)
    report = run_benchmarks(args.small, args.projectors, args.batch_sizes)
    print(format_report(report))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=2)
    return report


if __name__ == "__main__":
    main()
