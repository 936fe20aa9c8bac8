# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""VLM configuration: a frozen vision tower, a configurable projector and a causal language model."""

from typing import Any

import transformers
from transformers import AutoConfig, PretrainedConfig
from transformers.activations import ACT2FN


PROJECTOR_TYPES = ("linear", "mlp", "qformer", "perceiver")
# Tokenized early fusion's bridge: a trainable embedding per code of the VQ image tokenizer.
CODEBOOK = "codebook"
FUSION_TYPES = ("early", "cross_attention", "hybrid", "visual_expert", "adapter", "tokenized")
# The fusions with gated cross-attention blocks in the language model.
DEEP_FUSIONS = ("cross_attention", "hybrid")
# The fusions whose decoder layers read each image's visual tokens as keys and values, kept with the cache.
KEY_VALUE_FUSIONS = (*DEEP_FUSIONS, "adapter")
# The fusions where an image is one marker token in the language model's sequence.
MARKER_FUSIONS = ("cross_attention", "adapter")
# The fusions whose images fill their placeholders in the language model's sequence, every tile with its tag.
SEQUENCE_FUSIONS = ("early", "visual_expert", "tokenized")
VISION_FEATURE_SELECT_STRATEGIES = ("default", "full")
# Vision towers whose token sequence starts with a class token (CLIP's); SigLIP's has none.
TOWERS_WITH_CLASS_TOKEN = ("clip_vision_model",)
# VQ image tokenizers (tokenized early fusion) and their config classes: transformers 4.57's AutoConfig does not know
# `chameleon_vqgan` (5.x's does).
VQ_TOKENIZER_CONFIGS = {"chameleon_vqgan": "ChameleonVQVAEConfig"}

# SigLIP-base-patch16-224: 224 px images, 16 px patches -> 196 patch tokens of width 768.
DEFAULT_VISION_CONFIG: dict[str, Any] = {
    "model_type": "siglip_vision_model",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "vision_use_head": False,
}

# Qwen2.5-0.5B-Instruct.
DEFAULT_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}

# `<image>` appended to Qwen2.5's tokenizer (151,665 tokens) gets this id.
DEFAULT_IMAGE_TOKEN_ID = 151665

# What a saved config must hold: the defaults in their place (full-size SigLIP and Qwen2.5, an `mlp` projector, early
# fusion, Qwen2.5's image token id) would build a model that its saved weights do not fit.
REQUIRED_SAVED_FIELDS = ("vision_config", "text_config", "projector_type", "fusion", "image_token_id")


def build_sub_config(value: dict | PretrainedConfig | None, default: dict[str, Any], name: str) -> PretrainedConfig:
    """`value` as a config: itself, `default` when it is `None`, or a dict with a `model_type` key."""
    if isinstance(value, PretrainedConfig):
        return value
    if value is None:
        value = default
    if not isinstance(value, dict) or "model_type" not in value:
        raise ValueError(
            f"`{name}` must be a PretrainedConfig or a dict with a 'model_type' key, got {value!r}. "
            f"For example: {{'model_type': '{default['model_type']}', ...}}."
        )
    value = dict(value)
    model_type = value.pop("model_type")
    if model_type in VQ_TOKENIZER_CONFIGS:
        return getattr(transformers, VQ_TOKENIZER_CONFIGS[model_type])(**value)
    return AutoConfig.for_model(model_type, **value)


