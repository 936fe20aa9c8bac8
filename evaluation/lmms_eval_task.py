# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
A local lmms-eval task built from the synthetic shapes captions, so that the real lmms-eval scores a saved model
offline (`scripts/lmms_eval_check.sh`; checked by `evaluation.lmms_eval_check`).

The task directory holds three files, registered with `lmms-eval --include_path <task dir> --tasks <task name>`:

- `<task name>.parquet`: one row per image in the columns of lmms-lab's COCO-Caption2017 ([`COCO_CAPTION_COLUMNS`]),
  the ones lmms-eval's `coco_cap` functions read: `image`, `answer` (the reference captions), `question_id` (whose
  digits give the COCO `image_id`: here the row index) and `id`; the others filled in. `file_name` holds this
  project's image id plus `.png`, so that lmms-eval's rows map back to `eval.py`'s predictions.
- `<task name>.yaml`: `coco2017_cap_val`'s settings (prompt, at most 64 greedy new tokens, the seven metrics) with the
  parquet file as its `test` split.
- `utils.py`: lmms-eval's own `lmms_eval/tasks/coco_cap/utils.py` functions, imported from the installed package and
  re-exported (a task's `!function utils.f` is looked up in the `utils.py` next to its YAML file), so the prompt, the
  result processing and the pycocoevalcap scoring are lmms-eval's, not copies.

Run it with `python -m evaluation.lmms_eval_task --task_dir DIR [--max_samples N]`; the task needs no lmms-eval to be
built, only to be run.
"""

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset, Features, Image, List, Value

from data.captions import load_captions


LMMS_EVAL_CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
"""The user turn of lmms-eval's COCO caption tasks (`coco_cap/utils.py: coco_doc_to_text`); the image comes first."""

DEFAULT_TASK_NAME = "shapes_cap_test"
DEFAULT_MAX_SAMPLES = 100

COCO_CAPTION_FEATURES = Features(
    {
        "question_id": Value("string"),
        "image": Image(),
        "question": Value("string"),
        "answer": List(Value("string")),
        "id": Value("int64"),
        "license": Value("int8"),
        "file_name": Value("string"),
        "coco_url": Value("string"),
        "height": Value("int32"),
        "width": Value("int32"),
        "date_captured": Value("string"),
    }
)
"""The schema of lmms-lab/COCO-Caption2017, the dataset of lmms-eval's `coco2017_cap_*` tasks, in column order."""

COCO_CAPTION_COLUMNS = tuple(COCO_CAPTION_FEATURES)

LMMS_EVAL_METRICS = {
    "coco_Bleu_1": "BLEU-1", "coco_Bleu_2": "BLEU-2", "coco_Bleu_3": "BLEU-3", "coco_Bleu_4": "BLEU-4",
    "coco_METEOR": "METEOR", "coco_ROUGE_L": "ROUGE-L", "coco_CIDEr": "CIDEr",
}  # fmt: skip
"""lmms-eval's `coco_cap` metric names and the names `evaluation.caption_metrics.score_captions` gives them."""

_AGGREGATIONS = {  # in the order of lmms-eval's task files
    "coco_Bleu_4": "coco_bleu4", "coco_Bleu_3": "coco_bleu3", "coco_Bleu_2": "coco_bleu2",
    "coco_Bleu_1": "coco_bleu1", "coco_METEOR": "coco_meteor", "coco_ROUGE_L": "coco_rougel",
    "coco_CIDEr": "coco_cider",
}  # fmt: skip

UTILS_FUNCTIONS = ("coco_doc_to_visual", "coco_doc_to_text", "coco_process_result", *_AGGREGATIONS.values())
"""The functions of lmms-eval's `coco_cap/utils.py` the task uses."""


def question_id(index: int) -> str:
    """The COCO-style `question_id` of row `index` (`"000000000007.png"`), from which lmms-eval reads `image_id`."""
    return f"{index:012d}.png"


def coco_image_id(question: str) -> int:
    """The `image_id` lmms-eval's `coco_process_result` reads off a `question_id`, with the same expression."""
    return int(question.split("_")[-1].split(".")[0])


def coco_caption_dataset(image_ids: Sequence[str], images: Sequence, references: Sequence[Sequence[str]]) -> Dataset:
    """COCO-Caption2017 rows, one per image: `question_id` and `id` from its position, `answer` its captions."""
    rows = {name: [] for name in COCO_CAPTION_COLUMNS}
    for index, (image_id, image, captions) in enumerate(zip(image_ids, images, references, strict=True)):
        rows["question_id"].append(question_id(index))
        rows["image"].append(image)
        rows["question"].append(LMMS_EVAL_CAPTION_PROMPT)
        rows["answer"].append(list(captions))
        rows["id"].append(index)
        rows["license"].append(0)
        rows["file_name"].append(f"{image_id}.png")
        rows["coco_url"].append("")
        rows["height"].append(image.height)
        rows["width"].append(image.width)
        rows["date_captured"].append("")
    return Dataset.from_dict(rows, features=COCO_CAPTION_FEATURES)


def shapes_caption_dataset(split: str = "test", max_samples: int = DEFAULT_MAX_SAMPLES, dataset: str = "shapes"):
    """The first `max_samples` images of a synthetic shapes split (as `eval.py --dataset shapes` reads them)."""
    captions = load_captions(dataset, split, max_samples=max_samples)
    return coco_caption_dataset(captions["image_id"], captions["image"], captions["captions"])


def task_yaml(task_name: str, parquet_path: str | os.PathLike) -> str:
    """The task file: `coco2017_cap_val`'s settings and lmms-eval's functions, with `parquet_path` as test split."""
    metrics = "".join(
        f"  - metric: {metric}\n    aggregation: !function utils.{_AGGREGATIONS[metric]}\n    higher_is_better: true\n"
        for metric in _AGGREGATIONS
    )
    return (
        f"# Built by evaluation/lmms_eval_task.py: lmms-eval's coco2017_cap_val on a local parquet file.\n"
        f"task: {task_name}\n"
        f"dataset_path: parquet\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(Path(parquet_path).resolve()))}\n"
        f"test_split: test\n"
        f"output_type: generate_until\n"
        f"doc_to_visual: !function utils.coco_doc_to_visual\n"
        f"doc_to_text: !function utils.coco_doc_to_text\n"
        f'doc_to_target: "answer"\n'
        f"generation_kwargs:\n  max_new_tokens: 64\n  temperature: 0\n  top_p: 1.0\n  num_beams: 1\n"
        f"  do_sample: false\n"
        f"process_results: !function utils.coco_process_result\n"
        f"metric_list:\n{metrics}"
        f"metadata:\n  - version: 0.0\n"
    )


def utils_module() -> str:
    """The task's `utils.py`: lmms-eval's own `coco_cap` functions, re-exported."""
    names = "".join(f"    {name},\n" for name in UTILS_FUNCTIONS)
    return (
        '"""lmms-eval\'s own COCO caption functions (lmms_eval/tasks/coco_cap/utils.py), for this local task."""\n\n'
        f"from lmms_eval.tasks.coco_cap.utils import (  # noqa: F401\n{names})\n"
    )


def write_task(
    task_dir: str | os.PathLike, task_name: str = DEFAULT_TASK_NAME, dataset: Dataset | None = None
) -> Path:
    """
    Writes the task (`<task_name>.parquet`, `<task_name>.yaml`, `utils.py`) into `task_dir`, by default on the first
    [`DEFAULT_MAX_SAMPLES`] images of the shapes test split, and returns the YAML file's path.
    """
    task_dir = Path(task_dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    dataset = shapes_caption_dataset() if dataset is None else dataset
    parquet_path = task_dir / f"{task_name}.parquet"
    dataset.to_parquet(str(parquet_path))
    (task_dir / "utils.py").write_text(utils_module(), encoding="utf-8")
    yaml_path = task_dir / f"{task_name}.yaml"
    yaml_path.write_text(task_yaml(task_name, parquet_path), encoding="utf-8")
    return yaml_path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--task_dir", required=True, help="where to write the parquet, YAML and utils.py files")
    parser.add_argument("--task_name", default=DEFAULT_TASK_NAME)
    parser.add_argument("--dataset", default="shapes", help='"shapes" or "shapes-small"')
    parser.add_argument("--split", default="test")
    parser.add_argument("--max_samples", type=int, default=DEFAULT_MAX_SAMPLES, help="images (rows) of the task")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    """`python -m evaluation.lmms_eval_task`: writes the task and prints its YAML file's path."""
    args = parse_args(argv)
    dataset = shapes_caption_dataset(args.split, args.max_samples, args.dataset)
    yaml_path = write_task(args.task_dir, args.task_name, dataset)
    print(f"wrote lmms-eval task {args.task_name!r} ({len(dataset)} images): {yaml_path}")
    return yaml_path


if __name__ == "__main__":
    main()
