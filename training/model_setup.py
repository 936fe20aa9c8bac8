# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The model of a run and how it trains: [`build_model`] (tiny, pretrained towers, or a saved VLM),
[`configure_trainable_parameters`] (the freeze stage: `align`, `finetune`, `lora`), [`build_optimizer`] (AdamW, one
learning rate per component) and the learning-rate schedule ([`TrainingSchedule`], [`build_scheduler`]).
"""

import math
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModel, AutoTokenizer, get_scheduler

from configuration_vlm import VLMConfig
from contrastive_pretraining import (
    ContrastiveDualEncoder,
    ContrastivePairProcessor,
    build_dual_encoder,
    load_contrastive_tower,
)
from loading_vlm import load_image_processor, load_vision_tower, load_vision_tower_config
from modeling_vlm import VLMForConditionalGeneration
from models.tiny import build_tiny_bert, build_tiny_vlm
from processing_vlm import VLMProcessor
from qformer_pretraining import (
    QFormerForPretraining,
    QFormerPretrainingConfig,
    QFormerPretrainingProcessor,
    build_qformer_pretraining,
    load_stage1_qformer,
    vlm_qformer_settings,
)
from qformer_pretraining.building import SHAPE_SETTINGS

from .arguments import CONTRASTIVE, DEFAULT_BERT, QFORMER_STAGE1, VLMTrainingArguments


COMPONENTS = {
    "vision_tower": "vision",
    "multi_modal_projector": "projector",
    "cross_attention_blocks": "projector",
    "visual_experts": "projector",
    "adaption_prompts": "projector",
    "language_model": "llm",
}
"""
Parameter-name fragment -> component, for the per-component learning rates: the bridge's new layers together as
`projector`, which every other parameter (the stage-1 Q-Former and its heads) belongs to as well.
"""


def model_source(args: VLMTrainingArguments) -> dict[str, str | None]:
    """Where `args` builds the model from, as recorded with a run's frozen weights."""
    return {
        "model": args.model,
        "vision_model": args.vision_model,
        "text_model": args.text_model,
        "model_name_or_path": args.model_name_or_path,
    }


def build_model(
    args: VLMTrainingArguments,
) -> tuple[VLMForConditionalGeneration, VLMProcessor] | tuple[QFormerForPretraining, QFormerPretrainingProcessor]:
    """
    The model and processor of `args`' model source, with the projector and fusion settings of `args` (a saved model
    keeps its own); a new projector (and new cross-attention blocks) is initialised from `args.seed`, or its Q-Former
    loaded from the stage-1 directory `args.qformer_init`. Stage `qformer_stage1` builds the stage-1 model instead.
    """
    if args.stage == QFORMER_STAGE1:
        return build_stage1_model(args)
    if args.stage == CONTRASTIVE:
        return build_contrastive_model(args)
    config_kwargs = dict(args.model_config)
    if args.vision_feature_layer is not None:
        config_kwargs["vision_feature_layer"] = args.vision_feature_layer
    if args.qformer_init is not None:
        config_kwargs = with_stage1_settings(config_kwargs, args.qformer_init)
    if args.model == "tiny":
        model, processor = build_tiny_vlm(args.projector_type, seed=args.seed, fusion=args.fusion, **config_kwargs)
    elif args.model_name_or_path is not None:
        model = VLMForConditionalGeneration.from_pretrained(args.model_name_or_path, **config_kwargs)
        # transformers >= 5.23 reads the saved processor's config through its `auto_map`: without trust_remote_code it
        # asks on stdin whether to run the directory's code (our own, saved with the model), then warns.
        return model, VLMProcessor.from_pretrained(args.model_name_or_path, trust_remote_code=True)
    else:
        set_seed(args.seed)
        model, processor = VLMForConditionalGeneration.from_pretrained_backbones(
            vision=args.vision_model,
            text=args.text_model,
            projector_type=args.projector_type,
            fusion=args.fusion,
            **config_kwargs,
        )
    if args.qformer_init is not None:
        load_stage1_qformer(model, args.qformer_init)
    if args.vision_init is not None:
        load_contrastive_tower(model.vision_tower, args.vision_init)
        model.config.vision_init = args.vision_init  # saved with the model: where its tower comes from
    return model, processor


