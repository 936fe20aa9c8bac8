# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The synthetic shapes captioning data, drawn offline: one or two coloured shapes on a plain background, with reference
captions that name every shape with its colour, size and position, and the ground truth of each scene (what is where),
from which `data.shapes_vqa` asks its questions. `data.captions.make_shapes_dataset` turns a split of these scenes
into a 🤗 Dataset.
"""

import io
import math
import random
from dataclasses import dataclass

import PIL.Image
import PIL.ImageDraw


SHAPE_NAMES = ("circle", "square", "triangle", "star", "cross")
SHAPE_COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 230),
    "yellow": (240, 220, 50),
    "purple": (140, 60, 190),
    "orange": (250, 140, 30),
    "white": (245, 245, 245),
}
BACKGROUND_COLORS = {"black": (0, 0, 0), "gray": (128, 128, 128), "white": (255, 255, 255)}
# Centre of each named position and radius of each named size, as fractions of the image side.
SHAPE_POSITIONS = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}
SHAPE_SIZES = {"small": 0.1, "large": 0.2}


@dataclass(frozen=True)
class ShapesStyle:
    """How a variant of the synthetic data draws its scenes: the side of its images and a scale of its shapes' sizes."""

    image_size: int = 64
    shape_scale: float = 1.0


SHAPES_STYLES = {
    "shapes": ShapesStyle(),
    # Small shapes in a large image, where resolution matters: a small shape is 6 px across in 128 px, 1.6 px at the
    # tiny tower's 32 px input, 3.2 px in each of 2 x 2 tiles.
    "shapes-small": ShapesStyle(image_size=128, shape_scale=0.25),
}
"""The names of the synthetic datasets (for captions, conversations, VQA and POPE alike) and how each draws."""
# Two shapes sit at opposite positions so that even two large ones never overlap.
OPPOSITE_POSITIONS = (("left", "right"), ("top", "bottom"))

# Caption vocabulary: the references of one image share their content words (colour, shape, position) and vary the
# wording around them, so that consensus metrics such as CIDEr reward the content.
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
POSITION_PHRASES = {
    "left": ("on the left", "on the left side", "in the left part of the image", "at the left"),
    "right": ("on the right", "on the right side", "in the right part of the image", "at the right"),
    "top": ("at the top", "near the top", "in the upper part of the image", "at the top of the image"),
    "bottom": ("at the bottom", "near the bottom", "in the lower part of the image", "at the bottom of the image"),
    "centre": ("in the centre", "in the middle", "in the center of the image", "in the middle of the image"),
}
CAPTION_TEMPLATES = (
    "{scene}.",
    "there is {scene}.",
    "an image of {scene}.",
    "a picture showing {scene}.",
    "{scene} on a {background} background.",
    "a {background} background with {scene}.",
    "a simple drawing of {scene}.",
)
CAPTIONS_PER_SHAPES_IMAGE = 5
# Probability that a reference leaves out the size of a shape ("a red circle" instead of "a big red circle").
SIZE_OMISSION_PROBABILITY = 0.25


def _shape_polygon(shape: str, cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    """Vertices of a `"triangle"`, `"star"` or `"cross"` centred on `(cx, cy)` and fitting in a circle of `radius`."""
    if shape == "triangle":
        angles = (-90, 30, 150)
        return [(cx + radius * math.cos(math.radians(a)), cy + radius * math.sin(math.radians(a))) for a in angles]
    if shape == "star":
        points = []
        for k in range(10):
            r = radius if k % 2 == 0 else 0.45 * radius
            angle = math.radians(-90 + 36 * k)
            points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
        return points
    if shape == "cross":
        w, r = 0.35 * radius, radius
        outline = (
            (-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)
        )  # fmt: skip
        return [(cx + dx, cy + dy) for dx, dy in outline]
    raise ValueError(f"Unknown polygon shape {shape!r}.")


def _draw_shape(
    draw: PIL.ImageDraw.ImageDraw, shape: str, color: tuple[int, int, int], cx: float, cy: float, radius: float
) -> None:
    """Draws one filled `shape` (one of `SHAPE_NAMES`) of `color` centred on `(cx, cy)`."""
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=color)
    elif shape == "square":
        half = 0.8 * radius
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=color)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, radius), fill=color)


