# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Training of [`VLMForConditionalGeneration`] on image-caption data with 🤗 Accelerate.

The same loop runs on CPU, one GPU, multi-GPU DDP, FSDP and DeepSpeed ZeRO-2 (see `configs/accelerate/`). Its pieces
are reusable on their own:

- [`VLMTrainingArguments`]: every setting of a run; `train_accelerate.py` fills it from a YAML file and the command line.
- [`build_model`], [`configure_trainable_parameters`], [`build_optimizer`]: the model source, the freeze stage
  (`align`, `finetune`, `lora`) and AdamW with one learning rate per component.
- [`CaptionExamples`], [`CaptionCollator`]: COCO captioning protocol, one reference per image drawn per epoch;
  unreadable images are dropped by the collator and counted.
- [`load_or_compute_vision_features`]: the on-disk cache of a frozen vision tower's features.
- [`generate_dataset_captions`]: batched greedy captions of a dataset, free of training state.
- [`train`]: the loop (mixed precision, gradient accumulation, clipping, warmup + cosine, atomic checkpoints that
  resume mid-epoch, per-epoch evaluation with CIDEr/METEOR, best model by CIDEr, model card, Hub upload).
- [`run_comparison`], [`projector_comparison_table`]: one run per projector and the table that compares them.
"""

import hashlib
import json
import math
import os
import platform
import random
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import (
    DistributedType,
    ProjectConfiguration,
    broadcast_object_list,
    gather_object,
    send_to_device,
    set_seed,
)
from datasets import Dataset
from datasets import Image as ImageFeature
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import get_scheduler

from caption_data import KARPATHY_SOURCE, load_captions, open_image
from eval import CAPTION_PROMPT, caption_messages, generate_captions, score_captions
from configuration_vlm import PROJECTOR_TYPES
from modeling_vlm import VLMForConditionalGeneration
from processing_vlm import IGNORE_INDEX, VLMProcessor
from tiny_vlm import build_tiny_vlm


FREEZE_STAGES = ("align", "finetune", "lora")
LORA_TARGET_MODULES = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = "tmp-"  # checkpoints being written or deleted; never picked by `latest`
TRAINER_STATE_NAME = "trainer_state.json"
RESULTS_NAME = "training_results.json"
ADAPTER_DIR = "adapter"
BEST_DIR = "best"
CAPTION_METRICS = ("CIDEr", "METEOR", "BLEU-4", "ROUGE-L")
# Parameter-name fragment -> component, for the per-component learning rates.
COMPONENTS = {"vision_tower": "vision", "multi_modal_projector": "projector", "language_model": "llm"}


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

    def __post_init__(self):
        sources = [
            self.model is not None,
            bool(self.vision_model or self.text_model),
            self.model_name_or_path is not None,
        ]
        if sum(sources) != 1:
            raise ValueError(
                "Choose exactly one model source: `model: tiny`, `vision_model` + `text_model`, or `model_name_or_path`."
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


# ---------------------------------------------------------------------------------------------------------------------
# Model: source, freeze stage, optimizer
# ---------------------------------------------------------------------------------------------------------------------


def build_model(args: VLMTrainingArguments) -> tuple[VLMForConditionalGeneration, VLMProcessor]:
    """The model and processor of `args`' model source; a new projector is initialised from `args.seed`."""
    config_kwargs = {} if args.vision_feature_layer is None else {"vision_feature_layer": args.vision_feature_layer}
    if args.model == "tiny":
        return build_tiny_vlm(args.projector_type, seed=args.seed, **config_kwargs)
    if args.model_name_or_path is not None:
        model = VLMForConditionalGeneration.from_pretrained(args.model_name_or_path, **config_kwargs)
        return model, VLMProcessor.from_pretrained(args.model_name_or_path)
    set_seed(args.seed)
    return VLMForConditionalGeneration.from_pretrained_backbones(
        vision=args.vision_model, text=args.text_model, projector_type=args.projector_type, **config_kwargs
    )