def with_stage1_settings(config_kwargs: dict, qformer_init: str) -> dict:
    """`config_kwargs` with the Q-Former shape of the stage-1 model in `qformer_init`; a conflicting setting raises."""
    settings = vlm_qformer_settings(QFormerPretrainingConfig.from_pretrained(qformer_init))
    for name, value in settings.items():
        if config_kwargs.get(name, value) != value:
            raise ValueError(
                f"{name}={config_kwargs[name]!r} conflicts with the stage-1 Q-Former in {qformer_init} ({name}="
                f"{value!r}): qformer_init sets the Q-Former's shape, drop {name}."
            )
    return {**config_kwargs, **settings}


def text_encoder(args: VLMTrainingArguments) -> tuple[nn.Module, object, str]:
    """The BERT of a pair stage: `args.bert_model` (default bert-base-uncased), or a tiny random one with `model: tiny`;
    with its tokenizer and the name of its source."""
    if args.model == "tiny" and args.bert_model is None:
        return (*build_tiny_bert(args.seed), "tiny random BERT")
    source = args.bert_model or DEFAULT_BERT
    return AutoModel.from_pretrained(source), AutoTokenizer.from_pretrained(source), source


def build_contrastive_model(args: VLMTrainingArguments) -> tuple[ContrastiveDualEncoder, ContrastivePairProcessor]:
    """
    The dual encoder of stage contrastive: the vision tower of the model source (the tiny VLM's for `model: tiny`, so
    that stage 2 with the same seed meets the same architecture), the text encoder of [`text_encoder`], new
    projection heads of width `args.image_text_hidden_size`, and `args.contrastive_loss`.
    """
    if args.model == "tiny":
        vlm, vlm_processor = build_tiny_vlm("mlp", seed=args.seed)
        vision_tower, image_processor = vlm.vision_tower, vlm_processor.image_processor
    else:
        vision_tower = None if args.vision_from_scratch else load_vision_tower(args.vision_model)
        image_processor = load_image_processor(args.vision_model)
    bert, tokenizer, _ = text_encoder(args)
    set_seed(args.seed)
    if args.vision_from_scratch:  # LiT's "u": the tower's architecture with fresh weights (none are downloaded)
        config = vision_tower.config if vision_tower is not None else load_vision_tower_config(args.vision_model)
        vision_tower = AutoModel.from_config(config)
    model = build_dual_encoder(vision_tower, bert, args.contrastive_loss, args.image_text_hidden_size)
    return model, ContrastivePairProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_stage1_model(args: VLMTrainingArguments) -> tuple[QFormerForPretraining, QFormerPretrainingProcessor]:
    """
    The stage-1 model of `args`: the vision tower of the model source (the tiny VLM's for `model: tiny`, so that
    stage 2 with the same seed has the same one), a Q-Former of the shape the VLM's `qformer` settings in
    `args.model_config` give, initialised from `args.bert_model`, and the objectives' weights.
    """
    vision_layer = {} if args.vision_feature_layer is None else {"vision_feature_layer": args.vision_feature_layer}
    if args.model == "tiny":
        vlm, vlm_processor = build_tiny_vlm("qformer", seed=args.seed, **args.model_config, **vision_layer)
        vision_tower, image_processor, vlm_config = vlm.vision_tower, vlm_processor.image_processor, vlm.config
    else:
        vision_tower, image_processor = load_vision_tower(args.vision_model), load_image_processor(args.vision_model)
        vlm_config = VLMConfig(
            vision_config=vision_tower.config, projector_type="qformer", **args.model_config, **vision_layer
        )
    bert, tokenizer, bert_source = text_encoder(args)
    set_seed(args.seed)
    return build_qformer_pretraining(
        vision_tower, image_processor, bert, tokenizer, bert_source,
        vision_feature_layer=vlm_config.vision_feature_layer,
        num_query_tokens=vlm_config.qformer_num_queries,
        cross_attention_frequency=vlm_config.qformer_cross_attention_frequency,
        shape={name: args.model_config[name] for name in SHAPE_SETTINGS if name in args.model_config},
        itc_weight=args.itc_weight, itm_weight=args.itm_weight, itg_weight=args.itg_weight,
        image_text_hidden_size=args.image_text_hidden_size,
    )  # fmt: skip


