# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The question sets a command line names: `"shapes"` for the offline synthetic questions ([`data.shapes_vqa`]),
`"vqav2"` / `"pope"` for lmms-lab's copies on the Hub, or a local directory or parquet file in their schema.
"""

import math
from dataclasses import asdict

from datasets import Dataset

from .shapes import SHAPES_STYLES
from .shapes_vqa import QUESTION_TYPES, make_shapes_pope, make_shapes_vqa
from .vqa_benchmarks import POPE_SOURCE, POPE_SPLITS, VQAV2_SOURCE, load_pope, load_vqav2


SHAPES_QUESTION_IMAGES = 200
"""Scenes of the synthetic question sets when no `max_samples` is given (as the shapes test split)."""


def load_vqa_questions(source: str, split: str, max_samples: int | None = None, seed: int = 0) -> Dataset:
    """
    VQA questions (`VQA_FEATURES`) of `source`: `"shapes"` or another of `SHAPES_STYLES` (`max_samples` questions of
    the `split` scenes, five per scene; seeded by `seed`), `"vqav2"` (`lmms-lab/VQAv2`), or a local copy in its
    schema; the first `max_samples`.
    """
    if source in SHAPES_STYLES:
        num_images = SHAPES_QUESTION_IMAGES if max_samples is None else math.ceil(max_samples / len(QUESTION_TYPES))
        questions = make_shapes_vqa(num_images, seed=seed, split=split, **asdict(SHAPES_STYLES[source]))
        return questions if max_samples is None else questions.select(range(min(max_samples, len(questions))))
    return load_vqav2(split, max_samples, source=VQAV2_SOURCE if source == "vqav2" else source)


def load_pope_questions(
    source: str, splits: tuple[str, ...] = POPE_SPLITS, max_samples: int | None = None, seed: int = 0, **shapes_kwargs
) -> Dataset:
    """
    POPE questions (`POPE_FEATURES`) of `source`, the first `max_samples` of each split: `"shapes"` or another of
    `SHAPES_STYLES` (about the test scenes; `shapes_kwargs` such as `statistics_images` go to [`make_shapes_pope`]),
    `"pope"` (`lmms-lab/POPE`), or a local copy in its schema.
    """
    if source not in SHAPES_STYLES:
        return load_pope(splits, max_samples, source=POPE_SOURCE if source == "pope" else source)
    # Every scene gives at least two questions per split.
    num_images = SHAPES_QUESTION_IMAGES if max_samples is None else math.ceil(max_samples / 2)
    style = asdict(SHAPES_STYLES[source])
    questions = make_shapes_pope(num_images, seed=seed, pope_splits=splits, **style, **shapes_kwargs)
    if max_samples is None:
        return questions
    names = questions["split"]
    rows = [[row for row, name in enumerate(names) if name == split][:max_samples] for split in splits]
    return questions.select([row for split_rows in rows for row in split_rows])
