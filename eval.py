# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Evaluate models, each `--model` in turn (batched greedy decoding, KV cache), on one `--task`:

- `caption` (default): caption a dataset and score the captions with the standard COCO caption metrics; on request
  attention / saliency maps and a caption gallery;
- `vqa`: answer VQAv2-style questions with LLaVA-1.5's short-answer prompt, scored with VQAv2's accuracy (overall, per
  answer type in the table, per question type too in the metrics file);
- `pope`: answer POPE's object-existence questions, scored per split (random, popular, adversarial) with accuracy,
  precision, recall, F1 and the yes-ratio of the answers.

Each writes predictions, metrics and a comparison table. A `--model` path or `--image_root` that does not exist, an
unknown `tiny:` projector, or a dataset that cannot give the task's samples ends the command with a message (exit
status 2) before any model is loaded.

    python eval.py --model user/vlm-mlp --model user/vlm-perceiver --dataset coco-karpathy --image_root /data/coco
    python eval.py --model user/vlm-mlp --task vqa --dataset vqav2 --split validation --max_samples 5000
    python eval.py --model user/vlm-mlp --task pope --dataset pope
    python eval.py --model tiny:mlp --dataset shapes --split test --max_samples 20 --gallery      # offline
    python eval.py --model tiny:mlp --task vqa --dataset shapes --max_samples 50                  # offline
"""

import argparse
import json
import os
import re
import time
from collections.abc import Sequence
from typing import NoReturn

import PIL.Image
from transformers import PreTrainedModel, ProcessorMixin

from data.captions import CaptionDataError, load_captions, merge_repeated_ids, readable_samples
from data.questions import load_pope_questions, load_vqa_questions
from data.shapes import SHAPES_STYLES
from data.vqa_benchmarks import POPE_SPLITS
from evaluation.caption_metrics import CIDER_SCALE_NOTE, check_java, score_captions
from evaluation.captioning import (
    CAPTION_PROMPT,
    DTYPES,
    default_device,
    generate_captions,
    load_captioning_model,
    model_name_problem,
)
from evaluation.markdown_tables import markdown_table
from evaluation.question_answering import DEFAULT_MAX_ANSWER_TOKENS, answers_table, evaluate_pope, evaluate_vqa
from evaluation.visualize import save_model_picture, write_gallery
from evaluation.vqa_metrics import VQA_SHORT_ANSWER_PROMPT
from training.argument_rules import checked_number
from training.run_lock import ensure_writable_dir


TABLE_COLUMNS = (
    "model", "projector", "fusion", "image tokens", "parameters", "bridge parameters", "BLEU-4", "METEOR", "ROUGE-L",
    "CIDEr", "captions/s",
)  # fmt: skip
VQA_ANSWER_TYPES = ("yes/no", "number", "other")
QUESTION_TABLE_COLUMNS = {
    "vqa": ("accuracy", *(f"answer_type/{kind}" for kind in VQA_ANSWER_TYPES)),
    "pope": tuple(f"{split}/{metric}" for split in POPE_SPLITS for metric in ("accuracy", "f1", "yes_ratio")),
}
"""The metrics each question task shows in its table (all of them are in `metrics_<model>.json`)."""
TASKS = ("caption", "vqa", "pope")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="directory, Hub id, or tiny:<projector_type>")
    parser.add_argument("--task", choices=TASKS, default="caption")
    parser.add_argument(
        "--dataset",
        default="shapes",
        help='"shapes" or "shapes-small" (offline, every task); captions: "coco-karpathy" or a dataset path; vqa: '
        '"vqav2" (lmms-lab/VQAv2); pope: "pope" (lmms-lab/POPE); or a local copy in their schema',
    )
    parser.add_argument("--split", default=None, help="default: test (shapes, captions), validation (vqav2)")
    parser.add_argument(
        "--max_samples",
        type=checked_number("--max_samples", "positive int"),
        help="images (caption), questions (vqa), questions per split (pope)",
    )
    parser.add_argument("--image_root", help="COCO image root (train2014/, val2014/) for coco-karpathy")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--caption_column", default="caption")
    parser.add_argument(
        "--id_column", help="image-id column of a generic dataset (default: the row index); rows sharing an id are one "
        "image with all their references",
    )
    parser.add_argument("--batch_size", type=checked_number("--batch_size", "positive int"), default=32)
    parser.add_argument(
        "--max_new_tokens",
        type=checked_number("--max_new_tokens", "positive int"),
        help=f"default: 64 (caption), {DEFAULT_MAX_ANSWER_TOKENS} (vqa, pope)",
    )
    parser.add_argument("--prompt", default=CAPTION_PROMPT, help="the captioning request")
    parser.add_argument(
        "--dtype", choices=("auto", *DTYPES), default="auto",
        help="the models' dtype; auto: bfloat16 on a GPU, float32 on the CPU (lmms-eval runs bfloat16 everywhere)",
    )  # fmt: skip
    parser.add_argument("--answer_prompt", default=VQA_SHORT_ANSWER_PROMPT, help="the line after each question")
    parser.add_argument("--output_dir", default="eval_outputs")
    parser.add_argument("--attention_maps", action="store_true", help="PNG attention / saliency maps per image")
    parser.add_argument("--gallery", action="store_true", help="gallery.html and contact_sheet.png")
    parser.add_argument(
        "--num_pictures",
        type=checked_number("--num_pictures", "positive int"),
        default=6,
        help="images in the attention maps and the gallery",
    )
    return parser


def usage_error(message: str) -> NoReturn:
    """Exits as argparse does on a bad argument: the usage and `message` on stderr, exit status 2."""
    build_parser().error(message)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """
    The command line's arguments, once every `--model` looks loadable (see `model_name_problem`) and `--output_dir` is
    proved writable, before anything is loaded.
    """
    args = build_parser().parse_args(argv)
    for name in args.model:
        if (problem := model_name_problem(name)) is not None:
            usage_error(f"--model {name}: {problem}")
    try:
        ensure_writable_dir(args.output_dir, "--output_dir", keep=False)
    except OSError as error:
        usage_error(str(error))
    if args.split is None:
        args.split = "validation" if args.task == "vqa" and args.dataset not in SHAPES_STYLES else "test"
    if args.max_new_tokens is None:
        args.max_new_tokens = 64 if args.task == "caption" else DEFAULT_MAX_ANSWER_TOKENS
    return args


def file_slug(name: str) -> str:
    """
    `name` (a model name or image id) as a file-name fragment: runs of anything but letters, digits and `_.-` become
    one `_`, without `_` at either end (`/data/models/vlm` -> `data_models_vlm`).
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_")


