"""`attention_maps`: where projector queries or latents look, or the caption through the cross-attention blocks."""

import PIL.Image
import pytest
import torch

from data.captions import make_shapes_dataset
from evaluation.attention_maps import attending_layers, cross_attention_maps, projector_attention_maps, saliency_map
from models.tiny import build_tiny_vlm


@pytest.fixture(scope="module")
def image():
    return make_shapes_dataset(num_images=1, split="test")[0]["image"].convert("RGB")


@pytest.mark.parametrize(("projector_type", "num_layers"), [("qformer", 1), ("perceiver", 2)])
def test_attention_maps_are_distributions_over_the_patch_grid(projector_type, num_layers, image):
    model, processor = build_tiny_vlm(projector_type)
    maps = projector_attention_maps(model, processor, image)
    assert maps.shape == (num_layers + 1, 8, 4, 4)
    torch.testing.assert_close(maps.sum(dim=(-1, -2)), torch.ones(num_layers + 1, 8))
    torch.testing.assert_close(maps[-1], maps[:-1].mean(0))


def test_saliency_map_for_the_mlp(image):
    model, processor = build_tiny_vlm("mlp")
    saliency = saliency_map(model, processor, image, "a red circle on the left.")
    assert saliency.shape == (4, 4) and (saliency >= 0).all()
    torch.testing.assert_close(saliency.sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="has no attention maps; use saliency_map"):
        projector_attention_maps(model, processor, image)


def test_saliency_map_over_a_vq_tokenizers_codes(image):
    model, processor = build_tiny_vlm("codebook", fusion="tokenized")
    saliency = saliency_map(model, processor, image, "a red circle on the left.")
    assert saliency.shape == (4, 4) and (saliency > 0).all()  # the 4 x 4 grid of codes, each reached
    torch.testing.assert_close(saliency.sum(), torch.tensor(1.0))


def test_attending_layers_are_the_layers_returning_maps():
    model, processor = build_tiny_vlm("qformer", qformer_num_layers=4)
    layers = model.multi_modal_projector.qformer.encoder.layer
    assert attending_layers(model.config) == [i + 1 for i, layer in enumerate(layers) if layer.has_cross_attention]
    assert attending_layers(model.config) == [1, 3]
    image = PIL.Image.new("RGB", (32, 32), (200, 30, 30))
    assert projector_attention_maps(model, processor, image).shape[0] == 2 + 1
    assert attending_layers(build_tiny_vlm("perceiver")[0].config) == [1, 2]



def deep_vlm_with_uniform_cross_attention(projector_type: str):
    """A cross-attention VLM whose blocks' queries are zero: every caption token attends uniformly to the image."""
    model, processor = build_tiny_vlm(projector_type, fusion="cross_attention")
    with torch.no_grad():
        for block in model.cross_attention_blocks.values():
            block.cross_attn.q_proj.weight.zero_()
    return model, processor


def test_cross_attention_maps_over_patches_are_the_blocks_attention(image):
    model, processor = deep_vlm_with_uniform_cross_attention("mlp")
    maps = cross_attention_maps(model, processor, image, "a red circle on the left.")
    assert maps.shape == (2 + 1, 4, 4)  # a block before each of the two decoder layers, then their mean
    torch.testing.assert_close(maps, torch.full((3, 4, 4), 1 / 16))


def test_cross_attention_maps_through_latents_follow_the_projector_maps(image):
    model, processor = deep_vlm_with_uniform_cross_attention("perceiver")
    maps = cross_attention_maps(model, processor, image, "a red circle on the left.")
    latent_maps = projector_attention_maps(model, processor, image)[-1]  # (latents, grid, grid)
    for block_map in maps:
        torch.testing.assert_close(block_map, latent_maps.mean(0))
    assert not torch.allclose(maps[0], torch.full((4, 4), 1 / 16))


def test_cross_attention_maps_are_distributions_and_need_the_fusion(image):
    model, processor = build_tiny_vlm("qformer", fusion="cross_attention")
    maps = cross_attention_maps(model, processor, image, "a blue square.")
    torch.testing.assert_close(maps.sum(dim=(-1, -2)), torch.ones(3))
    torch.testing.assert_close(maps[-1], maps[:-1].mean(0))
    adapter, processor = build_tiny_vlm("mlp", fusion="adapter", adapter_num_layers=1)
    with torch.no_grad():  # the prompt's keys all alike: every caption token attends uniformly to the image
        adapter.adaption_prompts.layers["1"].prompt.zero_()
        adapter.multi_modal_projector.apply(lambda module: module.weight.zero_() if hasattr(module, "weight") else None)
    maps = cross_attention_maps(adapter, processor, image, "a blue square.")
    torch.testing.assert_close(maps, torch.full((2, 4, 4), 1 / 16))  # the one adapted layer, then the mean
    early, processor = build_tiny_vlm("qformer")
    with pytest.raises(ValueError, match="fusion='early' has no cross-attention blocks"):
        cross_attention_maps(early, processor, image, "a blue square.")
