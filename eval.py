# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Evaluate captioning models: caption a dataset with each `--model` (batched greedy decoding, KV cache), score the
captions with the standard COCO caption metrics, and write predictions, metrics, a comparison table and, on request,
attention / saliency maps and a caption gallery.

    python eval.py --model user/vlm-mlp --model user/vlm-perceiver --dataset coco-karpathy --image_root /data/coco
    python eval.py --model tiny:mlp --dataset shapes --split test --max_samples 20 --gallery      # offline
"""

import argparse
import json
import os
import re
import time
from collections.abc import Sequence

import PIL.Image
import torch
from transformers import PreTrainedModel, ProcessorMixin

from caption_data import load_captions, readable_samples
from caption_metrics import CIDER_SCALE_NOTE, check_java, score_captions
from captioning import CAPTION_PROMPT, generate_captions, load_captioning_model
from markdown_tables import markdown_table
from visualize import overlay_heatmap, projector_attention_maps, saliency_map, save_attention_grid, write_gallery


TABLE_COLUMNS = (
    "model", "projector", "image tokens", "parameters", "projector parameters", "BLEU-4", "METEOR", "ROUGE-L",
    "CIDEr", "captions/s",
)  # fmt: skip
PROJECTORS_WITH_ATTENTION_MAPS = ("qformer", "perceiver")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="directory, Hub id, or tiny:<projector_type>")
    parser.add_argument("--dataset", default="shapes", help='"shapes" (offline), "coco-karpathy", or a dataset path')
    parser.add_argument("--split", default="test")
    parser.add_argument("--max_samples", type=int)
    parser.add_argument("--image_root", help="COCO image root (train2014/, val2014/) for coco-karpathy")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--caption_column", default="caption")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--prompt", default=CAPTION_PROMPT)
    parser.add_argument("--output_dir", default="eval_outputs")
    parser.add_argument("--attention_maps", action="store_true", help="PNG attention / saliency maps per image")
    parser.add_argument("--gallery", action="store_true", help="gallery.html and contact_sheet.png")
    parser.add_argument("--num_pictures", type=int, default=6, help="images in the attention maps and the gallery")
    return parser.parse_args(argv)


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
            row["model"], row["projector"], row["image_tokens"], f"{row['parameters']:,}",
            f"{row['projector_parameters']:,}", f"{row['BLEU-4']:.4f}", f"{row['METEOR']:.4f}",
            f"{row['ROUGE-L']:.4f}", f"{row['CIDEr']:.4f}", f"{row['captions_per_s']:.1f}",
        )  # fmt: skip
        for row in rows
    )
    return markdown_table(TABLE_COLUMNS, cells, left_aligned=2) + f"\n\n{CIDER_SCALE_NOTE}\n"


def table_row(name: str, model: PreTrainedModel, metrics: dict[str, float], captions_per_s: float) -> dict:
    """The comparison-table row of one model: its projector, sizes, throughput and scores."""
    return {
        "model": name,
        "projector": model.config.projector_type,
        "image_tokens": model.config.num_image_tokens,
        "parameters": sum(p.numel() for p in model.parameters()),
        "projector_parameters": sum(p.numel() for p in model.multi_modal_projector.parameters()),
        "captions_per_s": captions_per_s,
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
    samples: list[tuple[str, PIL.Image.Image, str]],
    output_dir: str,
    slug: str,
) -> None:
    """
    `attention_<slug>_<image id>.png` per `(image id, image, caption)`: the projector's attention grid for Q-Former
    and Perceiver models, the caption's gradient saliency for the others.
    """
    for image_id, image, caption in samples:
        path = os.path.join(output_dir, f"attention_{slug}_{file_slug(image_id)}.png")
        if model.config.projector_type in PROJECTORS_WITH_ATTENTION_MAPS:
            save_attention_grid(image, projector_attention_maps(model, processor, image), path)
        else:
            overlay_heatmap(image, saliency_map(model, processor, image, caption), 224).save(path)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """The `python eval.py` command line; returns the table rows."""
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    os.makedirs(args.output_dir, exist_ok=True)
    dataset = load_captions(
        args.dataset, args.split, image_root=args.image_root, max_samples=args.max_samples,
        image_column=args.image_column, caption_column=args.caption_column,
    )  # fmt: skip
    ids, images, references, skipped = readable_samples(dataset)
    if skipped:
        print(f"skipped {skipped} unreadable images")
    check_java()
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
        rows.append(table_row(name, model, metrics, captions_per_s))
        captions_by_model[name] = captions
        if args.attention_maps:
            samples = list(zip(ids, images, captions))[:num_pictures]
            write_attention_maps(model, processor, samples, args.output_dir, slug)

    table = comparison_table(rows)
    with open(os.path.join(args.output_dir, "comparison.md"), "w", encoding="utf-8") as file:
        file.write(table)
    print(table)
    if args.gallery:
        write_gallery(
            args.output_dir, ids[:num_pictures], images[:num_pictures], references[:num_pictures],
            {name: captions[:num_pictures] for name, captions in captions_by_model.items()},
        )  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
