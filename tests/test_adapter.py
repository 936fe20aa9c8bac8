"""
LLaMA-Adapter V2's gated adaption prompts (`fusion="adapter"`): the prompts plus an image's visual tokens are extra keys
and values of the top decoder layers' self-attention, read by the text after the image in a softmax of their own
through a zero-initialised gate per head; the model starts as the bare language model; generation, tiles and the errors
of bad input (training: `test_adapter_training.py`).
"""

import pytest
import torch
from model_checks import (
    assert_checkpointing_gives_the_same_gradients,
    assert_generation_is_consistent,
    assert_language_models_refused,
    labelled_caption_batch,
    prompt_batch,
)
from PIL import Image
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

from configuration_vlm import VLMConfig
from cross_attention_vlm import IMAGE_CACHE_ATTRIBUTE, cross_attention_context
from modeling_vlm import CACHE_NAME, VLMForConditionalGeneration
from models.tiny import TINY_VISION_CONFIG, build_tiny_vlm


def build_adapter_vlm(projector_type: str = "mlp", open_gates: bool = True, seed: int = 0, **overrides):
    """A tiny adapter VLM; with `open_gates`, every gate set away from 0 (one value per head) so the prompts count."""
    model, processor = build_tiny_vlm(projector_type, seed=seed, fusion="adapter", **overrides)
    if open_gates:
        with torch.no_grad():
            for prompt in model.adaption_prompts.layers.values():
                prompt.gate.copy_(torch.linspace(0.5, 2.0, len(prompt.gate)))
    return model, processor


def language_model_logits(model, batch) -> torch.Tensor:
    """The bare language model's logits on the batch's token ids (each image's marker is one token of its input)."""
    return model.language_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_prompts_sit_in_the_top_layers_and_leave_the_language_models_keys_alone(images):
    model, processor = build_adapter_vlm(open_gates=False, adapter_num_layers=1)
    early, _ = build_tiny_vlm("mlp")
    assert (model.config.adapter_layer_indices, model.config.num_image_tokens) == ([1], 1)
    own = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items() if name.startswith("adaption_")}
    assert own == {"adaption_prompts.layers.1.prompt": (16, 64), "adaption_prompts.layers.1.gate": (4,)}
    assert set(model.state_dict()) - set(own) == set(early.state_dict())
    assert not model.adaption_prompts.layers["1"].gate.any()
    batch = prompt_batch(processor, images[:2])
    assert (batch["input_ids"] == model.config.image_token_id).sum(dim=1).tolist() == [1, 1]  # one marker per image
    assert sorted(build_adapter_vlm()[0].adaption_prompts.layers) == ["0", "1"]  # by default every layer


@pytest.mark.parametrize("projector_type", ["mlp", "perceiver"])
def test_at_initialisation_the_model_is_the_bare_language_model(projector_type, images):
    model, processor = build_adapter_vlm(projector_type, open_gates=False, seed=4)
    batch = prompt_batch(processor, images[:2])
    text = processor.tokenizer(["No picture here."], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, language_model_logits(model, batch))
        assert torch.equal(model(**text).logits, model.language_model(**text).logits)


def expected_attention_output(model, attention, kwargs, original, image_embeds, after_image) -> torch.Tensor:
    """
    The adapted attention's output computed by hand, transformers' own RoPE on the queries: the language model's
    `original` output plus, after the image, the gated softmax over (prompt + image tokens) through o_proj.
    """
    prompt = model.adaption_prompts.layers["1"]
    hidden, (cos, sin) = kwargs["hidden_states"], kwargs["position_embeddings"]
    heads, head_dim = 4, 16
    states = image_embeds + prompt.prompt  # (batch, 16, 64): one image per row
    key = attention.k_proj(states).view(2, 16, 2, head_dim).transpose(1, 2).repeat_interleave(2, dim=1)
    value = attention.v_proj(states).view(2, 16, 2, head_dim).transpose(1, 2).repeat_interleave(2, dim=1)
    query = attention.q_proj(hidden).view(*hidden.shape[:2], heads, head_dim).transpose(1, 2)
    query, _ = apply_rotary_pos_emb(query, query, cos, sin)
    weights = (query @ key.transpose(-1, -2) / head_dim**0.5).softmax(dim=-1) * prompt.gate.tanh()[:, None, None]
    added = attention.o_proj((weights @ value).transpose(1, 2).flatten(2))
    return torch.where(after_image[..., None], original + added, original)


def test_text_after_the_image_reads_the_gated_prompts_and_text_before_it_is_the_language_models(images):
    model, processor = build_adapter_vlm()
    batch = prompt_batch(processor, images[:2])
    attention = model.language_model.model.layers[1].self_attn
    seen = {}
    attention.register_forward_pre_hook(lambda module, args, kwargs: seen.update(kwargs=kwargs), with_kwargs=True)
    attention.register_forward_hook(lambda module, args, output: seen.update(output=output[0]))
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits
        marker = batch["input_ids"] == model.config.image_token_id
        after_image, adapted = marker.cumsum(dim=1) > 0, seen["output"]
        original = attention(**seen["kwargs"])[0]  # outside the VLM's forward pass: the language model's own
        image_embeds = model.get_image_features(batch["pixel_values"]).image_embeds
        expected = expected_attention_output(model, attention, seen["kwargs"], original, image_embeds, after_image)
        torch.testing.assert_close(adapted, expected, rtol=0, atol=1e-6)
        assert not torch.allclose(adapted[after_image], original[after_image])

        first = int(marker[0].nonzero()[0])  # text before the first image: exactly the bare language model's
        bare = language_model_logits(model, batch)
        assert torch.equal(logits[:, :first], bare[:, :first])
        assert not torch.allclose(logits[:, -1], bare[:, -1])
        attentions = model(**batch, output_attentions=True).cross_attentions
    assert [tuple(weights.shape) for weights in attentions] == [(2, 4, batch["input_ids"].shape[1], 16)] * 2


