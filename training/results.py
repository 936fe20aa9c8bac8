# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
[`TrainingResults`]: what a finished run reports, saved as `training_results.json` in its output directory, and the
lines a run prints when it starts and when it is done.
"""

import json
import os
from dataclasses import asdict, dataclass

from accelerate import Accelerator

from modeling_vlm import VLMForConditionalGeneration
from qformer_pretraining import QFormerForPretraining, QFormerPretrainingConfig

from .checkpointing import TrainerState
from .data import RunData
from .feature_cache import VisionFeatures
from .model_setup import TrainingSchedule
from .telemetry import hardware_description
from .text_feature_cache import TextFeatures


RESULTS_NAME = "training_results.json"


@dataclass
class TrainingResults:
    """
    The outcome of [`~training.loop.train`]: what was trained, the final and best metrics, the evaluation history
    (one record per evaluation: `epoch`, `step`, `loss` and the caption metrics), counts, times and throughput.
    """

    output_dir: str
    projector_type: str
    stage: str
    num_image_tokens: int  # language-model positions per image
    trainable_parameters: int
    total_parameters: int
    num_train_images: int
    num_eval_images: int
    skipped_train_images: int
    skipped_eval_images: int
    feature_cache: dict[str, str | None]  # per split: "hit", "computed", or None when the features are not cached
    global_step: int
    final_metrics: dict[str, float]
    best_metric: float | None
    best_step: int | None
    history: list[dict]
    train_time_s: float
    wall_time_s: float
    samples_per_second: float
    hardware: str
    num_processes: int
    mixed_precision: str
    sample_captions: list[tuple[str, str, str]]  # (image id, a reference, generated caption)
    fusion: str = "early"
    num_visual_tokens: int | None = None  # projector tokens per image (the keys and values with cross-attention)
    cross_attention_layers: list[int] | None = None  # decoder layers with a gated cross-attention block before them
    max_tiles: int = 1  # dynamic resolution: tiles per image at most (a thumbnail besides when more than one)
    visual_expert_layers: list[int] | None = None  # decoder layers with visual experts (fusion "visual_expert")
    adapter_layers: list[int] | None = None  # decoder layers with adaption prompts (fusion "adapter")
    num_train_conversations: int = 0
    saved_step: int | None = None  # the step of the complete model saved in output_dir (None: the last one)
    distributed_type: str = "NO"  # how the processes shared the work: accelerate's "MULTI_GPU" (DDP), "FSDP", ...

    def save(self, output_dir: str) -> str:
        """Writes `training_results.json` into `output_dir`; returns its path."""
        path = os.path.join(output_dir, RESULTS_NAME)
        with open(path, "w", encoding="utf-8") as file:
            json.dump(asdict(self), file, indent=2)
        return path


def feature_cache_status(features: dict[str, VisionFeatures | TextFeatures | None]) -> dict[str, str | None]:
    """
    Per split (and for a locked text encoder's features, `"train texts"`), where its features came from: `"hit"` (the
    cache), `"computed"`, or `None` (not cached).
    """
    return {name: None if f is None else ("hit" if f.cache_hit else "computed") for name, f in features.items()}


def collect_results(
    accelerator: Accelerator,
    vlm: VLMForConditionalGeneration | QFormerForPretraining,
    output_dir: str,
    stage: str,
    data: RunData,
    state: TrainerState,
    parameter_counts: tuple[int, int],
    sample_captions: list[tuple[str, str]],
    wall_time_s: float,
    saved_step: int | None = None,
) -> TrainingResults:
    """
    The [`TrainingResults`] of a finished run, with `(image id, caption)` samples and the step of the saved model
    (`None`: the last one).
    """
    references = data.eval_set.references
    final_metrics = state.history[-1] if state.history else {}
    return TrainingResults(
        output_dir=output_dir,
        stage=stage,
        trainable_parameters=parameter_counts[0],
        total_parameters=parameter_counts[1],
        num_train_images=len(data.train_examples) - data.num_conversations,
        num_train_conversations=data.num_conversations,
        num_eval_images=len(references),
        skipped_train_images=state.skipped_train_images,
        skipped_eval_images=data.eval_set.num_skipped_images,
        feature_cache=feature_cache_status(data.features),
        global_step=state.global_step,
        final_metrics={k: v for k, v in final_metrics.items() if k not in ("epoch", "step")},
        best_metric=state.best_metric,
        best_step=state.best_step,
        history=state.history,
        train_time_s=state.train_time_s,
        wall_time_s=wall_time_s,
        samples_per_second=state.samples_seen / max(state.train_time_s, 1e-9),
        hardware=hardware_description(accelerator.device, accelerator.num_processes),
        num_processes=accelerator.num_processes,
        distributed_type=accelerator.distributed_type.value,
        mixed_precision=str(accelerator.mixed_precision),
        sample_captions=[(image_id, references[image_id][0], caption) for image_id, caption in sample_captions],
        saved_step=saved_step,
        **bridge_fields(vlm),
    )


def bridge_fields(model: VLMForConditionalGeneration | QFormerForPretraining) -> dict:
    """
    The [`TrainingResults`] fields that say how the image reaches the language model. A stage-1 Q-Former reaches none
    yet: fusion `"none"`, its queries as the tokens.
    """
    config = model.config
    if getattr(config, "contrastive_loss", None) is not None:  # a contrastive dual encoder: one pooled embedding
        return {"projector_type": "none", "num_image_tokens": 0, "fusion": "none", "num_visual_tokens": 1,
                "cross_attention_layers": None}  # fmt: skip
    if isinstance(config, QFormerPretrainingConfig):
        queries = config.num_query_tokens
        return {"projector_type": "qformer", "num_image_tokens": queries, "fusion": "none",
                "num_visual_tokens": queries, "cross_attention_layers": None}  # fmt: skip
    return {
        "projector_type": config.projector_type,
        "num_image_tokens": config.num_image_tokens,
        "fusion": config.fusion,
        "num_visual_tokens": config.num_visual_tokens,
        "cross_attention_layers": config.cross_attention_layer_indices,
        "max_tiles": config.max_tiles,
        "visual_expert_layers": config.visual_expert_layer_indices,
        "adapter_layers": config.adapter_layer_indices,
    }


def bridge_description(model: VLMForConditionalGeneration | QFormerForPretraining) -> str:
    """How the image reaches the language model: `mlp projector`, `perceiver projector + gated cross-attention before
    decoder layers 3, 7, ...`, or for stage 1 `qformer stage 1 (itc + itm + itg)`."""
    fields = bridge_fields(model)
    if fields["projector_type"] == "none":
        return f"contrastive dual encoder ({model.config.contrastive_loss} loss)"
    if fields["fusion"] == "none":
        return f"qformer stage 1 ({' + '.join(model.config.active_objectives)})"
    if fields["fusion"] == "early":
        return f"{fields['projector_type']} projector"
    if fields["fusion"] == "visual_expert":
        layers = ", ".join(map(str, fields["visual_expert_layers"]))
        return f"{fields['projector_type']} projector + visual experts in decoder layers {layers}"
    if fields["fusion"] == "tokenized":
        return f"VQ tokenizer codes + code embeddings ({fields['num_visual_tokens']} tokens per image)"
    if fields["fusion"] == "adapter":
        layers = ", ".join(map(str, fields["adapter_layers"]))
        return f"{fields['projector_type']} projector + gated adaption prompts in decoder layers {layers}"
    layers = ", ".join(map(str, fields["cross_attention_layers"] or []))
    hybrid = "the whole image in the sequence, its tiles through " if fields["fusion"] == "hybrid" else ""
    return f"{fields['projector_type']} projector + {hybrid}gated cross-attention before decoder layers {layers}"


def run_summary(
    bridge: str,
    stage: str,
    data: RunData,
    schedule: TrainingSchedule,
    parameter_counts: tuple[int, int],
    samples_per_step: int,
) -> str:
    """The line a run prints before it starts: model, data, steps and where the vision features come from."""
    status = feature_cache_status(data.features)
    words = {"hit": "cache hit", "computed": "computed and cached"}
    cache = ", ".join(f"{name} {words[how]}" for name, how in status.items() if how is not None)
    conversations = ""
    if data.num_conversations:
        conversations = f" + {data.num_conversations} conversations"
        if data.refused_conversations:
            conversations += f" ({len(data.refused_conversations)} left out; first: {data.refused_conversations[0]})"
    num_images = len(data.train_examples) - data.num_conversations
    return (
        f"{bridge}, stage {stage}: {parameter_counts[0]:,} trainable / {parameter_counts[1]:,} "
        f"parameters; {num_images} train{conversations} / {len(data.eval_set.references)} eval images; "
        f"{schedule.total_steps} steps of {samples_per_step} samples; vision features: "
        f"{cache or 'not cached (vision tower trains, tiled images or cache off)'}; unreadable eval images skipped: "
        f"{data.eval_set.num_skipped_images}."
    )


def headline_metrics(metrics: dict[str, float]) -> str:
    """
    `metrics` as a run prints them: the loss and caption metrics, VQA's overall accuracy and POPE's F1 per split
    (the per-type and other POPE scores are logged and saved, not printed).
    """
    shown = {k: v for k, v in metrics.items() if k.count("/") <= 1 or (k.startswith("POPE/") and k.endswith("/f1"))}
    return ", ".join(f"{name} {value:.4f}" for name, value in shown.items())


def results_summary(results: TrainingResults) -> str:
    """The line a run prints when it is done."""
    return (
        f"done in {results.wall_time_s:.0f} s: final "
        + headline_metrics(results.final_metrics)
        + f"; skipped unreadable images: {results.skipped_train_images} train examples, "
        f"{results.skipped_eval_images} eval"
    )