def configure_trainable_parameters(model: VLMForConditionalGeneration, args: VLMTrainingArguments) -> nn.Module:
    """
    Freezes everything but what `args.stage` trains: the projector (`align`), the projector and the language model
    (`finetune`), or the projector and LoRA adapters on the language model (`lora`, returns a `PeftModel`). The vision
    tower trains too with `args.unfreeze_vision`.
    """
    model.requires_grad_(False)
    model.multi_modal_projector.requires_grad_(True)
    if args.stage == "finetune":
        model.language_model.requires_grad_(True)
    if args.unfreeze_vision:
        model.vision_tower.requires_grad_(True)
    if args.stage != "lora":
        return model
    # The regex keeps LoRA off the vision tower, whose attention has the same module names (q_proj, ...).
    lora_config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=args.lora_target_modules,
        modules_to_save=["multi_modal_projector"] + (["vision_tower"] if args.unfreeze_vision else []),
    )
    return get_peft_model(model, lora_config)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """`(trainable, total)` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def build_optimizer(model: nn.Module, args: VLMTrainingArguments) -> torch.optim.AdamW:
    """
    AdamW over the trainable parameters, one group per component (`projector`, `llm`, `vision`) with its own learning
    rate, and without weight decay on biases and norm weights.
    """
    learning_rates = {"projector": args.projector_lr, "llm": args.llm_lr, "vision": args.vision_lr}
    groups: dict[tuple[str, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        component = next(component for fragment, component in COMPONENTS.items() if fragment in name)
        decay = parameter.ndim >= 2
        lr = learning_rates[component]
        group = groups.setdefault(
            (component, decay),
            {
                "name": component,
                "params": [],
                "lr": args.learning_rate if lr is None else lr,
                "weight_decay": args.weight_decay if decay else 0.0,
            },
        )
        group["params"].append(parameter)
    return torch.optim.AdamW(
        list(groups.values()), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon
    )


# ---------------------------------------------------------------------------------------------------------------------
# Data: examples, collator, vision feature cache
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class VisionFeatures:
    """
    Vision-tower features of the rows of a dataset: `features[row_index[row]]` is the `(num_patches, dim)` output of
    row `row`; `row_index` is -1 where the image is unreadable.
    """

    features: torch.Tensor
    row_index: torch.Tensor
    cache_hit: bool

    @property
    def readable_rows(self) -> list[int]:
        return (self.row_index >= 0).nonzero().flatten().tolist()


def readable_rows(dataset: Dataset) -> list[int]:
    """Rows of `dataset` whose image opens (each image is decoded once)."""
    raw = dataset.cast_column("image", ImageFeature(decode=False))
    return [row for row, value in enumerate(raw["image"]) if open_image(value) is not None]


def shard_rows(rows: list[int], process_index: int, num_processes: int) -> tuple[list[int], int]:
    """
    This process's contiguous share of `rows`, padded with the last row so that every process gets as many rows (and
    so as many batches: FSDP needs every process in every forward). Returns the rows and how many are not padding.
    """
    per_process = math.ceil(len(rows) / num_processes)
    own = rows[process_index * per_process : (process_index + 1) * per_process]
    return own + [rows[-1]] * (per_process - len(own)), len(own)


class CaptionExamples(torch.utils.data.Dataset):
    """
    Examples of a caption dataset for the captioning loss: the image (or its cached vision features, `None` when it is
    unreadable) and one of its references, drawn per epoch deterministically from `seed` (see `set_epoch`).

    Args:
        dataset (`datasets.Dataset`): rows with `image_id`, `image` and `captions`.
        rows (`list[int]`, *optional*): the rows to use, in order (all by default).
        seed (`int`): seed of the reference drawn for each row and epoch.
        vision_features ([`VisionFeatures`], *optional*): cached features used instead of the images.
        num_real (`int`, *optional*): examples from this position on are padding (`"ignore": True`): they keep batch
            counts equal across processes and are left out of the loss.
    """

    def __init__(
        self,
        dataset: Dataset,
        rows: list[int] | None = None,
        seed: int = 0,
        vision_features: VisionFeatures | None = None,
        num_real: int | None = None,
    ):
        self.images = dataset.select_columns(["image"]).cast_column("image", ImageFeature(decode=False))
        self.image_ids = list(dataset["image_id"])
        self.captions = list(dataset["captions"])
        self.rows = list(range(len(dataset))) if rows is None else list(rows)
        self.num_real = len(self.rows) if num_real is None else num_real
        self.seed = seed
        self.epoch = 0
        self.vision_features = vision_features

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        references = self.captions[row]
        caption = references[random.Random(f"{self.seed}/{self.epoch}/{row}").randrange(len(references))]
        example = {"image_id": self.image_ids[row], "caption": caption, "ignore": index >= self.num_real}
        if self.vision_features is None:
            example["image"] = open_image(self.images[row]["image"])
        else:
            feature_index = int(self.vision_features.row_index[row])
            example["vision_features"] = self.vision_features.features[feature_index] if feature_index >= 0 else None
        return example


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of `range(num_rows)` that depends only on `seed` and the epoch set by `set_epoch`."""

    def __init__(self, num_rows: int, seed: int):
        self.num_rows = num_rows
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(self.num_rows, generator=generator).tolist()


@dataclass
class CaptionCollator:
    """
    Batches [`CaptionExamples`] items into model inputs: the chat-formatted prompt and caption (left padded), labels on
    the caption and its end-of-turn only, `position_ids` that skip the padding (as `generate` computes them), and
    `pixel_values` or `vision_features`. Examples whose image is unreadable are dropped and counted in
    `num_skipped_images`; a batch where every image is unreadable has no `input_ids`.
    """

    processor: VLMProcessor
    prompt: str = CAPTION_PROMPT

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        kept = [e for e in examples if e.get("image", e.get("vision_features")) is not None]
        batch: dict[str, Any] = {"num_skipped_images": len(examples) - len(kept)}
        if not kept:
            return batch
        texts = [self.processor.apply_chat_template(caption_messages(self.prompt, e["caption"])) for e in kept]
        if "vision_features" in kept[0]:
            # No images to hand the processor: only the placeholders are needed.
            texts = [self.processor.expand_image_tokens(text) for text in texts]
            batch.update(self.processor.tokenizer(texts, padding=True, return_tensors="pt"))
            batch["vision_features"] = torch.stack([e["vision_features"] for e in kept])
        else:
            batch.update(self.processor(images=[e["image"] for e in kept], text=texts, return_tensors="pt"))
        labels = self.processor.build_labels(batch["input_ids"])
        labels[torch.tensor([e["ignore"] for e in kept])] = IGNORE_INDEX
        batch["labels"] = labels
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        return batch


