"""
CogVLM's visual expert (`fusion="visual_expert"`): image positions through copies of the decoder layers' attention
projections and MLPs, text positions through the language model's own; the copies start equal, so the model starts as
early fusion; generation and the errors of bad input (training: `test_visual_expert_training.py`).
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

from models.tiny import build_tiny_vlm
from visual_expert_vlm import EXPERT_PATHS


def build_expert_vlm(projector_type: str = "mlp", shift: float | None = 0.05, seed: int = 0, **overrides):
    """A tiny visual-expert VLM; with `shift`, every expert weight moved by it so that the experts change the output."""
    model, processor = build_tiny_vlm(projector_type, seed=seed, fusion="visual_expert", **overrides)
    if shift is not None:
        with torch.no_grad():
            for parameter in model.visual_experts.parameters():
                parameter.add_(shift)
    return model, processor


def test_experts_copy_every_layer_and_leave_the_language_models_keys_alone():
    model, _ = build_expert_vlm(shift=None)
    early, _ = build_tiny_vlm("mlp")
    assert model.config.visual_expert_layer_indices == [0, 1]
    experts = {name for name in model.state_dict() if name.startswith("visual_experts.")}
    assert {name.split(".")[3] for name in experts} == set(EXPERT_PATHS)
    assert set(model.state_dict()) - experts == set(early.state_dict())
    for layer in ("0", "1"):
        for name, path in EXPERT_PATHS.items():
            original = model.language_model.model.layers[int(layer)].get_submodule(path)
            for (key, copied), own in zip(model.visual_experts.experts[layer][name].state_dict().items(),
                                          original.state_dict().values()):  # fmt: skip
                assert torch.equal(copied, own) and copied.data_ptr() != own.data_ptr(), (layer, name, key)
    every_other = build_tiny_vlm("mlp", fusion="visual_expert", visual_expert_every=2)[0]
    assert sorted(every_other.visual_experts.experts) == ["0"]


@pytest.mark.parametrize("projector_type", ["mlp", "qformer"])
def test_at_initialisation_the_model_is_early_fusion_and_text_is_the_bare_language_model(projector_type, images):
    model, processor = build_expert_vlm(projector_type, shift=None, seed=4)
    early, _ = build_tiny_vlm(projector_type, seed=4)
    batch = prompt_batch(processor, images[:2])
    text = processor.tokenizer(["No picture here."], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, early(**batch).logits)
        assert torch.equal(model(**text).logits, model.language_model(**text).logits)


def test_image_positions_go_through_the_experts_and_text_through_the_language_model(images):
    model, processor = build_expert_vlm()
    batch = prompt_batch(processor, images[:2])
    seen = {}
    for name, path in EXPERT_PATHS.items():
        module = model.language_model.model.layers[1].get_submodule(path)
        module.register_forward_hook(lambda module, args, output, name=name: seen.update({name: (args[0], output)}))
    with torch.no_grad():
        logits = model(**batch).logits
        image = batch["input_ids"] == model.config.image_token_id
        for name, (inputs, output) in seen.items():
            original = model.language_model.model.layers[1].get_submodule(EXPERT_PATHS[name])
            expert = model.visual_experts.experts["1"][name]
            torch.testing.assert_close(output[image], expert(inputs[image]), rtol=0, atol=1e-6, msg=name)
            torch.testing.assert_close(output[~image], original(inputs[~image]), rtol=0, atol=1e-6, msg=name)
            assert not torch.allclose(output[image], original(inputs[image])), name
        # Text before the first image is the bare language model's (on the same sequence: the same matrix shapes).
        first = int(image[0].nonzero()[0])
        bare = model.language_model(input_ids=batch["input_ids"]).logits[:, :first]
        assert torch.equal(logits[:, :first], bare)
        assert not torch.allclose(logits[:, -1], build_tiny_vlm("mlp")[0](**batch).logits[:, -1])


def test_generation_with_cache_equals_without_and_batched_equals_one_by_one(images):
    model, processor = build_expert_vlm()
    assert_generation_is_consistent(model, processor, images)


def test_tiles_give_each_tile_its_tag_and_start_as_early_fusion():
    model, processor = build_expert_vlm(shift=None, max_tiles=4)
    early, early_processor = build_tiny_vlm("mlp", max_tiles=4)
    image = Image.new("RGB", (96, 40), (220, 30, 30))
    batch, early_batch = prompt_batch(processor, [image]), prompt_batch(early_processor, [image])
    assert torch.equal(batch["input_ids"], early_batch["input_ids"])  # 2 x 1 tiles and a thumbnail, each tagged
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, early(**batch).logits)


def test_gradient_checkpointing_gives_the_same_gradients(images):
    model, processor = build_expert_vlm()
    batch = labelled_caption_batch(processor, images[:2])
    # The loss is on text: the last layer's image positions reach it through their keys and values only.
    dead = tuple(f"experts.1.{name}." for name in ("q_proj", "o_proj", "mlp"))
    assert_checkpointing_gives_the_same_gradients(model, batch, model.visual_experts, without_gradient=dead)


def test_a_language_model_that_cannot_host_experts_and_bad_settings_are_refused(images):
    gpt2_message = r"fusion='visual_expert' copies .* GPT2LMHeadModel has no `self_attn.q_proj`"
    assert_language_models_refused("visual_expert", gpt2_message)
    with pytest.raises(ValueError, match=r"visual_expert_every=0 is invalid"):
        build_tiny_vlm("mlp", fusion="visual_expert", visual_expert_every=0)
    model, processor = build_expert_vlm()
    batch = prompt_batch(processor, images[:1])
    model.visual_experts.image_positions = batch["input_ids"] == model.config.image_token_id
    with pytest.raises(RuntimeError, match="call the VLM, not its language_model"):
        model.language_model(input_ids=batch["input_ids"][:, :5])
