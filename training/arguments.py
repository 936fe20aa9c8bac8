# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
[`VLMTrainingArguments`]: every setting of a training run. The keys of a YAML config file are its field names
([`load_yaml_config`]); `train_accelerate.py` applies command-line flags over them.
"""

import os
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from captioning import CAPTION_PROMPT
from configuration_vlm import PROJECTOR_TYPES


FREEZE_STAGES = ("align", "finetune", "lora")
LORA_TARGET_MODULES = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class VLMTrainingArguments:
    """Settings of one training run. The keys of a YAML config file are these field names."""

    # Model source: exactly one of `model: tiny`, `vision_model` + `text_model`, or `model_name_or_path`.
    model: str | None = field(
        default=None, metadata={"help": '"tiny": random tiny towers built offline (tiny_vlm.py).'}
    )
    vision_model: str | None = field(default=None, metadata={"help": "Vision tower: Hub id or directory (SigLIP)."})
    text_model: str | None = field(default=None, metadata={"help": "Language model: Hub id or directory (Qwen2.5)."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "A saved VLM to continue training."})
    projector_type: str = field(default="mlp", metadata={"help": f"One of {', '.join(PROJECTOR_TYPES)}."})
    vision_feature_layer: int | None = field(default=None, metadata={"help": "Vision layer the projector reads."})

    # Which weights train.
    stage: str = field(
        default="align",
        metadata={"help": "align: projector only; finetune: projector + LLM; lora: projector + LoRA on the LLM."},
    )
    unfreeze_vision: bool = field(default=False, metadata={"help": "Also train the vision tower (no feature cache)."})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str = field(
        default=LORA_TARGET_MODULES, metadata={"help": "Regex of the LoRA-adapted modules (language model only)."}
    )

    # Data.
    dataset: str = field(default="shapes", metadata={"help": '"shapes" (offline), "coco-karpathy", or a dataset.'})
    image_root: str | None = field(default=None, metadata={"help": "COCO 2014 image root for coco-karpathy."})
    train_split: str = "train"
    eval_split: str = "validation"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    id_column: str | None = None
    prompt: str = CAPTION_PROMPT

    # Optimisation.
    num_train_epochs: int = 10
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; overrides num_train_epochs when > 0."})
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    projector_lr: float | None = field(default=None, metadata={"help": "Defaults to learning_rate."})
    llm_lr: float | None = field(default=None, metadata={"help": "Defaults to learning_rate."})
    vision_lr: float | None = field(default=None, metadata={"help": "Defaults to learning_rate."})
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    warmup_steps: int = field(default=0, metadata={"help": "Overrides warmup_ratio when > 0."})
    mixed_precision: str | None = field(
        default=None, metadata={"help": "no, fp16 or bf16; defaults to the `accelerate launch` configuration."}
    )
    gradient_checkpointing: bool = False
    use_cpu: bool = field(
        default=False,
        metadata={
            "help": "Train on CPU; under configs/accelerate/cpu.yaml, several CPU processes train together (gloo)."
        },
    )
    seed: int = 0
    dataloader_num_workers: int = 0

    # Vision feature cache (frozen vision tower only).
    cache_vision_features: bool = True
    feature_cache_dir: str = "outputs/feature_cache"

    # Evaluation.
    eval_strategy: str = field(default="epoch", metadata={"help": '"epoch": after every epoch; "no": never.'})
    eval_before_training: bool = field(default=False, metadata={"help": "Also evaluate the untrained model."})
    predict_with_generate: bool = field(default=True, metadata={"help": "Caption the eval split and score it."})
    max_new_tokens: int = 64
    metric_for_best_model: str = "CIDEr"
    num_sample_captions: int = 6

    # Checkpoints and outputs.
    output_dir: str = "outputs/vlm"
    save_steps: int = 500
    save_total_limit: int = 2
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": '"latest" or a checkpoint directory.'})

    # Logging.
    report_to: str = field(
        default="tensorboard", metadata={"help": 'Comma-separated trackers, e.g. "wandb", or "none".'}
    )
    logging_steps: int = 10
    run_name: str | None = None

    # Hub.
    push_to_hub: str | None = field(default=None, metadata={"help": "Repository id to upload the output dir to."})
    hub_private_repo: bool = False

    def __post_init__(self) -> None:
        sources = [
            self.model is not None,
            bool(self.vision_model or self.text_model),
            self.model_name_or_path is not None,
        ]
        if sum(sources) != 1:
            raise ValueError(
                "Choose exactly one model source: `model: tiny`, `vision_model` + `text_model`, or "
                "`model_name_or_path`."
            )
        if self.model not in (None, "tiny"):
            raise ValueError(f"model={self.model!r} is invalid; the only named model is 'tiny'.")
        if sources[1] and not (self.vision_model and self.text_model):
            raise ValueError("`vision_model` and `text_model` go together: pass both.")
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type={self.projector_type!r} is invalid; choose one of {PROJECTOR_TYPES}.")
        if self.stage not in FREEZE_STAGES:
            raise ValueError(f"stage={self.stage!r} is invalid; choose one of {FREEZE_STAGES}.")
        if self.eval_strategy not in ("epoch", "no"):
            raise ValueError(f"eval_strategy={self.eval_strategy!r} is invalid; choose 'epoch' or 'no'.")

    @property
    def trackers(self) -> list[str] | None:
        names = [name.strip() for name in self.report_to.split(",") if name.strip()]
        return None if names in ([], ["none"]) else names


def load_yaml_config(path: str | os.PathLike) -> dict[str, Any]:
    """The settings of a YAML config file, checked against the fields of [`VLMTrainingArguments`]."""
    with open(path, encoding="utf-8") as file:
        values = yaml.safe_load(file) or {}
    unknown = sorted(set(values) - {f.name for f in fields(VLMTrainingArguments)})
    if unknown:
        raise ValueError(f"{path} has unknown keys {unknown}; the keys are the fields of VLMTrainingArguments.")
    return values