class VLMConfig(PretrainedConfig):
    r"""
    Configuration of [`VLMForConditionalGeneration`]: a vision tower whose patch tokens are turned into
    `num_visual_tokens` language-model embeddings by a projector, and a causal language model that reads them at
    the positions of the image placeholder token (`fusion="early"`) or through gated cross-attention blocks between
    its decoder layers (`fusion="cross_attention"`).

    Args:
        vision_config (`dict` or `PretrainedConfig`, *optional*):
            Vision tower config; any model whose `AutoModel` returns patch tokens, or a VQ image tokenizer (Chameleon's
            `ChameleonVQVAEConfig`) for tokenized fusion. Defaults to SigLIP-base-patch16-224.
        text_config (`dict` or `PretrainedConfig`, *optional*):
            Causal language model config. Defaults to Qwen2.5-0.5B-Instruct.
        projector_type (`str`, *optional*):
            One of `"linear"` (one Linear), `"mlp"` (LLaVA-1.5: Linear, GELU, Linear), `"qformer"` (BLIP-2 Q-Former
            with learned queries) or `"perceiver"` (Flamingo Perceiver Resampler with learned latents); `"codebook"`
            (a trainable embedding per code) with tokenized fusion, and only there. Defaults to `"mlp"` with early
            fusion, to `"perceiver"` (Flamingo's) with cross-attention fusion and to `"codebook"` with tokenized fusion.
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the MLP projector and of the Q-Former / Perceiver feed-forward blocks.
        projector_dropout (`float`, *optional*, defaults to 0.0):
            Dropout inside the Q-Former (attention and hidden states).
        qformer_num_queries (`int`, *optional*, defaults to 32):
            Learned queries of the Q-Former, i.e. its number of output tokens.
        qformer_num_layers (`int`, *optional*, defaults to 12):
            Q-Former layers (self-attention and FFN in each).
        qformer_num_heads (`int`, *optional*, defaults to 12):
            Attention heads of the Q-Former; must divide the vision hidden size.
        qformer_cross_attention_frequency (`int`, *optional*, defaults to 2):
            A cross-attention to the patch tokens every this many layers (2: every other layer, starting with the first).
        qformer_hidden_size (`int`, *optional*):
            Width of the Q-Former and its queries. Defaults to the vision hidden size; a Q-Former initialised from BERT
            (BLIP-2 stage 1) has BERT's width, and its cross-attention reads the vision width.
        qformer_intermediate_size (`int`, *optional*):
            Width of the Q-Former's feed-forward blocks. Defaults to `qformer_hidden_size * projector_ffn_multiplier`.
        perceiver_num_latents (`int`, *optional*, defaults to 64):
            Learned latents of the Perceiver Resampler, i.e. its number of output tokens.
        perceiver_num_layers (`int`, *optional*, defaults to 2):
            Perceiver Resampler layers.
        perceiver_num_heads (`int`, *optional*, defaults to 12):
            Attention heads of the Perceiver Resampler; must divide the vision hidden size.
        projector_ffn_multiplier (`int`, *optional*, defaults to 4):
            Width of the Q-Former and Perceiver feed-forward blocks, as a multiple of the vision hidden size.
        vision_feature_layer (`int`, *optional*, defaults to -1):
            Vision layer whose patch tokens feed the projector. `-1` is the tower's `last_hidden_state` (for SigLIP,
            after its post-LayerNorm); other values index `hidden_states` (0 = embeddings, k = output of layer k).
        vision_feature_select_strategy (`str`, *optional*, defaults to `"default"`):
            Which of the vision layer's tokens feed the projector, as LLaVA names it: `"default"` drops the class
            token of a tower that has one (CLIP's; LLaVA-1.5 with `vision_feature_layer=-2`), `"full"` keeps it.
            Towers without a class token (SigLIP) give all their patch tokens either way.
        max_tiles (`int`, *optional*, defaults to 1):
            Dynamic resolution (InternVL, NVLM): the processor cuts each image into up to this many tiles of the
            tower's input size on the grid closest to its aspect ratio, plus a whole-image thumbnail when there is more
            than one; every tile goes through the tower and the projector. With early fusion each tile's tokens
            follow its tag in the text (`<tile_1>`, ..., `<tile_global_thumbnail>`); with cross-attention fusion the
            text after an image's marker attends to all its tiles' tokens. 1 keeps the whole image, resized.
        image_token (`str`, *optional*, defaults to `"<image>"`):
            Placeholder token that the processor repeats `num_image_tokens` times per image (once with cross-attention
            fusion, where it marks the image that the text after it attends to).
        image_token_id (`int`, *optional*, defaults to 151665):
            Id of `image_token` in the tokenizer.
        fusion (`str`, *optional*, defaults to `"early"`):
            How the language model reads the projected image tokens. `"early"` (LLaVA): they replace
            `num_image_tokens` placeholders in the input sequence. `"hybrid"` (NVLM-H): the whole image (the
            thumbnail, with `max_tiles > 1`) goes into the sequence as with early fusion, and the text after it reads
            the image's high-resolution tiles through gated cross-attention blocks. `"cross_attention"` (Flamingo, Llama 3.2 Vision):
            each image is one marker token in the sequence, and gated cross-attention blocks inserted before some
            decoder layers let every text token attend to the image tokens of the most recent image before it.
            `"visual_expert"` (CogVLM): the images fill their placeholders as with early fusion, and in the decoder
            layers of `visual_expert_every` the image positions go through trainable copies of the layer's attention
            projections and MLP (the visual experts) while the text positions keep the language model's own.
            `"adapter"` (LLaMA-Adapter V2): each image is one marker token, and in the top `adapter_num_layers`
            decoder layers learned adaption prompts plus the image's visual tokens are extra keys and values of the
            self-attention, in a softmax of their own scaled by a zero-initialised gate per head. `"tokenized"`
            (Chameleon): the vision tower is a frozen VQ image tokenizer (`vision_config` of model_type
            `"chameleon_vqgan"`), each image's codes fill its placeholders through the `"codebook"` embeddings.
        cross_attention_every (`int`, *optional*, defaults to 4):
            With `fusion="cross_attention"` or `"hybrid"`, a block before every this many decoder layers: before layers
            `every - 1, 2 * every - 1, ...` (OpenFlamingo's placement). Ignored when `cross_attention_layers` is set.
        cross_attention_layers (`list[int]`, *optional*):
            With `fusion="cross_attention"` or `"hybrid"`, the 0-based decoder layers that get a block before them, instead of
            `cross_attention_every` (transformers' Mllama calls its list the same).
        visual_expert_every (`int`, *optional*, defaults to 1):
            With `fusion="visual_expert"`, visual experts in every this many decoder layers: layers `0, every,
            2 * every, ...` (1: every layer, as in CogVLM).
        adapter_num_layers (`int`, *optional*):
            With `fusion="adapter"`, adaption prompts in the top this many decoder layers (LLaMA-Adapter's L: 30 of
            LLaMA-7B's 32); `None`: every layer.
        loss_chunk_size (`int`, *optional*):
            Training loss only: the LM head and cross-entropy run over this many labelled positions at a time
            (`torch.nn.functional.linear_cross_entropy`, torch >= 2.13), so the `(labelled positions, vocab_size)`
            logits and their gradient are never all in memory at once. `None` computes them in one piece.
    """

    model_type = "vlm"
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config: dict | PretrainedConfig | None = None,
        text_config: dict | PretrainedConfig | None = None,
        projector_type: str | None = None,
        projector_hidden_act: str = "gelu",
        projector_dropout: float = 0.0,
        qformer_num_queries: int = 32,
        qformer_num_layers: int = 12,
        qformer_num_heads: int = 12,
        qformer_cross_attention_frequency: int = 2,
        qformer_hidden_size: int | None = None,
        qformer_intermediate_size: int | None = None,
        perceiver_num_latents: int = 64,
        perceiver_num_layers: int = 2,
        perceiver_num_heads: int = 12,
        projector_ffn_multiplier: int = 4,
        vision_feature_layer: int = -1,
        vision_feature_select_strategy: str = "default",
        max_tiles: int = 1,
        image_token: str = "<image>",
        image_token_id: int = DEFAULT_IMAGE_TOKEN_ID,
        fusion: str = "early",
        cross_attention_every: int = 4,
        cross_attention_layers: list[int] | None = None,
        visual_expert_every: int = 1,
        adapter_num_layers: int | None = None,
        loss_chunk_size: int | None = None,
        **kwargs,
    ):
        self.vision_config = build_sub_config(vision_config, DEFAULT_VISION_CONFIG, "vision_config")
        self.text_config = build_sub_config(text_config, DEFAULT_TEXT_CONFIG, "text_config")
        self.projector_type = projector_type or {"cross_attention": "perceiver", "tokenized": CODEBOOK}.get(fusion, "mlp")
        self.projector_hidden_act = projector_hidden_act
        self.projector_dropout = projector_dropout
        self.qformer_num_queries = qformer_num_queries
        self.qformer_num_layers = qformer_num_layers
        self.qformer_num_heads = qformer_num_heads
        self.qformer_cross_attention_frequency = qformer_cross_attention_frequency
        self.qformer_hidden_size = qformer_hidden_size
        self.qformer_intermediate_size = qformer_intermediate_size
        self.perceiver_num_latents = perceiver_num_latents
        self.perceiver_num_layers = perceiver_num_layers
        self.perceiver_num_heads = perceiver_num_heads
        self.projector_ffn_multiplier = projector_ffn_multiplier
        self.vision_feature_layer = vision_feature_layer
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.max_tiles = max_tiles
        self.image_token = image_token
        self.image_token_id = image_token_id
        self.fusion = fusion
        self.cross_attention_every = cross_attention_every
        self.cross_attention_layers = list(cross_attention_layers) if cross_attention_layers is not None else None
        self.visual_expert_every = visual_expert_every
        self.adapter_num_layers = adapter_num_layers
        self.loss_chunk_size = loss_chunk_size
        kwargs.setdefault("tie_word_embeddings", getattr(self.text_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)
        self.validate_tokenized()  # first: the projector's checks read a vision width that a VQ tokenizer lacks
        self.validate_projector()
        self.validate_vision_features()
        self.validate_fusion()
        self.validate_adapter()

    def validate_projector(self) -> None:
        """Raises `ValueError` naming the field, its value and what is allowed when a projector setting is invalid."""
        if self.projector_type not in (*PROJECTOR_TYPES, CODEBOOK):
            raise ValueError(
                f"Unknown projector_type={self.projector_type!r}; choose one of {', '.join(map(repr, PROJECTOR_TYPES))} "
                f"(or {CODEBOOK!r} with fusion='tokenized')."
            )
        activation = self.projector_hidden_act
        if not isinstance(activation, str) or activation not in ACT2FN:
            raise ValueError(
                f"projector_hidden_act={activation!r} is invalid; choose one of {', '.join(map(repr, sorted(ACT2FN)))} "
                "(the keys of transformers.activations.ACT2FN)."
            )
        for name in (
            "qformer_num_queries",
            "qformer_num_layers",
            "qformer_num_heads",
            "qformer_cross_attention_frequency",
            "perceiver_num_latents",
            "perceiver_num_layers",
            "perceiver_num_heads",
            "projector_ffn_multiplier",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid; it must be a positive integer.")
        for name in ("qformer_hidden_size", "qformer_intermediate_size", "loss_chunk_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} is invalid; it must be a positive integer (or None).")
        dropout = self.projector_dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"projector_dropout={dropout!r} is invalid; it must be in [0, 1).")
        token_id = self.image_token_id
        if isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0:
            raise ValueError(f"image_token_id={token_id!r} is invalid; it must be a token id (an integer >= 0).")
        if not isinstance(self.image_token, str) or not self.image_token:
            raise ValueError(f"image_token={self.image_token!r} is invalid; it must be a non-empty string.")
        for name, what in (("qformer_num_heads", "the Q-Former width"), ("perceiver_num_heads", "the vision hidden size")):
            projector = name.split("_")[0]
            if self.projector_type != projector:
                continue
            width = self.qformer_width if projector == "qformer" else self.vision_config.hidden_size
            if width % getattr(self, name):
                raise ValueError(f"{name}={getattr(self, name)} is invalid; it must divide {what} ({width}).")
        if self.is_vq_tokenizer:
            return
        num_layers = self.vision_config.num_hidden_layers
        # Index `num_layers` is left out: it is `hidden_states[-1]`, which differs between transformers 4.x and 5.x.
        layer = self.vision_feature_layer
        if isinstance(layer, bool) or not isinstance(layer, int) or not -num_layers - 1 <= layer < num_layers:
            raise ValueError(
                f"vision_feature_layer={layer!r} is invalid; it must be an integer in [{-num_layers - 1}, "
                f"{num_layers - 1}] for a vision tower with {num_layers} layers (-1: the tower's last_hidden_state)."
            )

    def validate_vision_features(self) -> None:
        """Raises `ValueError` naming the field when `vision_feature_select_strategy` or `max_tiles` is invalid."""
        strategy = self.vision_feature_select_strategy
        if strategy not in VISION_FEATURE_SELECT_STRATEGIES:
            raise ValueError(
                f"vision_feature_select_strategy={strategy!r} is invalid; choose 'default' (drop a class token) or "
                "'full' (keep it)."
            )
        tiles = self.max_tiles
        if isinstance(tiles, bool) or not isinstance(tiles, int) or tiles < 1:
            raise ValueError(f"max_tiles={tiles!r} is invalid; it must be a positive integer (1: no tiles).")

    def validate_fusion(self) -> None:
        """Raises `ValueError` naming the field when the fusion settings are invalid or place no cross-attention."""
        if self.fusion not in FUSION_TYPES:
            raise ValueError(f"Unknown fusion={self.fusion!r}; choose one of {', '.join(map(repr, FUSION_TYPES))}.")
        for name in ("cross_attention_every", "visual_expert_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid; it must be a positive integer.")
        every = self.cross_attention_every
        layers, num_layers = self.cross_attention_layers, self.text_config.num_hidden_layers
        if layers is not None and self.fusion not in DEEP_FUSIONS:
            raise ValueError(
                f"cross_attention_layers={layers!r} is set but fusion={self.fusion!r}; set fusion='cross_attention' "
                "(or 'hybrid') or leave cross_attention_layers out."
            )
        if layers is not None and (
            not layers
            or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers for i in layers)
            or len(set(layers)) != len(layers)
        ):
            raise ValueError(
                f"cross_attention_layers={layers!r} is invalid; it must be a non-empty list of distinct decoder layer "
                f"indices in [0, {num_layers - 1}] (the language model has {num_layers} layers)."
            )
        if self.fusion in DEEP_FUSIONS and not self.cross_attention_layer_indices:
            raise ValueError(
                f"cross_attention_every={every} places no cross-attention block in a language model of {num_layers} "
                f"layers; use a value of at most {num_layers}, or list the layers in cross_attention_layers."
            )
        text_dim, num_heads = self.text_config.hidden_size, self.text_config.num_attention_heads
        if self.fusion in DEEP_FUSIONS and text_dim % num_heads:
            raise ValueError(
                f"fusion={self.fusion!r} splits the language model's hidden size ({text_dim}) over its "
                f"num_attention_heads ({num_heads}), which must divide it."
            )

    def validate_adapter(self) -> None:
        """Raises `ValueError` naming the field when `adapter_num_layers` is invalid or set without adapter fusion."""
        adapted, num_layers = self.adapter_num_layers, self.text_config.num_hidden_layers
        if adapted is not None and self.fusion != "adapter":
            raise ValueError(
                f"adapter_num_layers={adapted!r} is set but fusion={self.fusion!r}; set fusion='adapter' or leave "
                "adapter_num_layers out."
            )
        valid = isinstance(adapted, int) and not isinstance(adapted, bool) and 0 < adapted <= num_layers
        if adapted is not None and not valid:
            raise ValueError(
                f"adapter_num_layers={adapted!r} is invalid; it must be an integer in [1, {num_layers}] (the language "
                f"model has {num_layers} layers), or None for every layer."
            )

    def validate_tokenized(self) -> None:
        """
        Raises `ValueError` naming the field unless tokenized fusion, the `codebook` bridge and a VQ image tokenizer as
        the vision config come together.
        """
        tokenized, codebook = self.fusion == "tokenized", self.projector_type == CODEBOOK
        model_type = self.vision_config.model_type
        if tokenized != codebook:
            raise ValueError(
                f"projector_type={self.projector_type!r} with fusion={self.fusion!r}: tokenized fusion reads the codes "
                f"of a VQ image tokenizer through projector_type={CODEBOOK!r}, and only it; set both or neither."
            )
        if tokenized != self.is_vq_tokenizer:
            kinds = ", ".join(map(repr, VQ_TOKENIZER_CONFIGS))
            raise ValueError(
                f"fusion={self.fusion!r} with a vision_config of model_type {model_type!r}: fusion='tokenized' needs a "
                f"VQ image tokenizer ({kinds}) as the vision tower, and a VQ tokenizer needs fusion='tokenized'."
            )
        if tokenized and self.vision_feature_layer != -1:
            raise ValueError(
                f"vision_feature_layer={self.vision_feature_layer!r} is invalid with fusion='tokenized': the VQ "
                "tokenizer gives its codes only; leave vision_feature_layer at -1."
            )

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> "VLMConfig":
        """A saved config (`config.json`, what `from_pretrained` reads), refused when it lacks a required field."""
        missing = [name for name in REQUIRED_SAVED_FIELDS if config_dict.get(name) is None and name not in kwargs]
        if missing:
            raise ValueError(
                f"The VLM config lacks {', '.join(missing)}: a config saved with the model holds them, and the "
                "defaults in their place (full-size SigLIP and Qwen2.5, an mlp projector, early fusion) would build a "
                "model that its weights do not fit. Restore them from the config the model was saved with."
            )
        return super().from_dict(config_dict, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        for name in ("vision_config", "text_config"):
            rope_parameters = output[name].get("rope_parameters")
            if isinstance(rope_parameters, dict) and "rope_theta" in rope_parameters:
                # transformers 5.x keeps RoPE settings in `rope_parameters`; 4.x reads only `rope_theta` / `rope_scaling`
                # and would silently fall back to its default base (10,000 instead of Qwen2.5's 1,000,000).
                output[name]["rope_theta"] = rope_parameters["rope_theta"]
                if rope_parameters.get("rope_type", "default") != "default":
                    output[name]["rope_scaling"] = {k: v for k, v in rope_parameters.items() if k != "rope_theta"}
        return output

    @property
    def qformer_width(self) -> int:
        """Width of the Q-Former's queries and layers: `qformer_hidden_size`, else the vision hidden size."""
        return self.qformer_hidden_size or self.vision_config.hidden_size

    @property
    def qformer_ffn_width(self) -> int:
        """Width of the Q-Former's feed-forward blocks."""
        return self.qformer_intermediate_size or self.qformer_width * self.projector_ffn_multiplier

    @property
    def is_vq_tokenizer(self) -> bool:
        """Whether the vision tower is a VQ image tokenizer, whose features are one discrete code per latent cell."""
        return self.vision_config.model_type in VQ_TOKENIZER_CONFIGS

    @property
    def drops_class_token(self) -> bool:
        """Whether the vision tower's class token is left out of its features (`vision_feature_select_strategy`)."""
        has_class_token = self.vision_config.model_type in TOWERS_WITH_CLASS_TOKEN
        return has_class_token and self.vision_feature_select_strategy == "default"

    @property
    def num_patches(self) -> int:
        """Tokens the vision features hold per image: the patch tokens, and a kept class token."""
        if self.is_vq_tokenizer:  # each downsampling level but the last halves the image side
            vq_config = self.vision_config
            return (vq_config.resolution // 2 ** (len(vq_config.channel_multiplier) - 1)) ** 2
        patches = (self.vision_config.image_size // self.vision_config.patch_size) ** 2
        has_class_token = self.vision_config.model_type in TOWERS_WITH_CLASS_TOKEN
        return patches + int(has_class_token and not self.drops_class_token)

    @property
    def num_visual_tokens(self) -> int:
        """
        Tokens the projector makes of one image: all patches (linear, mlp) or codes (codebook), or the learned
        queries/latents.
        """
        if self.projector_type == "qformer":
            return self.qformer_num_queries
        if self.projector_type == "perceiver":
            return self.perceiver_num_latents
        return self.num_patches

    @property
    def num_image_tokens(self) -> int:
        """
        Language-model positions one image occupies: its `num_visual_tokens` with early fusion, one marker token with
        cross-attention or adapter fusion (the visual tokens are then keys and values of the cross-attention blocks or
        of the adaption prompts).
        """
        return 1 if self.fusion in MARKER_FUSIONS else self.num_visual_tokens

    @property
    def visual_expert_layer_indices(self) -> list[int]:
        """The decoder layers with visual experts (none but with `fusion="visual_expert"`)."""
        if self.fusion != "visual_expert":
            return []
        return list(range(0, self.text_config.num_hidden_layers, self.visual_expert_every))

    @property
    def adapter_layer_indices(self) -> list[int]:
        """The decoder layers with adaption prompts (none but with `fusion="adapter"`): the top `adapter_num_layers`."""
        if self.fusion != "adapter":
            return []
        num_layers = self.text_config.num_hidden_layers
        return list(range(num_layers - (self.adapter_num_layers or num_layers), num_layers))

    @property
    def cross_attention_layer_indices(self) -> list[int]:
        """The decoder layers with a gated cross-attention block before them (none with early fusion)."""
        if self.fusion not in DEEP_FUSIONS:
            return []
        if self.cross_attention_layers is not None:
            return sorted(self.cross_attention_layers)
        every = self.cross_attention_every
        return list(range(every - 1, self.text_config.num_hidden_layers, every))


__all__ = ["VLMConfig"]
