"""Tests of `data.vqa_benchmarks`: VQAv2 and POPE read from local copies in the published lmms-lab schemas and layouts
(parquet files with embedded image bytes, split names from the dataset card), converted to the common schemas."""

import io
from pathlib import Path

import PIL.Image
import pytest
from datasets import Dataset, Features, Image, List, Value

from data import vqa_benchmarks
from data.vqa_benchmarks import (
    POPE_FEATURES,
    POPE_SOURCE,
    POPE_SPLITS,
    VQA_FEATURES,
    VQAV2_SOURCE,
    VQABenchmarkError,
    load_pope,
    load_vqav2,
)


# The schemas of the `dataset_info` of the lmms-lab/VQAv2 and lmms-lab/POPE dataset cards, in their column order.
PUBLISHED_VQAV2_FEATURES = Features(
    {
        "question_type": Value("string"),
        "multiple_choice_answer": Value("string"),
        "answers": List({"answer": Value("string"), "answer_confidence": Value("string"), "answer_id": Value("int64")}),
        "image_id": Value("int64"),
        "answer_type": Value("string"),
        "question_id": Value("int64"),
        "question": Value("string"),
        "image": Image(),
    }
)
PUBLISHED_POPE_FEATURES = Features(
    {
        "id": Value("string"),
        "question_id": Value("string"),
        "question": Value("string"),
        "answer": Value("string"),
        "image_source": Value("string"),
        "image": Image(),
        "category": Value("string"),
    }
)

# The dataset cards of lmms-lab/VQAv2 and of the `default` config of lmms-lab/POPE (their `dataset_info` and `configs`):
# the split sizes are those of the Hub, which the loaders must not check against the few rows written here.
VQAV2_CARD = """---
license: cc-by-4.0
dataset_info:
  features:
  - name: question_type
    dtype: string
  - name: multiple_choice_answer
    dtype: string
  - name: answers
    list:
    - name: answer
      dtype: string
    - name: answer_confidence
      dtype: string
    - name: answer_id
      dtype: int64
  - name: image_id
    dtype: int64
  - name: answer_type
    dtype: string
  - name: question_id
    dtype: int64
  - name: question
    dtype: string
  - name: image
    dtype: image
  splits:
  - name: validation
    num_bytes: 33693404566.41
    num_examples: 214354
  - name: testdev
    num_bytes: 17592305340.906
    num_examples: 107394
  - name: test
    num_bytes: 71407026207.344
    num_examples: 447793
  download_size: 44780405115
  dataset_size: 190384873283.36398
configs:
- config_name: default
  data_files:
  - split: validation
    path: data/validation-*
  - split: testdev
    path: data/testdev-*
  - split: test
    path: data/test-*
---
"""
POPE_CARD = """---
dataset_info:
  features:
  - name: id
    dtype: string
  - name: question_id
    dtype: string
  - name: question
    dtype: string
  - name: answer
    dtype: string
  - name: image_source
    dtype: string
  - name: image
    dtype: image
  - name: category
    dtype: string
  splits:
  - name: test
    num_bytes: 459386988
    num_examples: 9000
configs:
- config_name: default
  data_files:
  - split: test
    path: data/test-*
---
"""


def card(splits: list[str]) -> str:
    """The `configs` of an lmms-lab card, e.g. `data/testdev-*` for VQAv2's testdev, which `datasets` cannot infer."""
    data_files = "".join(f"  - split: {split}\n    path: data/{split}-*\n" for split in splits)
    return f"---\nconfigs:\n- config_name: default\n  data_files:\n{data_files}---\n"


COLORS = {262148: (200, 30, 30), 393225: (20, 40, 230), 310196: (30, 200, 60), 210789: (240, 200, 10)}
SIZES = {262148: (12, 8), 393225: (8, 10), 310196: (10, 10), 210789: (6, 9)}