def comparison_table(rows: list[dict]) -> str:
    """Markdown table of evaluated models; metrics on pycocoevalcap's scale (CIDEr not multiplied by 100)."""
    cells = (
        (
            row["model"], row["projector"], row["fusion"], row["image_tokens"], f"{row['parameters']:,}",
            f"{row['bridge_parameters']:,}", f"{row['BLEU-4']:.4f}", f"{row['METEOR']:.4f}",
            f"{row['ROUGE-L']:.4f}", f"{row['CIDEr']:.4f}", f"{row['captions_per_s']:.1f}",
        )  # fmt: skip
        for row in rows
    )
    return markdown_table(TABLE_COLUMNS, cells, left_aligned=2) + f"\n\n{CIDER_SCALE_NOTE}\n"


def table_row(name: str, model: PreTrainedModel, metrics: dict[str, float], rate: str, per_s: float) -> dict:
    """
    The comparison-table row of one model: its projector and fusion, image tokens in the language model's input,
    sizes (the bridge: the projector and any cross-attention blocks), throughput (`rate`, e.g. `"captions_per_s"`:
    `per_s`) and scores.
    """
    bridge = [model.multi_modal_projector, model.cross_attention_blocks]
    return {
        "model": name,
        "projector": model.config.projector_type,
        "fusion": model.config.fusion,
        "image_tokens": model.config.num_image_tokens,
        "parameters": sum(p.numel() for p in model.parameters()),
        "bridge_parameters": sum(p.numel() for module in bridge for p in module.parameters()),
        rate: per_s,
        **metrics,
    }


def write_model_outputs(output_dir: str, slug: str, ids: list[str], captions: list[str], metrics: dict) -> None:
    """`predictions_<slug>.json` in COCO results format and `metrics_<slug>.json`."""
    with open(os.path.join(output_dir, f"predictions_{slug}.json"), "w", encoding="utf-8") as file:
        json.dump([{"image_id": i, "caption": c} for i, c in zip(ids, captions)], file, indent=1, ensure_ascii=False)
    with open(os.path.join(output_dir, f"metrics_{slug}.json"), "w", encoding="utf-8") as file:
        json.dump(metrics, file, indent=2)


def write_attention_maps(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    name: str,
    samples: list[tuple[str, PIL.Image.Image, str]],
    output_dir: str,
) -> None:
    """
    `attention_<name>_<image id>.png` per `(image id, image, caption)`: the projector's attention grid for Q-Former
    and Perceiver models, the caption's gradient saliency for the others.
    """
    for image_id, image, caption in samples:
        path = os.path.join(output_dir, f"attention_{file_slug(name)}_{file_slug(image_id)}.png")
        save_model_picture(model, processor, name, image_id, image, caption, path)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """The `python eval.py` command line; returns the table rows."""
    args = parse_args(argv)
    return evaluate_captions(args) if args.task == "caption" else evaluate_questions(args)


