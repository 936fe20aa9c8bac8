# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The demo page: talk to trained models side by side and see where each one looked. Upload an image (or pick a
synthetic scene) and a prompt; every ticked model answers, streamed, with its latency, the map of where it looked,
and its projector, fusion, size and model-card scores. Runs unchanged as a Hugging Face Space (`python app.py`).

    python app.py --model outputs/compare/mlp --model outputs/compare/perceiver_xattn --model user/vlm-qformer
    python app.py        # $VLM_DEMO_MODELS (comma-separated), else the first four of the last `make demo`
                         # (outputs/tiny_shapes), else untrained tiny ones
"""

import argparse
from collections.abc import Sequence

from demo.chat import DEFAULT_MAX_NEW_TOKENS
from demo.models import default_model_names
from demo.page import MAX_MODEL_SLOTS, build_page, load_page_models
from evaluation.captioning import default_device


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        action="append",
        help=f"a saved model directory, a Hub id or tiny:<projector>; repeat for up to {MAX_MODEL_SLOTS} side by side",
    )
    parser.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="the longest reply")
    parser.add_argument("--host", default=None, help="the address to serve on (gradio's default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="the port (gradio's default: 7860, or the next free)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.max_new_tokens < 1:
        build_parser().error(f"--max_new_tokens must be at least 1, got {args.max_new_tokens}.")
    device, dtype = default_device()
    names = args.model or default_model_names(limit=MAX_MODEL_SLOTS)
    page_models = load_page_models(names, device, dtype, args.max_new_tokens)
    for error in page_models.errors:
        print(error)
    page = build_page(page_models)
    page.queue().launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
