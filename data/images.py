# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Reading the images of a 🤗 Datasets image column that may hold missing or corrupt files. Decoding errors of a
`datasets.Image()` column surface inside 🤗 Datasets when a row is accessed; a loop that must skip unreadable images
reads the raw column instead and decodes it with [`open_image`]:

```python
>>> raw = dataset.cast_column("image", datasets.Image(decode=False))
>>> image = open_image(raw[0]["image"])  # RGB `PIL.Image.Image`, or `None` when the file is missing or corrupt
```

[`noise_images`] makes images of uniform noise, for checks and benchmarks that need pixels but no content.
"""

import io
import os
from collections.abc import Iterator

import numpy as np
import PIL.Image
import PIL.ImageOps
from datasets import Dataset, Image

from processing_vlm import to_rgb_image


def read_image(value: PIL.Image.Image | str | os.PathLike | bytes | bytearray) -> PIL.Image.Image:
    """
    `value` (a decoded image, a local file path or encoded image bytes) as an RGB image: EXIF orientation applied to
    files and bytes, as `datasets.Image` does; 16-bit and float pixels scaled as `processing_vlm.to_rgb_image` does.
    Raises what Pillow raises for a missing, unreadable or corrupt file (OSError, SyntaxError, ValueError, EOFError,
    DecompressionBombError, ...).
    """
    if isinstance(value, PIL.Image.Image):
        return to_rgb_image(value)
    image = PIL.Image.open(io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else value)
    image.load()
    PIL.ImageOps.exif_transpose(image, in_place=True)
    return to_rgb_image(image)


def open_image(value: PIL.Image.Image | str | os.PathLike | bytes | dict | None) -> PIL.Image.Image | None:
    """
    Turns a value of an image column into an RGB image ([`read_image`]), or `None` when there is no readable image.

    Args:
        value (`PIL.Image.Image`, `str`, `os.PathLike`, `bytes`, `dict` or `None`):
            A decoded image, a local file path, encoded image bytes, or the `{"bytes": ..., "path": ...}` dict of an
            undecoded `datasets.Image(decode=False)` column (bytes are used first, the path otherwise).

    Returns:
        `PIL.Image.Image` or `None`: the image in RGB mode, or `None` if the value is empty or the file is missing,
        unreadable, corrupt or holds values that are not pixels.
    """
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None:
        return None
    if not isinstance(value, (PIL.Image.Image, str, os.PathLike, bytes, bytearray)):
        raise TypeError(f"Cannot read an image from a value of type {type(value).__name__}.")
    try:
        return read_image(value)
    # Pillow reports broken data through many exception types; any of them means the image cannot be used.
    except Exception:
        return None


def readable_images(dataset: Dataset) -> Iterator[tuple[int, PIL.Image.Image]]:
    """`(row, RGB image)` for every row of `dataset` whose image opens (see [`open_image`]); each is decoded once."""
    raw = dataset.cast_column("image", Image(decode=False))
    for row, value in enumerate(raw["image"]):
        image = open_image(value)
        if image is not None:
            yield row, image


def readable_rows(dataset: Dataset) -> list[int]:
    """The rows of `dataset` whose image opens, in order."""
    return [row for row, _ in readable_images(dataset)]


def noise_images(count: int, width: int, height: int, seed: int = 0) -> list[PIL.Image.Image]:
    """`count` RGB images of uniform noise, the same for a given `seed`."""
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]
