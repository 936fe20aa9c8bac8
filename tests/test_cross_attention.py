"""
Cross-attention fusion (`fusion="cross_attention"`): gated blocks before the frozen decoder layers, Flamingo's media
masking, generation with the keys and values cached once, and the errors of bad input.
"""

import pytest
import torch
from model_checks import (
    BERT_DECODER_TEXT_CONFIG,
    assert_checkpointing_gives_the_same_gradients,
    labelled_caption_batch,
    prompt_batch,
)

from configuration_vlm import VLMConfig
from cross_attention_vlm import IMAGE_CACHE_ATTRIBUTE, cross_attention_context
from evaluation.captioning import caption_messages
from modeling_vlm import CACHE_NAME, VLMForConditionalGeneration
from models.tiny import TINY_VISION_CONFIG, build_tiny_vlm


def build_deep_vlm(projector_type: str = "perceiver", gate: float | None = 0.7, seed: int = 0, **overrides):
    """A tiny cross-attention VLM; with `gate`, every gate set to it so that the images change the output."""
    model, processor = build_tiny_vlm(projector_type, seed=seed, fusion="cross_attention", **overrides)
    if gate is not None:
        with torch.no_grad():
            for block in model.cross_attention_blocks.values():
                block.attention_gate.fill_(gate)
                block.ffn_gate.fill_(-gate)
    return model, processor


def two_image_text(processor) -> str:
    """Text, an image, text, a second image, text."""
    return processor.apply_chat_template(
        [{"role": "user", "content": [
            {"type": "text", "text": "First"}, {"type": "image"}, {"type": "text", "text": "then"},
            {"type": "image"}, {"type": "text", "text": "Describe the image briefly."},
        ]}],
        add_generation_prompt=True,
    )  # fmt: skip


def test_config_fields_and_placement():
    config = VLMConfig(projector_type="perceiver", fusion="cross_attention")
    assert config.cross_attention_layer_indices == [3, 7, 11, 15, 19, 23]  # before every 4th of Qwen2.5's 24 layers
    assert (config.num_image_tokens, config.num_visual_tokens) == (1, 64)
    assert VLMConfig(fusion="cross_attention", cross_attention_layers=[5, 0]).cross_attention_layer_indices == [0, 5]
    early = VLMConfig(projector_type="perceiver")
    assert (early.fusion, early.num_image_tokens, early.cross_attention_layer_indices) == ("early", 64, [])
    # Flamingo's projector by default with deep fusion, LLaVA's with early fusion
    assert (VLMConfig(fusion="cross_attention").projector_type, VLMConfig().projector_type) == ("perceiver", "mlp")
    reloaded = VLMConfig.from_dict(VLMConfig(fusion="cross_attention", cross_attention_every=2).to_dict())
    assert reloaded.cross_attention_layer_indices == list(range(1, 24, 2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fusion": "late"}, "Unknown fusion='late'"),
        ({"fusion": "cross_attention", "cross_attention_every": 0}, "cross_attention_every=0 is invalid"),
        ({"fusion": "cross_attention", "cross_attention_every": 25}, "cross_attention_every=25 places no"),
        ({"fusion": "cross_attention", "cross_attention_layers": [24]}, "cross_attention_layers=[24] is invalid"),
        ({"fusion": "cross_attention", "cross_attention_layers": [1, 1]}, "cross_attention_layers=[1, 1] is invalid"),
        ({"cross_attention_layers": [3]}, "cross_attention_layers=[3] is set but fusion='early'"),
    ],
)
def test_invalid_fusion_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        VLMConfig(**kwargs)


def test_language_model_keys_are_untouched_and_blocks_start_closed():
    model, _ = build_deep_vlm(gate=None)
    bare_keys = {f"language_model.{key}" for key in model.language_model.state_dict()}
    early, _ = build_tiny_vlm("perceiver")
    assert bare_keys == {key for key in early.state_dict() if key.startswith("language_model.")}
    assert bare_keys <= set(model.state_dict())
    assert sorted(model.cross_attention_blocks) == ["0", "1"]
    for block in model.cross_attention_blocks.values():
        assert block.attention_gate.item() == block.ffn_gate.item() == 0.0
    assert not any(key.startswith("cross_attention_blocks") for key in early.state_dict())