VALIDATION_ANSWERS = [
    ["down", "down", "at table", "skateboard", "down", "table", "down", "down", "down", "down"],
    ["spectating", "watching", "watching", "watching", "watching", "watching", "watching", "watching", "sitting",
     "watching game"],
    ["yes"] * 9 + ["no"],
]  # fmt: skip


def png(image_id: int) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", SIZES[image_id], COLORS[image_id]).save(buffer, format="PNG")
    return buffer.getvalue()


def vqav2_row(question_id: int, image_id: int, question: str, answers: list[str] | None, types: tuple) -> dict:
    """One row of lmms-lab/VQAv2; `answers=None` gives a row of testdev or test, whose annotations are null."""
    question_type, answer_type = types if answers is not None else (None, None)
    return {
        "question_type": question_type,
        "multiple_choice_answer": None if answers is None else max(set(answers), key=answers.count),
        "answers": None
        if answers is None
        else [{"answer": a, "answer_confidence": "yes", "answer_id": i} for i, a in enumerate(answers, 1)],
        "image_id": image_id,
        "answer_type": answer_type,
        "question_id": question_id,
        "question": question,
        "image": {"bytes": png(image_id), "path": None},
    }


def validation_rows() -> list[dict]:
    return [
        vqav2_row(262148000, 262148, "Where is he looking?", VALIDATION_ANSWERS[0], ("none of the above", "other")),
        vqav2_row(262148001, 262148, "What are the people in the background doing?", VALIDATION_ANSWERS[1],
                  ("what are the", "other")),
        vqav2_row(393225000, 393225, "Is the sky blue?", VALIDATION_ANSWERS[2], ("is the", "yes/no")),
    ]  # fmt: skip


def unanswered_rows() -> list[dict]:
    return [vqav2_row(262148010 + i, 262148, f"Question {i}?", None, ()) for i in range(2)]