def vision_features_cache_key(
    vlm: VLMForConditionalGeneration, processor: VLMProcessor, dataset: Dataset, precision: str
) -> str:
    """
    Identity of the features of `dataset` under `vlm`'s vision tower: the dataset fingerprint, the tower's config and
    a hash of its weights, the feature layer, the image preprocessing and the mixed precision they are computed in.
    """
    digest = hashlib.sha256()
    parts = (
        dataset._fingerprint,
        json.dumps(vlm.config.vision_config.to_dict(), sort_keys=True, default=str),
        str(vlm.config.vision_feature_layer),
        json.dumps(processor.image_processor.to_dict(), sort_keys=True, default=str),
        precision,
    )
    for part in parts:
        digest.update(part.encode() + b"\0")
    for name, tensor in sorted(vlm.vision_tower.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:32]


def load_or_compute_vision_features(
    vlm: VLMForConditionalGeneration,
    processor: VLMProcessor,
    dataset: Dataset,
    accelerator: Accelerator,
    cache_dir: str | os.PathLike,
    batch_size: int = 64,
) -> VisionFeatures:
    """
    The vision-tower features of every row of `dataset`, read from `cache_dir` or computed in batches on the
    accelerator (in its mixed precision) and written there as safetensors. The file is named by
    [`vision_features_cache_key`] and written atomically, so runs of other projectors on the same data and tower reuse
    it. Call it on the local main process first: the others then find the file.
    """
    precision = str(accelerator.mixed_precision)
    path = Path(cache_dir) / f"{vision_features_cache_key(vlm, processor, dataset, precision)}.safetensors"
    if path.exists():
        tensors = load_file(path)
        return VisionFeatures(tensors["features"], tensors["row_index"], cache_hit=True)

    images = dataset.cast_column("image", ImageFeature(decode=False))["image"]
    row_index = torch.full((len(dataset),), -1, dtype=torch.long)
    chunks = []
    vision_tower_device = vlm.vision_tower.device
    vlm.vision_tower.to(accelerator.device)
    for start in tqdm(
        range(0, len(dataset), batch_size),
        desc="caching vision features",
        disable=not accelerator.is_local_main_process,
    ):
        opened = [(row, open_image(value)) for row, value in enumerate(images[start : start + batch_size], start)]
        readable = [(row, image) for row, image in opened if image is not None]
        if not readable:
            continue
        pixel_values = processor.image_processor([image for _, image in readable], return_tensors="pt")["pixel_values"]
        with torch.no_grad(), accelerator.autocast():
            chunks.append(vlm.get_vision_features(pixel_values.to(accelerator.device)).cpu())
        first = sum(len(chunk) for chunk in chunks[:-1])
        row_index[[row for row, _ in readable]] = torch.arange(first, first + len(readable))
    vlm.vision_tower.to(vision_tower_device)

    if chunks:
        features = torch.cat(chunks)
    else:
        config = vlm.config
        features = torch.empty(0, config.num_patches, config.vision_config.hidden_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.stem}.tmp-{os.getpid()}")
    save_file({"features": features.contiguous(), "row_index": row_index}, str(temporary))
    os.replace(temporary, path)
    return VisionFeatures(features, row_index, cache_hit=False)


# ---------------------------------------------------------------------------------------------------------------------
# Captioning and evaluation
# ---------------------------------------------------------------------------------------------------------------------


def generate_dataset_captions(
    model: nn.Module,
    processor: VLMProcessor,
    dataset: Dataset,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    prompt: str = CAPTION_PROMPT,
) -> dict[str, str]:
    """
    Greedy captions `{image_id: caption}` of every row of `dataset` (batched, left padded, KV cache): the rows' images
    must be readable (select [`readable_rows`] first). Decoding runs in `eval.generate_captions`, which the
    evaluation CLI uses too.
    """
    # The image column is decoded lazily, one batch at a time.
    captions = generate_captions(model, processor, dataset["image"], batch_size, max_new_tokens, prompt)
    return dict(zip(dataset["image_id"], captions))


@dataclass
class EvalSet:
    """What one process evaluates: its (padded) shard for the loss and for captioning, and every reference."""

    loss_loader: DataLoader
    caption_rows: Dataset
    references: dict[str, list[str]]
    num_skipped_images: int


