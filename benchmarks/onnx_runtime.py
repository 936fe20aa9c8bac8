# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The ONNX export (`export_onnx.py`) against the PyTorch model on the CPU, batch-1 greedy captioning of noise images:
size on disk, export time, first-token latency (images and prompt to the first token), captions/s and tokens/s, and
the largest next-token logit difference, for the tiny model of each projector and, with `--text` and `--vision`, a
model built from those pretrained towers (`from_pretrained_backbones`, projector freshly initialised). Both sides run
the threads `OMP_NUM_THREADS` gives (torch and onnxruntime alike).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/onnx_runtime.py
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/onnx_runtime.py --projectors mlp --text /tmp/realqwen/qwen-fp32 \
        --vision /tmp/realqwen/vision
"""

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, ProcessorMixin

from benchmarks.measure import environment, software_line
from configuration_vlm import PROJECTOR_TYPES
from data.images import noise_images
from evaluation.captioning import caption_prompt
from evaluation.markdown_tables import markdown_table
from modeling_vlm import VLMForConditionalGeneration
from models.tiny import build_tiny_vlm
from onnx_export.export import export_onnx
from onnx_export.parity import check_parity
from onnx_export.runtime import OnnxVLM


COLUMNS = (
    "model", "PyTorch MiB", "ONNX MiB", "export s", "runtime", "first token ms", "captions/s", "tokens/s",
    "tokens/caption", "same tokens", "max logit diff",
)  # fmt: skip


def weight_bytes(model: PreTrainedModel) -> int:
    """Bytes of the model's parameters and buffers, tied ones once: what its safetensors file holds."""
    tensors = {tensor.data_ptr(): tensor for tensor in [*model.parameters(), *model.buffers()]}
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())


def pytorch_caption(model: PreTrainedModel, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> int:
    """Generates one greedy caption; returns its number of tokens."""
    with torch.inference_mode():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return generated.shape[1] - inputs["input_ids"].shape[1]


def onnx_caption(runtime: OnnxVLM, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> int:
    """Generates one greedy caption with onnxruntime; returns its number of tokens."""
    output = runtime.generate(**{name: value.numpy() for name, value in inputs.items()}, max_new_tokens=max_new_tokens)
    return output.sequences.shape[1]


def time_captions(caption, batches: list[dict], max_new_tokens: int) -> dict[str, float]:
    """
    `caption(inputs, max_new_tokens)` over `batches` (one image each, after one untimed warm-up): the median latency
    of the first token (a one-token caption) and the rates of whole captions and of their tokens.
    """
    caption(batches[0], max_new_tokens)
    first_token = []
    for inputs in batches:
        start = time.perf_counter()
        caption(inputs, 1)
        first_token.append(time.perf_counter() - start)
    start, tokens = time.perf_counter(), 0
    for inputs in batches:
        tokens += caption(inputs, max_new_tokens)
    seconds = time.perf_counter() - start
    return {
        "first_token_ms": 1000 * statistics.median(first_token),
        "captions_per_s": len(batches) / seconds,
        "tokens_per_s": tokens / seconds,
        "tokens_per_caption": tokens / len(batches),
    }


def benchmark_model(
    name: str, model: PreTrainedModel, processor: ProcessorMixin, num_captions: int, max_new_tokens: int
) -> list[dict[str, Any]]:
    """One row per runtime (PyTorch, onnxruntime) for `model`, exported into a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="onnx-benchmark-") as directory:
        start = time.perf_counter()
        export_onnx(model, processor, directory)
        export_s = time.perf_counter() - start
        onnx_bytes = sum(path.stat().st_size for path in (Path(directory) / "onnx").iterdir())
        runtime = OnnxVLM(directory)
        size = processor.image_processor.size
        images = noise_images(num_captions, size["width"], size["height"])
        text = [caption_prompt(processor)]
        batches = [dict(processor(images=[image], text=text, return_tensors="pt")) for image in images]
        parity = check_parity(model, processor, runtime, images[:1], max_new_tokens=max_new_tokens)
        timings = {
            "PyTorch": time_captions(lambda inputs, n: pytorch_caption(model, inputs, n), batches, max_new_tokens),
            "onnxruntime": time_captions(lambda inputs, n: onnx_caption(runtime, inputs, n), batches, max_new_tokens),
        }
    common = {"model": name, "pytorch_mib": weight_bytes(model) / 2**20, "onnx_mib": onnx_bytes / 2**20}
    return [
        {
            **common,
            "export_s": export_s if kind == "onnxruntime" else None,
            "runtime": kind,
            **timing,
            "same_tokens": parity.tokens_match,
            "max_logit_diff": parity.max_logit_diff,
        }  # fmt: skip
        for kind, timing in timings.items()
    ]


def format_report(rows: list[dict[str, Any]], env: dict[str, Any], command: str) -> str:
    """The command, hardware, versions and date, and the table."""
    versions = f"onnxruntime {version('onnxruntime')}, onnx {version('onnx')}, onnxscript {version('onnxscript')}"
    header = f"`{command}`\n\n{software_line(env)}, {versions}; {env['torch_threads']} thread(s); {env['date']}\n\n"
    cells = (
        (
            r["model"],
            f"{r['pytorch_mib']:.1f}",
            f"{r['onnx_mib']:.1f}",
            "" if r["export_s"] is None else f"{r['export_s']:.1f}",
            r["runtime"],
            f"{r['first_token_ms']:.1f}",
            f"{r['captions_per_s']:.2f}",
            f"{r['tokens_per_s']:.1f}",
            f"{r['tokens_per_caption']:.1f}",
            "yes" if r["same_tokens"] else "NO",
            f"{r['max_logit_diff']:.1e}",
        )  # fmt: skip
        for r in rows
    )
    return header + markdown_table(COLUMNS, cells, left_aligned=1)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projectors", nargs="+", choices=PROJECTOR_TYPES, default=list(PROJECTOR_TYPES))
    parser.add_argument("--text", help="a pretrained causal LM (directory or Hub id) for a real-size row")
    parser.add_argument("--vision", help="a pretrained vision tower for the real-size row (with --text)")
    parser.add_argument("--num_captions", type=int, default=5)
    parser.add_argument("--max_new_tokens", type=int, default=20)
    args = parser.parse_args(argv)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    rows = []
    for projector in args.projectors:
        model, processor = build_tiny_vlm(projector)
        rows += benchmark_model(f"tiny {projector}", model, processor, args.num_captions, args.max_new_tokens)
    if args.text and args.vision:
        for projector in args.projectors:
            model, processor = VLMForConditionalGeneration.from_pretrained_backbones(
                vision=args.vision, text=args.text, projector_type=projector
            )
            name = f"{Path(args.text).name} + {Path(args.vision).name} {projector}"
            rows += benchmark_model(name, model.eval(), processor, args.num_captions, args.max_new_tokens)
    env = environment(torch.device("cpu"))
    command = " ".join(["python benchmarks/onnx_runtime.py", *(sys.argv[1:] if argv is None else argv)])
    print(format_report(rows, env, command))
    return rows


if __name__ == "__main__":
    main()