def trained_whole(model: VLMForConditionalGeneration, unfreeze_vision: bool) -> list[str]:
    """
    The modules that train whole beside the language model: the projector, each cross-attention block or adaption
    prompt (by its own name, so that PEFT wraps the module that the decoder layer's hook calls) and the vision tower
    when it trains.
    """
    blocks = [f"cross_attention_blocks.{layer}" for layer in model.cross_attention_blocks]
    if model.adaption_prompts is not None:
        blocks += [f"adaption_prompts.layers.{layer}" for layer in model.adaption_prompts.layers]
    return ["multi_modal_projector", *blocks] + (["vision_tower"] if unfreeze_vision else [])


def lora_config(r: int, alpha: int, dropout: float, target_modules: str, modules_to_save: list[str]) -> LoraConfig:
    """
    LoRA adapters on the modules matching `target_modules` (a regex); `modules_to_save` (see [`trained_whole`]) are
    trained and saved whole beside them.
    """
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, modules_to_save=modules_to_save
    )


def configure_trainable_parameters(
    model: VLMForConditionalGeneration,
    stage: str,
    unfreeze_vision: bool = False,
    lora: LoraConfig | None = None,
) -> nn.Module:
    """
    Freezes everything but what `stage` trains: the projector and any cross-attention blocks, visual experts or
    adaption prompts
    (`align`), those and the language model (`finetune`), or those and the `lora` adapters on the language model
    (`lora`, returns a `PeftModel`). The vision tower trains too with `unfreeze_vision`.
    """
    if stage == "lora" and model.visual_experts is not None:
        raise ValueError(
            "stage='lora' with fusion='visual_expert': the adapters would wrap the language model's projections that "
            "the visual experts stand in for at image positions; train the experts with stage 'align' or 'finetune'."
        )
    if unfreeze_vision and model.config.is_vq_tokenizer:
        raise ValueError(
            "unfreeze_vision with fusion='tokenized': the VQ tokenizer's codes are discrete, no gradient reaches it; "
            "train the code embeddings (and the language model) with the tokenizer frozen."
        )
    model.requires_grad_(False)
    model.multi_modal_projector.requires_grad_(True)
    model.cross_attention_blocks.requires_grad_(True)
    for fusion_layers in (model.visual_experts, model.adaption_prompts):
        if fusion_layers is not None:
            fusion_layers.requires_grad_(True)
    if stage == "finetune":
        model.language_model.requires_grad_(True)
    if unfreeze_vision:
        model.vision_tower.requires_grad_(True)
    if stage != "lora":
        return model
    if lora is None:
        raise ValueError("stage='lora' needs the adapters' `lora` config: pass `lora_config(...)`.")
    return get_peft_model(model, lora)


