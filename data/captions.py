# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Image-captioning data shared by training and evaluation, built on 🤗 Datasets.

Every loader returns one `datasets.Dataset` for one split, with the columns of [`CAPTION_FEATURES`]:

- `image_id` (`str`): a stable identifier of the image, e.g. `"shapes-train-00000"` or a COCO id such as `"391895"`.
- `image` (`datasets.Image()`): decoded lazily to a `PIL.Image.Image` on access. Synthetic images are stored as PNG
  bytes, COCO images as absolute file paths.
- `captions` (`list[str]`): one or several reference captions of the image. The loaders drop `null` and blank
  references and refuse a dataset with rows left without any (a [`CaptionDataError`] naming those rows).

Decoding errors of the `image` column surface inside 🤗 Datasets when a row is accessed; `data.images` reads the
raw column instead and skips unreadable images.
"""

import os
from dataclasses import asdict

import PIL.Image
from datasets import Dataset, Features, Image, List, Value, load_dataset

from .images import readable_images
from .shapes import SHAPES_STYLES, shapes_image_id, shapes_scenes


CAPTION_FEATURES = Features(
    {
        "image_id": Value("string"),
        "image": Image(),
        "captions": List(Value("string")),
    }
)
"""The schema shared by every dataset of this module, in column order."""

KARPATHY_SOURCE = "yerevann/coco-karpathy"
"""Hub dataset holding the Karpathy splits of COCO 2014 (captions and file names, no image bytes)."""

SHAPES_SPLIT_SIZES = {"train": 1000, "validation": 200, "test": 200}
"""Default number of images of each split of the synthetic shapes dataset in [`load_captions`]."""

COCO_IMAGE_FOLDERS = ("train2014", "val2014")
"""The folders of the COCO 2014 images under an image root, named by the `filepath` column of the Karpathy splits."""
COCO_LAYOUT = "<image_root>/train2014/COCO_train2014_*.jpg and <image_root>/val2014/COCO_val2014_*.jpg"


class CaptionDataError(ValueError):
    """A dataset argument or the data itself cannot give captioning examples; the message says what to change."""


def make_shapes_dataset(
    num_images: int, seed: int = 0, image_size: int = 64, split: str = "train", shape_scale: float = 1.0
) -> Dataset:
    """
    Generates a synthetic captioning dataset of one or two coloured shapes on a plain background, fully offline.

    Each image holds a circle, square, triangle, star or cross of one of `data.shapes.SHAPE_COLORS`, small or large,
    on the left, right, top, bottom or centre of a black, gray or white background, or two such shapes at opposite
    positions. It comes with `data.shapes.CAPTIONS_PER_SHAPES_IMAGE` distinct reference captions (lower case, ending
    with a period), e.g. `"a big red circle on the left."` and `"there is a red circle in the left part of the
    image."`, which all name every shape with its colour and shape word.

    The dataset only depends on its arguments: the same arguments give identical PNG bytes
    and captions, each split draws from its own random stream, and a smaller `num_images` gives a prefix of a larger
    one.

    Args:
        num_images (`int`):
            Number of images to generate.
        seed (`int`, *optional*, defaults to 0):
            Seed of the random stream, combined with `split`.
        image_size (`int`, *optional*, defaults to 64):
            Side of the square images, in pixels.
        split (`str`, *optional*, defaults to `"train"`):
            Name of the split, used in the random stream and in the image ids (`"shapes-{split}-{index:05d}"`).
        shape_scale (`float`, *optional*, defaults to 1.0):
            Scale of the shapes' sizes (see `data.shapes.SHAPES_STYLES`).

    Returns:
        `datasets.Dataset`: the dataset with the columns of `CAPTION_FEATURES`, the images stored as PNG bytes.
    """
    scenes = shapes_scenes(num_images, seed=seed, image_size=image_size, split=split, shape_scale=shape_scale)
    return Dataset.from_dict(
        {
            "image_id": [shapes_image_id(split, index) for index in range(num_images)],
            "image": [{"bytes": scene.png, "path": None} for scene in scenes],
            "captions": [scene.captions for scene in scenes],
        },
        features=CAPTION_FEATURES,
        split=split,
    )


def _take_first(dataset: Dataset, max_samples: int | None) -> Dataset:
    """Keeps the first `max_samples` rows of `dataset` (all of them when `None`)."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    return dataset.select(range(max_samples))


