# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Dynamic resolution as InternVL and NVLM do it: an image is cut into up to `max_tiles` tiles of the vision tower's input
size, on the grid whose aspect ratio is closest to the image's, and followed by a thumbnail of the whole image when
there is more than one tile. With early fusion each tile's tokens follow a 1-D tile tag in the text (`<tile_1>`, ...,
`<tile_global_thumbnail>`: NVLM measured 1-D tags better than 2-D ones or none).

The grid is chosen by the rule of transformers' `GotOcr2ImageProcessor(crop_to_patches=True)` (tested equal); it is
written here once because that processor's module moved between transformers 4.57 and 5.x. The model's side of the
tiles is here too: the tiled `pixel_values` flattened for the tower ([`flatten_tiles`]), and hybrid fusion's split of
the whole images from their tiles ([`split_thumbnails`]).
"""

from functools import lru_cache

import torch


THUMBNAIL_TAG = "<tile_global_thumbnail>"


@lru_cache(maxsize=16)
def tile_grids(max_tiles: int) -> tuple[tuple[int, int], ...]:
    """Every `(columns, rows)` grid of at most `max_tiles` tiles, by number of tiles (then as enumerated)."""
    grids = [(columns, rows) for columns in range(1, max_tiles + 1) for rows in range(1, max_tiles + 1)]
    return tuple(sorted((grid for grid in grids if grid[0] * grid[1] <= max_tiles), key=lambda grid: grid[0] * grid[1]))


def best_grid(width: int, height: int, tile_size: int, max_tiles: int) -> tuple[int, int]:
    """
    The `(columns, rows)` grid for an image of `width` x `height` pixels: the aspect ratio closest to the image's; on a
    tie, the grid with more tiles as long as the image's area exceeds half of the tiles' area (more tiles would
    only upsample it).
    """
    aspect_ratio, area = width / height, width * height
    best, best_difference = (1, 1), float("inf")
    for columns, rows in tile_grids(max_tiles):
        difference = abs(aspect_ratio - columns / rows)
        if difference < best_difference:
            best, best_difference = (columns, rows), difference
        elif difference == best_difference and area > 0.5 * tile_size * tile_size * columns * rows:
            best = (columns, rows)
    return best


def cut_into_tiles(image, tile_size: int, max_tiles: int, resample: int) -> list:
    """
    The tiles of a PIL `image`, row by row, each `tile_size` square (the image resized to the grid of [`best_grid`]
    with `resample` and cut), then the image itself as the thumbnail when there is more than one tile (the image
    processor resizes it to the tile size, as it resizes an image without tiles).

    Raises `ValueError` naming `max_tiles` for an image smaller than one tile: cutting it would only upsample it.
    """
    if image.width < tile_size and image.height < tile_size:
        raise ValueError(
            f"An image of {image.width}x{image.height} pixels is smaller than one {tile_size}x{tile_size} tile, so "
            f"max_tiles={max_tiles} would only upsample it; use max_tiles=1 for small images (or pass larger ones)."
        )
    columns, rows = best_grid(image.width, image.height, tile_size, max_tiles)
    if columns * rows == 1:
        return [image]
    resized = image.resize((columns * tile_size, rows * tile_size), resample=resample)
    tiles = [
        resized.crop((column * tile_size, row * tile_size, (column + 1) * tile_size, (row + 1) * tile_size))
        for row in range(rows)
        for column in range(columns)
    ]
    return tiles + [image]


def tile_tags(num_tiles: int) -> list[str]:
    """The tags of an image's `num_tiles` tiles (the thumbnail included, last): `<tile_1>`, ..., and the thumbnail's."""
    if num_tiles == 1:
        return ["<tile_1>"]
    return [f"<tile_{index}>" for index in range(1, num_tiles)] + [THUMBNAIL_TAG]


def flatten_tiles(pixel_values: torch.FloatTensor, num_tiles: torch.LongTensor | None, max_tiles: int) -> torch.Tensor:
    """
    Tiled `pixel_values` `(num_images, max_count, channels, size, size)` as the flat batch of their `num_tiles` tiles
    `(total_tiles, channels, size, size)`, image after image; untiled ones `(num_images, channels, size, size)` as they
    are. Raises `ValueError` naming `max_tiles` for tile counts it does not allow.
    """
    if pixel_values.ndim == 4 and num_tiles is None:
        return pixel_values
    if pixel_values.ndim != 5 or num_tiles is None:
        raise ValueError(
            f"pixel_values of shape {tuple(pixel_values.shape)} with num_tiles={num_tiles!r}: tiled images are "
            "(num_images, max_count, channels, size, size) with num_tiles, untiled ones (num_images, channels, "
            "size, size) without; pass what VLMProcessor returns."
        )
    most = max_tiles + (max_tiles > 1)  # the tiles, and a thumbnail when there are several
    if int(num_tiles.max()) > most or int(num_tiles.min()) < 1 or len(num_tiles) != len(pixel_values):
        raise ValueError(
            f"num_tiles={num_tiles.tolist()} is invalid for max_tiles={max_tiles}: each of the {len(pixel_values)} "
            f"images has 1 to {most} tiles (the thumbnail included); build the inputs with a VLMProcessor of the "
            "model's max_tiles."
        )
    return pixel_values[tile_slots(num_tiles.to(pixel_values.device), pixel_values.shape[1])]


def tile_slots(num_tiles: torch.LongTensor, max_count: int) -> torch.BoolTensor:
    """Which of each image's `max_count` slots hold one of its `num_tiles` tiles `(num_images, max_count)`."""
    return torch.arange(max_count, device=num_tiles.device) < num_tiles[:, None]


def pad_tiles(tiles: torch.Tensor, num_tiles: torch.LongTensor) -> tuple[torch.Tensor, torch.BoolTensor]:
    """
    The flat `tiles` `(total_tiles, ...)`, image after image, as each image's `(num_images, max_count, ...)`,
    zero-padded to the image with the most, and [`tile_slots`] (the inverse of [`flatten_tiles`]).
    """
    present = tile_slots(num_tiles.to(tiles.device), int(num_tiles.max()))
    padded = tiles.new_zeros(*present.shape, *tiles.shape[1:])
    padded[present] = tiles
    return padded, present

def split_thumbnails(
    image_embeds: torch.FloatTensor, num_tiles: torch.LongTensor | None
) -> tuple[torch.FloatTensor, torch.FloatTensor, torch.LongTensor | None]:
    """
    Hybrid fusion's two views of the projected images `(total_tiles, num_visual_tokens, dim)`, image after image:
    the whole images `(num_images, num_visual_tokens, dim)` (each image's thumbnail, its last entry, or its only tile)
    for the sequence, and the high-resolution tiles for the cross-attention blocks, with their count per image (all
    entries but the thumbnail; an image of one tile is its own tile). Untiled (`num_tiles` `None`): both are the images.
    """
    if num_tiles is None:
        return image_embeds, image_embeds, None
    num_tiles = num_tiles.to(image_embeds.device)
    last = num_tiles.cumsum(0) - 1
    has_thumbnail = num_tiles > 1
    is_tile = torch.ones(len(image_embeds), dtype=torch.bool, device=image_embeds.device)
    is_tile[last[has_thumbnail]] = False
    return image_embeds[last], image_embeds[is_tile], num_tiles - has_thumbnail.long()
