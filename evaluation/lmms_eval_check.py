# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Checks a run of the real lmms-eval on the local task of `evaluation.lmms_eval_task` against this project
(`scripts/lmms_eval_check.sh`). Hard checks, each failure a [`LmmsEvalCheckError`] naming the file, row or metric:

1. lmms-eval wrote its results file (`<output_path>/<model>/<date>_results.json`) and its samples file
   (`<date>_samples_<task>.jsonl`, from `--log_samples`), and (with the task directory) the samples cover exactly the
   task's rows: lmms-eval 0.7.3 exits with status 0 after an error during evaluation, so the files are the evidence;
2. `evaluation.caption_metrics.score_captions` on the predictions and references of the samples file gives the scores
   lmms-eval reported, metric by metric (both are pycocoevalcap on the same captions: equal to within
   [`SCORE_TOLERANCE`], relative);
3. with `--eval_dir` (an `eval.py --dtype bfloat16 --prompt "<lmms-eval's prompt>"` run on the task's images):
   `eval.py` captioned the same images, wrote lmms-eval's caption for every one word for word, and scored them as
   lmms-eval did (within [`SCORE_TOLERANCE`]). lmms-eval's `huggingface` model always loads a model with
   `from_pretrained` in bfloat16 (the rotary frequencies stay float32), as `eval.py --dtype bfloat16` does; in
   float32 a model whose greedy choices are close words some captions differently.

    python -m evaluation.lmms_eval_check --output_path DIR [--task_name NAME] [--task_dir DIR [--eval_dir DIR]]
"""

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow.parquet

from .caption_metrics import score_captions
from .lmms_eval_task import DEFAULT_TASK_NAME, LMMS_EVAL_METRICS, coco_image_id


SCORE_TOLERANCE = 1e-9
"""Relative tolerance between lmms-eval's scores and ours (`math.isclose(rel_tol=...)`, and `abs_tol` the same)."""


class LmmsEvalCheckError(RuntimeError):
    """lmms-eval's output is missing, malformed, or disagrees with this project's scores; the message says where."""


def find_output_files(output_path: str | os.PathLike, task_name: str = DEFAULT_TASK_NAME) -> tuple[Path, Path]:
    """The newest results and samples files of `task_name` under lmms-eval's `--output_path`."""
    output_path = Path(output_path)
    samples = sorted(output_path.glob(f"**/*_samples_{task_name}.jsonl"))
    if not samples:
        raise LmmsEvalCheckError(
            f"no samples file *_samples_{task_name}.jsonl under {output_path}: did lmms-eval run the task, "
            "with --log_samples? (it exits 0 after some failures: read its log)"
        )
    date_id = samples[-1].name.split("_samples_")[0]
    results = samples[-1].with_name(f"{date_id}_results.json")
    if not results.is_file():
        raise LmmsEvalCheckError(f"no results file {results.name} next to {samples[-1]}")
    return results, samples[-1]


def read_reported_scores(results_path: str | os.PathLike, task_name: str = DEFAULT_TASK_NAME) -> dict[str, float]:
    """lmms-eval's scores of `task_name` in its results file, by `score_captions`'s metric names."""
    results = json.loads(Path(results_path).read_text(encoding="utf-8")).get("results", {})
    if task_name not in results:
        raise LmmsEvalCheckError(f"{results_path}: no results for task {task_name!r} (found {sorted(results)})")
    scores = {}
    for metric, ours in LMMS_EVAL_METRICS.items():
        value = results[task_name].get(f"{metric},none")
        if not isinstance(value, (int, float)):
            raise LmmsEvalCheckError(f"{results_path}: {task_name} has no number for {metric!r} (got {value!r})")
        scores[ours] = float(value)
    return scores


def read_samples(samples_path: str | os.PathLike) -> tuple[dict[int, str], dict[int, list[str]]]:
    """
    The predictions and references lmms-eval scored, by COCO `image_id`: each sample's `coco_CIDEr` entry, the
    `{"pred", "answer", "image_id"}` record its `coco_process_result` returned and its aggregation read.
    """
    predictions, references = {}, {}
    lines = Path(samples_path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(filter(str.strip, lines), start=1):
        record = json.loads(line).get("coco_CIDEr")
        if not isinstance(record, dict) or not {"pred", "answer", "image_id"} <= set(record):
            raise LmmsEvalCheckError(f"{samples_path}, sample {number}: no coco_CIDEr record with pred/answer/image_id")
        image_id = int(record["image_id"])
        if image_id in predictions:
            raise LmmsEvalCheckError(f"{samples_path}: image_id {image_id} appears twice")
        predictions[image_id], references[image_id] = record["pred"], list(record["answer"])
    if not predictions:
        raise LmmsEvalCheckError(f"{samples_path}: no samples")
    return predictions, references


def score_differences(
    expected: Mapping[str, float], actual: Mapping[str, float], tolerance: float = SCORE_TOLERANCE
) -> list[str]:
    """One line per metric of `expected` whose value in `actual` differs by more than `tolerance` (relative)."""
    return [
        f"{metric}: {actual.get(metric)!r} != {value!r}"
        for metric, value in expected.items()
        if not isinstance(actual.get(metric), (int, float))
        or not math.isclose(actual[metric], value, rel_tol=tolerance, abs_tol=tolerance)
    ]


def caption_differences(ours: Mapping, theirs: Mapping, limit: int = 5) -> list[str]:
    """Up to `limit` lines naming the ids whose captions differ (after stripping spaces) or are missing on a side."""
    only_one_side = sorted(set(ours) ^ set(theirs), key=str)
    lines = [f"ids on one side only: {only_one_side[:limit]}"] if only_one_side else []
    differing = [key for key in ours if key in theirs and ours[key].strip() != theirs[key].strip()]
    lines += [f"{key}: {theirs[key].strip()!r} != {ours[key].strip()!r}" for key in differing[:limit]]
    if len(differing) > limit:
        lines.append(f"... {len(differing)} captions differ in all")
    return lines


def read_eval_outputs(eval_dir: str | os.PathLike) -> tuple[dict[str, str], dict[str, float]]:
    """`eval.py`'s predictions (by image id) and scores from its `--output_dir` (one model)."""
    eval_dir = Path(eval_dir)
    predictions_files = sorted(eval_dir.glob("predictions_*.json"))
    if len(predictions_files) != 1:
        raise LmmsEvalCheckError(f"{eval_dir}: expected one eval.py predictions_*.json, found {len(predictions_files)}")
    metrics_file = predictions_files[0].with_name(predictions_files[0].name.replace("predictions_", "metrics_", 1))
    if not metrics_file.is_file():
        raise LmmsEvalCheckError(f"{eval_dir}: no {metrics_file.name} next to {predictions_files[0].name}")
    rows = json.loads(predictions_files[0].read_text(encoding="utf-8"))
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    scores = {name: metrics[name] for name in LMMS_EVAL_METRICS.values()}
    return {row["image_id"]: row["caption"] for row in rows}, scores


def task_image_ids(parquet_path: str | os.PathLike) -> dict[int, str]:
    """The task's rows: COCO `image_id` (as lmms-eval reads it off `question_id`) -> this project's image id."""
    table = pyarrow.parquet.read_table(parquet_path, columns=["question_id", "file_name"]).to_pydict()
    return {
        coco_image_id(question): file_name.removesuffix(".png")
        for question, file_name in zip(table["question_id"], table["file_name"])
    }


def check_lmms_eval_run(
    output_path: str | os.PathLike,
    task_name: str = DEFAULT_TASK_NAME,
    task_dir: str | os.PathLike | None = None,
    eval_dir: str | os.PathLike | None = None,
) -> dict:
    """
    Runs this module's checks on lmms-eval's `output_path` (the comparison with `eval.py`'s `eval_dir` needs the
    task's `task_dir`) and returns a summary: files, images, each side's scores. Raises [`LmmsEvalCheckError`] at the
    first failing check, with every mismatch it found.
    """
    results_path, samples_path = find_output_files(output_path, task_name)
    reported = read_reported_scores(results_path, task_name)
    predictions, references = read_samples(samples_path)
    summary = {"results": str(results_path), "samples": str(samples_path), "images": len(predictions)}
    if task_dir is None and eval_dir is not None:
        raise LmmsEvalCheckError("the comparison with eval.py needs the task directory (--task_dir)")
    parquet_path = Path(task_dir or ".") / f"{task_name}.parquet"
    if task_dir is not None:
        check_coverage(samples_path, predictions, task_image_ids(parquet_path))
    ours = score_captions(predictions, references)
    raise_on("lmms-eval's scores (left) != score_captions' on its predictions", score_differences(ours, reported))
    summary |= {"lmms_eval": reported, "score_captions": ours, "bit_identical": ours == reported}
    if eval_dir is not None:
        lmms_captions = {image_id: predictions[index] for index, image_id in task_image_ids(parquet_path).items()}
        summary["eval_py"] = check_eval_py(eval_dir, lmms_captions, reported)
    return summary


def check_coverage(samples_path: Path, predictions: Mapping[int, str], image_ids: Mapping[int, str]) -> None:
    """Every row of the task has exactly one sample, and no sample is of another image."""
    if set(predictions) != set(image_ids):
        raise LmmsEvalCheckError(
            f"{samples_path}: samples of {len(predictions)} images, the task has {len(image_ids)} rows; "
            f"image ids on one side only: {sorted(set(predictions) ^ set(image_ids))[:5]}"
        )


def raise_on(what: str, differences: Sequence[str]) -> None:
    """Raises [`LmmsEvalCheckError`] listing `differences` under `what`, if there are any."""
    if differences:
        raise LmmsEvalCheckError(f"{what}:\n  " + "\n  ".join(differences))


def check_eval_py(eval_dir: str | os.PathLike, lmms_captions: Mapping[str, str], reported: Mapping[str, float]) -> dict:
    """
    `eval.py`'s run in `eval_dir` captioned the images of `lmms_captions` (lmms-eval's captions by this project's
    image id), wrote every one of them word for word (after stripping spaces), and scored them as lmms-eval did.
    """
    eval_captions, eval_scores = read_eval_outputs(eval_dir)
    what = f"{eval_dir}: lmms-eval's captions (left) != eval.py's (right); eval.py run with --dtype bfloat16?"
    raise_on(what, caption_differences(eval_captions, lmms_captions))
    raise_on("lmms-eval's scores (left) != eval.py's (right)", score_differences(eval_scores, reported))
    return {"identical_captions": len(eval_captions), "scores": eval_scores}


def passed(summary: Mapping) -> str:
    """One line on what the checks of `summary` established."""
    line = f"{summary['images']} images; lmms-eval's scores are score_captions' on its predictions"
    if "eval_py" in summary:
        line += f"; eval.py wrote its {summary['eval_py']['identical_captions']} captions word for word, same scores"
    return line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--output_path", required=True, help="lmms-eval's --output_path")
    parser.add_argument("--task_name", default=DEFAULT_TASK_NAME)
    parser.add_argument("--task_dir", help="the task's directory: every row must have its sample")
    parser.add_argument("--eval_dir", help="eval.py's --output_dir (--dtype bfloat16, lmms-eval's prompt, one model)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m evaluation.lmms_eval_check`: 0 when every check passes, 1 with the mismatch otherwise."""
    args = parse_args(argv)
    try:
        summary = check_lmms_eval_run(args.output_path, args.task_name, args.task_dir, args.eval_dir)
    except LmmsEvalCheckError as error:
        print(f"lmms-eval check FAILED: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    print(f"lmms-eval check passed: {passed(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
