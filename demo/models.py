# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The models the demo page talks to: loading one by name with a message instead of a traceback when it cannot be
loaded, the models it opens with when given none, and each model's config and scores at a glance.
"""

import json
import os
from dataclasses import dataclass

import torch
from huggingface_hub import ModelCard
from transformers import PreTrainedModel, ProcessorMixin

from evaluation.captioning import load_captioning_model, model_name_problem


DEMO_OUTPUT_DIR = os.path.join("outputs", "tiny_shapes")
"""Where `make demo` (`configs/tiny_shapes.yaml`) saves its models: one directory per run."""
UNTRAINED_DEFAULTS = ("tiny:mlp", "tiny:perceiver")
"""What the page opens with on a fresh clone, before any `make demo`."""
MODELS_VARIABLE = "VLM_DEMO_MODELS"
"""The environment variable naming the page's models, comma-separated, when `app.py` is given none (as on a Space)."""
RESULTS_FILE = "training_results.json"
CARD_METRICS = ("CIDEr", "VQA/accuracy", "POPE/adversarial/f1")
"""The scores of a model card the page shows, in this order, when the card has them."""


class DemoModelError(ValueError):
    """A model the page cannot load; its message is shown on the page."""


@dataclass
class DemoModel:
    """A loaded model, its processor, and its one-line description for the page."""

    name: str
    model: PreTrainedModel
    processor: ProcessorMixin
    summary: str

    @property
    def short_name(self) -> str:
        """The last part of the name (`outputs/compare/mlp` -> `mlp`), for headings with little room."""
        return os.path.basename(self.name.rstrip("/" + os.sep)) or self.name


def default_model_names(output_dir: str = DEMO_OUTPUT_DIR, limit: int | None = None) -> list[str]:
    """
    The models named in `$VLM_DEMO_MODELS` (comma-separated: what a Space, which takes no arguments, is given), else
    the first `limit` saved models of the last `make demo` (sorted), else the untrained tiny ones.
    """
    if os.environ.get(MODELS_VARIABLE, "").strip():
        return [name.strip() for name in os.environ[MODELS_VARIABLE].split(",") if name.strip()]
    if os.path.isdir(output_dir):
        saved = sorted(
            os.path.join(output_dir, entry)
            for entry in os.listdir(output_dir)
            if os.path.isfile(os.path.join(output_dir, entry, "config.json"))
        )
        if saved:
            return saved[:limit]
    return list(UNTRAINED_DEFAULTS)


def load_demo_model(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> DemoModel:
    """
    `name` (a saved directory, a Hub id, or `tiny:<projector>`) loaded for the page, or [`DemoModelError`] saying
    why it cannot be, whatever went wrong inside transformers.
    """
    name = name.strip()
    if not name:
        raise DemoModelError("Type a model path, a Hub id (user/name) or tiny:<projector> to load.")
    if (problem := model_name_problem(name)) is not None:
        raise DemoModelError(f"Could not load {name!r}: {problem}")
    try:
        model, processor = load_captioning_model(os.path.expanduser(name), device, dtype)
    except Exception as error:  # any failure to load is the user's to read on the page, not a crash
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DemoModelError(f"Could not load {name!r}: {reason}") from error
    return DemoModel(name=name, model=model, processor=processor, summary=model_summary(model, name))


def model_summary(model: PreTrainedModel, name: str) -> str:
    """
    Markdown: the model's projector, fusion, image tokens, parameters (trained ones from its run's results when
    saved locally) and the scores of its model card.
    """
    config = model.config
    total = sum(parameter.numel() for parameter in model.parameters())
    trained = _trained_parameters(name)
    parameters = f"{total:,} parameters" + (f", {trained:,} trained" if trained is not None else "")
    lines = [
        f"**{name}**",
        f"{config.projector_type} projector · {config.fusion} fusion · image tokens: {config.num_image_tokens} · "
        f"{parameters}",
    ]
    scores = card_scores(name)
    lines.append(" · ".join(f"{metric} {value:.3f}" for metric, value in scores.items()) or "no scores in a model card")
    return "  \n".join(lines)


def card_scores(name: str) -> dict[str, float]:
    """The [`CARD_METRICS`] a model card's `model-index` holds (empty without a card, e.g. for `tiny:` models)."""
    if name.startswith("tiny:"):
        return {}
    path = os.path.join(os.path.expanduser(name), "README.md")
    try:
        card = ModelCard.load(path if os.path.isfile(path) else name)
    except Exception:  # a missing or unreadable card only means no scores to show
        return {}
    results = {result.metric_name: result.metric_value for result in card.data.eval_results or []}
    return {metric: float(results[metric]) for metric in CARD_METRICS if metric in results}


def _trained_parameters(name: str) -> int | None:
    """The trainable parameter count of the run that saved `name`, from its `training_results.json` if local."""
    path = os.path.join(os.path.expanduser(name), RESULTS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as file:
        return json.load(file).get("trainable_parameters")
