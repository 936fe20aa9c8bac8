# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Tiny, complete VLMs built offline: a tiny SigLIP and a tiny Qwen2 with random weights, and a processor whose
tokenizer is a small byte-level BPE trained on the fly with Qwen's pre-tokenizer, special tokens and chat template;
and a tiny BERT with a WordPiece tokenizer, from which the Q-Former's stage 1 starts offline. Tests, the offline demo
and the benchmarks use them; nothing here is downloaded.
"""

import functools
import json
import re
import string
import tempfile
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizer, GenerationConfig, PreTrainedTokenizerBase

from configuration_vlm import VLMConfig
from modeling_vlm import VLMForConditionalGeneration
from processing_vlm import VLMProcessor, make_chat_template


try:  # transformers 5.x: the PIL backend by name; `SiglipImageProcessor` is torchvision's and warns without it
    from transformers import SiglipImageProcessorPil
except ImportError:  # transformers 4.x, where `SiglipImageProcessor` is the PIL one
    from transformers import SiglipImageProcessor as SiglipImageProcessorPil

# Qwen2's pre-tokenizer split (from its tokenizer.json), followed by byte-level encoding.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
ENDOFTEXT, IM_START, IM_END, IMAGE_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"
TINY_VOCAB_SIZE = 1024

TINY_VISION_CONFIG: dict[str, Any] = {
    "model_type": "siglip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
    "vision_use_head": False,
}
# CLIP's tower at the tiny size, for LLaVA-1.5's bridge (a class token, pre-norm layers): `build_tiny_vlm(...,
# vision_config=TINY_CLIP_VISION_CONFIG)`.
TINY_CLIP_VISION_CONFIG: dict[str, Any] = {
    **{name: value for name, value in TINY_VISION_CONFIG.items() if name != "vision_use_head"},
    "model_type": "clip_vision_model",
}
# Chameleon's VQ image tokenizer at the tiny size, for tokenized fusion: 32 px images, 3 halvings -> a 4 x 4 grid of
# codes (the 16 tokens of the tiny SigLIP's patches) from a 256-entry codebook.
TINY_VQ_CONFIG: dict[str, Any] = {
    "model_type": "chameleon_vqgan",
    "embed_dim": 16,
    "num_embeddings": 256,
    "latent_channels": 32,
    "resolution": 32,
    "base_channels": 32,
    "channel_multiplier": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [],
}
TINY_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "qwen2",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}
# The shape of the tiny VLM's Q-Former (the vision width, 2 layers of 2 heads, FFN 4x), so that stage 1 maps onto it.
TINY_BERT_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 128,
}
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TINY_PROJECTOR_CONFIG: dict[str, Any] = {
    "qformer_num_queries": 8,
    "qformer_num_layers": 2,
    "qformer_num_heads": 2,
    "perceiver_num_latents": 8,
    "perceiver_num_layers": 2,
    "perceiver_num_heads": 2,
    # With fusion="cross_attention", a gated cross-attention block before each of the two decoder layers.
    "cross_attention_every": 1,
}


def _training_corpus() -> list[str]:
    """English the tiny models will read and write: the chat frame, captioning prompts and shape descriptions."""
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "pink"]
    shapes = ["circle", "square", "triangle", "star", "cross", "rectangle", "disc", "dot", "box", "shape"]
    places = ["on the left", "on the right", "at the top", "at the bottom", "in the centre", "in the middle"]
    sizes = ["small", "large", "big", "little", "tiny", "huge"]
    lines = [
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        "Describe the image briefly.",
        "A photo of a cat sitting on a sofa next to a window.",
        "There is a picture of a man riding a bicycle down the street.",
        "The image shows two people standing near a table with food.",
    ]
    for colour in colours:
        for shape in shapes:
            for size, place in zip(sizes, places):
                lines.append(f"A {size} {colour} {shape} {place} of the image.")
                lines.append(f"There is a {colour} {shape} {place}; it is {size}.")
    # The questions of `data.shapes_vqa` and LLaVA-1.5's short-answer prompt, with their answers.
    relations = ["to the left of", "to the right of", "above", "below"]
    for colour, shape, relation in zip(colours * 4, shapes * 4, relations * 10):
        lines += [
            f"Is there a {colour} {shape} in the image? yes no",
            f"What color is the {shape}? What shape is the {colour} object? Where is the {colour} {shape}?",
            f"Is the {colour} {shape} {relation} the {shape}? How many shapes are there in the image? 0 1 2 3",
        ]
    lines += ["Answer the question using a single word or phrase."] * 20
    # Short answers open the assistant's turn, with no space before them: "red", not " red".
    answers = [*colours, *shapes, "left", "right", "top", "bottom", "centre", "center", "middle", "yes", "no"]
    lines += answers * 20
    return lines


@functools.lru_cache(maxsize=None)
def _tiny_tokenizer_files(image_token: str) -> str:
    """Trains the BPE once per process and writes it as a Qwen2 tokenizer directory; returns the directory."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=[ENDOFTEXT, IM_START, IM_END, image_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_corpus(), trainer)
    directory = Path(tempfile.mkdtemp(prefix="tiny-qwen2-tokenizer-"))
    tokenizer.save(str(directory / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "additional_special_tokens": [IM_START, IM_END, image_token],
        "padding_side": "left",
        "model_max_length": 512,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return str(directory)


def build_tiny_tokenizer(image_token: str = IMAGE_TOKEN) -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer with Qwen2's pre-tokenizer and special tokens, trained offline in well under a second."""
    return AutoTokenizer.from_pretrained(_tiny_tokenizer_files(image_token))


def build_siglip_image_processor(image_size: int) -> SiglipImageProcessorPil:
    """
    SigLIP preprocessing (bicubic resize to `image_size`, rescale, normalise to [-1, 1]) on the PIL backend in every
    transformers version, so that the pixels never depend on whether torchvision is installed. Saved, it names itself
    `SiglipImageProcessor`, which 4.x and 5.x both load.
    """
    return SiglipImageProcessorPil(size={"height": image_size, "width": image_size})


def build_tiny_processor(
    num_image_tokens: int, image_token: str = IMAGE_TOKEN, max_tiles: int = 1, fusion: str = "early"
) -> VLMProcessor:
    """SigLIP preprocessing at the tiny tower's 32x32 resolution, with the tiny tokenizer and Qwen's chat template."""
    return VLMProcessor(
        image_processor=build_siglip_image_processor(TINY_VISION_CONFIG["image_size"]),
        tokenizer=build_tiny_tokenizer(image_token),
        chat_template=make_chat_template(image_token),
        num_image_tokens=num_image_tokens,
        image_token=image_token,
        max_tiles=max_tiles,
        fusion=fusion,
    )


def set_tiny_generation_config(model: VLMForConditionalGeneration, tokenizer: PreTrainedTokenizerBase) -> None:
    """Generation stops at `<|im_end|>` or `<|endoftext|>`, pads with `<|endoftext|>`, never emits the image token."""
    end_of_turn, pad = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    model.generation_config = GenerationConfig(eos_token_id=[end_of_turn, pad], pad_token_id=pad, bos_token_id=None)
    model.suppress_image_token()


def build_tiny_vlm(
    projector_type: str, seed: int = 0, **overrides
) -> tuple[VLMForConditionalGeneration, VLMProcessor]:
    """
    A complete tiny VLM with random weights and its processor, identical for a given `seed`. `overrides` are
    [`VLMConfig`] arguments; `vision_config` / `text_config` dicts update the tiny towers' settings (a `vision_config`
    of another `model_type`, such as `TINY_CLIP_VISION_CONFIG`, replaces the tiny SigLIP's). With
    `fusion="tokenized"` the tower is a tiny VQ tokenizer (`TINY_VQ_CONFIG`), initialised the same way in every
    transformers version (torch's default initialisation; transformers 4.57's would give every patch one code).
    """
    tokenized = overrides.get("fusion") == "tokenized"
    vision_config = overrides.pop("vision_config", TINY_VQ_CONFIG if tokenized else {})
    if vision_config.get("model_type", TINY_VISION_CONFIG["model_type"]) == TINY_VISION_CONFIG["model_type"]:
        vision_config = {**TINY_VISION_CONFIG, **vision_config}
    text_config = {**TINY_TEXT_CONFIG, **overrides.pop("text_config", {})}
    image_token = overrides.pop("image_token", IMAGE_TOKEN)
    tokenizer = build_tiny_tokenizer(image_token)
    end_of_turn, pad = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    text_config.update(vocab_size=len(tokenizer), eos_token_id=end_of_turn, pad_token_id=pad, bos_token_id=None)
    config = VLMConfig(
        vision_config=vision_config,
        text_config=text_config,
        projector_type=projector_type,
        image_token=image_token,
        image_token_id=tokenizer.convert_tokens_to_ids(image_token),
        **{**TINY_PROJECTOR_CONFIG, **overrides},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VLMForConditionalGeneration(config)
        if tokenized:
            for module in model.vision_tower.modules():
                if module is not model.vision_tower and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    set_tiny_generation_config(model, tokenizer)
    model.eval()
    return model, build_tiny_processor(config.num_image_tokens, image_token, config.max_tiles, config.fusion)


@functools.lru_cache(maxsize=None)
def _tiny_bert_vocabulary() -> str:
    """A WordPiece vocabulary of the tiny corpus's words, digits and punctuation, written once per process."""
    words = sorted({w for line in _training_corpus() for w in re.findall(r"[a-z]+", line.lower())})
    characters = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    pieces = [*BERT_SPECIAL_TOKENS, *characters, *(f"##{c}" for c in string.ascii_lowercase), *words]
    directory = Path(tempfile.mkdtemp(prefix="tiny-bert-vocabulary-"))
    (directory / "vocab.txt").write_text("\n".join(dict.fromkeys(pieces)) + "\n")
    return str(directory / "vocab.txt")


def build_tiny_bert(seed: int = 0) -> tuple[BertModel, PreTrainedTokenizerBase]:
    """A tiny BERT with random weights (identical for a given `seed`) and its lower-casing WordPiece tokenizer."""
    tokenizer = BertTokenizer(_tiny_bert_vocabulary(), do_lower_case=True)
    config = BertConfig(vocab_size=len(tokenizer), **TINY_BERT_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    return model.eval(), tokenizer
