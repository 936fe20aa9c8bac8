# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The cost of seed 001's first stage: one training step of the contrastive dual encoder (`training.training_step` on a
`ContrastiveDualEncoder`, AdamW) in pairs/s: with each loss, both towers training on pixels and tokens; and with LiT's
locked sides, which read the cached pooled features of the side they lock (`lock_image`, `lock_text`). Real size is
`configs/contrastive_siglip.yaml`'s model from configs only (random weights): SigLIP-base (12 layers of width 768,
224 px, 196 patches) and a bert-base-shaped text encoder (12 layers of width 768, BERT's 30,522-token vocabulary),
projected to 256, captions of 32 tokens; `--small` has the demo's tiny tower and BERT.

    PYTHONPATH=. python benchmarks/contrastive_step.py --batch_size 16    # real size
    PYTHONPATH=. python benchmarks/contrastive_step.py --small            # seconds, a smoke test
"""

import argparse
from collections.abc import Sequence
from typing import Any

import torch
from accelerate import Accelerator
from transformers import AutoConfig, AutoModel, BertConfig

from benchmarks.measure import PeakMemory, environment, software_line, time_calls
from benchmarks.sections import training_precision
from configuration_vlm import DEFAULT_VISION_CONFIG
from contrastive_pretraining import ContrastiveDualEncoder, build_dual_encoder
from evaluation.markdown_tables import markdown_table
from models.tiny import TINY_BERT_CONFIG, TINY_VISION_CONFIG
from training import training_step
from training.model_setup import build_optimizer


BERT_BASE_VOCABULARY = 30522


def dual_encoder(small: bool, loss: str) -> ContrastiveDualEncoder:
    """The dual encoder of the demo's tiny size or of `configs/contrastive_siglip.yaml`'s, with `loss`."""
    vision = dict(TINY_VISION_CONFIG if small else DEFAULT_VISION_CONFIG)
    vision_tower = AutoModel.from_config(AutoConfig.for_model(vision.pop("model_type"), **vision))
    text = BertConfig(**(TINY_BERT_CONFIG if small else {}), vocab_size=BERT_BASE_VOCABULARY)
    torch.manual_seed(0)
    return build_dual_encoder(vision_tower, AutoModel.from_config(text), loss, projection_dim=256)


def contrastive_batch(model: ContrastiveDualEncoder, batch_size: int, text_length: int, device: torch.device) -> dict:
    """Random pixels and caption ids of `batch_size` pairs, on `device`."""
    size = model.vision_model.config.image_size
    generator = torch.Generator().manual_seed(0)
    return {
        "pixel_values": torch.randn(batch_size, 3, size, size, generator=generator).to(device),
        "input_ids": torch.randint(1000, BERT_BASE_VOCABULARY, (batch_size, text_length), generator=generator).to(
            device
        ),
        "attention_mask": torch.ones(batch_size, text_length, dtype=torch.long, device=device),
    }


# What trains, in LiT's terms, and what a step reads: both towers on pixels and tokens; a locked tower's cached pooled
# features (`lock_image`); a locked text encoder's cached pooled features (`lock_text`, the tokens still batched).
SIDES = ("both trained", "lock_image", "lock_text")


def lock_side(model: ContrastiveDualEncoder, batch: dict, sides: str) -> dict:
    """Freezes the side `sides` locks, and swaps its inputs in `batch` for the pooled features its cache gives."""
    generator = torch.Generator().manual_seed(1)
    if sides == "lock_image":
        model.vision_model.requires_grad_(False)
        features = torch.randn(len(batch["input_ids"]), model.config.vision_config.hidden_size, generator=generator)
        batch = {**{k: v for k, v in batch.items() if k != "pixel_values"}, "vision_features": features}
    elif sides == "lock_text":
        model.text_model.requires_grad_(False)
        features = torch.randn(len(batch["input_ids"]), model.config.text_config.hidden_size, generator=generator)
        batch = {**batch, "text_features": features}
    return {name: tensor.to(batch["input_ids"].device) for name, tensor in batch.items()}


def benchmark_contrastive(small: bool, batch_size: int, text_length: int = 32, timed_steps: int = 3) -> list[dict]:
    """Seconds per step and pairs/s of each loss with both towers training, and of LiT's locked sides (sigmoid loss)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for loss, sides in [("clip", SIDES[0]), ("sigmoid", SIDES[0]), ("sigmoid", SIDES[1]), ("sigmoid", SIDES[2])]:
        model = dual_encoder(small, loss).to(device).train()
        batch = lock_side(model, contrastive_batch(model, batch_size, text_length, device), sides)
        model.train()  # a locked side in eval mode, as in a run
        accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=training_precision(device))
        optimizer = build_optimizer(model, learning_rate=1e-5)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        prepared, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

        def step() -> None:
            training_step(prepared, batch, accelerator, optimizer, scheduler, max_grad_norm=1.0)

        with PeakMemory(device) as memory:
            seconds = time_calls(step, device, warmup=1, repeats=timed_steps)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append({"loss": loss, "sides": sides, "batch_size": batch_size, "trainable": trainable, "step_s": seconds,
                     "pairs_per_s": batch_size / seconds, "peak_mb": memory.peak_mb})  # fmt: skip
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        ("loss", "sides", "batch", "trainable parameters", "step s", "pairs/s", "peak MB"),
        ((r["loss"], r["sides"], r["batch_size"], f"{r['trainable']:,}", f"{r['step_s']:.3f}",
          f"{r['pairs_per_s']:.1f}", f"{r['peak_mb']:.0f}") for r in rows),  # fmt: skip
        left_aligned=2,
    )


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="the demo's tiny towers: a smoke test, not a timing")
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args(argv)
    rows = benchmark_contrastive(args.small, args.batch_size)
    env = environment(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"{software_line(env)}, {env['date']}")
    print(format_rows(rows))
    return rows


if __name__ == "__main__":
    main()
