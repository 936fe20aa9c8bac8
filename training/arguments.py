# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
[`VLMTrainingArguments`]: every setting of a training run. The keys of a YAML config file are its field names
([`load_yaml_config`]); `train_accelerate.py` applies command-line flags over them.
"""

import inspect
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from configuration_vlm import CODEBOOK, FUSION_TYPES, PROJECTOR_TYPES, VLMConfig
from evaluation.captioning import CAPTION_PROMPT

from .argument_rules import check_numbers


FREEZE_STAGES = ("align", "finetune", "lora")
QFORMER_STAGE1 = "qformer_stage1"
CONTRASTIVE = "contrastive"
PAIR_STAGES = (QFORMER_STAGE1, CONTRASTIVE)  # trained on image-text pairs, evaluated by retrieval; no language model
STAGES = (*FREEZE_STAGES, *PAIR_STAGES)
DEFAULT_BERT = "bert-base-uncased"
DEFAULT_MAX_CAPTION_TOKENS = 64
UNSET_VALUES = ("none", "null", "")
MODEL_SOURCE_FIELDS = ("model", "vision_model", "text_model", "model_name_or_path")
# `VLMConfig` settings that are training arguments of their own.
CONFIG_FIELDS_WITH_ARGUMENTS = ("projector_type", "fusion", "vision_feature_layer", "loss_chunk_size")
# The `VLMConfig` settings a run may choose in `model_config`: the projector's; the towers come from the model source.
MODEL_CONFIG_KEYS = tuple(
    name
    for name in inspect.signature(VLMConfig.__init__).parameters
    if name not in ("self", "kwargs", "vision_config", "text_config", *CONFIG_FIELDS_WITH_ARGUMENTS)
    and not name.startswith("image_token")
)
# What defines a run's data order, batches and schedule: its checkpoints record these, and a resume that changes one is
# refused. Everything else (evaluation, logging, checkpoint frequency, workers, the feature cache, gradient
# checkpointing, the outputs) may change on resume.
RESUME_SETTINGS = (
    "stage", "dataset", "train_split", "max_train_samples", "conversations", "max_train_conversations",
    "skip_invalid_conversations", "max_caption_tokens", "prompt", "max_length", "group_by_length", "seed",
    "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps", "learning_rate",
    "projector_lr", "llm_lr", "vision_lr", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay",
    "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "contrastive_loss", "lock_text",
    "lock_image", "vision_from_scratch",
)  # fmt: skip
LORA_TARGET_MODULES = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class VLMTrainingArguments:
    """Settings of one training run. The keys of a YAML config file are these field names."""

    # Model source: exactly one of `model: tiny`, `vision_model` + `text_model`, or `model_name_or_path` (Q-Former
    # stage 1: `model: tiny` or `vision_model`, with `bert_model`).
    model: str | None = field(
        default=None, metadata={"help": '"tiny": random tiny towers built offline (models/tiny.py).'}
    )
    vision_model: str | None = field(default=None, metadata={"help": "Vision tower: Hub id or directory (SigLIP)."})
    text_model: str | None = field(default=None, metadata={"help": "Language model: Hub id or directory (Qwen2.5)."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "A saved VLM to continue training."})
    projector_type: str | None = field(
        default=None,
        metadata={"help": f"One of {', '.join(PROJECTOR_TYPES)}; default mlp (perceiver with cross_attention)."},
    )
    fusion: str = field(
        default="early",
        metadata={
            "help": "early: image tokens in the LLM's input (LLaVA); cross_attention: gated cross-attention blocks "
            "before every cross_attention_every-th decoder layer (Flamingo; set it in model_config); hybrid: the "
            "thumbnail early, the tiles through the blocks (NVLM-H); visual_expert: image positions through copies of "
            "the decoder layers' projections and MLPs (CogVLM); adapter: gated adaption prompts plus the image's "
            "tokens in the top adapter_num_layers layers' self-attention (LLaMA-Adapter V2); tokenized: a VQ "
            "tokenizer's codes through trainable code embeddings (Chameleon; the tiny model's own tokenizer, or a "
            "Chameleon checkpoint as vision_model)."
        },
    )
    vision_feature_layer: int | None = field(default=None, metadata={"help": "Vision layer the projector reads."})
    model_config: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Projector settings of a new model (VLMConfig fields such as perceiver_num_latents, "
            "qformer_num_layers): a mapping in YAML, a JSON object on the command line."
        },
    )

    # Which weights train.
    stage: str = field(
        default="align",
        metadata={
            "help": "align: projector only; finetune: projector + LLM; lora: projector + LoRA on the LLM; "
            "qformer_stage1: BLIP-2's Q-Former pretraining on image-text pairs (ITC, ITM, ITG), no LLM; "
            "contrastive: seed 001's first stage, the vision tower and a text encoder trained contrastively."
        },
    )
    unfreeze_vision: bool = field(default=False, metadata={"help": "Also train the vision tower (no feature cache)."})
    lora_r: int = field(default=16, metadata={"help": "Rank of the LoRA adapters (stage lora)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator: updates are scaled by alpha / r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA adapters' input."})
    lora_target_modules: str = field(
        default=LORA_TARGET_MODULES, metadata={"help": "Regex of the LoRA-adapted modules (language model only)."}
    )

    # BLIP-2 stage 1 (stage qformer_stage1), and its hand-off to stage 2.
    bert_model: str | None = field(
        default=None,
        metadata={
            "help": f"BERT-family checkpoint (Hub id or directory) that initialises the stage-1 Q-Former; default "
            f"{DEFAULT_BERT} (a random tiny BERT with model: tiny)."
        },
    )
    contrastive_loss: str = field(
        default="clip",
        metadata={"help": "Stage contrastive: 'clip' (symmetric InfoNCE) or 'sigmoid' (SigLIP's pairwise loss)."},
    )
    lock_text: bool = field(
        default=False, metadata={"help": "Stage contrastive: keep the text encoder frozen (LiT's locked text)."}
    )
    lock_image: bool = field(
        default=False,
        metadata={
            "help": "Stage contrastive: keep the vision tower frozen (LiT's locked-image tuning); its pooled features "
            "are then computed once and cached."
        },
    )
    vision_from_scratch: bool = field(
        default=False,
        metadata={"help": "Stage contrastive: train the vision tower from random weights, not the pretrained ones."},
    )
    itc_weight: float = field(default=1.0, metadata={"help": "Stage 1: weight of image-text contrastive (0: off)."})
    itm_weight: float = field(default=1.0, metadata={"help": "Stage 1: weight of image-text matching (0: off)."})
    itg_weight: float = field(default=1.0, metadata={"help": "Stage 1: weight of image-grounded generation (0: off)."})
    image_text_hidden_size: int = field(
        default=256, metadata={"help": "Stages qformer_stage1 and contrastive: width of the contrastive space."}
    )
    retrieval_rerank_k: int = field(
        default=0, metadata={"help": "Stage 1 evaluation: re-rank each query's top k by the ITM head (0: ITC only)."}
    )
    qformer_init: str | None = field(
        default=None,
        metadata={"help": "A stage-1 output directory whose Q-Former the new qformer projector starts from."},
    )

    vision_init: str | None = field(
        default=None,
        metadata={"help": "A stage-contrastive output directory whose trained vision tower the new VLM starts from."},
    )

    # Data.
    dataset: str = field(
        default="shapes",
        metadata={
            "help": '"shapes" (offline; "shapes-small": small shapes in 128 px images), "coco-karpathy", or a caption '
            "dataset; or a LLaVA JSON file of conversations (images under image_root) to train on conversations "
            "only, as LLaVA-1.5's stage 2."
        },
    )
    image_root: str | None = field(default=None, metadata={"help": "COCO 2014 image root for coco-karpathy."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="validation", metadata={"help": "Split to evaluate on after every epoch."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on the first N images only."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N images only."})
    image_column: str = field(default="image", metadata={"help": "Image column of a generic dataset."})
    caption_column: str = field(default="caption", metadata={"help": "Caption column of a generic dataset."})
    id_column: str | None = field(default=None, metadata={"help": "Image-id column of a generic dataset (row index)."})
    prompt: str = field(default=CAPTION_PROMPT, metadata={"help": "The user turn that asks for the caption."})
    max_caption_tokens: int = field(
        default=DEFAULT_MAX_CAPTION_TOKENS,
        metadata={"help": "Training and validation captions are cut to this many tokens."},
    )

    # Conversations and questions: instruction tuning (seed 001's third stage; LLaVA-1.5's stage 2).
    conversations: str | None = field(
        default=None,
        metadata={
            "help": 'Conversations trained on with the captions: "shapes" (each training scene\'s questions as one '
            "multi-turn conversation), a LLaVA JSON file (images under image_root), or a messages-format dataset."
        },
    )
    max_train_conversations: int | None = field(
        default=None,
        metadata={"help": "Train on the first N conversations only (shapes: N scenes; default: as many as captions)."},
    )
    skip_invalid_conversations: bool = field(
        default=False,
        metadata={"help": "Leave out the conversations that cannot be trained on (counted, and the first named)."},
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": "Longest conversation, image placeholders included; default: the LLM's positions."},
    )
    eval_vqa: str | None = field(
        default=None,
        metadata={"help": 'VQA questions answered at every evaluation: "shapes", "vqav2", or a local copy of it.'},
    )
    eval_pope: str | None = field(
        default=None,
        metadata={"help": 'POPE questions answered at every evaluation: "shapes", "pope", or a local copy of it.'},
    )
    max_eval_questions: int | None = field(
        default=None, metadata={"help": "Answer the first N VQA questions (N per split for POPE) only."}
    )

    # Optimisation.
    num_train_epochs: int = field(default=10, metadata={"help": "Epochs over the training images."})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; overrides num_train_epochs when > 0."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training images per process and step."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation images per process and batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate of every component."})
    projector_lr: float | None = field(default=None, metadata={"help": "Defaults to learning_rate."})
    llm_lr: float | None = field(default=None, metadata={"help": "Defaults to learning_rate."})
    vision_lr: float | None = field(default=None, metadata={"help": "Defaults to learning_rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (not on biases and norms)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradients are clipped to this global norm."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers' get_scheduler name."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Share of the steps spent warming up."})
    warmup_steps: int = field(default=0, metadata={"help": "Overrides warmup_ratio when > 0."})
    mixed_precision: str | None = field(
        default=None, metadata={"help": "no, fp16 or bf16; defaults to the `accelerate launch` configuration."}
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward."})
    loss_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Run the LM head and cross-entropy over this many labelled positions at a time: the logits over "
            "the vocabulary are never all in memory (torch >= 2.13; the model's config.loss_chunk_size)."
        },
    )
    use_cpu: bool = field(
        default=False,
        metadata={
            "help": "Train on CPU; under configs/accelerate/cpu.yaml, several CPU processes train together (gloo)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the projector's initialisation and the data order."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Worker processes that load the data."})
    group_by_length: bool = field(
        default=False,
        metadata={
            "help": "Batch examples of similar length together (less padding; transformers' length grouping): "
            "captions by length, and conversations, longer, mostly in batches of their own."
        },
    )

    # Feature caches (frozen vision tower; in stage contrastive a locked text encoder too).
    cache_vision_features: bool = field(
        default=True,
        metadata={
            "help": "Compute a frozen tower's features (and stage contrastive's locked text encoder's) once and read "
            "them from disk after."
        },
    )
    feature_cache_dir: str = field(default="outputs/feature_cache", metadata={"help": "Where the features are kept."})

    # Evaluation.
    eval_strategy: str = field(default="epoch", metadata={"help": '"epoch": after every epoch; "no": never.'})
    eval_before_training: bool = field(default=False, metadata={"help": "Also evaluate the untrained model."})
    predict_with_generate: bool = field(default=True, metadata={"help": "Caption the eval split and score it."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest generated caption, in tokens."})
    metric_for_best_model: str | None = field(
        default=None, metadata={"help": "Metric that picks output_dir/best; CIDEr (stage 1: recall_mean) by default."}
    )
    num_sample_captions: int = field(default=6, metadata={"help": "Generated captions shown in the model card."})
    load_best_model_at_end: bool = field(
        default=False,
        metadata={
            "help": "Save the best model by metric_for_best_model in output_dir, not the last one (output_dir/best "
            "keeps the best trainable weights either way)."
        },
    )

    # Checkpoints and outputs.
    output_dir: str = field(default="outputs/vlm", metadata={"help": "Where the run writes everything."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh in an output_dir that holds a run: its checkpoints and results are removed."},
    )
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every N optimizer steps (0: never)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept; the oldest go first."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": '"latest" or a checkpoint directory.'})

    # Logging.
    report_to: str = field(
        default="tensorboard", metadata={"help": 'Comma-separated trackers, e.g. "wandb", or "none".'}
    )
    logging_steps: int = field(default=10, metadata={"help": "Log training metrics every N optimizer steps."})
    run_name: str | None = field(default=None, metadata={"help": "Trackers' run name; defaults to output_dir's."})

    # Hub.
    push_to_hub: str | None = field(default=None, metadata={"help": "Repository id to upload the output dir to."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repository private."})

    def __post_init__(self) -> None:
        optional = {f.name for f in fields(self) if f.default is None}
        for name in optional:  # `--model none` (or '', null) unsets what a YAML file set
            if isinstance(getattr(self, name), str) and getattr(self, name).strip().lower() in UNSET_VALUES:
                setattr(self, name, None)
        check_numbers({f.name: getattr(self, f.name) for f in fields(self)}, optional)
        self._check_model_source()
        if self.fusion not in FUSION_TYPES:
            raise ValueError(f"fusion={self.fusion!r} is invalid; choose one of {FUSION_TYPES}.")
        default_projector = {"cross_attention": "perceiver", "tokenized": CODEBOOK}.get(self.fusion, "mlp")
        self.projector_type = self.projector_type or ("qformer" if self.stage == QFORMER_STAGE1 else default_projector)
        if self.projector_type not in (*PROJECTOR_TYPES, CODEBOOK):
            raise ValueError(
                f"projector_type={self.projector_type!r} is invalid; choose one of {PROJECTOR_TYPES} (or {CODEBOOK!r} "
                "with fusion='tokenized')."
            )
        if self.stage not in STAGES:
            raise ValueError(f"stage={self.stage!r} is invalid; choose one of {STAGES}.")
        if self.eval_strategy not in ("epoch", "no"):
            raise ValueError(f"eval_strategy={self.eval_strategy!r} is invalid; choose 'epoch' or 'no'.")
        if self.overwrite_output_dir and self.resume_from_checkpoint:
            raise ValueError(
                "overwrite_output_dir starts afresh and resume_from_checkpoint continues a run: pass one of them."
            )
        self.model_config = self._checked_model_config()
        self._check_loss_chunk_size()
        self._check_conversations()
        self._check_qformer_stages()
        self._check_contrastive_stage()
        answered = "VQA/accuracy" if self.eval_vqa else None
        default_metric = answered if self.conversations_only else "CIDEr"
        default_metric = "recall_mean" if self.stage in PAIR_STAGES else default_metric
        self.metric_for_best_model = self.metric_for_best_model or default_metric

    def _check_model_source(self) -> None:
        """Exactly one model source (see the field comments), and a known one."""
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
        # The pair stages have no language model: `vision_model` alone is a source there.
        if sources[1] and not (self.vision_model and (self.text_model or self.stage in PAIR_STAGES)):
            raise ValueError("`vision_model` and `text_model` go together: pass both.")

    def _check_loss_chunk_size(self) -> None:
        if self.loss_chunk_size is not None and self.stage in PAIR_STAGES:
            raise ValueError(
                f"loss_chunk_size chunks the language model's loss, and stage {self.stage} has no language model: "
                "unset it."
            )

    @property
    def conversations_only(self) -> bool:
        """Whether the run trains on the conversations of a LLaVA JSON `dataset` (and no captions)."""
        return self.dataset.endswith(".json")

    def _check_conversations(self) -> None:
        """
        A conversation-only run names its data once. Stage qformer_stage1 has no language model: it leaves out the
        conversations and question sets (so that one config serves both stages) and refuses a conversation dataset.
        """
        if self.conversations_only and self.conversations:
            raise ValueError(
                f"dataset={self.dataset!r} is a conversation file, and conversations={self.conversations!r} another: "
                "train on one (dataset) or mix conversations into captions (a caption dataset with conversations)."
            )
        if self.stage in PAIR_STAGES:
            if self.conversations_only:
                raise ValueError(
                    f"dataset={self.dataset!r} is a conversation file; stage {self.stage} trains on image-caption "
                    "pairs: pass a caption dataset."
                )
            self.conversations = self.eval_vqa = self.eval_pope = None

    def _check_qformer_stages(self) -> None:
        """Stage 1 trains a new Q-Former on a frozen tower; `qformer_init` hands one to a new `qformer` projector."""
        if self.stage == QFORMER_STAGE1:
            if self.model_name_or_path is not None or self.qformer_init is not None:
                raise ValueError(
                    "stage qformer_stage1 trains a new Q-Former from BERT: use `model: tiny` or `vision_model` (with "
                    "bert_model), not model_name_or_path or qformer_init."
                )
            if self.projector_type != "qformer" or self.fusion != "early" or self.unfreeze_vision:
                raise ValueError(
                    "stage qformer_stage1 pretrains the qformer projector on a frozen vision tower: leave "
                    "projector_type, fusion and unfreeze_vision at their defaults."
                )
        elif self.bert_model is not None and self.stage != CONTRASTIVE:
            raise ValueError(
                f"bert_model initialises the stages qformer_stage1 and contrastive only; this run's is {self.stage!r}."
            )
        if self.qformer_init is not None and (self.projector_type != "qformer" or self.model_name_or_path):
            raise ValueError(
                f"qformer_init={self.qformer_init!r} starts a new qformer projector from stage 1: set projector_type "
                "qformer and build the model from `model: tiny` or vision_model + text_model (not model_name_or_path)."
            )

    def _check_contrastive_stage(self) -> None:
        """Stage contrastive trains a new dual encoder on a tower of the model source, with one of its losses."""
        if self.vision_init is not None and (self.stage in PAIR_STAGES or self.model_name_or_path is not None):
            raise ValueError(
                f"vision_init={self.vision_init!r} gives a new VLM the tower of stage contrastive: build it from "
                "`model: tiny` or vision_model + text_model, in a VLM stage (align, finetune, lora)."
            )
        if self.stage != CONTRASTIVE:
            for name in ("lock_text", "lock_image", "vision_from_scratch"):
                if getattr(self, name):
                    raise ValueError(f"{name} is an option of stage contrastive; this run's stage is {self.stage!r}.")
            return
        if self.lock_image and self.vision_from_scratch:
            raise ValueError(
                "lock_image with vision_from_scratch would keep a random tower frozen: drop one of them (LiT locks "
                "a pretrained tower)."
            )
        if self.contrastive_loss not in ("clip", "sigmoid"):
            raise ValueError(f"contrastive_loss={self.contrastive_loss!r} is invalid; choose 'clip' or 'sigmoid'.")
        if self.model_name_or_path is not None or self.qformer_init is not None or self.retrieval_rerank_k:
            raise ValueError(
                "stage contrastive trains a new dual encoder (no matching head to re-rank with): use `model: tiny` "
                "or `vision_model` (with bert_model), without model_name_or_path, qformer_init or retrieval_rerank_k."
            )

    def _checked_model_config(self) -> dict[str, Any]:
        """`model_config` as a mapping of projector settings; unknown keys raise (their values are checked on build)."""
        config = self.model_config or {}
        if isinstance(config, str):
            try:
                config = json.loads(config)
            except json.JSONDecodeError as error:
                raise ValueError(f"model_config={config!r} is not a JSON object: {error}.") from error
        if not isinstance(config, dict):
            raise ValueError(f"model_config must be a mapping of VLMConfig settings, got {config!r}.")
        unknown = sorted(set(config) - set(MODEL_CONFIG_KEYS))
        if unknown:
            raise ValueError(
                f"model_config has unknown keys {unknown}; the projector settings are {', '.join(MODEL_CONFIG_KEYS)} "
                f"({', '.join(CONFIG_FIELDS_WITH_ARGUMENTS)} are arguments of their own)."
            )
        if config and self.model_name_or_path is not None:
            raise ValueError(
                f"model_config {config} would change the projector of the saved model {self.model_name_or_path!r}, "
                "whose weights fit its own settings: drop model_config, or build a new model from vision_model + "
                "text_model (or model: tiny)."
            )
        return config

    def resume_settings(self) -> dict[str, Any]:
        """The [`RESUME_SETTINGS`] of this run, by name."""
        return {name: getattr(self, name) for name in RESUME_SETTINGS}

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
