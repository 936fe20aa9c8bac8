# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
BLIP-2's stage 1 (`QFormerForPretraining`): a frozen vision tower, learned queries and a Q-Former whose self-attention
layers the queries share with a BERT text branch, trained on image-text pairs with three objectives, each through its
own attention mask (`masks`):

- ITC, image-text contrastive: queries and text encoded apart (uni-modal mask); the similarity of an image and a text
  is the highest cosine of any query with the text's `[CLS]`; in-batch negatives from every process; a learnable
  temperature.
- ITM, image-text matching: queries and text attend to each other (bi-directional mask); a linear head on the
  queries says match or not, for every pair, one hard-negative text per image and one hard-negative image per text
  drawn from the contrastive similarities.
- ITG, image-grounded text generation: the text, starting with `[DEC]`, is predicted token by token from the queries
  and the text before it (multimodal causal mask), by an LM head tied to the word embeddings.

The Q-Former is transformers' `Blip2QFormerModel` with `use_qformer_text_input=True`, whose query path has the names of
the VLM's `qformer` projector, so that stage 2 loads it (`handoff`).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, Blip2QFormerModel, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings
from transformers.utils import ModelOutput

from modeling_vlm import vision_tower_features

from .configuration import QFormerPretrainingConfig
from .masks import attention_pattern, qformer_attention_mask
from .objectives import (
    contrastive_cross_entropy,
    gather_with_local_grad,
    query_text_similarity,
    sample_hard_negatives,
)


try:
    from transformers import initialization as init
except ImportError:  # transformers < 5
    from torch.nn import init

TEMPERATURE_RANGE = (0.001, 0.5)  # BLIP-2's bounds on the learnable contrastive temperature