def prepare_model_for_training(
    vlm: VLMForConditionalGeneration | QFormerForPretraining, args: VLMTrainingArguments
) -> nn.Module:
    """
    `vlm` ready for `args.stage`: the trainable parameters set (LoRA adapters added for `lora`, returning a
    `PeftModel`; everything but the vision tower for the stage-1 model), gradient checkpointing on when asked.
    """
    if args.stage == QFORMER_STAGE1:
        model = vlm.requires_grad_(True)
        vlm.vision_tower.requires_grad_(False)
    elif args.stage == CONTRASTIVE:
        model = vlm.requires_grad_(True)
        vlm.text_model.requires_grad_(not args.lock_text)
        vlm.vision_model.requires_grad_(not args.lock_image)
    else:
        lora = None
        if args.stage == "lora":
            modules_to_save = trained_whole(vlm, args.unfreeze_vision)
            lora = lora_config(
                args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules, modules_to_save
            )
        vlm.config.loss_chunk_size = args.loss_chunk_size
        model = configure_trainable_parameters(vlm, args.stage, args.unfreeze_vision, lora)
    if args.gradient_checkpointing:
        vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """`(trainable, total)` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def build_optimizer(
    model: nn.Module,
    learning_rate: float,
    component_learning_rates: dict[str, float | None] | None = None,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """
    AdamW over the trainable parameters, one group per component (`projector`, `llm`, `vision`) with its learning
    rate from `component_learning_rates` (`learning_rate` where it is missing or `None`), and without weight decay on
    biases and norm weights.
    """
    component_learning_rates = component_learning_rates or {}
    groups: dict[tuple[str, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        component = next((component for fragment, component in COMPONENTS.items() if fragment in name), "projector")
        decay = parameter.ndim >= 2
        lr = component_learning_rates.get(component)
        group = groups.setdefault(
            (component, decay),
            {
                "name": component,
                "params": [],
                "lr": learning_rate if lr is None else lr,
                "weight_decay": weight_decay if decay else 0.0,
            },
        )
        group["params"].append(parameter)
    return torch.optim.AdamW(list(groups.values()), lr=learning_rate, betas=betas, eps=eps)


@dataclass(frozen=True)
class TrainingSchedule:
    """How long a run trains: micro-batches per epoch (per process), optimizer steps, epochs and warm-up steps."""

    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    num_epochs: int
    warmup_steps: int

    @classmethod
    def plan(
        cls,
        num_examples: int,
        batch_size: int,
        gradient_accumulation_steps: int,
        num_train_epochs: int,
        max_steps: int = -1,
        warmup_steps: int = 0,
        warmup_ratio: float = 0.0,
    ) -> "TrainingSchedule":
        """
        The schedule of `num_examples` in batches of `batch_size` over all processes: `max_steps` optimizer steps when
        positive, else `num_train_epochs` epochs; `warmup_steps` when positive, else `warmup_ratio` of the steps.
        """
        batches_per_epoch = math.ceil(num_examples / batch_size)
        steps_per_epoch = math.ceil(batches_per_epoch / gradient_accumulation_steps)
        total_steps = max_steps if max_steps > 0 else num_train_epochs * steps_per_epoch
        return cls(
            batches_per_epoch=batches_per_epoch,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            num_epochs=math.ceil(total_steps / steps_per_epoch),
            warmup_steps=warmup_steps or math.ceil(warmup_ratio * total_steps),
        )


def build_scheduler(
    optimizer: torch.optim.Optimizer, name: str, schedule: TrainingSchedule, num_processes: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """transformers' `get_scheduler(name)` over `schedule`'s warm-up and total steps."""
    # Once prepared by accelerate, the scheduler steps once per process at each optimizer step.
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=schedule.warmup_steps * num_processes,
        num_training_steps=schedule.total_steps * num_processes,
    )


def build_optimization(
    model: nn.Module, args: VLMTrainingArguments, num_examples: int, num_processes: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LRScheduler, TrainingSchedule]:
    """AdamW with `args`' learning rates, its scheduler and the schedule of `num_examples` over `num_processes`."""
    schedule = TrainingSchedule.plan(
        num_examples, args.per_device_train_batch_size * num_processes, args.gradient_accumulation_steps,
        args.num_train_epochs, args.max_steps, args.warmup_steps, args.warmup_ratio,
    )  # fmt: skip
    component_lrs = {"projector": args.projector_lr, "llm": args.llm_lr, "vision": args.vision_lr}
    betas = (args.adam_beta1, args.adam_beta2)
    optimizer = build_optimizer(model, args.learning_rate, component_lrs, args.weight_decay, betas, args.adam_epsilon)
    return optimizer, build_scheduler(optimizer, args.lr_scheduler_type, schedule, num_processes), schedule


def bare_model(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """
    `model` without what `accelerator.prepare` wrapped around it: the distributed wrapper and torch.compile's
    (`accelerate launch --dynamo_backend ...`), so that its parameter names carry neither `module.` nor `_orig_mod.`.
    """
    return accelerator.unwrap_model(model, keep_torch_compile=False)