def write_parquet(rows: list[dict], features: Features, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


def write_vqav2(root: Path, splits: dict[str, list[dict]], readme: str = "") -> str:
    """A copy of the lmms-lab/VQAv2 repository: a card (`readme`, or `configs` naming `splits`) and parquet files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text(readme or card(list(splits)))
    for split, rows in splits.items():
        write_parquet(rows, PUBLISHED_VQAV2_FEATURES, root / "data" / f"{split}-00000-of-00001.parquet")
    return str(root)


def pope_row(index: int, question_id: int, category: str, image_id: int, question: str, answer: str) -> dict:
    return {
        "id": str(index),
        "question_id": str(question_id),
        "question": question,
        "answer": answer,
        "image_source": f"COCO_val2014_{image_id:012d}",
        "image": {"bytes": png(image_id), "path": None},
        "category": category,
    }


# (category, image, question, published answer); as published, each category counts its question ids from 1.
POPE_QUESTIONS = [
    ("adversarial", 310196, "Is there a snowboard in the image?", "yes"),
    ("adversarial", 310196, "Is there a backpack in the image?", "no"),
    ("adversarial", 210789, "Is there a truck in the image?", "Yes"),
    ("popular", 310196, "Is there a person in the image?", "yes"),
    ("popular", 210789, "Is there a dining table in the image?", " No "),
    ("popular", 210789, "Is there a car in the image?", "no"),
    ("random", 310196, "Is there a skis in the image?", "YES"),
    ("random", 310196, "Is there a giraffe in the image?", "no"),
    ("random", 210789, "Is there a zebra in the image?", "no"),
]


def pope_rows(questions: list[tuple] = POPE_QUESTIONS) -> list[dict]:
    counters: dict[str, int] = {}
    rows = []
    for index, (category, image_id, question, answer) in enumerate(questions):
        counters[category] = counters.get(category, 0) + 1
        rows.append(pope_row(index, counters[category], category, image_id, question, answer))
    return rows


def write_pope(root: Path, rows: list[dict], features: Features = PUBLISHED_POPE_FEATURES, readme: str = "") -> str:
    """A copy of the `default` config of lmms-lab/POPE: a card (`readme`, or its `configs`) and its parquet file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text(readme or card(["test"]))
    write_parquet(rows, features, root / "data" / "test-00000-of-00001.parquet")
    return str(root)


@pytest.fixture
def cache(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


@pytest.fixture
def vqav2(tmp_path: Path) -> str:
    splits = {"validation": validation_rows(), "testdev": unanswered_rows(), "test": unanswered_rows()}
    return write_vqav2(tmp_path / "VQAv2", splits, VQAV2_CARD)


@pytest.fixture
def pope(tmp_path: Path) -> str:
    return write_pope(tmp_path / "POPE", pope_rows(), readme=POPE_CARD)


def assert_image(image: PIL.Image.Image, image_id: int) -> None:
    assert isinstance(image, PIL.Image.Image)
    assert image.size == SIZES[image_id]
    assert image.convert("RGB").getpixel((0, 0)) == COLORS[image_id]


# ---------------------------------------------------------------------------------------------------------------------
# Schemas


def test_common_schemas():
    assert VQA_FEATURES == Features(
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
    assert list(VQA_FEATURES) == ["question_id", "image_id", "image", "question", "answers", "question_type",
                                  "answer_type"]  # fmt: skip
    assert POPE_FEATURES == Features(
        {
            "question_id": Value("string"),
            "image_id": Value("string"),
            "image": Image(),
            "question": Value("string"),
            "answer": Value("string"),
            "split": Value("string"),
        }
    )
    assert list(POPE_FEATURES) == ["question_id", "image_id", "image", "question", "answer", "split"]
    assert (VQAV2_SOURCE, POPE_SOURCE) == ("lmms-lab/VQAv2", "lmms-lab/POPE")
    assert POPE_SPLITS == ("random", "popular", "adversarial")


# ---------------------------------------------------------------------------------------------------------------------
# VQAv2


def test_vqav2_maps_to_common_schema(vqav2, cache):
    dataset = load_vqav2("validation", source=vqav2, cache_dir=cache)
    assert dataset.column_names == list(VQA_FEATURES)
    assert dataset.features == VQA_FEATURES
    assert dataset["question_id"][:] == ["262148000", "262148001", "393225000"]
    assert dataset["image_id"][:] == ["262148", "262148", "393225"]
    assert dataset["question"][:] == [
        "Where is he looking?",
        "What are the people in the background doing?",
        "Is the sky blue?",
    ]
    assert dataset["answers"][:] == VALIDATION_ANSWERS
    assert all(len(answers) == 10 for answers in dataset["answers"])
    assert dataset["question_type"][:] == ["none of the above", "what are the", "is the"]
    assert dataset["answer_type"][:] == ["other", "other", "yes/no"]


def test_vqav2_is_the_default_split(vqav2, cache):
    assert load_vqav2(source=vqav2, cache_dir=cache)["question_id"][:] == ["262148000", "262148001", "393225000"]


def test_vqav2_max_samples_keeps_the_first_questions(vqav2, cache):
    dataset = load_vqav2("validation", max_samples=2, source=vqav2, cache_dir=cache)
    assert dataset.features == VQA_FEATURES
    assert dataset["question_id"][:] == ["262148000", "262148001"]
    assert dataset["answers"][:] == VALIDATION_ANSWERS[:2]
    assert len(load_vqav2("validation", max_samples=50, source=vqav2, cache_dir=cache)) == 3


def test_vqav2_images_decode_to_pil_and_keep_their_bytes(vqav2, cache):
    dataset = load_vqav2("validation", source=vqav2, cache_dir=cache)
    for row, image_id in enumerate([262148, 262148, 393225]):
        assert_image(dataset[row]["image"], image_id)
    raw = dataset.cast_column("image", Image(decode=False))["image"]
    assert [value["bytes"] for value in raw] == [png(262148), png(262148), png(393225)]


def test_vqav2_images_are_not_decoded_while_loading(tmp_path, cache):
    rows = validation_rows()
    rows[1]["image"] = {"bytes": b"not an image", "path": None}
    source = write_vqav2(tmp_path / "VQAv2", {"validation": rows})
    dataset = load_vqav2("validation", source=source, cache_dir=cache)
    assert len(dataset) == 3
    assert_image(dataset[0]["image"], 262148)
    with pytest.raises(Exception):
        dataset[1]["image"]


def test_vqav2_reads_only_the_requested_split(tmp_path, cache):
    source = write_vqav2(tmp_path / "VQAv2", {"validation": validation_rows()})
    (Path(source) / "README.md").write_text(card(["validation", "test"]))
    (Path(source) / "data" / "test-00000-of-00001.parquet").write_bytes(b"a split that must not be read")
    assert len(load_vqav2("validation", source=source, cache_dir=cache)) == 3


def test_vqav2_single_parquet_file_is_the_split(tmp_path, cache):
    path = write_parquet(validation_rows(), PUBLISHED_VQAV2_FEATURES, tmp_path / "validation.parquet")
    dataset = load_vqav2("validation", max_samples=1, source=str(path), cache_dir=cache)
    assert dataset.features == VQA_FEATURES
    assert dataset[0]["answers"] == VALIDATION_ANSWERS[0]


@pytest.mark.parametrize("split", ["testdev", "test"])
def test_vqav2_hub_test_splits_are_refused_before_loading(split, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("nothing may be loaded for a split without answers")

    monkeypatch.setattr(vqa_benchmarks, "load_dataset", no_loading)
    monkeypatch.setattr(vqa_benchmarks, "load_dataset_builder", no_loading)
    with pytest.raises(VQABenchmarkError, match="score on validation, or submit test predictions to EvalAI") as error:
        load_vqav2(split)
    assert f"{split!r}" in str(error.value) and "lmms-lab/VQAv2" in str(error.value)


@pytest.mark.parametrize("split", ["testdev", "test"])
def test_vqav2_local_split_without_answers_is_refused(split, vqav2, cache):
    with pytest.raises(VQABenchmarkError, match="score on validation, or submit test predictions to EvalAI") as error:
        load_vqav2(split, source=vqav2, cache_dir=cache)
    assert "has no answers" in str(error.value) and f"{split!r}" in str(error.value)


@pytest.mark.parametrize("missing", [None, []])
def test_vqav2_questions_without_answers_are_named(missing, tmp_path, cache):
    rows = validation_rows()
    rows[2]["answers"] = missing
    source = write_vqav2(tmp_path / "VQAv2", {"validation": rows})
    with pytest.raises(VQABenchmarkError, match=r"1 of 3 questions without answers.*393225000.*Remove those rows"):
        load_vqav2("validation", source=source, cache_dir=cache)
    assert len(load_vqav2("validation", max_samples=2, source=source, cache_dir=cache)) == 2


def test_vqav2_unknown_split_names_the_splits(vqav2, cache):
    with pytest.raises(
        VQABenchmarkError, match=r"no split 'train'; its splits are \['test', 'testdev', 'validation'\]"
    ):
        load_vqav2("train", source=vqav2, cache_dir=cache)


def test_vqav2_missing_columns_are_named(tmp_path, cache):
    rows = [{k: v for k, v in row.items() if k not in ("answers", "question_type")} for row in validation_rows()]
    features = Features({k: v for k, v in PUBLISHED_VQAV2_FEATURES.items() if k not in ("answers", "question_type")})
    root = tmp_path / "VQAv2"
    (root / "data").mkdir(parents=True)
    (root / "README.md").write_text(card(["validation"]))
    write_parquet(rows, features, root / "data" / "validation-00000-of-00001.parquet")
    with pytest.raises(VQABenchmarkError) as error:
        load_vqav2("validation", source=str(root), cache_dir=cache)
    message = str(error.value)
    assert "lacks the columns ['answers', 'question_type']" in message
    assert "its columns are ['multiple_choice_answer', 'image_id', 'answer_type', 'question_id'" in message


def test_vqav2_split_without_rows_is_refused(vqav2, cache, monkeypatch):
    # `datasets` 5.2 cannot read an empty parquet split, so the loaded split is replaced by an empty one.
    empty = Dataset.from_list(validation_rows(), features=PUBLISHED_VQAV2_FEATURES).select([])
    monkeypatch.setattr(vqa_benchmarks, "load_dataset", lambda *args, **kwargs: empty)
    with pytest.raises(VQABenchmarkError, match=r"Dataset '.*VQAv2' \(validation\) has no rows"):
        load_vqav2("validation", source=vqav2, cache_dir=cache)


@pytest.mark.parametrize("max_samples", [0, -1])
def test_max_samples_below_one_is_refused(max_samples, vqav2, pope, cache):
    with pytest.raises(VQABenchmarkError, match="`max_samples` must be None"):
        load_vqav2("validation", max_samples=max_samples, source=vqav2, cache_dir=cache)
    with pytest.raises(VQABenchmarkError, match="`max_samples` must be None"):
        load_pope(max_samples=max_samples, source=pope, cache_dir=cache)


# ---------------------------------------------------------------------------------------------------------------------
# POPE


SOURCE_ORDER = ("adversarial", "popular", "random")  # the order of the rows in the fixture


def test_pope_maps_to_common_schema(pope, cache):
    dataset = load_pope(SOURCE_ORDER, source=pope, cache_dir=cache)
    assert dataset.column_names == list(POPE_FEATURES)
    assert dataset.features == POPE_FEATURES
    assert dataset["split"][:] == ["adversarial"] * 3 + ["popular"] * 3 + ["random"] * 3
    assert dataset["question_id"][:] == ["1", "2", "3"] * 3
    assert dataset["image_id"][:] == [f"COCO_val2014_{image_id:012d}" for _, image_id, _, _ in POPE_QUESTIONS]
    assert dataset["question"][:] == [question for _, _, question, _ in POPE_QUESTIONS]
    assert dataset["answer"][:] == ["yes", "no", "yes", "yes", "no", "no", "yes", "no", "no"]


def test_pope_max_samples_is_per_split(pope, cache):
    dataset = load_pope(SOURCE_ORDER, max_samples=2, source=pope, cache_dir=cache)
    assert dataset.features == POPE_FEATURES
    assert dataset["split"][:] == ["adversarial", "adversarial", "popular", "popular", "random", "random"]
    assert dataset["question"][:] == [POPE_QUESTIONS[i][2] for i in (0, 1, 3, 4, 6, 7)]
    assert len(load_pope(max_samples=10, source=pope, cache_dir=cache)) == 9


def test_pope_requested_splits_in_their_order(pope, cache):
    dataset = load_pope(("random", "adversarial"), source=pope, cache_dir=cache)
    assert dataset["split"][:] == ["random"] * 3 + ["adversarial"] * 3
    assert dataset["question"][:] == [POPE_QUESTIONS[i][2] for i in (6, 7, 8, 0, 1, 2)]
    one = load_pope("popular", source=pope, cache_dir=cache)
    assert one["split"][:] == ["popular"] * 3
    assert one["answer"][:] == ["yes", "no", "no"]


def test_pope_splits_are_taken_from_the_category_column_wherever_the_rows_are(tmp_path, cache):
    questions = [POPE_QUESTIONS[i] for i in (6, 0, 3, 7, 1, 4, 8, 2, 5)]  # categories interleaved
    source = write_pope(tmp_path / "POPE", pope_rows(questions))
    dataset = load_pope(SOURCE_ORDER, max_samples=2, source=source, cache_dir=cache)
    assert dataset["split"][:] == ["adversarial", "adversarial", "popular", "popular", "random", "random"]
    assert dataset["question"][:] == [POPE_QUESTIONS[i][2] for i in (0, 1, 3, 4, 6, 7)]
    assert dataset["answer"][:] == ["yes", "no", "yes", "no", "yes", "no"]
    assert_image(dataset[2]["image"], 310196)


def test_pope_images_decode_to_pil(pope, cache):
    dataset = load_pope(source=pope, cache_dir=cache)
    for row, (_, image_id, _, _) in enumerate(POPE_QUESTIONS):
        assert_image(dataset[row]["image"], image_id)
    raw = dataset.cast_column("image", Image(decode=False))["image"]
    assert [value["bytes"] for value in raw] == [png(image_id) for _, image_id, _, _ in POPE_QUESTIONS]


@pytest.mark.parametrize("splits", [("random", "advesarial"), ("test",), "train"])
def test_pope_unknown_split_names_are_refused_before_loading(splits, monkeypatch):
    monkeypatch.setattr(vqa_benchmarks, "load_dataset_builder", pytest.fail)
    with pytest.raises(
        VQABenchmarkError, match=r"Unknown POPE splits .*\['random', 'popular', 'adversarial'\]"
    ) as error:
        load_pope(splits)
    assert repr(splits if isinstance(splits, str) else splits[-1]) in str(error.value)


def test_pope_without_requested_splits_is_refused():
    with pytest.raises(VQABenchmarkError, match="No POPE split requested"):
        load_pope(())


def test_pope_missing_columns_are_named(tmp_path, cache):
    dropped = ("image_source", "category")
    rows = [{k: v for k, v in row.items() if k not in dropped} for row in pope_rows()]
    features = Features({k: v for k, v in PUBLISHED_POPE_FEATURES.items() if k not in dropped})
    source = write_pope(tmp_path / "POPE", rows, features)
    with pytest.raises(VQABenchmarkError) as error:
        load_pope(source=source, cache_dir=cache)
    message = str(error.value)
    assert "lacks the columns ['image_source', 'category'] of the lmms-lab/POPE schema" in message
    assert "its columns are ['id', 'question_id', 'question', 'answer', 'image']" in message


def test_pope_requested_split_without_rows_is_refused(tmp_path, cache):
    source = write_pope(tmp_path / "POPE", pope_rows(POPE_QUESTIONS[:3]))
    assert load_pope("adversarial", source=source, cache_dir=cache)["split"][:] == ["adversarial"] * 3
    with pytest.raises(
        VQABenchmarkError, match=r"no rows of the POPE split 'popular'.*categories are \['adversarial'\]"
    ):
        load_pope(SOURCE_ORDER, source=source, cache_dir=cache)


def test_pope_answers_other_than_yes_or_no_are_named(tmp_path, cache):
    questions = list(POPE_QUESTIONS)
    questions[4] = ("popular", 210789, "Is there a dining table in the image?", "maybe")
    source = write_pope(tmp_path / "POPE", pope_rows(questions))
    with pytest.raises(VQABenchmarkError, match=r"1 of 3 answers that are not 'yes' or 'no' \(question 2: 'maybe'\)"):
        load_pope(source=source, cache_dir=cache)
    assert len(load_pope(("adversarial", "random"), source=source, cache_dir=cache)) == 6


def test_pope_source_without_test_split_is_refused(tmp_path, cache):
    root = tmp_path / "POPE-Full"
    write_parquet(pope_rows(POPE_QUESTIONS[:3]), PUBLISHED_POPE_FEATURES, root / "validation-00000-of-00001.parquet")
    with pytest.raises(VQABenchmarkError, match=r"no split 'test'; its splits are \['validation'\]"):
        load_pope(source=str(root), cache_dir=cache)