@pytest.mark.parametrize("projector_type", ["perceiver", "mlp"])
def test_at_initialisation_logits_equal_the_bare_language_model(projector_type, images):
    model, processor = build_deep_vlm(projector_type, gate=None)
    with_image = prompt_batch(processor, images[:2])
    assert (with_image["input_ids"] == model.config.image_token_id).sum(1).tolist() == [1, 1]  # one marker per image
    text_only = processor(text=["Describe the image briefly."], return_tensors="pt")
    with torch.no_grad():
        for batch in (with_image, text_only):
            expected = model.language_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            assert torch.equal(model(**batch).logits, expected)


def test_media_mask_element_by_element(images):
    model, processor = build_deep_vlm()
    batch = prompt_batch(processor, images[:2], texts=[two_image_text(processor)])
    input_ids = batch["input_ids"]
    markers = (input_ids[0] == model.config.image_token_id).nonzero().flatten().tolist()
    assert len(markers) == 2
    with torch.no_grad():
        image_embeds = model.get_image_features(batch["pixel_values"]).image_embeds
    context = cross_attention_context(model.config, input_ids, input_ids.shape, image_embeds, cache=None)
    tokens = model.config.num_visual_tokens
    assert context.visual_states.shape == (1, 2 * tokens, model.config.text_config.hidden_size)
    assert torch.equal(context.visual_states[0], image_embeds.flatten(0, 1))
    for position in range(input_ids.shape[1]):
        image = 0 if markers[0] <= position < markers[1] else 1 if position >= markers[1] else None
        assert context.has_image[0, position, 0].item() == (image is not None), position
        expected = torch.ones(2 * tokens, dtype=torch.bool)  # no image: the row is not masked, and then not used
        if image is not None:
            expected = torch.arange(2 * tokens) // tokens == image
        assert torch.equal(context.attention_mask[0, 0, position], expected), position


def test_text_attends_only_to_the_most_recent_image(images):
    model, processor = build_deep_vlm()
    text = two_image_text(processor)
    batch = prompt_batch(processor, images[:2], texts=[text])
    first, second = (batch["input_ids"][0] == model.config.image_token_id).nonzero().flatten().tolist()
    other_first = prompt_batch(processor, [images[2], images[1]], texts=[text])
    with torch.no_grad():
        logits = model(**batch).logits[0]
        changed = model(**other_first).logits[0]
        bare = model.language_model(input_ids=batch["input_ids"]).logits[0]
    assert torch.equal(logits[:first], bare[:first]), "text before the first image must be the text-only output"
    assert not torch.allclose(logits[first:second], bare[first:second])
    assert not torch.allclose(logits[first:second], changed[first:second])
    # after the second image, only it counts: the causal self-attention still carries the first image's effect on
    # earlier tokens, so compare the cross-attention inputs directly
    with torch.no_grad():
        outputs = model(**batch, output_attentions=True)
    for attention in outputs.cross_attentions:
        tokens = model.config.num_visual_tokens
        assert attention[0, :, second:, :tokens].sum() == 0 and attention[0, :, first:second, tokens:].sum() == 0
        torch.testing.assert_close(attention[0, :, first:].sum(-1), torch.ones_like(attention[0, :, first:, 0]))


@pytest.mark.parametrize("projector_type", ["perceiver", "mlp"])
def test_generation_with_cache_equals_without_and_keys_are_computed_once(projector_type, images):
    model, processor = build_deep_vlm(projector_type)
    batch = prompt_batch(processor, images[:2], texts=[two_image_text(processor)])  # new tokens attend to the second
    calls = []
    for block in model.cross_attention_blocks.values():
        block.cross_attn.k_proj.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    kwargs = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "output_scores": True}
    with_cache = model.generate(**batch, use_cache=True, return_dict_in_generate=True, **kwargs)
    assert len(calls) == len(model.cross_attention_blocks), "keys must be computed once, at the prefill step"
    without_cache = model.generate(**batch, use_cache=False, return_dict_in_generate=True, **kwargs)
    assert torch.equal(with_cache.sequences, without_cache.sequences)
    for cached, recomputed in zip(with_cache.scores, without_cache.scores):
        torch.testing.assert_close(cached, recomputed)
    other_second = prompt_batch(processor, [images[0], images[0]], texts=[two_image_text(processor)])
    other = model.generate(**other_second, use_cache=True, return_dict_in_generate=True, **kwargs)
    assert not torch.allclose(other.scores[1], with_cache.scores[1]), "the second image must change the output"


