# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Export a model to ONNX in the layout transformers.js and onnxruntime users load for LLaVA-style models:
`onnx/vision_encoder.onnx`, `onnx/embed_tokens.onnx` and `onnx/decoder_model_merged.onnx` (one decoder for the prompt
and the cached steps), with the config, generation config and processor beside them (`onnx_export.export`). Early,
visual-expert and tokenized fusion export, with every projector and with tiles; cross-attention, hybrid and adapter
fusion are refused. With `--verify`, greedy captions of two noise images from PyTorch and from onnxruntime are
compared (exit status 1 unless the tokens are the same).

A --model path that does not exist, a fusion the layout cannot express, or an --output_dir that cannot be written or
already holds an export (without --overwrite) ends the command with a message (exit status 2) before anything is
exported.

    python export_onnx.py --model outputs/coco_mlp --output_dir onnx/coco_mlp
    python export_onnx.py --model tiny:mlp --output_dir onnx/tiny_mlp --verify      # offline
"""

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import torch
from transformers import AutoConfig

from data.images import noise_images
from evaluation.captioning import load_captioning_model, model_name_problem
from onnx_export.export import ONNX_FOLDER, UnsupportedExportError, check_exportable, export_onnx
from onnx_export.parity import check_parity
from onnx_export.runtime import OnnxVLM
from training.run_lock import ensure_writable_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="directory, Hub id, or tiny:<projector_type>")
    parser.add_argument("--output_dir", required=True, help="where onnx/ and the config and processor files go")
    parser.add_argument("--overwrite", action="store_true", help="replace an export already in --output_dir")
    parser.add_argument(
        "--verify", action="store_true", help="compare greedy captions of two noise images with the PyTorch model"
    )
    return parser


def usage_error(message: str) -> NoReturn:
    """Exits as argparse does on a bad argument: the usage and `message` on stderr, exit status 2."""
    build_parser().error(message)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """
    The arguments, once `--model` looks loadable and exportable (its config read, not its weights) and `--output_dir`
    is proved writable and free of an earlier export (unless `--overwrite`).
    """
    args = build_parser().parse_args(argv)
    if (problem := model_name_problem(args.model)) is not None:
        usage_error(f"--model {args.model}: {problem}")
    if not args.model.startswith("tiny:"):  # the tiny models are early fusion
        try:
            check_exportable(AutoConfig.from_pretrained(args.model, trust_remote_code=True))
        except UnsupportedExportError as error:
            usage_error(f"--model {args.model}: {error}")
    onnx_dir = Path(args.output_dir) / ONNX_FOLDER
    if onnx_dir.is_dir() and any(onnx_dir.iterdir()) and not args.overwrite:
        usage_error(
            f"--output_dir {args.output_dir} already holds an export ({onnx_dir}); pass --overwrite to replace it"
        )
    try:
        ensure_writable_dir(args.output_dir, "--output_dir", keep=False)
    except OSError as error:
        usage_error(str(error))
    return args


def verify(model: torch.nn.Module, processor, output_dir: str) -> bool:
    """Prints how the export's greedy captions of two noise images compare with PyTorch's; True if they match."""
    size = processor.image_processor.size
    width, height = size.get("width", 32), size.get("height", 32)
    tiled = getattr(model.config, "max_tiles", 1) > 1
    images = noise_images(2, 2 * width if tiled else width, height)
    report = check_parity(model, processor, OnnxVLM(output_dir), images)
    verdict = "the same tokens" if report.tokens_match else "DIFFERENT tokens"
    print(f"verify: {verdict} as PyTorch over {report.torch_tokens.shape[1]} steps; max |logit difference| "
          f"{report.max_logit_diff:.2e}")  # fmt: skip
    return report.tokens_match


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """The `python export_onnx.py` command line; returns the path of each exported graph."""
    args = parse_args(argv)
    # torch.onnx's notes that torchvision's operators (which no graph here uses) are not installed.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    model, processor = load_captioning_model(args.model, "cpu", torch.float32)
    paths = export_onnx(model, processor, args.output_dir)
    for name, path in paths.items():
        data = Path(f"{path}_data")
        size = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
        print(f"{name}: {path} ({size / 2**20:.1f} MiB)")
    if args.verify and not verify(model, processor, args.output_dir):
        raise SystemExit(1)
    return paths


if __name__ == "__main__":
    main()