def _to_common_schema(dataset: Dataset) -> Dataset:
    """Orders the columns of `dataset` as `CAPTION_FEATURES` and casts them to its types (e.g. paths to images)."""
    dataset = dataset.select_columns(list(CAPTION_FEATURES))
    return dataset if dataset.features == CAPTION_FEATURES else dataset.cast(CAPTION_FEATURES)


def _checked_image_root(image_root: str) -> str:
    """`image_root` as an absolute path, once it is known to hold at least one of `COCO_IMAGE_FOLDERS`."""
    absolute = os.path.abspath(os.path.expanduser(image_root))
    if not os.path.isdir(absolute):
        problem = "is not a directory" if os.path.exists(absolute) else "does not exist"
        raise CaptionDataError(
            f"The COCO image root {image_root} {problem}; pass the directory laid out as {COCO_LAYOUT}."
        )
    if not any(os.path.isdir(os.path.join(absolute, folder)) for folder in COCO_IMAGE_FOLDERS):
        hint = (
            f" It looks like an image folder itself: pass its parent, {os.path.dirname(absolute)}."
            if os.path.basename(absolute) in COCO_IMAGE_FOLDERS
            else ""
        )
        raise CaptionDataError(
            f"The COCO image root {image_root} has neither train2014/ nor val2014/; expected {COCO_LAYOUT}.{hint}"
        )
    return absolute


def _clean_references(value: object, column: str) -> list[str]:
    """The references of one caption cell (a string, a list of strings, or `None`) without `None` and blank ones."""
    references = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(references, (list, tuple)) or not all(r is None or isinstance(r, str) for r in references):
        raise CaptionDataError(
            f"Column {column!r} must hold a caption or a list of captions per row, not {value!r:.80}; "
            "choose the caption column with `caption_column`."
        )
    return [reference for reference in references if reference is not None and reference.strip()]


def _require_references(dataset: Dataset, name: str, column: str, preview: int = 5) -> Dataset:
    """`dataset` (`CAPTION_FEATURES`) if every row has a reference; else a `CaptionDataError` naming the rows."""
    empty = [row for row, references in enumerate(dataset["captions"]) if not references]
    if not empty:
        return dataset
    shown = dataset.select(empty[:preview]).cast_column("image", Image(decode=False))
    rows = ", ".join(
        f"row {row} (id {image_id!r}" + (f", {os.path.basename(value['path'])})" if value["path"] else ")")
        for row, image_id, value in zip(empty, shown["image_id"], shown["image"])
    )
    more = f" and {len(empty) - preview} more" if len(empty) > preview else ""
    raise CaptionDataError(
        f"Dataset {name} has {len(empty)} of {len(dataset)} rows without any reference caption in column {column!r} "
        f"(null, empty, or only null or blank entries): {rows}{more}. Give each of them a caption in the metadata, or "
        "remove those rows from it."
    )


