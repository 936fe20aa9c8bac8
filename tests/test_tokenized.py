"""
Tokenized early fusion (`fusion="tokenized"`, Chameleon): a frozen VQ image tokenizer's codes fill the image
placeholders through trainable code embeddings; the codes are the tokenizer's own, text reads as the bare language
model, generation, tiles, loading the tokenizer from a Chameleon checkpoint, and the errors of bad settings (training:
`test_tokenized_training.py`).
"""

import io

import pytest
import torch
from model_checks import assert_generation_is_consistent, prompt_batch
from PIL import Image
from transformers import ChameleonConfig, ChameleonForConditionalGeneration, ChameleonImageProcessor

from configuration_vlm import VLMConfig
from data.shapes import shapes_scenes
from modeling_vlm import VLMForConditionalGeneration
from models.tiny import TINY_TEXT_CONFIG, TINY_VISION_CONFIG, TINY_VQ_CONFIG, build_tiny_vlm
from processing_vlm import IS_TRANSFORMERS_4


def build_tokenized_vlm(seed: int = 0, **overrides):
    return build_tiny_vlm("codebook", seed=seed, fusion="tokenized", **overrides)


def test_codes_fill_the_placeholders_through_the_code_embeddings(images):
    model, processor = build_tokenized_vlm()
    early, _ = build_tiny_vlm("mlp")
    assert (model.config.num_image_tokens, type(model.vision_tower).__name__) == (16, "ChameleonVQVAE")
    new = {name for name in model.state_dict() if name.startswith(("vision_tower.", "multi_modal_projector."))}
    assert set(model.state_dict()) - new == {n for n in early.state_dict() if not n.startswith(("vision_", "multi_"))}
    assert model.multi_modal_projector.embed_codes.weight.shape == (256, 64)  # the codebook's entries, the LM's width

    batch = prompt_batch(processor, images[:2])
    with torch.no_grad():
        codes = model.get_vision_features(batch["pixel_values"])
        assert codes.dtype == torch.long and codes.shape == (2, 16) and len(codes.unique()) > 2
        placeholders = batch["input_ids"] == model.config.image_token_id
        embeds = model.get_input_embeddings()(batch["input_ids"])
        embeds[placeholders] = model.multi_modal_projector.embed_codes.weight[codes.flatten()]
        expected = model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
        assert torch.equal(model(**batch).logits, expected)
        assert torch.equal(model(input_ids=batch["input_ids"], vision_features=codes).logits, expected)


def test_the_codes_are_the_vq_tokenizers_own(images):
    model, processor = build_tokenized_vlm(seed=3)
    pixel_values = prompt_batch(processor, images)["pixel_values"]
    with torch.no_grad():
        encoded = model.vision_tower.encode(pixel_values)
        indices = encoded[2] if IS_TRANSFORMERS_4 else encoded.image_tokens  # the library's own path, per version
        assert torch.equal(model.get_vision_features(pixel_values), indices.view(3, 16))
        scenes = [Image.open(io.BytesIO(scene.png)).convert("RGB") for scene in shapes_scenes(64, split="test")]
        pixel_values = processor.image_processor(scenes, return_tensors="pt")["pixel_values"]
        codes = model.get_vision_features(pixel_values)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as the feature cache computes them in a bf16 run
            assert torch.equal(model.get_vision_features(pixel_values), codes)  # the library's path moves 3 of 1,024


def test_text_reads_as_the_bare_language_model(images):
    model, processor = build_tokenized_vlm()
    batch = prompt_batch(processor, images[:2])
    text = processor.tokenizer(["No picture here."], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**text).logits, model.language_model(**text).logits)
        first = int((batch["input_ids"][0] == model.config.image_token_id).nonzero()[0])
        bare = model.language_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = model(**batch).logits
        assert torch.equal(logits[:, :first], bare[:, :first])
        assert not torch.allclose(logits[:, -1], bare[:, -1])


def test_generation_with_cache_equals_without_and_batched_equals_one_by_one(images):
    model, processor = build_tokenized_vlm()
    assert_generation_is_consistent(model, processor, images)


def test_tiles_tokenize_every_tile():
    model, processor = build_tokenized_vlm(max_tiles=4)
    batch = prompt_batch(processor, [Image.new("RGB", (96, 40), (220, 30, 30))])
    assert batch["num_tiles"].tolist() == [3]  # 2 x 1 tiles and a thumbnail, each tagged, 16 codes each
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 3 * 16
    with torch.no_grad():
        assert model(**batch).logits.shape[1] == batch["input_ids"].shape[1]


