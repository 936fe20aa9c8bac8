"""`python eval.py`: batched captioning, outputs, comparison table, attention maps and the gallery, offline."""

import json
import re

import pytest
import torch
from PIL import Image

import eval as vlm_eval
from caption_data import make_shapes_dataset
from tiny_vlm import build_tiny_vlm


@pytest.fixture(scope="module")
def shapes():
    dataset = make_shapes_dataset(num_images=3, split="test")
    return list(dataset["image_id"]), [image.convert("RGB") for image in dataset["image"]]


def test_cli_end_to_end_writes_every_output(tmp_path):
    model, processor = build_tiny_vlm("mlp", seed=1)
    saved = tmp_path / "saved-mlp"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    output_dir = tmp_path / "out"
    rows = vlm_eval.main(
        ["--model", str(saved), "--model", "tiny:qformer", "--dataset", "shapes", "--split", "test", "--max_samples", "3",
         "--max_new_tokens", "5", "--batch_size", "2", "--output_dir", str(output_dir), "--attention_maps", "--gallery"]
    )
    assert [row["projector"] for row in rows] == ["mlp", "qformer"]
    assert [row["image_tokens"] for row in rows] == [16, 8]
    ids = [f"shapes-test-{index:05d}" for index in range(3)]
    for slug in (re.sub(r"[^A-Za-z0-9_.-]+", "_", str(saved)).strip("_"), "tiny_qformer"):
        predictions = json.loads((output_dir / f"predictions_{slug}.json").read_text())
        assert [p["image_id"] for p in predictions] == ids and all(isinstance(p["caption"], str) for p in predictions)
        metrics = json.loads((output_dir / f"metrics_{slug}.json").read_text())
        assert set(vlm_eval.COCO_CAPTION_METRICS) <= set(metrics) and metrics["num_images"] == 3
        for image_id in ids:
            with Image.open(output_dir / f"attention_{slug}_{image_id}.png") as picture:
                assert picture.size[0] > 0
    table = (output_dir / "comparison.md").read_text()
    assert str(saved) in table and "tiny:qformer" in table and "CIDEr" in table and "papers report CIDEr x 100" in table
    gallery = (output_dir / "gallery.html").read_text()
    assert all(f'id="{image_id}"' in gallery for image_id in ids) and str(saved) in gallery and "tiny:qformer" in gallery
    with Image.open(output_dir / "contact_sheet.png") as sheet:
        assert sheet.size[1] >= 3 * 128


@pytest.mark.parametrize(("projector_type", "num_layers"), [("qformer", 1), ("perceiver", 2)])
def test_attention_maps_are_distributions_over_the_patch_grid(projector_type, num_layers, shapes):
    model, processor = build_tiny_vlm(projector_type)
    maps = vlm_eval.projector_attention_maps(model, processor, shapes[1][0])
    assert maps.shape == (num_layers + 1, 8, 4, 4)
    torch.testing.assert_close(maps.sum(dim=(-1, -2)), torch.ones(num_layers + 1, 8))
    torch.testing.assert_close(maps[-1], maps[:-1].mean(0))


def test_saliency_map_for_the_mlp(shapes):
    model, processor = build_tiny_vlm("mlp")
    saliency = vlm_eval.saliency_map(model, processor, shapes[1][0], "a red circle on the left.")
    assert saliency.shape == (4, 4) and (saliency >= 0).all()
    torch.testing.assert_close(saliency.sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="has no attention maps; use saliency_map"):
        vlm_eval.projector_attention_maps(model, processor, shapes[1][0])


def test_batched_captions_equal_one_by_one(shapes):
    model, processor = build_tiny_vlm("perceiver")
    batched = vlm_eval.generate_captions(model, processor, shapes[1], batch_size=3, max_new_tokens=6)
    alone = [vlm_eval.generate_captions(model, processor, [image], batch_size=1, max_new_tokens=6)[0] for image in shapes[1]]
    assert batched == alone and len(batched) == 3
