# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Our `mlp` VLM against the model a user would otherwise pick, transformers' `LlavaForConditionalGeneration`, built
with the same SigLIP and Qwen2 configs and the same weights (tower, projector and language model copied;
`vision_feature_layer=-2` on both, so that the projector reads the same tensor; Llava's
`vision_feature_select_strategy="full"`, SigLIP having no class token), side by side in one process:

1. equality first: the loss of a labelled batch, and the greedy tokens of a batch of prompts;
2. then A/B timing, interleaved (ours, Llava, ours, Llava, ...), of the `align` training step (`training.training_step`
   on each: forward with labels, backward, clipping, AdamW over the projector; pixels in, the tower frozen, both
   running it) and of greedy generation with the KV cache. Reported: each one's median seconds, and the median of the
   per-round ratios Llava / ours with their min-max.

Real size has SigLIP-base + Qwen2.5-0.5B widths and the full 151,936-token vocabulary; `--text_layers` /
`--vision_layers` reduce the depth (4 each by default, what 2 CPU cores can hold; 0 keeps the full depth). Text goes
through the tiny offline tokenizer; images are random 224 px pixels. `--small` runs the tiny models of the demo.

    PYTHONPATH=. python benchmarks/llava_peer.py                                   # CPU: 4 + 4 layers, batch 8
    PYTHONPATH=. python benchmarks/llava_peer.py --text_layers 0 --vision_layers 0 --batch_size 32   # GPU
    PYTHONPATH=. python benchmarks/llava_peer.py --small                           # seconds, a smoke test
"""

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from accelerate import Accelerator
from transformers import LlavaConfig, LlavaForConditionalGeneration

from benchmarks.measure import environment, software_line, synchronize
from benchmarks.workloads import build_benchmark_model, synthetic_images
from configuration_vlm import DEFAULT_TEXT_CONFIG, DEFAULT_VISION_CONFIG
from evaluation.captioning import caption_prompt
from evaluation.markdown_tables import markdown_table
from modeling_vlm import VLMForConditionalGeneration
from models.tiny import build_tiny_vlm
from processing_vlm import VLMProcessor
from training import training_step
from training.data import CaptionCollator
from training.model_setup import build_optimizer


CAPTION = "A man riding a wave on top of a surfboard in the ocean, with a second surfer paddling out behind him."


def build_pair(
    small: bool, text_layers: int = 4, vision_layers: int = 4
) -> tuple[VLMForConditionalGeneration, LlavaForConditionalGeneration, VLMProcessor]:
    """Our `mlp` model (vision feature layer -2) and a Llava holding the same weights, with the processor of both."""
    if small:
        ours, processor = build_tiny_vlm("mlp", vision_feature_layer=-2)
    else:
        depth = {
            "vision_config": {
                **DEFAULT_VISION_CONFIG,
                **({"num_hidden_layers": vision_layers} if vision_layers else {}),
            },
            "text_config": {**DEFAULT_TEXT_CONFIG, **({"num_hidden_layers": text_layers} if text_layers else {})},
        }
        ours, processor = build_benchmark_model("mlp", False, vision_feature_layer=-2, **depth)
    config = ours.config
    llava_config = LlavaConfig(
        vision_config=config.vision_config.to_dict(),
        text_config=config.text_config.to_dict(),
        image_token_index=config.image_token_id,
        image_seq_length=config.num_image_tokens,
        projector_hidden_act=config.projector_hidden_act,
        vision_feature_layer=-2,
        vision_feature_select_strategy="full",
        tie_word_embeddings=config.text_config.tie_word_embeddings,
    )
    llava = LlavaForConditionalGeneration(llava_config)
    llava.load_state_dict(llava_state_dict(ours.state_dict()), strict=True)
    llava.generation_config = ours.generation_config
    return ours.eval(), llava.eval(), processor


def llava_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our parameter names -> Llava's (transformers 5.x: the tower, projector and decoder under `model.`)."""
    renamed = {}
    for name, tensor in state.items():
        if name.startswith(("vision_tower.", "multi_modal_projector.")):
            renamed[f"model.{name}"] = tensor
        elif name.startswith("language_model.model."):
            renamed[f"model.language_model.{name.removeprefix('language_model.model.')}"] = tensor
        elif name == "language_model.lm_head.weight":
            renamed["lm_head.weight"] = tensor
    return renamed


def labelled_batch(processor: VLMProcessor, batch_size: int) -> dict[str, torch.Tensor]:
    """`batch_size` pixel images with one caption each, as `CaptionCollator` makes them (labels on the caption)."""
    examples = [{"image": image, "caption": CAPTION} for image in synthetic_images(batch_size)]
    batch = CaptionCollator(processor)(examples)
    batch.pop("num_skipped_images")
    return batch