def test_generation_with_cache_equals_without_and_batched_equals_one_by_one(images):
    model, processor = build_adapter_vlm()
    assert_generation_is_consistent(model, processor, images)


def test_tiles_give_every_tile_the_prompt_and_padded_tiles_no_weight():
    model, processor = build_adapter_vlm(max_tiles=4)
    wide, square = Image.new("RGB", (96, 40), (220, 30, 30)), Image.new("RGB", (40, 40), (30, 30, 220))
    batch = prompt_batch(processor, [wide, square])
    assert batch["num_tiles"].tolist() == [3, 1]  # 2 x 1 tiles and a thumbnail; one tile
    attention = model.language_model.model.layers[0].self_attn
    with torch.no_grad():
        outputs = model(**batch, use_cache=True, output_attentions=True)
        tiles = model.get_image_features(batch["pixel_values"][0]).image_embeds  # the wide image's (3, 16, 64)
        states = (tiles + model.adaption_prompts.layers["0"].prompt).flatten(0, 1)
        expected = attention.k_proj(states).view(48, 2, 16).transpose(0, 1)
    key, _ = getattr(outputs[CACHE_NAME], IMAGE_CACHE_ATTRIBUTE).keys_values[0]
    assert key.shape == (2, 2, 48, 16)  # the 2 key/value heads; every tile's tokens, the most tiles of the batch
    torch.testing.assert_close(key[0], expected)
    weights = outputs.cross_attentions[0]
    after_image = (batch["input_ids"] == model.config.image_token_id).cumsum(dim=1) > 0
    assert weights[1][:, after_image[1], 16:].eq(0).all() and weights[1][:, after_image[1], :16].sum(-1).allclose(
        torch.ones(()))  # the one-tile image's padding gets no weight


def test_gradient_checkpointing_gives_the_same_gradients(images):
    model, processor = build_adapter_vlm()
    batch = labelled_caption_batch(processor, images[:2])
    assert_checkpointing_gives_the_same_gradients(model, batch, model.adaption_prompts)


def test_a_language_model_that_cannot_host_prompts_and_bad_settings_are_refused(images):
    gpt2_message = r"fusion='adapter' runs the adaption prompts .* GPT2LMHeadModel has no `self_attn`"
    assert_language_models_refused("adapter", gpt2_message)
    with pytest.raises(ValueError, match=r"adapter_num_layers=3 is invalid; it must be an integer in \[1, 2\]"):
        build_tiny_vlm("mlp", fusion="adapter", adapter_num_layers=3)
    with pytest.raises(ValueError, match="adapter_num_layers=1 is set but fusion='early'"):
        build_tiny_vlm("mlp", adapter_num_layers=1)

    model, processor = build_adapter_vlm()
    batch = prompt_batch(processor, images[:2])
    with pytest.raises(ValueError, match="2 image marker tokens .* but 1 image.* With fusion='adapter'"):
        model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"][:1])
    image_embeds = model.get_image_features(batch["pixel_values"]).image_embeds
    model.adaption_prompts.context = cross_attention_context(model.config, batch["input_ids"],
                                                             batch["input_ids"].shape, image_embeds, None)  # fmt: skip
    with pytest.raises(RuntimeError, match="call the VLM, not its language_model"):
        model.language_model(input_ids=batch["input_ids"][:, :5])
    # An attention called without RoPE's (cos, sin), as a language model without rotary embeddings would call it.
    attention, hidden = model.language_model.model.layers[0].self_attn, torch.zeros(*batch["input_ids"].shape, 64)
    with pytest.raises(ValueError, match="got no `position_embeddings` .* needs a language model with rotary"):
        model.adaption_prompts._add_prompts(0, attention, (), {"hidden_states": hidden}, (hidden, None))


def test_an_output_bias_is_not_added_twice_and_attention_beyond_llamas_is_refused():
    small = {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}  # fmt: skip
    llama = {"model_type": "llama", "attention_bias": True, **small}
    config = VLMConfig(vision_config=TINY_VISION_CONFIG, text_config=llama, fusion="adapter", image_token_id=1000)
    torch.manual_seed(0)
    model = VLMForConditionalGeneration(config).eval()
    input_ids, features = torch.tensor([[5, 6, 1000, 7, 8]]), torch.randn(1, 16, 32)
    with torch.no_grad():
        for layer in model.language_model.model.layers:
            layer.self_attn.o_proj.bias.normal_()  # the prompts' part goes through o_proj, whose bias is in already
        logits = model(input_ids=input_ids, vision_features=features).logits
        assert torch.equal(logits, model.language_model(input_ids=input_ids).logits)  # gates at 0: the bare LM
    qwen3 = VLMConfig(vision_config=TINY_VISION_CONFIG, text_config={"model_type": "qwen3", **small}, fusion="adapter")
    with pytest.raises(ValueError, match=r"Qwen3ForCausalLM also applies self_attn.q_norm, self_attn.k_norm; use"):
        VLMForConditionalGeneration(qwen3)