def load_coco_karpathy(
    image_root: str,
    split: str,
    karpathy_source: str = KARPATHY_SOURCE,
    max_samples: int | None = None,
    **load_kwargs,
) -> Dataset:
    """
    Loads one Karpathy split of COCO 2014, joining the split file with a local copy of the COCO images.

    The split file has one row per image with the columns `filepath` (`"train2014"` or `"val2014"`), `filename`
    (e.g. `"COCO_val2014_000000391895.jpg"`), `sentences` (the reference captions) and `cocoid`. The image of a row is
    read from `{image_root}/{filepath}/{filename}`.

    Args:
        image_root (`str`):
            Directory holding the COCO 2014 image folders `train2014/` and `val2014/`. Only the folders used by the
            selected rows must exist (the Karpathy validation and test splits only use `val2014/`).
        split (`str`):
            Split of the split file, e.g. `"train"`, `"validation"`, `"test"` (or `"restval"` where it exists).
        karpathy_source (`str`, *optional*, defaults to `"yerevann/coco-karpathy"`):
            Hub dataset, local dataset directory or local parquet file holding the split file. A parquet file is
            taken as the given `split` whole.
        max_samples (`int`, *optional*):
            Keep only the first `max_samples` rows of the split (deterministic, no shuffling).
        load_kwargs:
            Forwarded to `datasets.load_dataset` (e.g. `cache_dir`, `revision`).

    Returns:
        `datasets.Dataset`: the split with the columns of `CAPTION_FEATURES`; `image_id` is the COCO id as a string
        and `image` holds absolute file paths, decoded lazily.

    Raises:
        `CaptionDataError`: if `image_root` does not exist or lacks an image folder the selected rows need (checked
        before the split file is downloaded where possible), or if a row has no reference caption.
    """
    image_root = _checked_image_root(image_root)
    if os.path.isfile(karpathy_source):
        karpathy = load_dataset("parquet", data_files={split: karpathy_source}, split=split, **load_kwargs)
    else:
        karpathy = load_dataset(karpathy_source, split=split, **load_kwargs)
    karpathy = _take_first(karpathy, max_samples)

    for folder in sorted(karpathy.unique("filepath")):
        if not os.path.isdir(os.path.join(image_root, folder)):
            raise CaptionDataError(
                f"The COCO image root {image_root} has no {folder!r} folder, which the Karpathy {split!r} split "
                f"needs. Expected the COCO 2014 images laid out as {COCO_LAYOUT}."
            )

    def to_common(batch: dict[str, list]) -> dict[str, list]:
        return {
            "image_id": [str(cocoid) for cocoid in batch["cocoid"]],
            "image": [os.path.join(image_root, d, f) for d, f in zip(batch["filepath"], batch["filename"])],
            "captions": [_clean_references(sentences, "sentences") for sentences in batch["sentences"]],
        }

    karpathy = karpathy.map(to_common, batched=True, remove_columns=karpathy.column_names)
    return _require_references(_to_common_schema(karpathy), f"{karpathy_source!r} ({split})", "sentences")


