"""`python eval.py`: batched captioning, outputs, comparison table, attention maps and the gallery, offline; user
mistakes (a missing model path, an unknown tiny projector, a missing image root) end with a message, not a traceback."""

import json
import os
import re

import pytest
from PIL import Image

import eval as vlm_eval
from data import captions as caption_data
from evaluation import visualize as layout
from evaluation.caption_metrics import COCO_CAPTION_METRICS
from evaluation.captioning import model_name_problem
from models.tiny import build_tiny_vlm


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
    # The mlp's saliency picture: the image and its overlay side by side, a colour bar, the caption under them. The
    # tiny qformer's grid: row labels, the image then one tile per query (8), a colour bar; one row for its one
    # cross-attending layer, one for the mean over layers.
    margin, gap, bar, top = layout.MARGIN, layout.GAP, layout.COLOUR_BAR_AREA, layout.SHEET_TOP
    saliency_size = (
        margin + 2 * (layout.SALIENCY_SIZE + gap) + bar,
        top + layout.SALIENCY_SIZE + gap + layout.SALIENCY_CAPTION_LINES * layout.LINE_HEIGHT + margin,
    )
    grid_size = (
        margin + layout.ROW_LABEL_WIDTH + (1 + 8) * (layout.ATTENTION_TILE + gap) + bar,
        top + 2 * (layout.ATTENTION_TILE + gap) + margin,
    )
    picture_sizes = {vlm_eval.file_slug(str(saved)): saliency_size, "tiny_qformer": grid_size}
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
    assert "<p>shapes, test split: 3 of 3 images (scores on all 3)</p>" in gallery
    for row in rows:
        scores = f"CIDEr {row['CIDEr']:.4f} · METEOR {row['METEOR']:.4f} · BLEU-4 {row['BLEU-4']:.4f}"
        assert f"<li>{row['model']}: {scores} · ROUGE-L {row['ROUGE-L']:.4f}</li>" in gallery
    with Image.open(output_dir / "contact_sheet.png") as sheet:
        # Margins around a thumbnail column and three caption columns (ground truth and both models); a title line,
        # one score line per model and the CIDEr-scale note, the column names, then one row per image.
        assert sheet.size == (
            3 * margin + layout.CONTACT_SHEET_THUMBNAIL + 3 * layout.CONTACT_SHEET_COLUMN_WIDTH,
            margin + layout.TITLE_LINE_HEIGHT + (2 + 1) * layout.LINE_HEIGHT + gap + layout.CONTACT_SHEET_HEADER_HEIGHT
            + 3 * layout.CONTACT_SHEET_ROW_HEIGHT + margin,
        )  # fmt: skip


def refuse_loading(*args, **kwargs):
    raise AssertionError("nothing may be loaded before the arguments are checked")


