# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Visual question-answering benchmarks as lmms-lab publishes them on the 🤗 Hub, in the schemas this project scores.

[`load_vqav2`] returns the columns of [`VQA_FEATURES`]:

- `question_id` (`str`): the VQA question id, e.g. `"262148000"`; unique within VQAv2.
- `image_id` (`str`): the COCO id of the image, e.g. `"262148"` (the convention of `data.captions`).
- `image` (`datasets.Image()`): decoded lazily to a `PIL.Image.Image` on access.
- `question` (`str`).
- `answers` (`list[str]`): the 10 human answers, as written by the annotators (raw: the VQA accuracy normalizes them).
- `question_type` (`str`): the first words of the question, e.g. `"what color is the"`.
- `answer_type` (`str`): `"yes/no"`, `"number"` or `"other"`.

[`load_pope`] returns the columns of [`POPE_FEATURES`]:

- `question_id` (`str`): the published question id; unique within a `split` only (the original POPE files count
  from 1 in each), so `(split, question_id)` identifies a question.
- `image_id` (`str`): the published `image_source`, e.g. `"COCO_val2014_000000310196"`.
- `image`, `question`: as above; questions read "Is there a {object} in the image?".
- `answer` (`str`): `"yes"` or `"no"`, lower-cased and stripped.
- `split` (`str`): how the absent objects were sampled: `"random"`, `"popular"` or `"adversarial"`.

Published schemas, as the dataset cards, the Hub file trees and the lmms-eval tasks that load them give them:

- `lmms-lab/VQAv2` (card `dataset_info` of https://huggingface.co/datasets/lmms-lab/VQAv2): one config, `default`,
  with the splits `validation` (214,354 questions), `testdev` (107,394) and `test` (447,793), stored as
  `data/{split}-*.parquet` (no `train` split). Columns, in this order: `question_type` (string),
  `multiple_choice_answer` (string), `answers` (list of `{answer: string, answer_confidence: string, answer_id:
  int64}`, 10 per question), `image_id` (int64), `answer_type` (string), `question_id` (int64), `question` (string),
  `image` (Image, the COCO image bytes). The schema is that of the `HuggingFaceM4/VQAv2` loading script, which lmms-eval
  read before this copy; that script leaves `question_type`, `multiple_choice_answer`, `answers` and `answer_type`
  null for `testdev` and `test`, whose answers the VQA organizers withhold. lmms-eval
  (`lmms_eval/tasks/vqav2/vqav2_val.yaml`, `vqav2_test.yaml` and `utils.py` of `EvolvingLMMs-Lab/lmms-eval`) scores
  `vqav2_val` on `validation` with the VQA accuracy over `doc["answers"][i]["answer"]`, and only writes an EvalAI
  submission file for `vqav2_test`, guarding `doc["answers"] is not None`. Its newest template reads the mirror
  `lmms-lab-encoder/VQAv2`; earlier ones read `lmms-lab/VQAv2`.
- `lmms-lab/POPE` (dataset viewer and file tree of https://huggingface.co/datasets/lmms-lab/POPE; the same schema in
  the cards of its copies, e.g. `giobin/POPE`): config `default` has one split, `test` (9,000 rows, stored as
  `data/test-*.parquet`), with the columns `id` (string, `"0"`...), `question_id` (string, `"1"`...), `question`
  (string), `answer` (string, `"yes"` or `"no"`), `image_source` (string, `"COCO_val2014_000000310196"`), `image`
  (Image) and `category` (string: `"adversarial"`, `"popular"` or `"random"`; 500 COCO val2014 images, 6 questions
  per image and category in the POPE paper). Config `Full` holds 9,000 rows too, as three splits named
  `adversarial`, `popular` and `random` (`Full/{split}-*.parquet`, same columns; by their sizes, the rows of
  `default` split by category). lmms-eval (`lmms_eval/tasks/pope/pope.yaml`, `pope_adv.yaml`,
  `pope_pop.yaml`, `pope_random.yaml`, `pope_full.yaml`, `utils.py`) scores task `pope` on `default`/`test` and the
  tasks `pope_adv`, `pope_pop` and `pope_random` on the splits of `Full`, comparing `answer.lower().strip()`, asserted
  to be `"yes"` or `"no"`, with the lower-cased prediction (accuracy, precision, recall, F1, yes ratio).

Both loaders read only the split they need (`datasets.load_dataset` would otherwise download and prepare every split
of a source: all 45 GB of VQAv2 for its 7 GB validation split), and their conversion neither decodes nor rewrites the
image bytes: the converted text columns are joined to the image column as loaded.
"""

import os
from collections.abc import Sequence
from typing import Any

from datasets import Dataset, Features, Image, List, Value, concatenate_datasets, load_dataset, load_dataset_builder


VQA_FEATURES = Features(
    {
        "question_id": Value("string"),
        "image_id": Value("string"),
        "image": Image(),
        "question": Value("string"),
        "answers": List(Value("string")),
        "question_type": Value("string"),
        "answer_type": Value("string"),
    }
)
"""The schema of [`load_vqav2`], in column order."""

POPE_FEATURES = Features(
    {
        "question_id": Value("string"),
        "image_id": Value("string"),
        "image": Image(),
        "question": Value("string"),
        "answer": Value("string"),
        "split": Value("string"),
    }
)
"""The schema of [`load_pope`], in column order."""

VQAV2_SOURCE = "lmms-lab/VQAv2"
"""Hub dataset holding VQAv2 with its COCO images (splits `validation`, `testdev`, `test`)."""

VQAV2_SPLITS_WITHOUT_ANSWERS = ("testdev", "test")
"""The splits of `VQAV2_SOURCE` whose answers are withheld for the EvalAI leaderboard."""

VQAV2_COLUMNS = ("question_id", "image_id", "image", "question", "answers", "question_type", "answer_type")
"""The columns of the published VQAv2 schema that [`load_vqav2`] reads."""

POPE_SOURCE = "lmms-lab/POPE"
"""Hub dataset holding POPE with its COCO images; its `default` config has one split, `POPE_HUB_SPLIT`."""

POPE_HUB_SPLIT = "test"
"""The split of `POPE_SOURCE` holding all questions, their sampling named in the `category` column."""

POPE_SPLITS = ("random", "popular", "adversarial")
"""The three POPE subsets, named by how the absent objects were sampled; the values of its `category` column."""

POPE_COLUMNS = ("question_id", "image_source", "image", "question", "answer", "category")
"""The columns of the published POPE schema that [`load_pope`] reads."""

POPE_ANSWERS = ("yes", "no")


class VQABenchmarkError(ValueError):
    """A benchmark argument or the benchmark data cannot give scorable questions; the message says what to change."""


def _check_max_samples(max_samples: int | None) -> None:
    if max_samples is not None and max_samples < 1:
        raise VQABenchmarkError(f"`max_samples` must be None (all rows) or at least 1, not {max_samples}.")


def _take_first(dataset: Dataset, max_samples: int | None) -> Dataset:
    """Keeps the first `max_samples` rows of `dataset` (all of them when `None`)."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    return dataset.select(range(max_samples))


def _load_split(source: str, split: str, load_kwargs: dict[str, Any]) -> Dataset:
    """
    Loads one split of `source` (a Hub dataset, a local dataset directory, or one parquet file taken as the split),
    reading only the files of that split.
    """
    if os.path.isfile(source):
        return load_dataset("parquet", data_files={split: source}, split=split, **load_kwargs)
    data_files = load_dataset_builder(source, **load_kwargs).config.data_files or {}
    if split not in data_files:
        raise VQABenchmarkError(
            f"Dataset {source!r} has no split {split!r}; its splits are {sorted(map(str, data_files))}. "
            "Pass one of those, or a source laid out as the lmms-lab dataset."
        )
    return load_dataset(source, data_files={split: data_files[split]}, split=split, **load_kwargs)


def _require_columns(dataset: Dataset, columns: Sequence[str], name: str, published: str) -> None:
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise VQABenchmarkError(
            f"Dataset {name} lacks the columns {missing} of the {published} schema; its columns are "
            f"{dataset.column_names}. Pass a source in the schema of {published}."
        )


def _require_rows(dataset: Dataset, name: str) -> None:
    if len(dataset) == 0:
        raise VQABenchmarkError(f"Dataset {name} has no rows; pass a source and split that hold questions.")


def _with_images(dataset: Dataset, columns: dict[str, list], features: Features) -> Dataset:
    """The `image` column of `dataset` joined with `columns` (same rows), in the column order and types of `features`.

    The image bytes stay in the files they were loaded from: only the text columns are built anew.
    """
    text_features = Features({name: feature for name, feature in features.items() if name != "image"})
    text = Dataset.from_dict(columns, features=text_features)
    joined = concatenate_datasets([dataset.select_columns(["image"]), text], axis=1).select_columns(list(features))
    # `cast_column` casts the Arrow table as it is; `Dataset.cast` would write every image again through `map`.
    return joined if joined.features == features else joined.cast_column("image", features["image"])


def _no_answers_error(source: str, split: str) -> VQABenchmarkError:
    return VQABenchmarkError(
        f"The {split!r} split of {source!r} has no answers (the VQAv2 testdev and test answers are withheld), so it "
        "cannot be scored here: score on validation, or submit test predictions to EvalAI."
    )


def _answer_lists(answers: list[list[dict] | None], question_ids: list, source: str, split: str) -> list[list[str]]:
    """The answer strings of each row of the published `answers` column; refuses rows without any answer."""
    empty = [question_id for question_id, row in zip(question_ids, answers) if not row]
    if len(empty) == len(answers):
        raise _no_answers_error(source, split)
    if empty:
        raise VQABenchmarkError(
            f"Dataset {source!r} ({split}) has {len(empty)} of {len(answers)} questions without answers (null or "
            f"empty `answers`), question ids {empty[:5]}{' and more' if len(empty) > 5 else ''}. Remove those rows "
            "from the source, or score a split whose questions all have answers."
        )
    return [[answer["answer"] for answer in row] for row in answers]


def load_vqav2(
    split: str = "validation", max_samples: int | None = None, source: str = VQAV2_SOURCE, **load_kwargs: Any
) -> Dataset:
    """
    Loads one split of VQAv2 in the schema of `VQA_FEATURES`.

    Args:
        split (`str`, *optional*, defaults to `"validation"`):
            Split to load. Only `validation` of `lmms-lab/VQAv2` has answers.
        max_samples (`int`, *optional*):
            Keep only the first `max_samples` questions of the split (deterministic, no shuffling).
        source (`str`, *optional*, defaults to `"lmms-lab/VQAv2"`):
            Hub dataset, local dataset directory (e.g. a copy of the Hub repository) or one parquet file taken as
            `split`, in the published schema of `lmms-lab/VQAv2` (see the module docstring).
        load_kwargs:
            Forwarded to `datasets.load_dataset_builder` and `datasets.load_dataset` (e.g. `cache_dir`, `revision`).

    Returns:
        `datasets.Dataset`: the questions with the columns of `VQA_FEATURES`; images decode lazily on access.

    Raises:
        `VQABenchmarkError`: if the split has no answers (`testdev` and `test` of `lmms-lab/VQAv2` are refused before
        anything is downloaded), does not exist, lacks columns of the published schema, has no rows, or has questions
        without answers; or if `max_samples` is below 1.
    """
    _check_max_samples(max_samples)
    if source == VQAV2_SOURCE and split in VQAV2_SPLITS_WITHOUT_ANSWERS:
        raise _no_answers_error(source, split)
    dataset = _load_split(source, split, load_kwargs)
    _require_columns(dataset, VQAV2_COLUMNS, f"{source!r} ({split})", VQAV2_SOURCE)
    _require_rows(dataset, f"{source!r} ({split})")
    dataset = _take_first(dataset, max_samples)

    text = dataset.select_columns([column for column in VQAV2_COLUMNS if column != "image"]).to_dict()
    columns = {
        "question_id": [str(question_id) for question_id in text["question_id"]],
        "image_id": [str(image_id) for image_id in text["image_id"]],
        "question": text["question"],
        "answers": _answer_lists(text["answers"], text["question_id"], source, split),
        "question_type": text["question_type"],
        "answer_type": text["answer_type"],
    }
    return _with_images(dataset, columns, VQA_FEATURES)


def _checked_pope_splits(splits: Sequence[str]) -> tuple[str, ...]:
    """`splits` without repeats, in order, once each is known to be one of `POPE_SPLITS`."""
    splits = tuple(dict.fromkeys((splits,) if isinstance(splits, str) else splits))
    unknown = [split for split in splits if split not in POPE_SPLITS]
    if unknown or not splits:
        raise VQABenchmarkError(
            f"Unknown POPE splits {unknown}; pass one or several of {list(POPE_SPLITS)}."
            if unknown
            else f"No POPE split requested; pass one or several of {list(POPE_SPLITS)}."
        )
    return splits


def _pope_answers(answers: list[str | None], question_ids: list, name: str) -> list[str]:
    """The answers lower-cased and stripped; refuses any other than `"yes"` and `"no"`."""
    cleaned = [answer.strip().lower() if isinstance(answer, str) else answer for answer in answers]
    wrong = [(qid, raw) for qid, raw, answer in zip(question_ids, answers, cleaned) if answer not in POPE_ANSWERS]
    if wrong:
        shown = ", ".join(f"question {question_id}: {answer!r}" for question_id, answer in wrong[:5])
        raise VQABenchmarkError(
            f"Dataset {name} has {len(wrong)} of {len(answers)} answers that are not 'yes' or 'no' ({shown}"
            f"{' and more' if len(wrong) > 5 else ''}); correct them in the source."
        )
    return cleaned


def _pope_split(dataset: Dataset, split: str, name: str) -> Dataset:
    """The rows of one POPE split (already selected from the published `test` split), in `POPE_FEATURES`."""
    text = dataset.select_columns(["question_id", "image_source", "question", "answer"]).to_dict()
    columns = {
        "question_id": [str(question_id) for question_id in text["question_id"]],
        "image_id": [str(image_source) for image_source in text["image_source"]],
        "question": text["question"],
        "answer": _pope_answers(text["answer"], text["question_id"], f"{name} ({split})"),
        "split": [split] * len(dataset),
    }
    return _with_images(dataset, columns, POPE_FEATURES)


def load_pope(
    splits: Sequence[str] = POPE_SPLITS,
    max_samples: int | None = None,
    source: str = POPE_SOURCE,
    **load_kwargs: Any,
) -> Dataset:
    """
    Loads POPE (object hallucination: yes/no questions on COCO images) in the schema of `POPE_FEATURES`.

    Args:
        splits (`Sequence[str]`, *optional*, defaults to `("random", "popular", "adversarial")`):
            The POPE splits to load, in the order of the returned rows; one name alone is accepted too.
        max_samples (`int`, *optional*):
            Keep only the first `max_samples` questions of each requested split (deterministic, no shuffling), so
            that every split stays represented.
        source (`str`, *optional*, defaults to `"lmms-lab/POPE"`):
            Hub dataset or local dataset directory whose `test` split (the `default` config of `lmms-lab/POPE`), or
            one parquet file, holds the questions in the published schema, the split of each named in `category`.
        load_kwargs:
            Forwarded to `datasets.load_dataset_builder` and `datasets.load_dataset` (e.g. `cache_dir`, `revision`).

    Returns:
        `datasets.Dataset`: the questions of the requested splits with the columns of `POPE_FEATURES`, split after
        split, each in the order of the source; images decode lazily on access.

    Raises:
        `VQABenchmarkError`: if a split name is unknown, the source has no `test` split, lacks columns of the
        published schema or has no rows for a requested split, or an answer is not `"yes"` or `"no"` (case and
        surrounding spaces aside); or if `max_samples` is below 1.
    """
    splits = _checked_pope_splits(splits)
    _check_max_samples(max_samples)
    dataset = _load_split(source, POPE_HUB_SPLIT, load_kwargs)
    name = f"{source!r} ({POPE_HUB_SPLIT})"
    _require_columns(dataset, POPE_COLUMNS, name, POPE_SOURCE)
    categories = list(dataset.select_columns(["category"]).to_dict()["category"])
    parts = []
    for split in splits:
        rows = [row for row, category in enumerate(categories) if category == split][:max_samples]
        if not rows:
            raise VQABenchmarkError(
                f"Dataset {name} has no rows of the POPE split {split!r} (column 'category'); its categories are "
                f"{sorted(set(map(str, categories)))}. Request only splits it holds, or pass a source with all of "
                f"{list(POPE_SPLITS)}."
            )
        parts.append(_pope_split(dataset.select(rows), split, name))
    # Concatenating rows regroups the columns of in-memory and memory-mapped tables: order them again.
    return concatenate_datasets(parts).select_columns(list(POPE_FEATURES))
