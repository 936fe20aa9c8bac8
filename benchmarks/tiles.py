# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The cost of dynamic resolution: LLaVA-1.5's MLP on SigLIP-base + Qwen2.5-0.5B shapes (random weights, the full 24
decoder layers) reading 448 px images whole (resized to 224), in up to 4 tiles and a thumbnail (a 448 px square is
2 x 2 tiles: 5 x 196 tokens in the sequence), and in NVLM's hybrid (the thumbnail's 196 tokens in the sequence, the
4 tiles through gated cross-attention before every 4th layer). Per run: the `align` training step (`training_step`,
AdamW) on caption batches read from the pixels (tiles are not feature-cached), its peak memory, and greedy captions/s.

    PYTHONPATH=. python benchmarks/tiles.py              # real size
    PYTHONPATH=. python benchmarks/tiles.py --small      # the tiny models: a smoke test, not a timing
"""

import argparse
from collections.abc import Sequence
from typing import Any

import torch
from accelerate import Accelerator

from benchmarks.measure import PeakMemory, environment, release_memory, software_line, time_calls
from benchmarks.sections import prepared_align_model, training_precision
from benchmarks.workloads import SYNTHETIC_CAPTION, build_benchmark_model, synthetic_images
from evaluation.captioning import generate_captions
from evaluation.markdown_tables import markdown_table
from training import training_step
from training.data import CaptionCollator


RUNS = ("mlp", "mlp_tiles", "mlp_hybrid")
IMAGE_SIDE = 448  # twice the tower's input: 2 x 2 tiles and a thumbnail


def pixel_batch(processor, batch_size: int, side: int, device: torch.device) -> dict[str, Any]:
    """A caption batch of `batch_size` random `side`-pixel images, as `CaptionCollator` builds it from the images."""
    examples = [
        {"image_id": str(i), "caption": SYNTHETIC_CAPTION, "image": image}
        for i, image in enumerate(synthetic_images(batch_size, size=side))
    ]
    batch = CaptionCollator(processor)(examples)
    batch.pop("num_skipped_images")
    return {name: value.to(device) for name, value in batch.items()}


def benchmark_run(run_name: str, small: bool, batch_size: int, captions: int, device: torch.device) -> dict:
    """One run's training step (1 untimed, 2 timed), peak memory and captions/s of `captions` images."""
    side = 64 if small else IMAGE_SIDE
    accelerator = Accelerator(cpu=device.type != "cuda", mixed_precision=training_precision(device))
    model, processor, optimizer, scheduler = prepared_align_model(accelerator, run_name, small, device)
    batch = pixel_batch(processor, batch_size, side, device)

    def step() -> None:
        training_step(model, batch, accelerator, optimizer, scheduler, max_grad_norm=1.0)

    with PeakMemory(device) as memory:
        seconds = time_calls(step, device, warmup=1, repeats=2)
    config = accelerator.unwrap_model(model).config
    row = {
        "run": run_name, "fusion": config.fusion, "max_tiles": config.max_tiles, "batch_size": batch_size,
        "sequence_length": batch["input_ids"].shape[1],
        "image_positions": int((batch["input_ids"] == config.image_token_id).sum()) // batch_size,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "step_s": seconds, "samples_per_s": batch_size / seconds, "peak_memory_mb": memory.peak_mb,
    }  # fmt: skip
    accelerator.free_memory()
    release_memory()
    generator, processor = build_benchmark_model(run_name, small)
    generator.to(device)
    images = synthetic_images(captions, seed=1, size=side)

    def caption() -> None:
        generate_captions(generator, processor, images, batch_size=captions, max_new_tokens=16)

    row["captions_per_s"] = captions / time_calls(caption, device, warmup=1, repeats=1)
    release_memory()
    return row


def format_rows(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        ("run", "fusion", "max tiles", "LLM image positions", "sequence", "trainable parameters", "step s",
         "samples/s", "peak MB", "captions/s"),
        ((r["run"], r["fusion"], r["max_tiles"], r["image_positions"], r["sequence_length"],
          f"{r['trainable_parameters']:,}", f"{r['step_s']:.3f}", f"{r['samples_per_s']:.2f}",
          f"{r['peak_memory_mb']:.0f}", f"{r['captions_per_s']:.2f}") for r in rows),  # fmt: skip
        left_aligned=2,
    )


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="the tiny models: a smoke test, not a timing")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--captions", type=int, default=4)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = [benchmark_run(run, args.small, args.batch_size, args.captions, device) for run in RUNS]
    env = environment(device)
    print(f"{software_line(env)}, {env['date']}")
    print(format_rows(rows))
    return rows


if __name__ == "__main__":
    main()