@pytest.mark.parametrize("name", ["/no/such/model", "./missing-model", "runs/stage2/final", "~/no-such-model-dir"])
def test_a_missing_model_path_is_refused_before_anything_is_loaded(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vlm_eval, "load_captions", refuse_loading)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        vlm_eval.main(["--model", "tiny:mlp", "--model", name, "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith(
        f"error: --model {name}: {os.path.expanduser(name)} does not exist; pass a saved model directory, a Hub id "
        "like user/name, or tiny:<projector>.\n"
    )
    assert not (tmp_path / "out").exists()


def test_a_model_path_that_is_a_file_and_an_unknown_tiny_projector_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vlm_eval, "load_captions", refuse_loading)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    for name, problem in (
        (str(weights), f"{weights} is not a directory; pass a saved model directory, a Hub id like user/name, or "
         "tiny:<projector>."),
        ("tiny:transformer", "unknown projector 'transformer'; choose one of tiny:linear, tiny:mlp, tiny:qformer, "
         "tiny:perceiver."),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            vlm_eval.main(["--model", name])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.endswith(f"error: --model {name}: {problem}\n")


def test_what_may_be_a_model_is_let_through(tmp_path):
    for name in ("user/name", "gpt2", "tiny:perceiver", str(tmp_path)):
        assert model_name_problem(name) is None


def test_a_missing_image_root_is_refused_before_the_hub_is_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(caption_data, "load_dataset", refuse_loading)
    missing = tmp_path / "coco"
    with pytest.raises(SystemExit) as exit_info:
        vlm_eval.main(
            ["--model", "tiny:mlp", "--dataset", "coco-karpathy", "--image_root", str(missing), "--output_dir",
             str(tmp_path / "out")]
        )  # fmt: skip
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith(
        f"error: The COCO image root {missing} does not exist; pass the directory laid out as "
        f"{caption_data.COCO_LAYOUT}.\n"
    )
    assert not (tmp_path / "out").exists()


def test_cross_attention_model_gets_its_fusion_in_the_table_and_cross_attention_maps(tmp_path):
    model, processor = build_tiny_vlm("perceiver", seed=1, fusion="cross_attention")
    saved = tmp_path / "saved-xattn"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    output_dir = tmp_path / "out"
    (row,) = vlm_eval.main(
        ["--model", str(saved), "--dataset", "shapes", "--split", "test", "--max_samples", "2", "--max_new_tokens",
         "4", "--output_dir", str(output_dir), "--attention_maps"]
    )  # fmt: skip
    assert (row["fusion"], row["image_tokens"]) == ("cross_attention", 1)
    bridge = [model.multi_modal_projector, model.cross_attention_blocks]
    assert row["bridge_parameters"] == sum(p.numel() for module in bridge for p in module.parameters())
    assert "| cross_attention | 1 |" in (output_dir / "comparison.md").read_text()
    # One column (the caption's attention), a row per gated block (before layers 0 and 1) and one for their mean.
    margin, gap, tile = layout.MARGIN, layout.GAP, layout.ATTENTION_TILE
    size = (
        margin + layout.ROW_LABEL_WIDTH + (1 + 1) * (tile + gap) + layout.COLOUR_BAR_AREA,
        layout.SHEET_TOP + 3 * (tile + gap) + margin,
    )
    with Image.open(output_dir / f"attention_{vlm_eval.file_slug(str(saved))}_shapes-test-00000.png") as picture:
        assert picture.size == size


@pytest.mark.parametrize(
    "flags", [["--max_samples", "0"], ["--batch_size", "-1"], ["--max_new_tokens", "0"], ["--num_pictures", "x"]]
)
def test_a_bad_count_is_refused_naming_the_flag_before_anything_loads(flags, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vlm_eval, "load_captions", refuse_loading)
    with pytest.raises(SystemExit) as exit_info:
        vlm_eval.main(["--model", "tiny:mlp", "--output_dir", str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2
    expected = "a positive integer"
    assert re.search(rf"error: argument {flags[0]}: {flags[0]}='?{flags[1]}'? is invalid; it must be {expected}\.",
                     capsys.readouterr().err)  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_dir_is_refused_before_anything_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vlm_eval, "load_captions", refuse_loading)
    taken = tmp_path / "taken"
    taken.write_text("a file, not a directory")
    with pytest.raises(SystemExit) as exit_info:
        vlm_eval.main(["--model", "tiny:mlp", "--output_dir", str(taken / "out")])
    assert exit_info.value.code == 2
    assert f"error: --output_dir {taken / 'out'} cannot be written to" in capsys.readouterr().err


def test_an_evaluation_set_with_repeated_ids_scores_each_image_once_with_all_its_references(tmp_path, monkeypatch):
    folder = tmp_path / "pairs"
    folder.mkdir()
    records = [("a.png", "a red square.", 1), ("b.png", "a blue circle.", 2), ("a2.png", "a red box.", 1),
               ("c.png", "a green star.", 3)]  # fmt: skip
    for index, (name, _, _) in enumerate(records):
        Image.new("RGB", (16, 16), (60 * index, 0, 0)).save(folder / name)
    (folder / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": n, "caption": c, "photo": i}) + "\n" for n, c, i in records)
    )
    scored, score_captions = [], vlm_eval.score_captions

    def spy(predictions, references):
        scored.append(references)
        return score_captions(predictions, references)

    monkeypatch.setattr(vlm_eval, "score_captions", spy)
    vlm_eval.main(["--model", "tiny:mlp", "--dataset", str(folder), "--split", "train", "--max_new_tokens", "3",
                   "--id_column", "photo", "--output_dir", str(tmp_path / "out")])  # fmt: skip
    assert scored == [{"1": ["a red square.", "a red box."], "2": ["a blue circle."], "3": ["a green star."]}]
    predictions = json.loads((tmp_path / "out" / "predictions_tiny_mlp.json").read_text())
    assert [p["image_id"] for p in predictions] == ["1", "2", "3"]
