# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The training and evaluation levers, each against its baseline in one process:

1. `chunked_loss`: `loss_chunk_size` (torch's `F.linear_cross_entropy`, the LM head and cross-entropy a chunk of
   labelled positions at a time) against the loss in one piece: forward + backward of the `align` model (mlp; real
   widths and the 151,936-token vocabulary with 2 vision and 2 language-model layers, or the tiny model with
   `--small`), at each of `--batch_sizes`; the chunked variant runs first, so the one-piece peak is a lower bound.
2. `group_by_length`: one epoch of `train()` (tiny models, offline shapes data, features cached) with and without
   length-grouped batches: the share of padding in the language model's tokens, and the training seconds.
3. `workers`: one epoch of `train()` reading the images (no feature cache) with 0 and 2 DataLoader workers.
4. `batched_generation`: `captioning.generate_captions` of the same images one at a time and in batches.
5. `compile` (real size only): forward + backward of the same model as 1, eager and through `torch.compile`.

    PYTHONPATH=. python benchmarks/levers.py                # real-size chunked loss (CPU: minutes) and the rest
    PYTHONPATH=. python benchmarks/levers.py --small        # seconds, a smoke test
"""

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.measure import PeakMemory, autocast, environment, publish_report, time_calls
from benchmarks.workloads import build_benchmark_model, training_batch
from configuration_vlm import DEFAULT_TEXT_CONFIG, DEFAULT_VISION_CONFIG
from data.captions import make_shapes_dataset
from evaluation.captioning import generate_captions
from evaluation.markdown_tables import markdown_table
from modeling_vlm import VLMForConditionalGeneration
from models.tiny import build_tiny_vlm
from processing_vlm import VLMProcessor
from training import VLMTrainingArguments, train
from training.data import prepare_data
from training.loop import make_accelerator
from training.model_setup import build_model, configure_trainable_parameters


def align_mlp_model(small: bool, device: torch.device) -> tuple[VLMForConditionalGeneration, VLMProcessor]:
    """The mlp model in training mode for the `align` stage: tiny, or real widths and vocabulary at 2 + 2 layers."""
    layers = {} if small else {
        "vision_config": {**DEFAULT_VISION_CONFIG, "num_hidden_layers": 2},
        "text_config": {**DEFAULT_TEXT_CONFIG, "num_hidden_layers": 2},
    }  # fmt: skip
    model, processor = build_benchmark_model("mlp", small, **layers)
    return configure_trainable_parameters(model.to(device), "align").train(), processor


def forward_backward_recorder(
    module: nn.Module, model: nn.Module, batch: dict[str, Any], device: torch.device, losses: list[float]
) -> Callable[[], None]:
    """A call running `module` (`model`, or `model` compiled) forward on `batch` and backward; it records the loss."""

    def forward_backward() -> None:
        with autocast(device):
            loss = module(**batch).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())

    return forward_backward


def benchmark_chunked_loss(
    small: bool, batch_sizes: Sequence[int], chunk_size: int, repeats: int, device: torch.device
) -> list[dict[str, Any]]:
    """Seconds, peak memory and loss of forward + backward with the loss chunked and in one piece, per batch size."""
    model, processor = align_mlp_model(small, device)
    rows = []
    for batch_size in batch_sizes:
        batch = training_batch(model, processor, batch_size, device)
        for chunk in (chunk_size, None):
            model.config.loss_chunk_size = chunk
            losses = []
            forward_backward = forward_backward_recorder(model, model, batch, device, losses)
            forward_backward()
            with PeakMemory(device) as memory:
                seconds = time_calls(forward_backward, device, 0, repeats)
            rows.append(
                {
                    "loss_chunk_size": chunk,
                    "batch_size": batch_size,
                    "labelled_positions": int((batch["labels"][:, 1:] != -100).sum()),
                    "vocab_size": model.config.text_config.vocab_size,
                    "step_s": seconds,
                    "peak_memory_mb": memory.peak_mb,
                    "memory_increase_mb": memory.increase_mb,
                    "loss": losses[-1],
                }
            )
    return rows


def benchmark_compile(small: bool, batch_size: int, repeats: int, device: torch.device) -> list[dict[str, Any]]:
    """
    Forward + backward of the `align` mlp model (sizes as `benchmark_chunked_loss`) eager and through
    `torch.compile` (inductor; what `accelerate launch --dynamo_backend inductor` applies to the prepared model): the
    first call (compilation included) and the steady-state seconds per call on one batch shape.
    """
    model, processor = align_mlp_model(small, device)
    batch = training_batch(model, processor, batch_size, device)
    rows = []
    for name, module in (("eager", model), ("torch.compile (inductor)", torch.compile(model))):
        losses = []
        forward_backward = forward_backward_recorder(module, model, batch, device, losses)
        first_s = time_calls(forward_backward, device, 0, 1)
        seconds = time_calls(forward_backward, device, 1, repeats)
        rows.append(
            {"variant": name, "batch_size": batch_size, "first_call_s": first_s, "step_s": seconds, "loss": losses[-1]}
        )
    return rows


def tiny_run_args(output_dir: Path, num_images: int, **overrides: Any) -> VLMTrainingArguments:
    """One epoch over `num_images` of a tiny offline run without evaluation or checkpoints."""
    settings = {
        "model": "tiny", "dataset": "shapes", "max_train_samples": num_images, "max_eval_samples": 8,
        "num_train_epochs": 1, "per_device_train_batch_size": 16, "eval_strategy": "no", "save_steps": 0,
        "report_to": "none",
        "output_dir": str(output_dir / "run"), "feature_cache_dir": str(output_dir / "feature_cache"),
        "overwrite_output_dir": True, **overrides,
    }  # fmt: skip
    return VLMTrainingArguments(**settings)


def padding_share(args: VLMTrainingArguments) -> tuple[float, float]:
    """The share of padding among the language model's positions in epoch 0 of `args`' run, and its mean length."""
    accelerator = make_accelerator(args)
    vlm, processor = build_model(args)
    loader = accelerator.prepare_data_loader(prepare_data(args, accelerator, vlm, processor).train_loader)
    loader.set_epoch(0)
    real = padded = 0
    for batch in loader:
        real += int(batch["attention_mask"].sum())
        padded += batch["attention_mask"].numel()
    return 1 - real / padded, padded / len(loader.dataset)


def benchmark_group_by_length(work_dir: Path, num_images: int, projectors: Sequence[str]) -> list[dict[str, Any]]:
    """Padding share and training seconds of one epoch with shuffled and with length-grouped batches."""
    rows = []
    for projector in projectors:
        for grouped in (False, True):
            args = tiny_run_args(work_dir, num_images, projector_type=projector, group_by_length=grouped)
            share, mean_length = padding_share(args)
            results = train(args)
            rows.append(
                {
                    "projector": projector,
                    "group_by_length": grouped,
                    "padding_share": share,
                    "mean_padded_length": mean_length,
                    "train_s": results.train_time_s,
                    "samples_per_s": results.samples_per_second,
                }
            )
    return rows


def benchmark_workers(work_dir: Path, num_images: int, workers: Sequence[int]) -> list[dict[str, Any]]:
    """Training seconds of one epoch that decodes and preprocesses every image, per number of DataLoader workers."""
    rows = []
    for num_workers in workers:
        args = tiny_run_args(work_dir, num_images, cache_vision_features=False, dataloader_num_workers=num_workers)
        results = train(args)
        rows.append(
            {"num_workers": num_workers, "train_s": results.train_time_s, "samples_per_s": results.samples_per_second}
        )
    return rows


def benchmark_batched_generation(num_images: int, batch_sizes: Sequence[int], max_new_tokens: int) -> list[dict]:
    """Captions per second of the tiny mlp model on shapes images, per generation batch size."""
    model, processor = build_tiny_vlm("mlp")
    images = [image.convert("RGB") for image in make_shapes_dataset(num_images, split="test")["image"]]
    rows, captions = [], {}
    for batch_size in batch_sizes:
        start = time.perf_counter()
        captions[batch_size] = generate_captions(model, processor, images, batch_size, max_new_tokens)
        seconds = time.perf_counter() - start
        per_s = num_images / seconds
        rows.append({"batch_size": batch_size, "captions": num_images, "seconds": seconds, "captions_per_s": per_s})
    for row in rows:
        row["same_captions_as_batch_1"] = captions[row["batch_size"]] == captions[batch_sizes[0]]
    return rows


def run_levers(small: bool, batch_sizes: Sequence[int], chunk_size: int) -> dict[str, Any]:
    """Every lever's measurements, with the environment they ran in."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    num_images = 32 if small else 512
    with tempfile.TemporaryDirectory() as work_dir:
        report = {
            "environment": environment(device),
            "chunked_loss": benchmark_chunked_loss(small, batch_sizes, chunk_size, 1 if small else 2, device),
            # Compiling takes half a minute even for the tiny model: real size only.
            "compile": [] if small else benchmark_compile(small, batch_sizes[0], 3, device),
            "group_by_length": benchmark_group_by_length(Path(work_dir), num_images, ("mlp", "qformer")),
            "workers": benchmark_workers(Path(work_dir), num_images, (0, 2)),
            "batched_generation": benchmark_batched_generation(num_images // 4, (1, 8, 32), 24),
        }
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as markdown tables."""
    sections = [
        "Loss in chunks against in one piece (forward + backward):\n" + markdown_table(
            ("loss_chunk_size", "batch", "labelled positions", "vocab", "s", "peak MB", "increase MB", "loss"),
            ((r["loss_chunk_size"] or "one piece", r["batch_size"], r["labelled_positions"], f"{r['vocab_size']:,}",
              f"{r['step_s']:.3f}", f"{r['peak_memory_mb']:.0f}", f"{r['memory_increase_mb']:.0f}",
              f"{r['loss']:.6f}") for r in report["chunked_loss"]),
        ),
        "torch.compile against eager (forward + backward, one batch shape):\n" + markdown_table(
            ("variant", "batch", "first call s", "s", "loss"),
            ((r["variant"], r["batch_size"], f"{r['first_call_s']:.2f}", f"{r['step_s']:.3f}", f"{r['loss']:.6f}")
             for r in report["compile"]),
        ),
        "Length-grouped batches (one epoch, tiny models):\n" + markdown_table(
            ("projector", "group_by_length", "padding share", "mean padded length", "train s", "samples/s"),
            ((r["projector"], r["group_by_length"], f"{r['padding_share']:.1%}", f"{r['mean_padded_length']:.1f}",
              f"{r['train_s']:.2f}", f"{r['samples_per_s']:.1f}") for r in report["group_by_length"]),
        ),
        "DataLoader workers (one epoch reading the images, tiny mlp):\n" + markdown_table(
            ("workers", "train s", "samples/s"),
            ((r["num_workers"], f"{r['train_s']:.2f}", f"{r['samples_per_s']:.1f}") for r in report["workers"]),
        ),
        "Batched generation (tiny mlp):\n" + markdown_table(
            ("batch", "captions", "s", "captions/s", "same captions as batch 1"),
            ((r["batch_size"], r["captions"], f"{r['seconds']:.2f}", f"{r['captions_per_s']:.1f}",
              r["same_captions_as_batch_1"]) for r in report["batched_generation"]),
        ),
    ]  # fmt: skip
    return "\n\n".join(sections) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: runs the levers, prints the tables and writes the JSON report to `--output`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny sizes: a smoke test on CPU, not a timing")
    parser.add_argument("--batch_sizes", nargs="+", type=int, help="batch sizes of the chunked-loss comparison")
    parser.add_argument("--loss_chunk_size", type=int, help="labelled positions per chunk; default 256 (small: 8)")
    parser.add_argument("--output", help="JSON file for the report")
    args = parser.parse_args(argv)
    batch_sizes = args.batch_sizes or ((4,) if args.small else (8, 32))
    report = run_levers(args.small, batch_sizes, args.loss_chunk_size or (8 if args.small else 256))
    publish_report(format_report(report), report, args.output)
    return report


if __name__ == "__main__":
    main()
