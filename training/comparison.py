# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The projector comparison: one training run after the other, and the table that sets them side by side. Two kinds of
run are two runs each, whose row counts both stages' steps and time: `qformer_stage1`, BLIP-2's stage 1 (the Q-Former
pretrained on image-text pairs, in `<run>/stage1`) then the `qformer` run starting from it; and
`<projector>_contrastive`, seed 001's first stage (the vision tower trained contrastively, in `<run>/stage1`) then the
`<projector>` run on that tower. `<projector>_tiles` and `<projector>_hybrid` read the images at a higher resolution,
in tiles ([`TILED_RUNS`]).
"""

import os
from dataclasses import replace

from configuration_vlm import CODEBOOK, PROJECTOR_TYPES, SEQUENCE_FUSIONS
from evaluation.caption_metrics import CIDER_SCALE_NOTE
from evaluation.markdown_tables import format_score, markdown_table

from .arguments import CONTRASTIVE, PAIR_STAGES, QFORMER_STAGE1, VLMTrainingArguments
from .loop import train
from .results import TrainingResults


COMPARISON_COLUMNS = (
    "model", "projector", "fusion", "LLM tokens / image", "visual tokens", "trainable params", "training steps",
    "best CIDEr", "final CIDEr", "final METEOR", "final val loss", "train time (s)", "samples/s",
)  # fmt: skip

QUESTION_COLUMNS = {
    "VQA acc": "VQA/accuracy",
    "VQA counting": "VQA/question_type/counting",
    "VQA spatial": "VQA/question_type/spatial",
    "POPE F1 (adv.)": "POPE/adversarial/f1",
    "POPE yes (adv.)": "POPE/adversarial/yes_ratio",
}
"""The question columns of the table (when the runs answered questions) and the metric each shows."""

CROSS_ATTENTION_SUFFIX, VISUAL_EXPERT_SUFFIX, ADAPTER_SUFFIX = "_xattn", "_expert", "_adapter"
FUSION_SUFFIXES = {CROSS_ATTENTION_SUFFIX: "cross_attention", VISUAL_EXPERT_SUFFIX: "visual_expert",
                   ADAPTER_SUFFIX: "adapter"}  # fmt: skip
RUN_NAMES = (*PROJECTOR_TYPES, *(f"{projector}{suffix}" for suffix in FUSION_SUFFIXES for projector in PROJECTOR_TYPES))
"""
The runs `--compare` knows by name: each projector with early fusion, with cross-attention (`<name>_xattn`), with
CogVLM's visual experts (`<name>_expert`) and with LLaMA-Adapter V2's gated adaption prompts (`<name>_adapter`).
"""
ALL_RUNS = (*PROJECTOR_TYPES, f"perceiver{CROSS_ATTENTION_SUFFIX}")
"""The bridges: the four projectors, and deep fusion through Flamingo's Perceiver at the same visual budget."""
STAGE1_RUN = "qformer_stage1"
"""The `qformer` run after BLIP-2's stage 1 (see the module docstring)."""
CONTRASTIVE_SUFFIX = "_contrastive"
CONTRASTIVE_RUNS = tuple(f"{projector}{CONTRASTIVE_SUFFIX}" for projector in PROJECTOR_TYPES)
"""Each projector's run on a vision tower first trained contrastively (see the module docstring)."""
TILES_SUFFIX, HYBRID_SUFFIX = "_tiles", "_hybrid"
COMPARISON_MAX_TILES = 4
TILED_RUNS = tuple(f"{projector}{suffix}" for suffix in (TILES_SUFFIX, HYBRID_SUFFIX) for projector in PROJECTOR_TYPES)
"""
Each projector with dynamic resolution, up to [`COMPARISON_MAX_TILES`] tiles and a thumbnail per image: every tile in
the sequence (`<projector>_tiles`), or NVLM's hybrid, the thumbnail in the sequence and the tiles through gated
cross-attention (`<projector>_hybrid`).
"""
TOKENIZED_RUN = "tokenized"
"""Tokenized early fusion: a VQ tokenizer's codes through the code embeddings (the tiny model's: `TINY_VQ_CONFIG`)."""
NAMED_RUNS = (*RUN_NAMES, STAGE1_RUN, TOKENIZED_RUN, *CONTRASTIVE_RUNS, *TILED_RUNS)
"""Every run `--compare` knows by name."""
COMPARE_ALL = (*ALL_RUNS, STAGE1_RUN)
"""`--compare all`: every bridge, and the Q-Former with stage 1 beside the one without."""
STAGE1_DIR = "stage1"


def run_settings(name: str) -> dict[str, str]:
    """
    The `projector_type` and `fusion` of the run called `name` (one of [`NAMED_RUNS`]; a tiled run adds its
    `max_tiles`).
    """
    if name == STAGE1_RUN:
        return {"projector_type": "qformer", "fusion": "early"}
    if name == TOKENIZED_RUN:
        return {"projector_type": CODEBOOK, "fusion": "tokenized"}
    if name in CONTRASTIVE_RUNS:
        return {"projector_type": name.removesuffix(CONTRASTIVE_SUFFIX), "fusion": "early"}
    if name in TILED_RUNS:
        projector_type, suffix = name.rsplit("_", 1)
        return {"projector_type": projector_type, "fusion": "early" if suffix == "tiles" else "hybrid",
                "max_tiles": COMPARISON_MAX_TILES}  # fmt: skip
    if name not in RUN_NAMES:
        raise ValueError(f"Unknown run {name!r}; choose one of {', '.join(NAMED_RUNS)}.")
    for suffix, fusion in FUSION_SUFFIXES.items():
        if name.endswith(suffix):
            return {"projector_type": name.removesuffix(suffix), "fusion": fusion}
    return {"projector_type": name, "fusion": "early"}


