# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The cost of BLIP-2's stage 1: one training step of the Q-Former (`training.training_step` on a
`QFormerForPretraining`, vision features from the cache as in `train()`), with all three objectives and with each
one alone. Real size is the `configs/qformer_stage1.yaml` model from configs only (random weights): a bert-base
shaped Q-Former (12 layers of width 768, 32 queries, BERT's 30,522-token vocabulary plus `[DEC]`) reading
SigLIP-base's 196 x 768 patch tokens, captions of 32 tokens; `--small` has the demo's tiny tower and Q-Former
shape (with the same vocabulary).

    PYTHONPATH=. python benchmarks/stage1_step.py --batch_size 8          # real size
    PYTHONPATH=. python benchmarks/stage1_step.py --small                 # seconds, a smoke test
"""

import argparse
from collections.abc import Sequence
from typing import Any

import torch
from accelerate import Accelerator
from transformers import Blip2QFormerConfig

from benchmarks.measure import PeakMemory, environment, time_calls
from benchmarks.sections import training_precision
from configuration_vlm import DEFAULT_VISION_CONFIG
from evaluation.markdown_tables import markdown_table
from models.tiny import TINY_BERT_CONFIG, TINY_VISION_CONFIG
from qformer_pretraining import QFormerForPretraining, QFormerPretrainingConfig
from training import training_step
from training.model_setup import build_optimizer


BERT_BASE_VOCABULARY = 30522
VARIANTS = {"itc + itm + itg": (1.0, 1.0, 1.0), "itc": (1.0, 0.0, 0.0), "itm": (0.0, 1.0, 0.0), "itg": (0.0, 0.0, 1.0)}


def stage1_model(small: bool, weights: tuple[float, float, float]) -> QFormerForPretraining:
    """A stage-1 model of the demo's tiny size or of `configs/qformer_stage1.yaml`'s, with the objectives' weights."""
    vision = TINY_VISION_CONFIG if small else DEFAULT_VISION_CONFIG
    shape = TINY_BERT_CONFIG if small else {}  # Blip2QFormerConfig's defaults are bert-base's shape
    qformer = Blip2QFormerConfig(**shape, vocab_size=BERT_BASE_VOCABULARY + 1, use_qformer_text_input=True)
    config = QFormerPretrainingConfig(
        vision_config=vision, qformer_config=qformer, num_query_tokens=8 if small else 32,
        decoder_token_id=BERT_BASE_VOCABULARY, itc_weight=weights[0], itm_weight=weights[1], itg_weight=weights[2],
    )  # fmt: skip
    model = QFormerForPretraining(config)
    model.vision_tower.requires_grad_(False)
    return model


def stage1_batch(model: QFormerForPretraining, batch_size: int, text_length: int, device: torch.device) -> dict:
    """Cached-feature pairs: random patch tokens, and `[CLS] + random word pieces + [SEP]` captions."""
    generator = torch.Generator().manual_seed(0)
    config = model.config
    input_ids = torch.randint(1000, BERT_BASE_VOCABULARY, (batch_size, text_length), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = 101, 102
    features = torch.randn(batch_size, config.num_patches, config.vision_config.hidden_size, generator=generator)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "vision_features": features.to(device),
    }


def benchmark_stage1(small: bool, batch_size: int, text_length: int = 32, timed_steps: int = 3) -> list[dict]:
    """One row per variant: samples/s, seconds per step and peak memory, after an untimed warm-up step."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name, weights in VARIANTS.items():
        accelerator = Accelerator(cpu=device.type != "cuda", mixed_precision=training_precision(device))
        model = stage1_model(small, weights).to(device).train()
        optimizer = build_optimizer(model, 1e-4)
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        batch = stage1_batch(accelerator.unwrap_model(model), batch_size, text_length, device)

        def step() -> None:
            training_step(model, batch, accelerator, optimizer, scheduler, max_grad_norm=1.0)

        with PeakMemory(device) as memory:
            seconds = time_calls(step, device, 1, timed_steps)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append(
            {"objectives": name, "batch_size": batch_size, "text_length": text_length,
             "trainable_parameters": trainable, "step_s": seconds, "samples_per_s": batch_size / seconds,
             "peak_memory_mb": memory.peak_mb}
        )  # fmt: skip
    return rows


def format_rows(rows: list[dict[str, Any]], device: torch.device) -> str:
    env = environment(device)
    header = (
        f"{env['hardware']} ({env['device']}), python {env['python']}, torch {env['torch']}, "
        f"transformers {env['transformers']}, {env['date']}"
    )
    table = markdown_table(
        ("objectives", "batch", "text tokens", "trainable params", "samples/s", "step s", "peak MB"),
        ((r["objectives"], r["batch_size"], r["text_length"], f"{r['trainable_parameters']:,}",
          f"{r['samples_per_s']:.2f}", f"{r['step_s']:.3f}", f"{r['peak_memory_mb']:.0f}") for r in rows),
    )  # fmt: skip
    return f"{header}\n\n{table}\n"


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="the demo's tiny size: a smoke test, not a timing")
    parser.add_argument("--batch_size", type=int, default=8, help="image-text pairs per step")
    args = parser.parse_args(argv)
    rows = benchmark_stage1(args.small, args.batch_size, timed_steps=1 if args.small else 3)
    print(format_rows(rows, torch.device("cuda" if torch.cuda.is_available() else "cpu")))
    return rows


if __name__ == "__main__":
    main()
