# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""The projector comparison: one training run after the other, and the table that sets them side by side."""

import os
from dataclasses import replace

from caption_metrics import CIDER_SCALE_NOTE
from configuration_vlm import PROJECTOR_TYPES
from markdown_tables import format_score, markdown_table

from .arguments import VLMTrainingArguments
from .loop import train
from .results import TrainingResults


COMPARISON_COLUMNS = (
    "model", "projector", "fusion", "LLM tokens / image", "visual tokens", "trainable params", "best CIDEr",
    "final CIDEr", "final METEOR", "final val loss", "train time (s)", "samples/s",
)  # fmt: skip

CROSS_ATTENTION_SUFFIX = "_xattn"
RUN_NAMES = (*PROJECTOR_TYPES, *(f"{projector}{CROSS_ATTENTION_SUFFIX}" for projector in PROJECTOR_TYPES))
"""The runs `--compare` knows by name: each projector with early fusion, and with cross-attention (`<name>_xattn`)."""
ALL_RUNS = (*PROJECTOR_TYPES, f"perceiver{CROSS_ATTENTION_SUFFIX}")
"""`--compare all`: the four projectors, and deep fusion through Flamingo's Perceiver at the same visual budget."""


def run_settings(name: str) -> dict[str, str]:
    """The `projector_type` and `fusion` of the run called `name` (one of [`RUN_NAMES`])."""
    if name not in RUN_NAMES:
        raise ValueError(f"Unknown run {name!r}; choose one of {', '.join(RUN_NAMES)}.")
    projector_type = name.removesuffix(CROSS_ATTENTION_SUFFIX)
    return {"projector_type": projector_type, "fusion": "early" if name == projector_type else "cross_attention"}


def run_comparison(runs: list[VLMTrainingArguments]) -> list[TrainingResults]:
    """
    Trains every run in turn (they share the vision feature cache) and returns their results; the first one also
    evaluates its untrained model, the baseline row of [`projector_comparison_table`].
    """
    return [train(replace(run, eval_before_training=index == 0)) for index, run in enumerate(runs)]


def projector_comparison_table(results: list[TrainingResults]) -> str:
    """
    Markdown table of [`run_comparison`] results: the untrained baseline, then one row per run with its fusion, its
    tokens per image (in the language model's sequence, and out of the projector), trainable parameters, best and
    final CIDEr, final METEOR and validation loss, training time and throughput.
    """
    first = results[0]
    untrained = first.history[0]
    rows = [_row("untrained", first, untrained.get("CIDEr"), untrained, 0.0, "-")]
    for result in results:
        best = max((r["CIDEr"] for r in result.history if r["step"] > 0 and "CIDEr" in r), default=None)
        name = os.path.basename(result.output_dir)
        throughput = f"{result.samples_per_second:.1f}"
        rows.append(_row(name, result, best, result.final_metrics, result.train_time_s, throughput))
    return markdown_table(COMPARISON_COLUMNS, rows, left_aligned=3) + f"\n\n{CIDER_SCALE_NOTE}\n"


def _row(
    name: str,
    result: TrainingResults,
    best_cider: float | None,
    metrics: dict[str, float],
    time_s: float,
    throughput: str,
) -> list[str]:
    return [
        name, result.projector_type, result.fusion, str(result.num_image_tokens), str(result.num_visual_tokens),
        f"{result.trainable_parameters:,}",
        format_score(best_cider), format_score(metrics.get("CIDEr")), format_score(metrics.get("METEOR")),
        f"{metrics['loss']:.4f}", f"{time_s:.0f}", throughput,
    ]  # fmt: skip
