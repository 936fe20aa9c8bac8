# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
[`ContrastiveDualEncoder`]: seed 001's first stage. transformers' `VisionTextDualEncoderModel` (its config, the two
towers built from theirs, the projection heads, the learned `logit_scale`, saving, loading and
`from_vision_text_pretrained`), trained with [`~contrastive_pretraining.losses.clip_loss`] or
[`~contrastive_pretraining.losses.sigmoid_loss`] over the global batch, and exposing what the training loop's
image-text pair path reads (`vision_tower`, `get_vision_features`, `image_embeddings`, `text_embeddings`,
`pooled_text_features`, `config.active_objectives`), so that the same loop, checkpoints, feature caches and retrieval
evaluation serve it.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel, VisionTextDualEncoderProcessor
from transformers.utils import ModelOutput

from .losses import CLIP_LOGIT_SCALE_INIT, SIGLIP_LOGIT_BIAS_INIT, SIGLIP_LOGIT_SCALE_INIT, clip_loss, sigmoid_loss


CONTRASTIVE_LOSSES = ("clip", "sigmoid")


@dataclass
class ContrastiveOutput(ModelOutput):
    """
    The loss of a batch of pairs (`loss_itc` repeats it under the name the pair path logs: image-text contrastive),
    and the L2-normalised `image_embeds` and `text_embeds` `(batch_size, projection_dim)`.
    """

    loss: torch.FloatTensor | None = None
    loss_itc: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None