def evaluate_captions(args: argparse.Namespace) -> list[dict]:
    """`--task caption`: every model's captions, scores, table and, on request, pictures and gallery."""
    check_java()
    try:
        dataset = load_captions(
            args.dataset, args.split, image_root=args.image_root, max_samples=args.max_samples,
            image_column=args.image_column, caption_column=args.caption_column, id_column=args.id_column,
        )  # fmt: skip
    except CaptionDataError as error:
        usage_error(str(error))
    ids, images, references, skipped = readable_samples(merge_repeated_ids(dataset))
    if skipped:
        print(f"skipped {skipped} unreadable images")
    device, dtype = default_device(args.dtype)
    os.makedirs(args.output_dir, exist_ok=True)
    num_pictures = min(args.num_pictures, len(ids))

    rows, captions_by_model = [], {}
    for name in args.model:
        model, processor = load_captioning_model(name, device, dtype)
        start = time.perf_counter()
        captions = generate_captions(
            model, processor, images, args.batch_size, args.max_new_tokens, args.prompt, progress=True
        )
        captions_per_s = len(ids) / (time.perf_counter() - start)
        metrics = score_captions(dict(zip(ids, captions)), dict(zip(ids, references)))
        slug = file_slug(name)
        summary = {"model": name, "split": args.split, "num_images": len(ids), "skipped": skipped, **metrics}
        write_model_outputs(args.output_dir, slug, ids, captions, summary)
        rows.append(table_row(name, model, metrics, "captions_per_s", captions_per_s))
        captions_by_model[name] = captions
        if args.attention_maps:
            samples = list(zip(ids, images, captions))[:num_pictures]
            write_attention_maps(model, processor, name, samples, args.output_dir)

    write_table(args.output_dir, comparison_table(rows))
    if args.gallery:
        heading = f"{args.dataset}, {args.split} split: {num_pictures} of {len(ids)} images (scores on all {len(ids)})"
        write_gallery(
            args.output_dir, ids[:num_pictures], images[:num_pictures], references[:num_pictures],
            {name: captions[:num_pictures] for name, captions in captions_by_model.items()}, heading,
            {row["model"]: row for row in rows},
        )  # fmt: skip
    return rows


def write_table(output_dir: str, table: str) -> None:
    """Prints `table` and writes it to `output_dir/comparison.md`."""
    with open(os.path.join(output_dir, "comparison.md"), "w", encoding="utf-8") as file:
        file.write(table)
    print(table)


def load_questions(args: argparse.Namespace):
    """The question set of `--task vqa` or `pope` (see `data.questions`); a data problem exits with its message."""
    try:
        if args.task == "vqa":
            return load_vqa_questions(args.dataset, args.split, args.max_samples)
        return load_pope_questions(args.dataset, max_samples=args.max_samples)
    # VQABenchmarkError; a source that does not exist (FileNotFoundError) or a Hub that cannot be reached.
    except (ValueError, FileNotFoundError, ConnectionError) as error:
        usage_error(f"--dataset {args.dataset}: {error}")


def evaluate_questions(args: argparse.Namespace) -> list[dict]:
    """`--task vqa` or `pope`: every model's answers, metrics and the comparison table."""
    questions = load_questions(args)
    device, dtype = default_device(args.dtype)
    os.makedirs(args.output_dir, exist_ok=True)
    evaluate = evaluate_vqa if args.task == "vqa" else evaluate_pope
    rows = []
    for name in args.model:
        model, processor = load_captioning_model(name, device, dtype)
        start = time.perf_counter()
        metrics, answers = evaluate(
            model, processor, questions, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
            suffix=args.answer_prompt, progress=True,
        )  # fmt: skip
        answers_per_s = len(answers) / (time.perf_counter() - start)
        slug = file_slug(name)
        with open(os.path.join(args.output_dir, f"predictions_{slug}.json"), "w", encoding="utf-8") as file:
            json.dump([{"question_id": i, "answer": a} for i, a in answers.items()], file, indent=1, ensure_ascii=False)
        summary = {"model": name, "task": args.task, "dataset": args.dataset, "num_questions": len(answers), **metrics}
        with open(os.path.join(args.output_dir, f"metrics_{slug}.json"), "w", encoding="utf-8") as file:
            json.dump(summary, file, indent=2)
        rows.append(table_row(name, model, metrics, "answers_per_s", answers_per_s))
    write_table(args.output_dir, answers_table(rows, QUESTION_TABLE_COLUMNS[args.task]))
    return rows


if __name__ == "__main__":
    main()