def evaluate(
    accelerator: Accelerator, model: nn.Module, processor: VLMProcessor, eval_set: EvalSet, args: VLMTrainingArguments
) -> tuple[dict[str, float], dict[str, str]]:
    """
    Validation loss (per labelled token, over every process) and, with `args.predict_with_generate`, the COCO caption
    metrics of greedy captions. Every process returns the same metrics, and the captions (on the main process only).
    """
    model.eval()
    totals = torch.zeros(2, device=accelerator.device)
    with torch.no_grad():
        for batch in eval_set.loss_loader:
            batch = send_to_device(batch, accelerator.device)
            batch.pop("num_skipped_images")
            # num_items_in_batch=1 turns the mean into a sum over the labelled tokens.
            totals[0] += model(**batch, num_items_in_batch=1).loss.float()
            totals[1] += (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    totals = accelerator.reduce(totals, reduction="sum")
    metrics = {"loss": (totals[0] / totals[1].clamp(min=1)).item()}
    captions: dict[str, str] = {}
    if args.predict_with_generate:
        with accelerator.autocast():
            local = generate_dataset_captions(
                accelerator.unwrap_model(model),
                processor,
                eval_set.caption_rows,
                args.per_device_eval_batch_size,
                args.max_new_tokens,
                args.prompt,
            )
        captions = dict(gather_object(list(local.items())))
        if accelerator.is_main_process:
            metrics.update(score_captions(captions, {i: eval_set.references[i] for i in captions}))
        metrics = broadcast_object_list([metrics])[0]
    model.train()
    return metrics, captions if accelerator.is_main_process else {}


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainerState:
    """Progress of a run, stored as `trainer_state.json` in each checkpoint."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0  # micro-batches of `epoch` already trained on
    samples_seen: int = 0
    train_time_s: float = 0.0
    skipped_train_images: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    history: list[dict] = field(default_factory=list)


def latest_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """
    The complete checkpoint with the highest step in `output_dir`, or `None`. Checkpoints are renamed into place only
    once fully written, so `tmp-checkpoint-*` directories (an interrupted save) and directories without a
    `trainer_state.json` are never picked.
    """
    steps = []
    for path in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        step = path.name[len(CHECKPOINT_PREFIX) :]
        if step.isdigit() and (path / TRAINER_STATE_NAME).is_file():
            steps.append((int(step), str(path)))
    return max(steps)[1] if steps else None


def save_checkpoint(accelerator: Accelerator, state: TrainerState, output_dir: str, save_total_limit: int) -> str:
    """
    `accelerator.save_state` (model, optimizer, scheduler, RNG states) plus `trainer_state.json` into
    `tmp-checkpoint-{step}`, then an atomic rename to `checkpoint-{step}`; keeps the newest `save_total_limit`.
    """
    name = f"{CHECKPOINT_PREFIX}{state.global_step}"
    temporary, final = os.path.join(output_dir, f"{TMP_PREFIX}{name}"), os.path.join(output_dir, name)
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(temporary)
    if accelerator.is_main_process:
        with open(os.path.join(temporary, TRAINER_STATE_NAME), "w", encoding="utf-8") as file:
            json.dump(asdict(state), file, indent=2)
        if os.path.exists(final):
            _remove_checkpoint(final)
        os.replace(temporary, final)
        complete = sorted(
            (p for p in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.name[len(CHECKPOINT_PREFIX) :].isdigit()),
            key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]),
        )
        for old in complete[: max(len(complete) - save_total_limit, 0)]:
            _remove_checkpoint(str(old))
    accelerator.wait_for_everyone()
    return final


def _remove_checkpoint(path: str) -> None:
    """Renames the checkpoint out of `latest`'s sight before deleting it, so a crash midway leaves no half checkpoint."""
    doomed = os.path.join(os.path.dirname(path), f"{TMP_PREFIX}{os.path.basename(path)}-deleting")
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def save_model(accelerator: Accelerator, model: nn.Module, processor: VLMProcessor, directory: str) -> None:
    """`save_pretrained` of the model (a `PeftModel` saves its adapter only) and the processor, from every process."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(directory, state_dict=state_dict)
        processor.save_pretrained(directory)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------------------------------
# Model card and Hub upload
# ---------------------------------------------------------------------------------------------------------------------


def base_model_ids(args: VLMTrainingArguments) -> list[str]:
    """Hub ids of the pretrained weights the run started from (local directories and tiny models have none)."""
    names = [args.vision_model, args.text_model, args.model_name_or_path]
    return [name for name in names if name is not None and not os.path.exists(name)]


def dataset_ids(args: VLMTrainingArguments) -> list[str]:
    """Hub ids of the training data."""
    if args.dataset == "coco-karpathy":
        return [KARPATHY_SOURCE]
    return [] if args.dataset == "shapes" or os.path.exists(args.dataset) else [args.dataset]


def write_model_card(output_dir: str, args: VLMTrainingArguments, results: dict[str, Any]) -> ModelCard:
    """
    `README.md` of the output dir: metadata (both towers as base models, datasets, pipeline tag, a model-index with the
    final metrics), results per epoch, the training configuration, hardware, wall time, sample captions and usage.
    """
    final = results["final_metrics"]
    model_name = args.push_to_hub or os.path.basename(os.path.abspath(output_dir))
    dataset_name = dataset_ids(args)[0] if dataset_ids(args) else args.dataset
    eval_results = [
        EvalResult(
            task_type="image-to-text",
            task_name="Image captioning",
            dataset_type=dataset_name,
            dataset_name=dataset_name,
            dataset_split=args.eval_split,
            metric_type=metric.split("-")[0].lower(),
            metric_name=metric,
            metric_value=round(final[metric], 4),
        )
        for metric in CAPTION_METRICS
        if metric in final
    ]
    if "loss" in final:
        eval_results.append(
            EvalResult(
                task_type="image-to-text",
                dataset_type=dataset_name,
                dataset_name=dataset_name,
                dataset_split=args.eval_split,
                metric_type="loss",
                metric_name="validation loss",
                metric_value=round(final["loss"], 4),
            )
        )
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model_ids(args) or None,
        datasets=dataset_ids(args) or None,
        pipeline_tag="image-text-to-text",
        library_name="transformers",
        license="apache-2.0",
        tags=["vision-language", "image-captioning", f"projector-{results['projector_type']}", f"stage-{args.stage}"],
        eval_results=eval_results or None,
    )

    metric_names = [m for m in ("loss", *CAPTION_METRICS) if m in final]
    history = "\n".join(
        f"| {record['epoch']:g} | {record['step']} | " + " | ".join(f"{record[m]:.4f}" for m in metric_names) + " |"
        for record in results["history"]
    )
    if not history:
        history = "| - | - | " + " | ".join("-" for _ in metric_names) + " |"
    samples = "\n".join(
        f"| {image_id} | {reference} | {caption} |" for image_id, reference, caption in results["sample_captions"]
    )
    towers = " + ".join(base_model_ids(args)) or (
        "tiny random towers (offline)" if args.model == "tiny" else args.model_name_or_path
    )
    repo = args.push_to_hub or output_dir
    body = f"""
# {model_name}

A vision-language model: {towers}, bridged by a **{results["projector_type"]}** projector
({results["num_image_tokens"]} image tokens per image), trained with the `{args.stage}` stage
({results["trainable_parameters"]:,} trainable of {results["total_parameters"]:,} parameters) to caption images on
`{args.dataset}` ({args.train_split}: {results["num_train_images"]} images, evaluated on {args.eval_split}:
{results["num_eval_images"]} images).

## Results

Scores on pycocoevalcap's scale (papers report CIDEr x 100); greedy decoding, at most {args.max_new_tokens} new tokens.
Best {args.metric_for_best_model}: {_format(results["best_metric"])} at step {results["best_step"]}.

| epoch | step | {" | ".join(metric_names)} |
| --- | --- | {" | ".join("---" for _ in metric_names)} |
{history}

## Sample captions

| image | a reference | generated |
| --- | --- | --- |
{samples}

## Training

- Hardware: {results["hardware"]}, {results["num_processes"]} process(es), mixed precision `{results["mixed_precision"]}`
- Wall time: {results["wall_time_s"] / 60:.1f} min ({results["train_time_s"] / 60:.1f} min training,
  {results["samples_per_second"]:.1f} samples/s)
- Configuration (`train_accelerate.py --config` keys):

```yaml
{yaml.safe_dump(asdict(args), sort_keys=False).strip()}
```

## Usage

```python
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor


model = AutoModelForImageTextToText.from_pretrained("{repo}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "{args.prompt}"}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=[Image.open("photo.jpg")], text=[prompt], return_tensors="pt")
generated = model.generate(**inputs, max_new_tokens={args.max_new_tokens}, do_sample=False)
print(processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])
```
"""
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")
    card.save(os.path.join(output_dir, "README.md"))
    return card


def _format(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def push_output_dir(output_dir: str, repo_id: str, private: bool = False) -> str:
    """Creates `repo_id` if needed and uploads the output dir to it, without checkpoints and the best-model copy."""
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=output_dir,
        commit_message="Upload VLM trained with train_accelerate.py",
        ignore_patterns=[f"{CHECKPOINT_PREFIX}*", f"{TMP_PREFIX}*", f"{BEST_DIR}/*"],
    )
    return repo_id


# ---------------------------------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------------------------------


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA memory allocated on GPU, resident set size elsewhere (Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hardware_description(accelerator: Accelerator) -> str:
    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _load_split(args: VLMTrainingArguments, split: str, max_samples: int | None) -> Dataset:
    return load_captions(
        args.dataset,
        split,
        image_root=args.image_root,
        max_samples=max_samples,
        seed=args.seed,
        image_column=args.image_column,
        caption_column=args.caption_column,
        id_column=args.id_column,
    )


@dataclass
class RunData:
    """The data of a run: the training examples and their loader (before `accelerator.prepare`), the evaluation set and
    the cached vision features (`None` where the tower's features are not cached)."""

    train_examples: CaptionExamples
    train_loader: DataLoader
    eval_set: EvalSet
    features: dict[str, VisionFeatures | None]


def prepare_data(
    args: VLMTrainingArguments, accelerator: Accelerator, vlm: VLMForConditionalGeneration, processor: VLMProcessor
) -> RunData:
    """
    Loads both splits, caches the vision features when the tower is frozen, and builds the training loader (shuffled
    per epoch from `args.seed`) and this process's share of the evaluation set.
    """
    with accelerator.main_process_first():
        train_data = _load_split(args, args.train_split, args.max_train_samples)
        eval_data = _load_split(args, args.eval_split, args.max_eval_samples)
    features: dict[str, VisionFeatures | None] = {"train": None, "eval": None}
    if args.cache_vision_features and not any(p.requires_grad for p in vlm.vision_tower.parameters()):
        with accelerator.local_main_process_first():
            for name, data in (("train", train_data), ("eval", eval_data)):
                features[name] = load_or_compute_vision_features(
                    vlm, processor, data, accelerator, args.feature_cache_dir, args.per_device_eval_batch_size
                )
    eval_rows = readable_rows(eval_data) if features["eval"] is None else features["eval"].readable_rows
    if not eval_rows:
        raise ValueError(f"No image of the {args.eval_split!r} split of {args.dataset!r} could be read.")
    image_ids, references = list(eval_data["image_id"]), list(eval_data["captions"])
    shard, num_real = shard_rows(eval_rows, accelerator.process_index, accelerator.num_processes)

    collator = CaptionCollator(processor, args.prompt)
    train_examples = CaptionExamples(train_data, seed=args.seed, vision_features=features["train"])
    train_loader = DataLoader(
        train_examples,
        batch_size=args.per_device_train_batch_size,
        sampler=EpochShuffleSampler(len(train_examples), args.seed),
        collate_fn=collator,
        num_workers=args.dataloader_num_workers,
    )
    eval_set = EvalSet(
        loss_loader=DataLoader(
            CaptionExamples(eval_data, shard, args.seed, features["eval"], num_real),
            batch_size=args.per_device_eval_batch_size,
            collate_fn=collator,
            num_workers=args.dataloader_num_workers,
        ),
        caption_rows=eval_data.select(shard),
        references={image_ids[row]: references[row] for row in eval_rows},
        num_skipped_images=len(eval_data) - len(eval_rows),
    )
    return RunData(train_examples, train_loader, eval_set, features)


def resume(accelerator: Accelerator, args: VLMTrainingArguments) -> tuple[str | None, TrainerState]:
    """Restores the prepared objects from `args.resume_from_checkpoint` ("latest" or a path); returns it and the state."""
    checkpoint = args.resume_from_checkpoint
    if checkpoint == "latest":
        checkpoint = latest_checkpoint(args.output_dir)
        if checkpoint is None:
            accelerator.print(f"No checkpoint in {args.output_dir} yet: starting from scratch.")
    if checkpoint is None:
        return None, TrainerState()
    accelerator.load_state(checkpoint)
    with open(os.path.join(checkpoint, TRAINER_STATE_NAME), encoding="utf-8") as file:
        state = TrainerState(**json.load(file))
    accelerator.print(f"Resumed from {checkpoint}: step {state.global_step}, epoch {state.epoch}.")
    return checkpoint, state


def train(
    args: VLMTrainingArguments,
    model: VLMForConditionalGeneration | None = None,
    processor: VLMProcessor | None = None,
) -> dict[str, Any]:
    """
    Trains as `args` says and returns the results (also written to `output_dir/training_results.json`): final and best
    metrics, the evaluation history, parameter counts, times and throughput. `model` and `processor` replace the
    model source of `args` when given.
    """
    if (model is None) != (processor is None):
        raise ValueError("Pass `model` and `processor` together, or neither to build them from `args`.")
    wall_start = time.perf_counter()
    accelerator = Accelerator(
        cpu=args.use_cpu,
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.trackers,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
        ),
    )
    if args.stage == "lora" and accelerator.distributed_type == DistributedType.FSDP:
        raise ValueError(
            "The lora stage merges adapters into unsharded weights: run it with DDP or DeepSpeed, not FSDP."
        )
    set_seed(args.seed)
    if model is None:
        model, processor = build_model(args)
    vlm = model
    model = configure_trainable_parameters(model, args)
    if args.gradient_checkpointing:
        vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable_parameters, total_parameters = count_parameters(model)

    data = prepare_data(args, accelerator, vlm, processor)
    train_examples, train_loader, eval_set = data.train_examples, data.train_loader, data.eval_set

    optimizer = build_optimizer(model, args)
    batches_per_epoch = math.ceil(len(train_examples) / (args.per_device_train_batch_size * accelerator.num_processes))
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    total_steps = args.max_steps if args.max_steps > 0 else args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    warmup_steps = args.warmup_steps or math.ceil(args.warmup_ratio * total_steps)
    # The prepared scheduler steps once per process at each optimizer step.
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=warmup_steps * accelerator.num_processes,
        num_training_steps=total_steps * accelerator.num_processes,
    )
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)

    checkpoint, state = resume(accelerator, args)
    run_name = args.run_name or os.path.basename(os.path.abspath(args.output_dir))
    accelerator.init_trackers(run_name, config={k: v for k, v in asdict(args).items() if v is not None})
    projector_type = vlm.config.projector_type
    accelerator.print(
        f"{projector_type} projector, stage {args.stage}: {trainable_parameters:,} trainable / {total_parameters:,} "
        f"parameters; {len(train_examples)} train / {len(eval_set.references)} eval images; {total_steps} steps of "
        f"{args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps} samples; "
        f"vision features: {_cache_status(data.features)}; unreadable eval images skipped: {eval_set.num_skipped_images}."
    )

    def run_evaluation(epoch: float) -> tuple[dict[str, Any], dict[str, str]]:
        metrics, captions = evaluate(accelerator, model, processor, eval_set, args)
        record = {"epoch": epoch, "step": state.global_step, **metrics}
        accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=state.global_step)
        accelerator.print(f"eval after epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return record, captions

    captions: dict[str, str] = {}
    if args.eval_before_training and args.eval_strategy != "no" and checkpoint is None:
        record, _ = run_evaluation(0)
        state.history.append(record)

    progress = tqdm(
        total=total_steps,
        initial=state.global_step,
        desc=f"train {projector_type}",
        disable=not accelerator.is_local_main_process,
    )
    window = StepWindow(accelerator.device)
    grad_norm = None
    last_batch = None
    model.train()
    while state.epoch < num_epochs and state.global_step < total_steps:
        train_examples.set_epoch(state.epoch)
        # The prepared loader hands its own epoch counter to the sampler at every pass: set it, not the sampler's.
        train_loader.set_epoch(state.epoch)
        loader = (
            accelerator.skip_first_batches(train_loader, state.step_in_epoch) if state.step_in_epoch else train_loader
        )
        wait_start = time.perf_counter()
        for batch in loader:
            fetched = time.perf_counter()
            state.step_in_epoch += 1
            window.counters[4] += batch.pop("num_skipped_images")
            # Every image of this micro-batch was unreadable: replay the previous one with zero weight, so that every
            # process still runs the same forward and backward passes.
            counted = "input_ids" in batch
            if not counted:
                batch = last_batch
            with accelerator.accumulate(model):
                if batch is not None:
                    loss = model(**batch).loss * float(counted)
                    accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if counted:
                last_batch = batch
                window.add(loss, batch)
            done = time.perf_counter()
            window.data_s += fetched - wait_start
            window.time_s += done - wait_start

            if accelerator.sync_gradients:
                state.global_step += 1
                progress.update(1)
                if state.global_step % args.logging_steps == 0 or state.global_step == total_steps:
                    _log_window(accelerator, state, window, optimizer, grad_norm, progress)
                if args.save_steps > 0 and state.global_step % args.save_steps == 0:
                    _log_window(accelerator, state, window, optimizer, grad_norm, progress)
                    save_checkpoint(accelerator, state, args.output_dir, args.save_total_limit)
                if state.global_step >= total_steps and state.step_in_epoch < len(train_loader):
                    break  # max_steps reached mid-epoch
            wait_start = time.perf_counter()
        else:  # the epoch is complete
            if args.eval_strategy == "epoch":
                record, captions = run_evaluation(state.epoch + 1)
                state.history.append(record)
                _update_best(accelerator, model, processor, state, record, args)
            state.epoch += 1
            state.step_in_epoch = 0
            continue
        break
    _log_window(accelerator, state, window, optimizer, grad_norm, progress)
    progress.close()
    # Stopped mid-epoch by max_steps: the final model still gets its evaluation.
    if args.eval_strategy == "epoch" and (not state.history or state.history[-1]["step"] != state.global_step):
        record, captions = run_evaluation(state.epoch + state.step_in_epoch / batches_per_epoch)
        state.history.append(record)
        _update_best(accelerator, model, processor, state, record, args)

    _save_final_model(accelerator, model, processor, args)
    final_metrics = state.history[-1] if state.history else {}
    results = {
        "output_dir": args.output_dir,
        "projector_type": projector_type,
        "stage": args.stage,
        "num_image_tokens": vlm.config.num_image_tokens,
        "trainable_parameters": trainable_parameters,
        "total_parameters": total_parameters,
        "num_train_images": len(train_examples),
        "num_eval_images": len(eval_set.references),
        "skipped_train_images": state.skipped_train_images,
        "skipped_eval_images": eval_set.num_skipped_images,
        "feature_cache": {
            name: None if f is None else ("hit" if f.cache_hit else "computed") for name, f in data.features.items()
        },
        "global_step": state.global_step,
        "final_metrics": {k: v for k, v in final_metrics.items() if k not in ("epoch", "step")},
        "best_metric": state.best_metric,
        "best_step": state.best_step,
        "history": state.history,
        "train_time_s": state.train_time_s,
        "wall_time_s": time.perf_counter() - wall_start,
        "samples_per_second": state.samples_seen / max(state.train_time_s, 1e-9),
        "hardware": hardware_description(accelerator),
        "num_processes": accelerator.num_processes,
        "mixed_precision": str(accelerator.mixed_precision),
        "sample_captions": [
            (image_id, eval_set.references[image_id][0], caption)
            for image_id, caption in list(captions.items())[: args.num_sample_captions]
        ],
    }
    accelerator.print(
        f"done in {results['wall_time_s']:.0f} s: final "
        + ", ".join(f"{k} {v:.4f}" for k, v in results["final_metrics"].items())
        + f"; skipped unreadable images: {state.skipped_train_images} train examples, {eval_set.num_skipped_images} eval"
    )
    if accelerator.is_main_process:
        with open(os.path.join(args.output_dir, RESULTS_NAME), "w", encoding="utf-8") as file:
            json.dump(results, file, indent=2)
        write_model_card(args.output_dir, args, results)
        if args.push_to_hub:
            push_output_dir(args.output_dir, args.push_to_hub, args.hub_private_repo)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def _cache_status(features: dict[str, VisionFeatures | None]) -> str:
    if all(f is None for f in features.values()):
        return "not cached (vision tower trains or cache off)"
    return ", ".join(f"{name} {'cache hit' if f.cache_hit else 'computed and cached'}" for name, f in features.items())


class StepWindow:
    """
    What happened since the last log: loss sum, micro-batches, samples, tokens and skipped images, kept on the device
    so that no training step waits for them, and the seconds spent waiting for data and in total.
    """

    def __init__(self, device: torch.device):
        self.counters = torch.zeros(5, dtype=torch.float64, device=device)
        self.data_s = self.time_s = 0.0

    def add(self, loss: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        self.counters[0] += loss.detach()
        self.counters[1] += 1
        self.counters[2] += batch["input_ids"].shape[0]
        self.counters[3] += batch["attention_mask"].sum()


def _log_window(
    accelerator: Accelerator,
    state: TrainerState,
    window: StepWindow,
    optimizer: torch.optim.Optimizer,
    grad_norm: torch.Tensor | None,
    progress: tqdm,
) -> None:
    """Reduces the counters of the steps since the last log over the processes, logs them and resets them."""
    loss, micro_batches, samples, tokens, skipped = accelerator.reduce(window.counters.clone()).tolist()
    state.samples_seen += int(samples)
    state.skipped_train_images += int(skipped)
    state.train_time_s += window.time_s
    if micro_batches:
        elapsed = max(window.time_s, 1e-9)
        logs = {
            "train/loss": loss / micro_batches,
            "train/epoch": state.epoch + 1,
            "train/samples_per_second": samples / elapsed,
            "train/tokens_per_second": tokens / elapsed,
            "train/skipped_images": state.skipped_train_images,
            "perf/data_wait_s": window.data_s,
            "perf/compute_s": window.time_s - window.data_s,
            "perf/data_wait_fraction": window.data_s / elapsed,
            "perf/peak_memory_mb": peak_memory_mb(accelerator.device),
        }
        for group in optimizer.param_groups:
            logs[f"train/lr_{group['name']}"] = group["lr"]
        if grad_norm is not None:
            logs["train/grad_norm"] = float(grad_norm)
        accelerator.log(logs, step=state.global_step)
        progress.set_postfix(loss=f"{logs['train/loss']:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    window.counters.zero_()
    window.data_s = window.time_s = 0.0


def _update_best(
    accelerator: Accelerator,
    model: nn.Module,
    processor: VLMProcessor,
    state: TrainerState,
    record: dict[str, Any],
    args: VLMTrainingArguments,
) -> None:
    """Saves the model to `output_dir/best` when `record` improves on `args.metric_for_best_model`."""
    value = record.get(args.metric_for_best_model)
    if value is None:
        return
    lower_is_better = "loss" in args.metric_for_best_model
    if state.best_metric is None or (value < state.best_metric if lower_is_better else value > state.best_metric):
        state.best_metric, state.best_step = value, state.global_step
        save_model(accelerator, model, processor, os.path.join(args.output_dir, BEST_DIR))


def _save_final_model(
    accelerator: Accelerator, model: nn.Module, processor: VLMProcessor, args: VLMTrainingArguments
) -> None:
    """The final model in `output_dir`; for lora, the adapter in `output_dir/adapter` and the merged model beside it."""
    if args.stage != "lora":
        save_model(accelerator, model, processor, args.output_dir)
        return
    save_model(accelerator, model, processor, os.path.join(args.output_dir, ADAPTER_DIR))
    if accelerator.is_main_process:
        merged = accelerator.unwrap_model(model).merge_and_unload()
        merged.save_pretrained(args.output_dir)
        processor.save_pretrained(args.output_dir)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------------------------------
# Projector comparison
# ---------------------------------------------------------------------------------------------------------------------


def run_comparison(runs: list[VLMTrainingArguments]) -> list[dict[str, Any]]:
    """
    Trains every run in turn (they share the vision feature cache) and returns their results; the first one also
    evaluates its untrained model, the baseline row of [`projector_comparison_table`].
    """
    return [train(replace(run, eval_before_training=index == 0)) for index, run in enumerate(runs)]


def projector_comparison_table(results: list[dict[str, Any]]) -> str:
    """
    Markdown table of [`run_comparison`] results: the untrained baseline, then one row per run with its image tokens,
    trainable parameters, best and final CIDEr, final METEOR and validation loss, training time and throughput.
    """
    columns = (
        "model", "projector", "image tokens", "trainable params", "best CIDEr", "final CIDEr", "final METEOR",
        "final val loss", "train time (s)", "samples/s",
    )  # fmt: skip

    def row(name: str, result: dict, best_cider: float | None, metrics: dict, time_s: float, throughput: str) -> str:
        cells = (
            name, result["projector_type"], result["num_image_tokens"], f"{result['trainable_parameters']:,}",
            _format(best_cider), _format(metrics.get("CIDEr")), _format(metrics.get("METEOR")), f"{metrics['loss']:.4f}",
            f"{time_s:.0f}", throughput,
        )  # fmt: skip
        return "| " + " | ".join(map(str, cells)) + " |"

    first = results[0]
    untrained = first["history"][0]
    lines = [
        "| " + " | ".join(columns) + " |",
        "| --- | --- |" + " ---: |" * (len(columns) - 2),
        row("untrained", first, untrained.get("CIDEr"), untrained, 0.0, "-"),
    ]
    for result in results:
        best = max((r["CIDEr"] for r in result["history"] if r["step"] > 0 and "CIDEr" in r), default=None)
        name = os.path.basename(result["output_dir"])
        throughput = f"{result['samples_per_second']:.1f}"
        lines.append(row(name, result, best, result["final_metrics"], result["train_time_s"], throughput))
    return "\n".join(lines) + "\n\nScores on pycocoevalcap's scale (papers report CIDEr x 100).\n"