class ContrastiveDualEncoder(VisionTextDualEncoderModel):
    """
    A vision tower and a text encoder whose pooled outputs are projected into one space and trained contrastively:
    `config.contrastive_loss` is `"clip"` (symmetric InfoNCE, learned temperature clamped at 100) or `"sigmoid"`
    (SigLIP's pairwise loss, with a learned bias). An image is pooled by its tower (`pooler_output`: CLIP's class
    token, SigLIP's attention head) or, for a tower without one, as the mean of its tokens; a text by its first
    (`[CLS]`) token.
    """

    reads_pooled_vision_features = True  # what a frozen tower's feature cache holds for it: one vector per image

    def __init__(self, config: VisionTextDualEncoderConfig, vision_model=None, text_model=None):
        loss = getattr(config, "contrastive_loss", "clip")
        if loss not in CONTRASTIVE_LOSSES:
            raise ValueError(f"contrastive_loss={loss!r} is invalid; choose 'clip' (InfoNCE) or 'sigmoid' (SigLIP).")
        super().__init__(config, vision_model, text_model)
        if getattr(self.text_model, "pooler", None) is not None:
            self.text_model.pooler = None  # texts are pooled by their first token: BERT's pooler would go untrained
        self.logit_bias = nn.Parameter(torch.tensor(SIGLIP_LOGIT_BIAS_INIT)) if loss == "sigmoid" else None
        self.config.active_objectives = ["itc"]  # the one loss the pair path logs, as `train/loss_itc`

    def train(self, mode: bool = True) -> "ContrastiveDualEncoder":
        """
        Sets training mode, except on a locked side (all its parameters frozen): a locked tower is a fixed feature
        extractor, its dropout off, so that its features equal those its cache holds.
        """
        super().train(mode)
        for tower in (self.vision_model, self.text_model):
            if not any(parameter.requires_grad for parameter in tower.parameters()):
                tower.eval()
        return self

    @property
    def vision_tower(self) -> nn.Module:
        """The vision tower, under the VLM's name for it."""
        return self.vision_model

    def get_vision_features(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """The tower's pooled image features `(num_images, vision_hidden_size)`: what a frozen tower's cache holds."""
        outputs = self.vision_model(pixel_values=pixel_values.to(self.vision_model.dtype))
        if getattr(outputs, "pooler_output", None) is not None:
            return outputs.pooler_output
        return outputs.last_hidden_state.mean(dim=1)

    def image_embeddings(self, vision_features: torch.FloatTensor) -> torch.FloatTensor:
        """L2-normalised image embeddings `(num_images, 1, projection_dim)`: one query each, as retrieval reads them."""
        return F.normalize(self.visual_projection(vision_features), dim=-1)[:, None]

    def pooled_text_features(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The text encoder's first (`[CLS]`) token `(num_texts, text_hidden_size)`: a locked one's cache holds it."""
        hidden = getattr(self.text_model(input_ids=input_ids, attention_mask=attention_mask), "last_hidden_state", None)
        if hidden is None:
            raise ValueError(
                f"The text encoder {type(self.text_model).__name__} returns no last_hidden_state to pool its first "
                "token from: use a BERT-family encoder."
            )
        return hidden[:, 0]

    def text_embeddings(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        text_features: torch.FloatTensor | None = None,
    ) -> torch.FloatTensor:
        """
        L2-normalised text embeddings `(num_texts, projection_dim)`: the projected first token, or the projected
        `text_features` `(num_texts, text_hidden_size)` of [`pooled_text_features`] when they are given (cached).
        """
        if text_features is None:
            text_features = self.pooled_text_features(input_ids, attention_mask)
        return F.normalize(self.text_projection(text_features), dim=-1)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        vision_features: torch.FloatTensor | None = None,
        text_features: torch.FloatTensor | None = None,
        **kwargs,
    ) -> ContrastiveOutput:
        """
        The contrastive loss of the pairs: `input_ids` and `attention_mask` `(batch_size, text_length)` (or, from a
        locked encoder's cache, their pooled `text_features` `(batch_size, text_hidden_size)`, which replace the
        encoder's pass), and `pixel_values` `(batch_size, 3, image_size, image_size)` or the pooled `vision_features`
        `(batch_size, vision_hidden_size)` of a frozen tower.
        """
        if vision_features is None:
            vision_features = self.get_vision_features(pixel_values)
        image_embeds = self.image_embeddings(vision_features)[:, 0]
        text_embeds = self.text_embeddings(input_ids, attention_mask, text_features)
        if self.logit_bias is None:
            loss = clip_loss(image_embeds, text_embeds, self.logit_scale)
        else:
            loss = sigmoid_loss(image_embeds, text_embeds, self.logit_scale, self.logit_bias)
        return ContrastiveOutput(loss=loss, loss_itc=loss.detach(), image_embeds=image_embeds, text_embeds=text_embeds)


def build_dual_encoder(
    vision_model: nn.Module, text_model: nn.Module, contrastive_loss: str, projection_dim: int
) -> ContrastiveDualEncoder:
    """
    A new [`ContrastiveDualEncoder`] of the given towers (pretrained or not; their weights are kept) with fresh
    projection heads of width `projection_dim`, its temperature (and SigLIP's bias) at the loss's initial values.
    """
    scale = CLIP_LOGIT_SCALE_INIT if contrastive_loss == "clip" else SIGLIP_LOGIT_SCALE_INIT
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision_model.config, text_model.config, projection_dim=projection_dim, logit_scale_init_value=scale
    )
    config.contrastive_loss = contrastive_loss
    return ContrastiveDualEncoder(config, vision_model=vision_model, text_model=text_model)


# What a tower's weights must agree on to take another's place: its kind, width, depth and input.
TOWER_SHAPE_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "image_size", "patch_size", "num_channels")  # fmt: skip


def load_contrastive_tower(vision_tower: nn.Module, directory: str) -> None:
    """
    Loads the vision tower of the stage-contrastive output `directory` into `vision_tower` (a VLM's), after checking
    that their configs agree on [`TOWER_SHAPE_FIELDS`]: a tower of another size, width or input resolution is refused
    naming the field, before anything is overwritten.
    """
    trained = ContrastiveDualEncoder.from_pretrained(directory).vision_model
    for name in TOWER_SHAPE_FIELDS:
        theirs, ours = getattr(trained.config, name, None), getattr(vision_tower.config, name, None)
        if theirs != ours:
            raise ValueError(
                f"vision_init={directory!r}: its vision tower has {name}={theirs!r}, this VLM's tower (and its "
                f"processor) {name}={ours!r}; build the VLM on the tower stage contrastive started from."
            )
    vision_tower.load_state_dict(trained.state_dict(), strict=True)


class ContrastivePairProcessor(VisionTextDualEncoderProcessor):
    """transformers' dual-encoder processor, called as the pair path calls a stage-1 processor."""

    def __call__(self, images=None, text: list[str] | None = None, max_length: int = 64, **kwargs) -> dict:
        """`pixel_values` of `images` and/or the padded, truncated `input_ids` and `attention_mask` of `text`."""
        batch = {}
        if images is not None:
            batch.update(self.image_processor(images, return_tensors="pt"))
        if text is not None:
            batch.update(self.tokenizer(text, padding=True, truncation=True, max_length=max_length,
                                        return_token_type_ids=False, return_tensors="pt"))  # fmt: skip
        return batch
