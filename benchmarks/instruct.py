# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
What instruction tuning and question answering cost, each against its baseline in one process:

1. `conversation_step`: the `align` training step (`training_step`, cached vision features) on a batch of
   three-turn, three-image conversations (`ChatCollator`, the loss on the answers only) against batches of captions:
   one of as many rows and one of about as many tokens; time per 1,000 tokens of the batch (padding excluded).
2. `answering`: the same VQA questions (five per image, as VQAv2 asks about four to six) answered one at a time, each
   with its own image (as lmms-eval asks them), in batches, in batches whose questions about one image share its
   vision features, and in batches that also share its prefill (the chat up to its image, prefilled once:
   `evaluation.shared_images`, what `answer_questions` does); answers/s and whether the answers agree.

Real widths (SigLIP-base + Qwen2.5-0.5B shapes, random weights) at half depth (6 vision + 12 language-model layers:
the ratio of the two towers' work stays that of the full models), or the tiny model with `--small`.

    PYTHONPATH=. python benchmarks/instruct.py            # CPU: a few minutes
    PYTHONPATH=. python benchmarks/instruct.py --small    # seconds, a smoke test
"""

import argparse
import time
from collections.abc import Sequence
from typing import Any

import torch
from accelerate import Accelerator

from benchmarks.measure import autocast, environment, publish_report, time_calls
from benchmarks.workloads import SYNTHETIC_CAPTION, build_benchmark_model
from configuration_vlm import DEFAULT_TEXT_CONFIG, DEFAULT_VISION_CONFIG
from data.questions import load_vqa_questions
from data.shapes_vqa import make_shapes_conversations
from evaluation.captioning import generate_replies
from evaluation.markdown_tables import markdown_table
from evaluation.question_answering import question_prompt
from evaluation.vqa_metrics import VQA_SHORT_ANSWER_PROMPT
from modeling_vlm import VLMForConditionalGeneration
from processing_vlm import VLMProcessor
from training import training_step
from training.conversation_data import ChatCollator, ConversationExamples
from training.model_setup import build_optimizer, configure_trainable_parameters


def half_depth_model(small: bool) -> tuple[VLMForConditionalGeneration, VLMProcessor]:
    """The mlp model: tiny, or real widths at 6 vision + 12 language-model layers."""
    layers = {} if small else {
        "vision_config": {**DEFAULT_VISION_CONFIG, "num_hidden_layers": 6},
        "text_config": {**DEFAULT_TEXT_CONFIG, "num_hidden_layers": 12},
    }  # fmt: skip
    return build_benchmark_model("mlp", small, **layers)


def with_cached_features(model: VLMForConditionalGeneration, processor: VLMProcessor, examples: list[dict]) -> list:
    """`examples` with their images replaced by the vision tower's features, as `train()` reads them from the cache."""
    cached = []
    for example in examples:
        images = example.pop("images") if "images" in example else [example.pop("image")]
        pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            features = list(model.get_vision_features(pixel_values).float().clone())
        cached.append({**example, "vision_features": features if "messages" in example else features[0]})
    return cached


def step_timing(
    model: VLMForConditionalGeneration, batch: dict[str, Any], device: torch.device, repeats: int
) -> dict[str, float]:
    """Seconds per `training_step` on `batch` (align, AdamW), with its rows, padded length and real tokens."""
    accelerator = Accelerator(cpu=device.type == "cpu")
    optimizer = build_optimizer(model, learning_rate=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    batch = {name: value.to(device) for name, value in batch.items() if name != "num_skipped_images"}

    def step() -> None:
        with autocast(device):
            training_step(model, batch, accelerator, optimizer, scheduler, max_grad_norm=1.0)

    seconds = time_calls(step, device, warmup=1, repeats=repeats)
    tokens = int(batch["attention_mask"].sum())
    return {"rows": batch["input_ids"].shape[0], "padded_length": batch["input_ids"].shape[1], "tokens": tokens,
            "step_s": seconds, "ms_per_1k_tokens": 1000 * seconds / tokens * 1000}  # fmt: skip


def benchmark_conversation_step(small: bool, rows: int, repeats: int, device: torch.device) -> list[dict[str, Any]]:
    """The training step on conversations against caption batches of as many rows and of about as many tokens."""
    model, processor = half_depth_model(small)
    model = configure_trainable_parameters(model.to(device), "align").train()
    collator = ChatCollator(processor)
    talks = ConversationExamples(make_shapes_conversations(rows * 3, VQA_SHORT_ANSWER_PROMPT, seed=0))
    conversations = with_cached_features(model, processor, [talks[i] for i in range(rows)])
    conversation_batch = collator(conversations)
    measured = [
        {"batch": "conversations (3 turns, 3 images)", **step_timing(model, conversation_batch, device, repeats)}
    ]
    caption = [{"image_id": str(i), "caption": SYNTHETIC_CAPTION, "image": talks[i]["images"][0]} for i in range(rows)]
    tokens_per_caption = int(collator(caption[:1])["attention_mask"].sum())
    as_many_tokens = round(measured[0]["tokens"] / tokens_per_caption)
    for name, count in (("captions, as many rows", rows), ("captions, about as many tokens", as_many_tokens)):
        examples = with_cached_features(model, processor, [dict(caption[i % rows]) for i in range(count)])
        measured.append({"batch": name, **step_timing(model, collator(examples), device, repeats)})
    return measured


def benchmark_answering(small: bool, num_questions: int, batch_size: int, max_new_tokens: int) -> list[dict]:
    """Answers/s of the same questions one at a time, in batches, and in batches sharing each image's features."""
    model, processor = half_depth_model(small)
    questions = load_vqa_questions("shapes", "test", max_samples=num_questions)
    texts = [question_prompt(processor, question) for question in questions["question"]]
    images, keys = list(questions["image"]), list(questions["image_id"])
    variants = (("one at a time (as lmms-eval asks)", 1, None, False), ("batched", batch_size, None, False),
                ("batched, one vision pass per image", batch_size, keys, False),
                ("batched, one vision pass and one prefill per image", batch_size, keys, True))  # fmt: skip
    rows, answers = [], {}
    for name, size, image_keys, share_prefill in variants:
        start = time.perf_counter()
        answers[name] = generate_replies(
            model, processor, images, texts, size, max_new_tokens, image_keys=image_keys, share_prefill=share_prefill
        )
        seconds = time.perf_counter() - start
        rows.append({"variant": name, "batch_size": size, "questions": len(texts), "images": len(set(keys)),
                     "seconds": seconds, "answers_per_s": len(texts) / seconds})  # fmt: skip
    for row in rows:
        row["same_answers_as_one_at_a_time"] = answers[row["variant"]] == answers[variants[0][0]]
    return rows


def run(small: bool) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    return {
        "environment": environment(device),
        "depth": "tiny" if small else "real widths, 6 vision + 12 language-model layers",
        "conversation_step": benchmark_conversation_step(small, rows=4, repeats=2 if small else 3, device=device),
        "answering": benchmark_answering(small, num_questions=30, batch_size=10, max_new_tokens=4),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as markdown tables."""
    sections = [
        f"Training step (align) on conversations against captions ({report['depth']}):\n" + markdown_table(
            ("batch", "rows", "padded length", "tokens", "step s", "ms per 1k tokens"),
            ((r["batch"], r["rows"], r["padded_length"], r["tokens"], f"{r['step_s']:.3f}",
              f"{r['ms_per_1k_tokens']:.1f}") for r in report["conversation_step"]),
            left_aligned=1,
        ),
        f"Answering VQA questions, five per image ({report['depth']}):\n" + markdown_table(
            ("variant", "batch", "questions", "images", "s", "answers/s", "same answers as one at a time"),
            ((r["variant"], r["batch_size"], r["questions"], r["images"], f"{r['seconds']:.2f}",
              f"{r['answers_per_s']:.2f}", r["same_answers_as_one_at_a_time"]) for r in report["answering"]),
            left_aligned=1,
        ),
    ]  # fmt: skip
    return "\n\n".join(sections) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="the tiny model: a smoke test, not a timing")
    parser.add_argument("--output", help="JSON file for the report")
    args = parser.parse_args(argv)
    report = run(args.small)
    publish_report(format_report(report), report, args.output)
    return report


if __name__ == "__main__":
    main()