def test_batched_left_padded_generation_equals_one_by_one(images):
    model, processor = build_deep_vlm()
    texts = [
        processor.apply_chat_template(caption_messages(), add_generation_prompt=True),
        two_image_text(processor),
        processor.apply_chat_template([{"role": "user", "content": "No picture here."}], add_generation_prompt=True),
    ]
    per_text = [[images[0]], [images[1], images[2]], []]
    batch = processor(images=per_text, text=texts, return_tensors="pt")
    assert (batch["attention_mask"][:, 0] == 0).any()
    batched = model.generate(**batch, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    prompt_length = batch["input_ids"].shape[1]
    for index, (row_images, text) in enumerate(zip(per_text, texts)):
        single = processor(images=row_images or None, text=[text], return_tensors="pt")
        alone = model.generate(**single, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        assert batched[index, prompt_length:].tolist() == alone[0, single["input_ids"].shape[1] :].tolist(), index


def test_beam_search_runs_over_the_cached_images(images):
    model, processor = build_deep_vlm()
    batch = prompt_batch(processor, images[:2])
    beams = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, num_beams=3, do_sample=False)
    assert beams.shape == (2, batch["input_ids"].shape[1] + 5)
    first_alone = model.generate(**prompt_batch(processor, images[:1]), max_new_tokens=5, min_new_tokens=5, num_beams=3)
    assert beams[0].tolist() == first_alone[0].tolist()


def test_gradient_checkpointing_gives_the_same_gradients(images):
    model, processor = build_deep_vlm()
    batch = labelled_caption_batch(processor, images[:2])
    assert_checkpointing_gives_the_same_gradients(model, batch, model.cross_attention_blocks)


def test_marker_count_must_match_the_images(images):
    model, processor = build_deep_vlm()
    batch = prompt_batch(processor, images[:2])
    with pytest.raises(ValueError, match=r"2 image marker tokens .* but 1 image\(s\) were given"):
        model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"][:1])
    with pytest.raises(ValueError, match="image placeholder tokens .* but no `pixel_values`"):
        model(input_ids=batch["input_ids"])


def test_images_with_a_continued_cache_are_refused(images):
    model, processor = build_deep_vlm()
    batch = prompt_batch(processor, images[:1])
    with torch.no_grad():
        cache = getattr(model(**batch, use_cache=True), CACHE_NAME)
        assert getattr(cache, IMAGE_CACHE_ATTRIBUTE).last_slots.tolist() == [0]
        with pytest.raises(ValueError, match="images are read at the first call of a sequence"):
            model(input_ids=batch["input_ids"][:, -1:], pixel_values=batch["pixel_values"], cache=cache)


@pytest.mark.parametrize("fusion", ["cross_attention", "hybrid"])
def test_language_model_without_findable_decoder_layers_is_refused(fusion):
    config = VLMConfig(
        vision_config=TINY_VISION_CONFIG, text_config=BERT_DECODER_TEXT_CONFIG, projector_type="mlp", fusion=fusion,
        cross_attention_every=1,
    )
    with pytest.raises(ValueError, match="BertLMHeadModel has no nn.ModuleList of its 2 layers"):
        VLMForConditionalGeneration(config)
    early = VLMConfig(vision_config=TINY_VISION_CONFIG, text_config=BERT_DECODER_TEXT_CONFIG)
    assert isinstance(VLMForConditionalGeneration(early), VLMForConditionalGeneration)  # early fusion needs no layers


def test_from_pretrained_backbones_attaches_the_blocks_to_the_loaded_language_model(tmp_path, images):
    tiny, tiny_processor = build_tiny_vlm("perceiver", seed=3)
    tiny.vision_tower.save_pretrained(tmp_path / "vision")
    tiny_processor.image_processor.save_pretrained(tmp_path / "vision")
    tiny.language_model.save_pretrained(tmp_path / "text")
    tiny_processor.tokenizer.save_pretrained(tmp_path / "text")
    model, processor = VLMForConditionalGeneration.from_pretrained_backbones(
        vision=tmp_path / "vision", text=tmp_path / "text", fusion="cross_attention", cross_attention_every=2,
        perceiver_num_heads=2,
    )  # fmt: skip
    assert (model.config.projector_type, sorted(model.cross_attention_blocks)) == ("perceiver", ["1"])
    assert processor.num_image_tokens == 1
    for name, tensor in tiny.language_model.state_dict().items():
        assert torch.equal(model.language_model.state_dict()[name], tensor), name
    batch = prompt_batch(processor, images[:1])
    with torch.no_grad():
        bare = model.language_model(input_ids=batch["input_ids"]).logits
        assert torch.equal(model(**batch).logits, bare)  # gates at 0
        model.cross_attention_blocks["1"].attention_gate.fill_(0.7)
        assert not torch.allclose(model(**batch).logits, bare), "the blocks must run inside the loaded language model"
