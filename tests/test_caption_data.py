"""Tests of `caption_data` and `shapes_data`: the synthetic shapes set, the COCO-Karpathy and generic loaders, and
`open_image`."""

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from accelerate import Accelerator
from datasets import Dataset, Image

from data import captions as caption_data
from data.captions import (
    CAPTION_FEATURES,
    SHAPES_SPLIT_SIZES,
    CaptionDataError,
    load_caption_dataset,
    load_captions,
    load_coco_karpathy,
    make_shapes_dataset,
)
from data.images import open_image
from data.questions import load_vqa_questions
from data.shapes import CAPTIONS_PER_SHAPES_IMAGE, POSITION_PHRASES, SHAPE_COLORS, SHAPE_NAMES
from models.tiny import build_tiny_vlm
from tiny_runs import tiny_args
from training.run_data import prepare_run_data


def raw_images(dataset: Dataset) -> list[bytes]:
    return [value["bytes"] for value in dataset.cast_column("image", Image(decode=False))["image"]]


def assert_common_schema(dataset: Dataset) -> None:
    assert dataset.column_names == list(CAPTION_FEATURES)
    assert dataset.features == CAPTION_FEATURES


def save_image(path: Path, color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.new("RGB", size, color).save(path)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic shapes


def test_shapes_is_deterministic():
    first, second = make_shapes_dataset(30, seed=3), make_shapes_dataset(30, seed=3)
    assert_common_schema(first)
    assert raw_images(first) == raw_images(second)
    assert first["captions"] == second["captions"]
    assert first["image_id"] == [f"shapes-train-{i:05d}" for i in range(30)]


def test_shapes_differ_between_seeds_and_splits():
    reference = make_shapes_dataset(20, seed=0, split="train")
    other_seed = make_shapes_dataset(20, seed=1, split="train")
    other_split = make_shapes_dataset(20, seed=0, split="validation")
    for other in (other_seed, other_split):
        assert not set(raw_images(reference)) & set(raw_images(other))
        assert reference["captions"] != other["captions"]
    assert other_split[0]["image_id"] == "shapes-validation-00000"


def test_shapes_smaller_set_is_a_prefix():
    small, large = make_shapes_dataset(5, seed=7), make_shapes_dataset(12, seed=7)
    assert raw_images(small) == raw_images(large)[:5]
    assert small["captions"] == large["captions"][:5]


def drawn_share(png: bytes) -> tuple[int, float]:
    """The image side, and the share of its pixels that differ from the background (the top-left pixel's colour)."""
    image = np.asarray(PIL.Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return image.shape[1], float((np.abs(image - image[0, 0]).sum(-1) > 0).mean())


def test_shapes_small_draws_the_same_scenes_with_small_shapes_in_large_images():
    regular = load_captions("shapes", "train", max_samples=20)
    small = load_captions("shapes-small", "train", max_samples=20)
    assert small["captions"] == regular["captions"] and small["image_id"] == regular["image_id"]
    images = [data.cast_column("image", Image(decode=False))["image"] for data in (regular, small)]
    for regular_image, small_image in zip(*images):
        side, share = drawn_share(regular_image["bytes"])
        small_side, small_share = drawn_share(small_image["bytes"])
        assert (side, small_side) == (64, 128)
        assert small_share < 0.15 * share  # shapes at a quarter of the size: a sixteenth of the area
    vqa, small_vqa = load_vqa_questions("shapes", "test", 10), load_vqa_questions("shapes-small", "test", 10)
    assert small_vqa["question"] == vqa["question"] and small_vqa["answers"] == vqa["answers"]
    assert drawn_share(small_vqa.cast_column("image", Image(decode=False))[0]["image"]["bytes"])[0] == 128


def test_shapes_captions_describe_the_image():
    dataset = make_shapes_dataset(60, seed=0, image_size=48)
    color_pattern = re.compile(r"\b(" + "|".join(SHAPE_COLORS) + r")\b")
    shape_pattern = re.compile(r"\b(" + "|".join(SHAPE_NAMES) + r")\b")
    phrase_to_position = {phrase: pos for pos, phrases in POSITION_PHRASES.items() for phrase in phrases}
    # Longest phrases first, so that "at the top of the image" is not read as "at the top".
    position_pattern = re.compile("|".join(sorted(map(re.escape, phrase_to_position), key=len, reverse=True)))
    for example in dataset:
        image, captions = example["image"], example["captions"]
        assert image.size == (48, 48)
        assert len(captions) == CAPTIONS_PER_SHAPES_IMAGE == len(set(captions))
        colors = [sorted(color_pattern.findall(caption.replace(" background", "_bg"))) for caption in captions]
        shapes = [sorted(shape_pattern.findall(caption)) for caption in captions]
        positions = [sorted(phrase_to_position[p] for p in position_pattern.findall(caption)) for caption in captions]
        # All references name the same shapes, colours and positions, one to three words per shape.
        assert all(c == colors[0] for c in colors) and all(s == shapes[0] for s in shapes)
        assert all(p == positions[0] for p in positions)
        assert len(colors[0]) == len(shapes[0]) == len(positions[0]) in (1, 2)
        assert all(caption == caption.lower() and caption.endswith(".") for caption in captions)

        pixels = np.asarray(image)
        for color in colors[0]:
            assert (pixels == SHAPE_COLORS[color]).all(axis=-1).any(), f"no {color} pixel for {captions[0]!r}"
        if len(colors[0]) == 1:
            ys, xs = np.nonzero((pixels == SHAPE_COLORS[colors[0][0]]).all(axis=-1))
            x, y = xs.mean() / 48, ys.mean() / 48
            expected = {"left": x < 0.4, "right": x > 0.6, "top": y < 0.4, "bottom": y > 0.6}
            assert expected.get(positions[0][0], 0.4 < x < 0.6 and 0.4 < y < 0.6), captions[0]


# ---------------------------------------------------------------------------------------------------------------------
# COCO-Karpathy


@pytest.fixture
def coco(tmp_path: Path) -> dict[str, Path]:
    """A fake COCO image root (3 JPEGs in train2014/ and val2014/) and a Karpathy split file in parquet."""
    root = tmp_path / "coco"
    rows = {
        "filepath": ["val2014", "val2014", "train2014"],
        "filename": [
            "COCO_val2014_000000391895.jpg",
            "COCO_val2014_000000522418.jpg",
            "COCO_train2014_000000000009.jpg",
        ],
        "sentences": [["a man riding a bike.", "a person on a bicycle."], ["a woman cutting a cake."], ["food."]],
        "cocoid": [391895, 522418, 9],
        "url": ["http://example.com/a.jpg", "http://example.com/b.jpg", "http://example.com/c.jpg"],
    }
    for i, (folder, name) in enumerate(zip(rows["filepath"], rows["filename"])):
        save_image(root / folder / name, color=(40 * i, 100, 100), size=(10 + i, 7))
    parquet = tmp_path / "karpathy" / "validation.parquet"
    parquet.parent.mkdir()
    Dataset.from_dict(rows).to_parquet(parquet)
    return {"root": root, "parquet": parquet, "cache": tmp_path / "cache"}


def test_coco_karpathy_maps_to_common_schema(coco):
    dataset = load_coco_karpathy(str(coco["root"]), "validation", str(coco["parquet"]), cache_dir=str(coco["cache"]))
    assert_common_schema(dataset)
    assert dataset["image_id"] == ["391895", "522418", "9"]
    assert dataset["captions"] == [
        ["a man riding a bike.", "a person on a bicycle."],
        ["a woman cutting a cake."],
        ["food."],
    ]
    assert [image.size for image in dataset["image"]] == [(10, 7), (11, 7), (12, 7)]
    paths = [value["path"] for value in dataset.cast_column("image", Image(decode=False))["image"]]
    assert paths[2] == str(coco["root"] / "train2014" / "COCO_train2014_000000000009.jpg")


def test_coco_karpathy_max_samples_and_hub_layout(coco, tmp_path):
    # A directory laid out like the Hub repository: data/{split}-*.parquet.
    repo = tmp_path / "repo" / "data"
    repo.mkdir(parents=True)
    (repo / "validation-00000-of-00001.parquet").write_bytes(coco["parquet"].read_bytes())
    dataset = load_coco_karpathy(
        str(coco["root"]), "validation", str(repo.parent), max_samples=2, cache_dir=str(coco["cache"])
    )
    assert dataset["image_id"] == ["391895", "522418"]


def test_coco_karpathy_missing_image_folder(coco):
    for folder in ("train2014", "val2014"):
        (coco["root"] / folder).rename(coco["root"] / f"{folder}.bak")
        with pytest.raises(ValueError, match=f"no '{folder}' folder.*<image_root>/train2014/COCO_train2014_"):
            load_coco_karpathy(str(coco["root"]), "validation", str(coco["parquet"]), cache_dir=str(coco["cache"]))
        (coco["root"] / f"{folder}.bak").rename(coco["root"] / folder)
    # The first two rows only need val2014.
    (coco["root"] / "train2014").rename(coco["root"] / "elsewhere")
    dataset = load_coco_karpathy(
        str(coco["root"]), "validation", str(coco["parquet"]), max_samples=2, cache_dir=str(coco["cache"])
    )
    assert len(dataset) == 2


def test_coco_karpathy_image_root_is_checked_before_the_split_file_is_loaded(coco, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("load_dataset was called")

    monkeypatch.setattr(caption_data, "load_dataset", no_loading)
    layout = re.escape(caption_data.COCO_LAYOUT)
    missing = tmp_path / "no" / "coco"
    with pytest.raises(CaptionDataError, match=f"^The COCO image root {missing} does not exist; pass the directory "
                       f"laid out as {layout}\\.$"):  # fmt: skip
        load_captions("coco-karpathy", "test", image_root=str(missing))
    with pytest.raises(CaptionDataError, match="parquet is not a directory"):
        load_coco_karpathy(str(coco["parquet"]), "test")
    with pytest.raises(
        CaptionDataError,
        match=f"val2014 has neither train2014/ nor val2014/; expected {layout}\\. It looks like an image folder "
        f"itself: pass its parent, {re.escape(str(coco['root']))}\\.$",
    ):
        load_coco_karpathy(str(coco["root"] / "val2014"), "test")


def test_coco_karpathy_drops_null_references_and_refuses_rows_without_any(coco, tmp_path):
    rows = Dataset.from_parquet(str(coco["parquet"])).to_dict()
    rows["sentences"] = [["a man riding a bike.", None, " "], [None], ["food."]]
    parquet = tmp_path / "nulls.parquet"
    Dataset.from_dict(rows).to_parquet(parquet)
    with pytest.raises(CaptionDataError) as error:
        load_coco_karpathy(str(coco["root"]), "test", str(parquet), cache_dir=str(coco["cache"]))
    assert str(error.value) == (
        f"Dataset {str(parquet)!r} (test) has 1 of 3 rows without any reference caption in column 'sentences' (null, "
        "empty, or only null or blank entries): row 1 (id '522418', COCO_val2014_000000522418.jpg). Give each of them "
        "a caption in the metadata, or remove those rows from it."
    )
    rows["sentences"][1] = ["a woman cutting a cake.", None]
    Dataset.from_dict(rows).to_parquet(parquet)
    dataset = load_coco_karpathy(str(coco["root"]), "test", str(parquet), cache_dir=str(coco["cache"]))
    assert dataset["captions"] == [["a man riding a bike."], ["a woman cutting a cake."], ["food."]]


# ---------------------------------------------------------------------------------------------------------------------
# Generic image-caption datasets


def make_imagefolder(directory: Path, records: list[dict]) -> Path:
    for i, record in enumerate(records):
        save_image(directory / record["file_name"], color=(i * 50, 0, 0), size=(5 + i, 5))
    with open(directory / "metadata.jsonl", "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)
    return directory


def test_imagefolder_with_one_caption_per_image(tmp_path):
    folder = make_imagefolder(
        tmp_path / "one",
        [{"file_name": "a.png", "caption": "a red square."}, {"file_name": "b.png", "caption": "a dark square."}],
    )
    dataset = load_caption_dataset(str(folder), "train", cache_dir=str(tmp_path / "cache"))
    assert_common_schema(dataset)
    by_size = {example["image"].size: example for example in dataset}
    assert by_size[(5, 5)]["captions"] == ["a red square."]
    assert by_size[(6, 5)]["captions"] == ["a dark square."]
    assert sorted(dataset["image_id"]) == ["0", "1"]


def test_imagefolder_with_several_captions_and_ids(tmp_path):
    records = [
        {"file_name": "a.png", "text": ["first.", "second."], "photo": 17},
        {"file_name": "b.png", "text": ["third."], "photo": 4},
        {"file_name": "c.png", "text": ["fourth.", "fifth.", "sixth."], "photo": 8},
    ]
    folder = make_imagefolder(tmp_path / "several", records)
    dataset = load_caption_dataset(
        str(folder), "train", caption_column="text", id_column="photo", cache_dir=str(tmp_path / "cache")
    )
    assert_common_schema(dataset)
    captions = dict(zip(dataset["image_id"], dataset["captions"]))
    assert captions == {"17": ["first.", "second."], "4": ["third."], "8": ["fourth.", "fifth.", "sixth."]}

    dataset = load_caption_dataset(
        str(folder), "train", caption_column="text", max_samples=2, cache_dir=str(tmp_path / "cache")
    )
    assert dataset["image_id"] == ["0", "1"]
    with pytest.raises(ValueError, match="no column \\['caption'\\]"):
        load_caption_dataset(str(folder), "train", cache_dir=str(tmp_path / "cache"))


def test_imagefolder_null_and_blank_references_are_dropped(tmp_path):
    records = [
        {"file_name": "a.png", "caption": ["a cat.", None, "  "]},
        {"file_name": "b.png", "caption": [None, "a dog."]},
    ]
    folder = make_imagefolder(tmp_path / "nulls", records)
    dataset = load_caption_dataset(str(folder), "train", cache_dir=str(tmp_path / "cache"))
    assert dataset["captions"] == [["a cat."], ["a dog."]]


@pytest.mark.parametrize(
    ("captions", "refused"),
    [
        (["a cat.", None, "a dog.", ""], "2 of 4 rows without any reference caption in column 'caption' (null, empty, "
         "or only null or blank entries): row 1 (id '1', b.png), row 3 (id '3', d.png)."),
        ([["a cat.", None], None, [None], [], [" "], ["a dog."], None, None], "6 of 8 rows without any reference "
         "caption in column 'caption' (null, empty, or only null or blank entries): row 1 (id '1', b.png), row 2 "
         "(id '2', c.png), row 3 (id '3', d.png), row 4 (id '4', e.png), row 6 (id '6', g.png) and 1 more."),
    ],
)  # fmt: skip
def test_imagefolder_rows_without_references_are_refused(captions, refused, tmp_path):
    records = [{"file_name": f"{'abcdefgh'[i]}.png", "caption": caption} for i, caption in enumerate(captions)]
    folder = make_imagefolder(tmp_path / "refused", records)
    with pytest.raises(CaptionDataError) as error:
        load_captions(str(folder), "train", cache_dir=str(tmp_path / "cache"))
    assert str(error.value) == (
        f"Dataset {str(folder)!r} (train) has {refused} Give each of them a caption in the metadata, or remove those "
        "rows from it."
    )
    # The first row has a caption: keeping only it loads.
    assert load_captions(str(folder), "train", max_samples=1, cache_dir=str(tmp_path / "cache"))["captions"] == [
        ["a cat."]
    ]


def test_caption_column_of_numbers_is_refused(tmp_path):
    folder = make_imagefolder(tmp_path / "numbers", [{"file_name": "a.png", "caption": "a cat.", "photo": 17}])
    with pytest.raises(CaptionDataError, match="^Column 'photo' must hold a caption or a list of captions per row, "
                       "not 17; choose the caption column with `caption_column`.$"):  # fmt: skip
        load_caption_dataset(str(folder), "train", caption_column="photo", cache_dir=str(tmp_path / "cache"))


def test_dataset_with_path_column_and_custom_image_column(tmp_path):
    """Image columns holding file paths become `Image` features; the column names are configurable."""
    paths = [str(save_image(tmp_path / f"{i}.png", size=(3 + i, 4))) for i in range(2)]
    Dataset.from_dict({"picture": paths, "caption": ["x.", "y."]}).to_json(tmp_path / "data.jsonl")
    dataset = load_caption_dataset(
        "json", "train", image_column="picture", data_files=str(tmp_path / "data.jsonl"), cache_dir=str(tmp_path / "c")
    )
    assert_common_schema(dataset)
    assert [image.size for image in dataset["image"]] == [(3, 4), (4, 4)]
    assert dataset["captions"] == [["x."], ["y."]]


# ---------------------------------------------------------------------------------------------------------------------
# Dispatcher


def test_load_captions_dispatches(coco, tmp_path):
    shapes = load_captions("shapes", "validation", seed=2, image_size=32)
    assert len(shapes) == SHAPES_SPLIT_SIZES["validation"]
    assert shapes[0]["image"].size == (32, 32)
    assert load_captions("shapes", "train", max_samples=3)["captions"] == make_shapes_dataset(3)["captions"]
    with pytest.raises(ValueError, match="max_samples"):
        load_captions("shapes", "extra")

    with pytest.raises(ValueError, match="image_root"):
        load_captions("coco-karpathy", "validation")
    dataset = load_captions(
        "coco-karpathy",
        "validation",
        image_root=str(coco["root"]),
        max_samples=1,
        karpathy_source=str(coco["parquet"]),
        cache_dir=str(coco["cache"]),
    )
    assert dataset["image_id"] == ["391895"]

    folder = make_imagefolder(tmp_path / "generic", [{"file_name": "a.png", "label": "one."}])
    dataset = load_captions(str(folder), "train", caption_column="label", cache_dir=str(tmp_path / "cache"))
    assert dataset["captions"] == [["one."]]
    for loaded in (shapes, dataset):
        assert_common_schema(loaded)


# ---------------------------------------------------------------------------------------------------------------------
# open_image


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "1", "I;16"])
def test_open_image_converts_to_rgb(mode, tmp_path):
    image = PIL.Image.new(mode, (7, 5))
    path = tmp_path / ("x.jpg" if mode in ("L", "CMYK") else "x.png")
    image.save(path)
    for value in (image, str(path), path, path.read_bytes(), {"bytes": None, "path": str(path)}):
        opened = open_image(value)
        assert opened.mode == "RGB" and opened.size == (7, 5)


def test_open_image_returns_none_for_unreadable_images(tmp_path):
    corrupt = tmp_path / "x.jpg"
    corrupt.write_bytes(b"this is not a jpeg" * 10)
    truncated = tmp_path / "truncated.jpg"
    save_image(truncated, size=(64, 64))
    truncated.write_bytes(truncated.read_bytes()[:200])
    for value in (
        str(corrupt),
        str(truncated),
        str(tmp_path / "missing.jpg"),
        str(tmp_path),
        corrupt.read_bytes(),
        {"bytes": None, "path": str(tmp_path / "missing.jpg")},
        {"bytes": None, "path": None},
        None,
    ):
        assert open_image(value) is None
    with pytest.raises(TypeError):
        open_image(3)


def test_open_image_prefers_bytes_and_applies_exif_orientation(tmp_path):
    image = PIL.Image.new("RGB", (6, 3), (0, 200, 0))
    exif = PIL.Image.Exif()
    exif[PIL.Image.ExifTags.Base.Orientation] = 6  # rotated 90°: displayed as 3x6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert open_image({"bytes": path.read_bytes(), "path": str(tmp_path / "missing.jpg")}).size == (3, 6)


def test_skipping_unreadable_rows_of_a_dataset(coco):
    """The undecoded column lets a training loop skip a corrupt file that plain row access would raise on."""
    (coco["root"] / "val2014" / "COCO_val2014_000000522418.jpg").write_bytes(b"garbage")
    dataset = load_coco_karpathy(str(coco["root"]), "validation", str(coco["parquet"]), cache_dir=str(coco["cache"]))
    with pytest.raises(PIL.UnidentifiedImageError):
        dataset[1]["image"]
    raw = dataset.cast_column("image", Image(decode=False))
    images = [open_image(example["image"]) for example in raw]
    assert [image is None for image in images] == [False, True, False]
    assert os.path.basename(raw[1]["image"]["path"]) == "COCO_val2014_000000522418.jpg"


def test_sixteen_bit_image_files_are_read_with_their_grey_levels(tmp_path):
    """Training and evaluation open images with `open_image`: a 16-bit ramp must stay a ramp, not turn white."""
    ramp = np.tile(np.arange(256) * 257, (4, 1)).astype("<u2")
    PIL.Image.frombytes("I;16", (256, 4), ramp.tobytes()).save(tmp_path / "ramp.png")
    for value in (str(tmp_path / "ramp.png"), (tmp_path / "ramp.png").read_bytes()):
        pixels = np.asarray(open_image(value))
        assert pixels.shape == (4, 256, 3) and (pixels == np.arange(256)[None, :, None]).all()


def test_rows_that_share_an_image_id_become_one_image_with_all_their_references(tmp_path):
    records = [
        {"file_name": "a.png", "caption": "first.", "photo": 7},
        {"file_name": "b.png", "caption": "other.", "photo": 9},
        {"file_name": "a2.png", "caption": "second.", "photo": 7},
        {"file_name": "a3.png", "caption": "third.", "photo": 7},
    ]
    folder = make_imagefolder(tmp_path / "pairs", records)
    dataset = load_caption_dataset(str(folder), "train", id_column="photo", cache_dir=str(tmp_path / "cache"))
    merged = caption_data.merge_repeated_ids(dataset)
    assert merged.features == dataset.features
    assert merged["image_id"] == ["7", "9"]
    assert merged["captions"] == [["first.", "second.", "third."], ["other."]]
    assert merged[0]["image"].size == dataset[0]["image"].size  # the first row's image
    unique = caption_data.merge_repeated_ids(merged)
    assert unique is merged


def test_a_training_runs_evaluation_set_merges_rows_that_share_an_image_id(tmp_path):
    rows = [("a", "first.", 7), ("b", "other.", 9), ("a2", "second.", 7), ("c", "last.", 5)]
    records = [{"file_name": f"{name}.png", "caption": caption, "photo": photo} for name, caption, photo in rows]
    folder = make_imagefolder(tmp_path / "pairs", records)
    args = tiny_args(
        tmp_path, dataset=str(folder), eval_split="train", max_train_samples=4, id_column="photo",
        eval_strategy="epoch", predict_with_generate=False, per_device_eval_batch_size=2,
    )  # fmt: skip
    data = prepare_run_data(args, Accelerator(cpu=True), *build_tiny_vlm("mlp"))
    assert data.eval_set.references == {"7": ["first.", "second."], "9": ["other."], "5": ["last."]}
