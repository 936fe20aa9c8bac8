# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Performance benchmarks of [`VLMForConditionalGeneration`], built from configs only (random weights, synthetic 224 px
images), so that they run without the Hub:

1. `training`: an `align`-stage training step (projector trainable only, vision features from the cache) per projector
   and batch size, timed through `training.training_step`, the step `train()` runs: samples/s, model TFLOP/s and
   peak memory;
2. `vision`: vision-tower feature extraction (images/s) and, with the feature cache on, the share of a training epoch
   spent on the vision tower;
3. `generation`: batched greedy captioning with the KV cache (`captioning.generate_captions`): captions/s;
   `fusion`: early against cross-attention fusion at the same visual budget (`perceiver` against `perceiver_xattn`,
   64 latents each), from the rows of 1 and 3: the language model's sequence length, samples/s, memory, captions/s;
4. `seed_experiment`: wall time of seed 000's experiment (mlp, qformer and perceiver, `align` stage, evaluation every
   epoch) through `training.run_comparison`, the entry point of `train_accelerate.py --compare`; only with
   `--small` on CPU, at tiny sizes;
5. `karpathy_epoch`: one COCO-Karpathy epoch (566,747 pairs) per projector, extrapolated from the measured step rate;
6. `loss_lever`: the loss on labelled positions only (the model's `labels` path) against full-vocabulary logits;
7. `checkpoints`: size and save time of an `align` checkpoint, accelerate's whole state against the lean one.

Real sizes are SigLIP-base-patch16-224 + Qwen2.5-0.5B-Instruct ([`VLMConfig`] defaults, 151,936-token vocabulary);
`--small` runs the same code on the tiny towers of `tiny_vlm.py`. Text goes through the tiny offline tokenizer at
both sizes. Warm-up steps are never timed. On CUDA, training runs under bf16 autocast and generation in bf16; on
CPU everything runs in fp32.

    PYTHONPATH=. python benchmarks/run_benchmarks.py --small                       # smoke test, seconds, not timed
    PYTHONPATH=. python benchmarks/run_benchmarks.py --batch_sizes 32 128 --output benchmarks.json   # GPU
"""

import argparse
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.measure import environment, publish_report, release_memory
from benchmarks.sections import (
    benchmark_checkpoints,
    benchmark_generation,
    benchmark_loss_lever,
    benchmark_seed_experiment,
    benchmark_training,
    benchmark_vision,
    fusion_comparison,
    karpathy_epoch_extrapolation,
    vision_epoch_share,
)
from benchmarks.workloads import benchmark_settings
from evaluation.markdown_tables import markdown_table
from training.comparison import RUN_NAMES, TOKENIZED_RUN


def run_benchmarks(
    small: bool = False, projectors: Sequence[str] | None = None, batch_sizes: Sequence[int] | None = None
) -> dict[str, Any]:
    """Runs every section and returns the report (see the module docstring)."""
    settings = benchmark_settings(small, projectors, batch_sizes)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    training = benchmark_training(settings, device)
    vision = benchmark_vision(settings, device)
    release_memory()
    generation = benchmark_generation(settings, device)
    report = {
        "settings": vars(settings),
        "training": training,
        "vision": {"extraction": vision, "epoch_share": vision_epoch_share(vision, training)},
        "generation": generation,
        "fusion": fusion_comparison(training, generation),
        "seed_experiment": benchmark_seed_experiment(settings, device),
        "karpathy_epoch": karpathy_epoch_extrapolation(training),
        "loss_lever": benchmark_loss_lever(settings, device),
        "checkpoints": benchmark_checkpoints(settings, device),
    }
    report["environment"] = environment(device)
    return report


def format_report(report: dict[str, Any]) -> str:
    """Markdown tables of a [`run_benchmarks`] report, one per section."""
    env = report["environment"]
    seed = report["seed_experiment"]
    sections = [
        f"{env['hardware']} ({env['device']}), python {env['python']}, torch {env['torch']}, "
        f"transformers {env['transformers']}, {env['date']}, small={report['settings']['small']}",
        "Training step (align):\n" + markdown_table(
            ("projector", "batch", "seq len", "trainable params", "samples/s", "step s", "GFLOP/step", "TFLOP/s",
             "peak MB"),
            ((r["projector"], r["batch_size"], r["sequence_length"], f"{r['trainable_parameters']:,}",
              f"{r['samples_per_s']:.2f}", f"{r['step_s']:.3f}", f"{r['flops_per_step'] / 1e9:.1f}",
              f"{r['tflops_per_s']:.3f}", f"{r['peak_memory_mb']:.0f}") for r in report["training"]),
        ),
        "Vision features:\n" + markdown_table(
            ("batch", "images/s"),
            ((r["batch_size"], f"{r['images_per_s']:.2f}") for r in report["vision"]["extraction"]),
        ),
        "Vision share with the feature cache on (derived from the measured rates):\n" + markdown_table(
            ("projector", "batch", "share of epoch 1", "share of a 10-epoch run"),
            ((r["projector"], r["batch_size"], f"{r['first_epoch_share']:.1%}", f"{r['run_share']:.1%}")
             for r in report["vision"]["epoch_share"]),
        ),
        "Generation:\n" + markdown_table(
            ("projector", "batch", "captions", "max new tokens", "captions/s"),
            ((r["projector"], r["batch_size"], r["num_captions"], r["max_new_tokens"], f"{r['captions_per_s']:.2f}")
             for r in report["generation"]),
        ),
        "Early fusion against the others at the same visual budget (align; largest batch):\n" + markdown_table(
            ("run", "fusion", "batch", "LLM seq len", "trainable params", "samples/s", "peak MB", "captions/s"),
            ((r["run"], r["fusion"], r["batch_size"], r["sequence_length"], f"{r['trainable_parameters']:,}",
              f"{r['samples_per_s']:.2f}", f"{r['peak_memory_mb']:.0f}",
              "-" if r["captions_per_s"] is None else f"{r['captions_per_s']:.2f}") for r in report["fusion"]),
        ),
        "Seed 000 experiment: " + (
            f"{seed['wall_s']:.1f} s wall for {', '.join(seed['projectors'])} x {seed['num_train_epochs']} epochs x "
            f"{seed['max_train_samples']} samples, {seed['max_eval_samples']} eval images per epoch"
            if seed["measured"] else seed["reason"]
        ),
        "COCO-Karpathy epoch (566,747 pairs), extrapolated from the measured step rate:\n" + markdown_table(
            ("projector", "batch", "samples/s (measured)", "epoch (extrapolated)"),
            ((r["projector"], r["batch_size"], f"{r['samples_per_s']:.2f}",
              f"{r['extrapolated_epoch_s'] / 3600:.1f} h") for r in report["karpathy_epoch"]),
        ),
        "Loss on labelled positions only vs full-vocabulary logits (forward + backward):\n" + markdown_table(
            ("variant", "vocab", "batch", "seq len", "s", "peak MB", "increase MB", "loss"),
            ((r["variant"], f"{r['vocab_size']:,}", r["batch_size"], r["sequence_length"], f"{r['step_s']:.3f}",
              f"{r['peak_memory_mb']:.0f}", f"{r['memory_increase_mb']:.0f}", f"{r['loss']:.4f}")
             for r in report["loss_lever"]),
        ),
        "Checkpoint of an align run (mlp, after one step):\n" + markdown_table(
            ("checkpoint", "total MB", "weights MB", "save s"),
            ((r["checkpoint"], f"{r['total_mb']:.1f}", f"{r['weights_mb']:.1f}", f"{r['save_s']:.2f}")
             for r in report["checkpoints"]),
        ),
    ]  # fmt: skip
    return "\n\n".join(sections) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: runs the benchmarks, prints the tables and writes the JSON report to `--output`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny sizes: a smoke test on CPU, not a timing")
    parser.add_argument(
        "--projectors",
        nargs="+",
        choices=(*RUN_NAMES, TOKENIZED_RUN),
        help="runs: projector types, <projector>_xattn for "
        "cross-attention fusion, <projector>_expert for visual experts, <projector>_adapter for LLaMA-Adapter's "
        "gated prompts, tokenized for Chameleon's VQ tokenizer; default: the four projectors and "
        "perceiver_xattn"
    )
    parser.add_argument("--batch_sizes", nargs="+", type=int, help="training and vision batch sizes")
    parser.add_argument("--output", help="JSON file for the report")
    args = parser.parse_args(argv)
    report = run_benchmarks(args.small, args.projectors, args.batch_sizes)
    publish_report(format_report(report), report, args.output)
    return report


if __name__ == "__main__":
    main()
