# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The type and range of every number a run is given, checked where the settings enter ([`check_numbers`], called by
`VLMTrainingArguments` before anything is built or loaded), so that a bad value is refused by name instead of failing
late inside torch, training by gradient ascent, or deleting every checkpoint. `eval.py` checks its flags with the
same rules ([`checked_number`]).
"""

import argparse
import math
from collections.abc import Mapping
from typing import Any


# rule name -> (test, what it says about a bad value)
RULES = {
    "positive int": (lambda v: isinstance(v, int) and v >= 1, "a positive integer"),
    "non-negative int": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "positive number": (lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v > 0, "a number > 0"),
    "non-negative number": (lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, "a number >= 0"),
    "fraction": (lambda v: isinstance(v, (int, float)) and 0 <= v <= 1, "a number in [0, 1]"),
    "probability below 1": (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a number in [0, 1)"),
    "steps or -1": (lambda v: isinstance(v, int) and (v >= 1 or v == -1), "a positive integer, or -1 (unset)"),
}

# Every number of `VLMTrainingArguments`, with its rule; `None` is accepted where the field's default is `None`.
TRAINING_NUMBERS = {
    "lora_r": "positive int",
    "lora_alpha": "positive number",
    "lora_dropout": "probability below 1",
    "itc_weight": "non-negative number",
    "itm_weight": "non-negative number",
    "itg_weight": "non-negative number",
    "image_text_hidden_size": "positive int",
    "retrieval_rerank_k": "non-negative int",
    "max_train_samples": "positive int",
    "max_eval_samples": "positive int",
    "max_caption_tokens": "positive int",
    "max_train_conversations": "positive int",
    "max_length": "positive int",
    "max_eval_questions": "positive int",
    "num_train_epochs": "positive int",
    "max_steps": "steps or -1",
    "per_device_train_batch_size": "positive int",
    "per_device_eval_batch_size": "positive int",
    "gradient_accumulation_steps": "positive int",
    "learning_rate": "non-negative number",
    "projector_lr": "non-negative number",
    "llm_lr": "non-negative number",
    "vision_lr": "non-negative number",
    "weight_decay": "non-negative number",
    "adam_beta1": "probability below 1",
    "adam_beta2": "probability below 1",
    "adam_epsilon": "positive number",
    "max_grad_norm": "positive number",
    "warmup_ratio": "fraction",
    "warmup_steps": "non-negative int",
    "loss_chunk_size": "positive int",
    "seed": "non-negative int",
    "dataloader_num_workers": "non-negative int",
    "max_new_tokens": "positive int",
    "num_sample_captions": "non-negative int",
    "save_steps": "non-negative int",
    "save_total_limit": "positive int",
    "logging_steps": "positive int",
}


def number_problem(name: str, value: Any, rule: str) -> str | None:
    """What is wrong with `value` for the setting `name` under `rule`, or `None`."""
    test, expected = RULES[rule]
    if isinstance(value, bool) or not test(value):
        return f"{name}={value!r} is invalid; it must be {expected}."
    return None


def check_numbers(values: Mapping[str, Any], optional: set[str]) -> None:
    """
    Raises `ValueError` naming the first of [`TRAINING_NUMBERS`] in `values` that breaks its rule (`None` is accepted
    for the names in `optional`).
    """
    for name, rule in TRAINING_NUMBERS.items():
        value = values[name]
        if value is None and name in optional:
            continue
        if (problem := number_problem(name, value, rule)) is not None:
            raise ValueError(problem)


def checked_number(flag: str, rule: str, convert: type = int):
    """An argparse `type` for `flag`: the value converted, then checked against `rule` (argparse reports the error)."""

    def parse(text: str) -> int | float:
        try:
            value = convert(text)
        except ValueError:
            value = text
        if (problem := number_problem(flag, value, rule)) is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse
