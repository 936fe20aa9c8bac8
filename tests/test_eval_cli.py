"""`python eval.py`: batched captioning, outputs, comparison table, attention maps and the gallery, offline."""

import json

from PIL import Image

import eval as vlm_eval
from caption_metrics import COCO_CAPTION_METRICS
from tiny_vlm import build_tiny_vlm


def test_cli_end_to_end_writes_every_output(tmp_path):
    model, processor = build_tiny_vlm("mlp", seed=1)
    saved = tmp_path / "saved-mlp"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    output_dir = tmp_path / "out"
    rows = vlm_eval.main(
        ["--model", str(saved), "--model", "tiny:qformer", "--dataset", "shapes", "--split", "test",
         "--max_samples", "3", "--max_new_tokens", "5", "--batch_size", "2", "--output_dir", str(output_dir),
         "--attention_maps", "--gallery"]
    )  # fmt: skip
    assert [row["projector"] for row in rows] == ["mlp", "qformer"]
    assert [row["image_tokens"] for row in rows] == [16, 8]
    ids = [f"shapes-test-{index:05d}" for index in range(3)]
    # The mlp's saliency overlays are 224 px squares; the tiny qformer's grids have one 96 px tile per query (8) and
    # per row: its one cross-attending layer, then the mean over layers.
    picture_sizes = {vlm_eval.file_slug(str(saved)): (224, 224), "tiny_qformer": (8 * 96, 2 * 96)}
    for slug, size in picture_sizes.items():
        predictions = json.loads((output_dir / f"predictions_{slug}.json").read_text())
        assert [p["image_id"] for p in predictions] == ids and all(isinstance(p["caption"], str) for p in predictions)
        metrics = json.loads((output_dir / f"metrics_{slug}.json").read_text())
        assert set(COCO_CAPTION_METRICS) <= set(metrics) and metrics["num_images"] == 3
        for image_id in ids:
            with Image.open(output_dir / f"attention_{slug}_{image_id}.png") as picture:
                assert picture.size == size
    table = (output_dir / "comparison.md").read_text()
    assert str(saved) in table and "tiny:qformer" in table and "CIDEr" in table and "papers report CIDEr x 100" in table
    gallery = (output_dir / "gallery.html").read_text()
    assert all(f'id="{image_id}"' in gallery for image_id in ids)
    assert str(saved) in gallery and "tiny:qformer" in gallery
    with Image.open(output_dir / "contact_sheet.png") as sheet:
        # A 128 px thumbnail and 8 px gap, then 220 px per column (ground truth and both models); a 20 px header,
        # then one 136 px row per image.
        assert sheet.size == (128 + 8 + 3 * 220, 20 + 3 * 136)