@dataclass
class QFormerPretrainingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`):
        The weighted sum of the objectives that are switched on.
    loss_itc, loss_itm, loss_itg (`torch.FloatTensor` of shape `()`, *optional*):
        Each objective's loss, when it is switched on.
    similarity (`torch.FloatTensor` of shape `(batch_size, batch_size)`, *optional*):
        Image-text similarities of the batch (rows images, columns texts), divided by the temperature.
    """

    loss: torch.FloatTensor | None = None
    loss_itc: torch.FloatTensor | None = None
    loss_itm: torch.FloatTensor | None = None
    loss_itg: torch.FloatTensor | None = None
    similarity: torch.FloatTensor | None = None


class QFormerLMHead(nn.Module):
    """BERT's LM head: dense, activation, LayerNorm, then scores against the word embeddings it is tied to (+ bias)."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """`(batch_size, length, hidden_size)` -> scores `(batch_size, length, vocab_size)`."""
        hidden_states = self.LayerNorm(self.act(self.dense(hidden_states)))
        return F.linear(hidden_states, word_embeddings, self.bias)


class QFormerPreTrainedModel(PreTrainedModel):
    config_class = QFormerPretrainingConfig
    base_model_prefix = "qformer_pretraining"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.qformer_config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, QFormerLMHead):
            init.zeros_(module.bias)
        elif isinstance(module, Blip2TextEmbeddings):
            # A non-persistent buffer: loading leaves it to this method in transformers 5.x.
            module.position_ids.copy_(torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, QFormerForPretraining):
            init.normal_(module.query_tokens, mean=0.0, std=std)
            init.constant_(module.temperature, 0.07)


class QFormerForPretraining(QFormerPreTrainedModel):
    """BLIP-2 stage 1 on a frozen vision tower: ITC, ITM and ITG over one Q-Former (see the module docstring)."""

    def __init__(self, config: QFormerPretrainingConfig):
        super().__init__(config)
        qformer_config = config.qformer_config
        width = qformer_config.hidden_size
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, width))
        self.embeddings = Blip2TextEmbeddings(qformer_config)
        self.qformer = Blip2QFormerModel(qformer_config)
        self.vision_projection = nn.Linear(width, config.image_text_hidden_size)
        self.text_projection = nn.Linear(width, config.image_text_hidden_size)
        self.itm_head = nn.Linear(width, 2)
        self.lm_head = QFormerLMHead(qformer_config)
        self.temperature = nn.Parameter(torch.tensor(0.07))
        self.post_init()

    def get_vision_features(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """Patch tokens `(num_images, num_patches, vision_hidden_size)` of `config.vision_feature_layer`."""
        return vision_tower_features(self.vision_tower, pixel_values, self.config.vision_feature_layer)

    def run_qformer(
        self,
        vision_features: torch.Tensor | None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mask_kind: str = "unimodal",
    ) -> torch.Tensor:
        """
        Last hidden states `(batch_size, num_queries + text_length, hidden_size)` of the queries (when
        `vision_features` `(batch_size, num_patches, vision_dim)` are given) followed by the text `input_ids`
        `(batch_size, text_length)` (when given), under `mask_kind` (see `masks`) when both are there.
        """
        queries = None
        if vision_features is not None:
            queries = self.query_tokens.expand(vision_features.shape[0], -1, -1)
        embeddings = self.embeddings(input_ids=input_ids, query_embeds=queries)
        num_queries = 0 if queries is None else queries.shape[1]
        if queries is not None and input_ids is not None:
            pattern = attention_pattern(mask_kind, num_queries, attention_mask)
            attention_mask = qformer_attention_mask(pattern, self.query_tokens.dtype)
        outputs = self.qformer(
            query_embeds=embeddings,
            query_length=num_queries,
            attention_mask=attention_mask,
            encoder_hidden_states=vision_features,
            return_dict=True,
        )
        return outputs.last_hidden_state

    def image_embeddings(self, vision_features: torch.Tensor) -> torch.Tensor:
        """L2-normalised query embeddings `(num_images, num_queries, image_text_hidden_size)` (contrastive space)."""
        queries = self.run_qformer(vision_features)
        return F.normalize(self.vision_projection(queries), dim=-1)

    def text_embeddings(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised `[CLS]` embeddings `(num_texts, image_text_hidden_size)` of the contrastive space."""
        text = self.run_qformer(None, input_ids, attention_mask)
        return F.normalize(self.text_projection(text[:, 0]), dim=-1)

    def matching_logits(
        self, vision_features: torch.Tensor, input_ids: torch.LongTensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Match / no-match scores `(batch_size, 2)` of image-text pairs: the ITM head averaged over the queries."""
        hidden = self.run_qformer(vision_features, input_ids, attention_mask, "bidirectional")
        return self.itm_head(hidden[:, : self.config.num_query_tokens]).mean(dim=1)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.FloatTensor | None = None,
        vision_features: torch.FloatTensor | None = None,
        **kwargs,
    ) -> QFormerPretrainingOutput:
        r"""
        input_ids, attention_mask (`(batch_size, text_length)`): the tokenized captions, `[CLS]` first.
        pixel_values (`(batch_size, 3, image_size, image_size)`) or vision_features (`(batch_size, num_patches,
        vision_dim)`): the images, pair `i` being image `i` and caption `i`.
        """
        if vision_features is None:
            vision_features = self.get_vision_features(pixel_values)
        vision_features = vision_features.to(self.query_tokens.dtype)
        weights = self.config.objective_weights
        losses, similarity = {}, None
        if weights["itc"] or weights["itm"]:
            with torch.set_grad_enabled(torch.is_grad_enabled() and bool(weights["itc"])):
                losses["itc"], similarity = self.contrastive_loss(vision_features, input_ids, attention_mask)
        if weights["itm"]:
            losses["itm"] = self.matching_loss(vision_features, input_ids, attention_mask, similarity.detach())
        if weights["itg"]:
            losses["itg"] = self.generation_loss(vision_features, input_ids, attention_mask)
        active = {name: losses[name] for name in self.config.active_objectives}
        return QFormerPretrainingOutput(
            loss=sum(weights[name] * value for name, value in active.items()),
            **{f"loss_{name}": value for name, value in active.items()},
            similarity=similarity,
        )

    def contrastive_loss(
        self, vision_features: torch.Tensor, input_ids: torch.LongTensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        ITC over the batches of every process (this process's pairs are the positives of its rows), and the local
        image-text similarities `(batch_size, batch_size)` over the temperature.
        """
        hidden = self.run_qformer(vision_features, input_ids, attention_mask, "unimodal")
        num_queries = self.config.num_query_tokens
        image_feats = F.normalize(self.vision_projection(hidden[:, :num_queries]), dim=-1)
        text_feats = F.normalize(self.text_projection(hidden[:, num_queries]), dim=-1)
        all_images, real_images, start = gather_with_local_grad(image_feats)
        all_texts, real_texts, _ = gather_with_local_grad(text_feats)
        temperature = self.temperature.clamp(*TEMPERATURE_RANGE)
        image_to_text = query_text_similarity(image_feats, all_texts) / temperature
        text_to_image = query_text_similarity(all_images, text_feats).T / temperature
        targets = torch.arange(len(image_feats), device=image_feats.device) + start
        smoothing = self.config.label_smoothing
        loss = (
            contrastive_cross_entropy(image_to_text, targets, real_texts, smoothing)
            + contrastive_cross_entropy(text_to_image, targets, real_images, smoothing)
        ) / 2
        return loss, image_to_text[:, start : start + len(image_feats)]

    def matching_loss(
        self,
        vision_features: torch.Tensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        similarity: torch.Tensor,
    ) -> torch.Tensor:
        """
        ITM: binary cross-entropy over the positive pairs, a hard-negative text for every image and a hard-negative
        image for every text, drawn from `similarity` `(batch_size, batch_size)` (never an identical caption).
        """
        batch = torch.arange(len(input_ids), device=input_ids.device)
        same_text = (input_ids[:, None] == input_ids[None]).all(-1) & (
            attention_mask[:, None] == attention_mask[None]
        ).all(-1)
        negative_text = sample_hard_negatives(similarity, same_text)
        negative_image = sample_hard_negatives(similarity.T, same_text)
        has_text, has_image = negative_text >= 0, negative_image >= 0
        images = torch.cat([batch, batch[has_text], negative_image[has_image]])
        texts = torch.cat([batch, negative_text[has_text], batch[has_image]])
        labels = torch.cat(
            [torch.ones_like(batch), torch.zeros(len(images) - len(batch), dtype=torch.long, device=batch.device)]
        )
        logits = self.matching_logits(vision_features[images], input_ids[texts], attention_mask[texts])
        return F.cross_entropy(logits, labels)

    def generation_loss(
        self, vision_features: torch.Tensor, input_ids: torch.LongTensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """ITG: next-token cross-entropy of the caption, `[DEC]` in place of `[CLS]`, read from the queries."""
        decoder_ids = input_ids.clone()
        decoder_ids[:, 0] = self.config.decoder_token_id
        hidden = self.run_qformer(vision_features, decoder_ids, attention_mask, "multimodal_causal")
        scores = self.lm_head(hidden[:, self.config.num_query_tokens : -1], self.embeddings.word_embeddings.weight)
        labels = decoder_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
        return F.cross_entropy(
            scores.flatten(0, 1).float(),
            labels.flatten(),
            ignore_index=-100,
            label_smoothing=self.config.label_smoothing,
        )