def prompt_batch(processor: VLMProcessor, batch_size: int) -> dict[str, torch.Tensor]:
    """`batch_size` images with the captioning prompt, ready for `generate`."""
    prompt = caption_prompt(processor)
    return processor(images=synthetic_images(batch_size, seed=1), text=[prompt] * batch_size, return_tensors="pt")


def align_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """One `align` training step of `model` (projector trainable, AdamW), as `train()` runs it."""
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model.requires_grad_(False)
    projector = (
        model.multi_modal_projector if hasattr(model, "multi_modal_projector") else model.model.multi_modal_projector
    )
    projector.requires_grad_(True)
    optimizer = build_optimizer(model, 1e-4)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    prepared, optimizer, scheduler = accelerator.prepare(model.train(), optimizer, scheduler)
    batch = {name: value.to(accelerator.device) for name, value in batch.items()}
    return lambda: training_step(prepared, batch, accelerator, optimizer, scheduler, max_grad_norm=1.0)


def interleaved(ours: Callable[[], Any], theirs: Callable[[], Any], rounds: int, device: torch.device) -> dict:
    """Times `ours` and `theirs` alternately (after one untimed call of each): medians and Llava / ours ratios."""
    ours(), theirs()
    seconds = {"ours": [], "llava": []}
    for _ in range(rounds):
        for name, fn in (("ours", ours), ("llava", theirs)):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    ratios = [llava / ours for ours, llava in zip(seconds["ours"], seconds["llava"])]
    return {
        "ours_s": statistics.median(seconds["ours"]),
        "llava_s": statistics.median(seconds["llava"]),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def compare(small: bool, text_layers: int, vision_layers: int, batch_size: int, new_tokens: int, rounds: int) -> dict:
    """Equality, then the interleaved timings (see the module docstring)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ours, llava, processor = build_pair(small, text_layers, vision_layers)
    ours.to(device), llava.to(device)
    batch = {name: value.to(device) for name, value in labelled_batch(processor, batch_size).items()}
    prompts = {name: value.to(device) for name, value in prompt_batch(processor, batch_size).items()}
    greedy = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    with torch.no_grad():
        losses = (ours(**batch).loss.item(), llava(**batch).loss.item())
        tokens = (ours.generate(**prompts, **greedy), llava.generate(**prompts, **greedy))
    generation = interleaved(
        lambda: ours.generate(**prompts, **greedy), lambda: llava.generate(**prompts, **greedy), rounds, device
    )
    training = interleaved(align_step(ours, batch), align_step(llava, batch), rounds, device)
    return {
        "settings": {"small": small, "text_layers": text_layers, "vision_layers": vision_layers,
                     "batch_size": batch_size, "sequence_length": batch["input_ids"].shape[1],
                     "new_tokens": new_tokens, "rounds": rounds,
                     "vocab_size": ours.config.text_config.vocab_size},
        "loss": {"ours": losses[0], "llava": losses[1]},
        "same_tokens": torch.equal(tokens[0], tokens[1]),
        "training": training,
        "generation": generation,
        "environment": environment(device),
    }  # fmt: skip


def format_report(report: dict) -> str:
    env, settings = report["environment"], report["settings"]
    header = (
        f"{software_line(env)}, {env['date']}; batch {settings['batch_size']}, sequence "
        f"{settings['sequence_length']} tokens, vocabulary "
        f"{settings['vocab_size']:,}, {settings['rounds']} interleaved rounds; loss ours "
        f"{report['loss']['ours']:.6f} / Llava {report['loss']['llava']:.6f}; greedy tokens identical: "
        f"{report['same_tokens']}"
    )
    rows = [
        (name, f"{r['ours_s']:.3f}", f"{r['llava_s']:.3f}", f"{r['ratio_median']:.2f}x",
         f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}x")
        for name, r in (("align training step", report["training"]),
                        (f"greedy generation, {settings['new_tokens']} tokens", report["generation"]))
    ]  # fmt: skip
    table = markdown_table(("workload", "ours s", "Llava s", "Llava / ours (median)", "min-max"), rows)
    return f"{header}\n\n{table}\n"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="the demo's tiny models: a smoke test, not a timing")
    parser.add_argument("--text_layers", type=int, default=4, help="language-model layers (0: all 24)")
    parser.add_argument("--vision_layers", type=int, default=4, help="vision-tower layers (0: all 12)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=16, help="greedy tokens generated per image")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved A/B rounds")
    args = parser.parse_args(argv)
    report = compare(args.small, args.text_layers, args.vision_layers, args.batch_size, args.new_tokens, args.rounds)
    print(format_report(report))
    return report


if __name__ == "__main__":
    main()