def named_runs(base: VLMTrainingArguments, name: str) -> list[VLMTrainingArguments]:
    """
    The training runs of the run called `name` with `base`'s settings, in `<base.output_dir>/<name>`: one, or for
    [`STAGE1_RUN`] and [`CONTRASTIVE_RUNS`] the first stage (same data, seed, batch size, learning rate and epochs,
    into `<name>/stage1`) and then the run starting from it.
    """
    output_dir = os.path.join(base.output_dir, name)
    settings = run_settings(name)
    if "max_tiles" in settings:
        settings["model_config"] = {**base.model_config, "max_tiles": settings.pop("max_tiles")}
    run = replace(base, **settings, output_dir=output_dir)
    if name != STAGE1_RUN and name not in CONTRASTIVE_RUNS:
        return [run]
    stage1_dir = os.path.join(output_dir, STAGE1_DIR)
    stage = QFORMER_STAGE1 if name == STAGE1_RUN else CONTRASTIVE
    stage1 = replace(run, stage=stage, output_dir=stage1_dir, metric_for_best_model=None, load_best_model_at_end=False)
    handed_off = {"qformer_init": stage1_dir} if name == STAGE1_RUN else {"vision_init": stage1_dir}
    return [stage1, replace(run, **handed_off)]


def run_comparison(runs: list[VLMTrainingArguments]) -> list[TrainingResults]:
    """
    Trains every run in turn (they share the vision feature cache) and returns their results; the first captioning
    run also evaluates its untrained model, the baseline row of [`projector_comparison_table`].
    """
    first = next((index for index, run in enumerate(runs) if run.stage not in PAIR_STAGES), None)
    return [train(replace(run, eval_before_training=index == first)) for index, run in enumerate(runs)]


def projector_comparison_table(results: list[TrainingResults]) -> str:
    """
    Markdown table of [`run_comparison`] results: the untrained baseline, then one row per captioning run with its
    fusion, its tokens per image (in the language model's sequence, and out of the projector), trainable parameters,
    optimizer steps (a Q-Former stage 1 before it counted in), best and final CIDEr, final METEOR and validation loss,
    the final answers' scores when the runs answered questions (VQA accuracy overall and on counting and spatial
    questions; POPE's F1 and yes-ratio on its adversarial split), training time (stage 1's included) and throughput.
    """
    first = next(result for result in results if result.stage not in PAIR_STAGES)
    untrained = first.history[0]
    questions = {name: key for name, key in QUESTION_COLUMNS.items() if key in first.final_metrics}
    rows = [_row("untrained", first, untrained.get("CIDEr"), untrained, "-", 0.0, "-", questions)]
    stage1 = None
    for result in results:
        if result.stage in PAIR_STAGES:
            stage1 = result
            continue
        best = max((r["CIDEr"] for r in result.history if r["step"] > 0 and "CIDEr" in r), default=None)
        name = os.path.basename(result.output_dir)
        steps = f"{result.stage} {result.global_step}"
        time_s = result.train_time_s
        if stage1 is not None:
            first_stage = "stage 1" if stage1.stage == QFORMER_STAGE1 else stage1.stage
            steps, time_s = f"{first_stage} {stage1.global_step} + {steps}", time_s + stage1.train_time_s
        throughput = f"{result.samples_per_second:.1f}"
        rows.append(_row(name, result, best, result.final_metrics, steps, time_s, throughput, questions))
        stage1 = None
    columns = (*COMPARISON_COLUMNS[:-2], *questions, *COMPARISON_COLUMNS[-2:])
    note = f"{CIDER_SCALE_NOTE} VQA and POPE scores are fractions in [0, 1]." if questions else CIDER_SCALE_NOTE
    return markdown_table(columns, rows, left_aligned=3) + f"\n\n{note}\n"


def _row(
    name: str,
    result: TrainingResults,
    best_cider: float | None,
    metrics: dict[str, float],
    steps: str,
    time_s: float,
    throughput: str,
    questions: dict[str, str],
) -> list[str]:
    per_tile = " per tile" if result.max_tiles > 1 else ""  # each tile's, and the thumbnail's, when tiled
    llm_tokens = f"{result.num_image_tokens}{per_tile if result.fusion in SEQUENCE_FUSIONS else ''}"
    return [
        name, result.projector_type, result.fusion, llm_tokens, f"{result.num_visual_tokens}{per_tile}",
        f"{result.trainable_parameters:,}", steps,
        format_score(best_cider), format_score(metrics.get("CIDEr")), format_score(metrics.get("METEOR")),
        f"{metrics['loss']:.4f}", *(format_score(metrics.get(key)) for key in questions.values()),
        f"{time_s:.0f}", throughput,
    ]  # fmt: skip
