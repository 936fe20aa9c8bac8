"""`visualize`: projector attention maps and gradient saliency are distributions over the patch grid."""

import pytest
import torch

from caption_data import make_shapes_dataset
from tiny_vlm import build_tiny_vlm
from visualize import projector_attention_maps, saliency_map


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