def load_caption_dataset(
    path: str,
    split: str,
    image_column: str = "image",
    caption_column: str = "caption",
    id_column: str | None = None,
    max_samples: int | None = None,
    **load_kwargs,
) -> Dataset:
    """
    Loads any image-caption dataset with `datasets.load_dataset` and maps it to `CAPTION_FEATURES`.

    Works with Hub datasets and local ones, e.g. an `imagefolder` directory with a `metadata.jsonl` holding a
    `file_name` and a caption field per image.

    Args:
        path (`str`):
            Hub dataset name or local directory, passed to `datasets.load_dataset`.
        split (`str`):
            Split to load.
        image_column (`str`, *optional*, defaults to `"image"`):
            Column holding the images (an `Image` feature, or file paths).
        caption_column (`str`, *optional*, defaults to `"caption"`):
            Column holding the references of each image: a string (one reference) or a list of strings.
        id_column (`str`, *optional*):
            Column holding the image ids, converted to strings. When `None`, the row index is the id.
        max_samples (`int`, *optional*):
            Keep only the first `max_samples` rows of the split (deterministic, no shuffling).
        load_kwargs:
            Forwarded to `datasets.load_dataset` (e.g. `name`, `data_dir`, `cache_dir`, `revision`).

    Returns:
        `datasets.Dataset`: the split with the columns of `CAPTION_FEATURES`; `null` and blank references are dropped.

    Raises:
        `CaptionDataError`: if one of the named columns is missing, holds something else than captions, or leaves a
        row without any reference caption.
    """
    dataset = _take_first(load_dataset(path, split=split, **load_kwargs), max_samples)
    missing = [
        column
        for column in (image_column, caption_column, id_column)
        if column is not None and column not in dataset.column_names
    ]
    if missing:
        raise CaptionDataError(
            f"Dataset {path!r} ({split}) has no column {missing}; its columns are {dataset.column_names}."
        )

    # Only the caption and id columns are read, so the image column passes through `map` without being decoded.
    def to_common(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        ids = indices if id_column is None else batch[id_column]
        return {
            "image_id": [str(image_id) for image_id in ids],
            "captions": [_clean_references(value, caption_column) for value in batch[caption_column]],
        }

    other_columns = [column for column in dataset.column_names if column != image_column]
    dataset = dataset.map(to_common, batched=True, with_indices=True, remove_columns=other_columns)
    if image_column != "image":
        dataset = dataset.rename_column(image_column, "image")
    return _require_references(_to_common_schema(dataset), f"{path!r} ({split})", caption_column)


def load_captions(
    source: str,
    split: str,
    *,
    image_root: str | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    image_column: str = "image",
    caption_column: str = "caption",
    id_column: str | None = None,
    **load_kwargs,
) -> Dataset:
    """
    Loads one split of a captioning dataset named on the command line, with the columns of `CAPTION_FEATURES`.

    Args:
        source (`str`):
            `"shapes"` (or another name of `data.shapes.SHAPES_STYLES`) for [`make_shapes_dataset`], `"coco-karpathy"`
            for [`load_coco_karpathy`], anything else is a dataset for [`load_caption_dataset`].
        split (`str`):
            Split to load.
        image_root (`str`, *optional*):
            COCO image root, required by `"coco-karpathy"`.
        max_samples (`int`, *optional*):
            Number of rows to keep (the first ones). For `"shapes"`, the number of images to generate, defaulting to
            `SHAPES_SPLIT_SIZES[split]`.
        seed (`int`, *optional*, defaults to 0):
            Seed of the synthetic `"shapes"` data; the other sources are not shuffled.
        image_column, caption_column, id_column:
            Columns of a generic dataset, see [`load_caption_dataset`].
        load_kwargs:
            Forwarded to the chosen loader, e.g. `image_size` for `"shapes"`, `karpathy_source` or `cache_dir` for
            `"coco-karpathy"`, `data_dir` for a generic dataset.

    Returns:
        `datasets.Dataset`: the split.

    Raises:
        `CaptionDataError`: if the arguments or the data cannot give captioning examples (see the loaders).
    """
    if source in SHAPES_STYLES:
        if max_samples is None:
            if split not in SHAPES_SPLIT_SIZES:
                raise CaptionDataError(f"Pass `max_samples` for the shapes split {split!r}: it has no default size.")
            max_samples = SHAPES_SPLIT_SIZES[split]
        style = {**asdict(SHAPES_STYLES[source]), **load_kwargs}
        return make_shapes_dataset(max_samples, seed=seed, split=split, **style)
    if source == "coco-karpathy":
        if image_root is None:
            raise CaptionDataError(
                "The coco-karpathy source needs `image_root`, the directory holding train2014/ and val2014/."
            )
        return load_coco_karpathy(image_root, split, max_samples=max_samples, **load_kwargs)
    return load_caption_dataset(
        source,
        split,
        image_column=image_column,
        caption_column=caption_column,
        id_column=id_column,
        max_samples=max_samples,
        **load_kwargs,
    )


def merge_repeated_ids(dataset: Dataset) -> Dataset:
    """
    `dataset` with one row per image id, as COCO's format means an id: rows that share an id (a dataset of one row
    per image-caption pair) become the first such row, holding the references of all of them in order. Evaluation
    scores each image once against all its references; without this, the later rows would replace the earlier rows'
    references and predictions. The image is the first row's: rows with one id are taken to show one image.
    """
    image_ids = list(dataset["image_id"])
    first_rows: dict[str, int] = {}
    for row, image_id in enumerate(image_ids):
        first_rows.setdefault(image_id, row)
    if len(first_rows) == len(image_ids):
        return dataset
    references: dict[str, list[str]] = {image_id: [] for image_id in first_rows}
    for image_id, captions in zip(image_ids, dataset["captions"]):
        references[image_id].extend(captions)
    merged = dataset.select(list(first_rows.values())).remove_columns("captions")
    return _to_common_schema(merged.add_column("captions", list(references.values())))


def readable_samples(dataset: Dataset) -> tuple[list[str], list[PIL.Image.Image], list[list[str]], int]:
    """`(ids, RGB images, reference lists, number skipped)` of a caption dataset; unreadable images are skipped."""
    image_ids, captions = list(dataset["image_id"]), list(dataset["captions"])
    readable = list(readable_images(dataset))
    ids = [image_ids[row] for row, _ in readable]
    references = [list(captions[row]) for row, _ in readable]
    return ids, [image for _, image in readable], references, len(dataset) - len(readable)