def test_the_tokenizer_loads_from_a_chameleon_checkpoint(tmp_path, images):
    vq_settings = {name: value for name, value in TINY_VQ_CONFIG.items() if name != "model_type"}
    chameleon_config = ChameleonConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, vq_config=vq_settings, vocabulary_map={"<image>": 299},
    )  # fmt: skip
    torch.manual_seed(0)
    chameleon = ChameleonForConditionalGeneration(chameleon_config).eval()
    chameleon.save_pretrained(tmp_path / "chameleon")
    ChameleonImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "chameleon"
    )
    tiny, tiny_processor = build_tiny_vlm("mlp")
    tiny.language_model.save_pretrained(tmp_path / "qwen")
    tiny_processor.tokenizer.save_pretrained(tmp_path / "qwen")

    model, processor = VLMForConditionalGeneration.from_pretrained_backbones(
        vision=str(tmp_path / "chameleon"), text=str(tmp_path / "qwen"), fusion="tokenized"
    )
    assert (model.config.projector_type, model.config.num_image_tokens) == ("codebook", 16)
    pixel_values = prompt_batch(processor, images[:2])["pixel_values"]
    assert pixel_values.shape == (2, 3, 32, 32)  # Chameleon's own preprocessing, at the checkpoint's size
    with torch.no_grad():
        own = chameleon.model.vqmodel.quantize(chameleon.model.vqmodel.quant_conv(
            chameleon.model.vqmodel.encoder(pixel_values)))[2].view(2, 16)  # fmt: skip
        assert torch.equal(model.get_vision_features(pixel_values), own)

    chameleon.model.vqmodel.save_pretrained(tmp_path / "vq")  # a VQ tokenizer on its own (4.57's AutoConfig lacks it)
    processor.image_processor.save_pretrained(tmp_path / "vq")
    alone, _ = VLMForConditionalGeneration.from_pretrained_backbones(
        vision=str(tmp_path / "vq"), text=str(tmp_path / "qwen"), fusion="tokenized"
    )
    with torch.no_grad():
        assert torch.equal(alone.get_vision_features(pixel_values), own)

    (tmp_path / "empty").mkdir()
    tiny.language_model.save_pretrained(tmp_path / "empty")  # weights, but none of a VQ tokenizer's
    ChameleonConfig(vq_config=vq_settings).save_pretrained(tmp_path / "empty")
    with pytest.raises(ValueError, match="holds no VQ image tokenizer weights .* 77 are missing"):
        VLMForConditionalGeneration.from_pretrained_backbones(
            vision=str(tmp_path / "empty"), text=str(tmp_path / "qwen"), fusion="tokenized"
        )


def test_bad_settings_are_refused():
    text = {**TINY_TEXT_CONFIG, "vocab_size": 1024}
    with pytest.raises(ValueError, match="fusion='tokenized' needs a VQ image tokenizer .* as the vision tower"):
        VLMConfig(vision_config=TINY_VISION_CONFIG, text_config=text, fusion="tokenized")
    with pytest.raises(ValueError, match="a VQ tokenizer needs fusion='tokenized'"):
        VLMConfig(vision_config=TINY_VQ_CONFIG, text_config=text)
    with pytest.raises(ValueError, match="projector_type='mlp' with fusion='tokenized'"):
        VLMConfig(vision_config=TINY_VQ_CONFIG, text_config=text, fusion="tokenized", projector_type="mlp")
    with pytest.raises(ValueError, match="projector_type='codebook' with fusion='early'"):
        VLMConfig(vision_config=TINY_VISION_CONFIG, text_config=text, projector_type="codebook")
    with pytest.raises(ValueError, match="vision_feature_layer=-2 is invalid with fusion='tokenized'"):
        VLMConfig(vision_config=TINY_VQ_CONFIG, text_config=text, fusion="tokenized", vision_feature_layer=-2)
    for fusion, projector_type in (("cross_attention", None), ("tokenized", "qformer"), ("tokenized", "perceiver")):
        with pytest.raises(ValueError, match=f"fusion='{fusion}'"):  # refused before the width checks need a tower
            VLMConfig(vision_config=TINY_VQ_CONFIG, text_config=text, fusion=fusion, projector_type=projector_type)
    saved = VLMConfig(vision_config=TINY_VQ_CONFIG, text_config=text, fusion="tokenized").to_dict()
    assert VLMConfig.from_dict(saved).vision_config.num_embeddings == 256  # the VQ config round-trips (4.57 too)