def _with_article(phrase: str) -> str:
    """Prefixes `phrase` with "a" or "an"."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _describe(objects: list[dict[str, str]], background: str, template: str, rng: random.Random) -> str:
    """Fills `template` with a freshly worded description of `objects` (dicts with shape, color, size, position)."""
    clauses = []
    for obj in objects:
        words = [obj["color"], obj["shape"]]
        if rng.random() >= SIZE_OMISSION_PROBABILITY:
            words.insert(0, rng.choice(SIZE_WORDS[obj["size"]]))
        clauses.append(f"{_with_article(' '.join(words))} {rng.choice(POSITION_PHRASES[obj['position']])}")
    return template.format(scene=" and ".join(clauses), background=background)


@dataclass
class ShapesScene:
    """One synthetic image and what it shows: its PNG bytes, its background colour and its objects (dicts with
    `shape`, `color`, `size` and `position`, in drawing order), and its reference captions."""

    png: bytes
    background: str
    objects: list[dict[str, str]]
    captions: list[str]


def random_shapes_scene(rng: random.Random, image_size: int, shape_scale: float = 1.0) -> ShapesScene:
    """
    One scene drawn from `rng`: an `image_size` x `image_size` image holding one shape, or two at opposite positions
    (their sizes scaled by `shape_scale`), and its `CAPTIONS_PER_SHAPES_IMAGE` distinct references.
    """
    background = rng.choice(list(BACKGROUND_COLORS))
    if rng.random() < 0.5:
        positions = [rng.choice(list(SHAPE_POSITIONS))]
    else:
        positions = list(rng.choice(OPPOSITE_POSITIONS))
        rng.shuffle(positions)
    colors = [color for color in SHAPE_COLORS if color != background]
    objects = [
        {
            "shape": rng.choice(SHAPE_NAMES),
            "color": rng.choice(colors),
            "size": rng.choice(list(SHAPE_SIZES)),
            "position": position,
        }
        for position in positions
    ]

    image = PIL.Image.new("RGB", (image_size, image_size), BACKGROUND_COLORS[background])
    draw = PIL.ImageDraw.Draw(image)
    for obj in objects:
        x, y = SHAPE_POSITIONS[obj["position"]]
        # Small jitter so that images sharing a description still differ.
        cx = (x + rng.uniform(-0.03, 0.03)) * image_size
        cy = (y + rng.uniform(-0.03, 0.03)) * image_size
        radius = SHAPE_SIZES[obj["size"]] * rng.uniform(0.9, 1.1) * image_size * shape_scale
        _draw_shape(draw, obj["shape"], SHAPE_COLORS[obj["color"]], cx, cy, radius)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")

    templates = rng.sample(CAPTION_TEMPLATES, CAPTIONS_PER_SHAPES_IMAGE)
    captions = [_describe(objects, background, template, rng) for template in templates]
    return ShapesScene(buffer.getvalue(), background, objects, captions)


def shapes_scenes(
    num_images: int, seed: int = 0, image_size: int = 64, split: str = "train", shape_scale: float = 1.0
) -> list[ShapesScene]:
    """
    The scenes of the synthetic split `split`: they depend on `(num_images, seed, image_size, split, shape_scale)`
    only, each split draws from its own random stream, and a smaller `num_images` gives a prefix of a larger one.
    """
    # String seeds are hashed with SHA-512 by `random.Random`, so streams are stable across processes and platforms.
    rng = random.Random(f"shapes/{split}/{seed}")
    return [random_shapes_scene(rng, image_size, shape_scale) for _ in range(num_images)]


def shapes_image_id(split: str, index: int) -> str:
    """The image id of the `index`-th scene of `split`, shared by its captions, questions and conversations."""
    return f"shapes-{split}-{index:05d}"
