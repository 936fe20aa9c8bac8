# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Visual question answering and object hallucination, scored the standard way: short answers generated in batches
(greedy, KV cache, left padding) with LLaVA-1.5's prompt, the question then "Answer the question using a single word
or phrase." on a line of its own; VQA accuracy as VQAv2 defines it, overall and per question and answer type
([`evaluate_vqa`]); POPE's accuracy, precision, recall, F1 and yes-ratio per split ([`evaluate_pope`]).
"""

from datasets import Dataset
from transformers import PreTrainedModel, ProcessorMixin

from .captioning import generate_replies
from .markdown_tables import format_score, markdown_table
from .vqa_metrics import POPE_METRICS, VQA_SHORT_ANSWER_PROMPT, score_pope, score_vqa


DEFAULT_MAX_ANSWER_TOKENS = 16
FRACTIONS_NOTE = "Scores are fractions in [0, 1] (papers print them x100)."


def question_messages(question: str, suffix: str = VQA_SHORT_ANSWER_PROMPT, answer: str | None = None) -> list[dict]:
    """The chat of one question about one image: the image, then `question` and `suffix` on a line of its own."""
    text = f"{question}\n{suffix}" if suffix else question
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def question_prompt(processor: ProcessorMixin, question: str, suffix: str = VQA_SHORT_ANSWER_PROMPT) -> str:
    """The chat-formatted prompt of one question about one image ([`question_messages`]), ending with the header."""
    return processor.apply_chat_template(question_messages(question, suffix), add_generation_prompt=True)


def answer_questions(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    questions: Dataset,
    batch_size: int = 32,
    max_new_tokens: int = DEFAULT_MAX_ANSWER_TOKENS,
    suffix: str = VQA_SHORT_ANSWER_PROMPT,
    progress: bool = False,
) -> list[str]:
    """
    The greedy answers to the `question` of each row of `questions` about its `image`, in row order; the questions
    about one image in a batch share its vision features (`image_id` says which rows show the same image).
    """
    texts = [question_prompt(processor, question, suffix) for question in questions["question"]]
    images = questions["image"]  # a lazy column: the rows are decoded as they are read
    return generate_replies(
        model, processor, images, texts, batch_size, max_new_tokens, "answering", progress, questions["image_id"]
    )


def question_keys(questions: Dataset) -> list[str]:
    """Each question's key: its `question_id`, or for POPE (ids unique within a split) `"<split>/<question_id>"`."""
    if "split" in questions.column_names:
        return [f"{split}/{question_id}" for split, question_id in zip(questions["split"], questions["question_id"])]
    return list(questions["question_id"])


def score_vqa_answers(questions: Dataset, predictions: dict[str, str]) -> dict[str, float]:
    """
    VQA accuracy of `predictions` `{question_id: answer}` on `questions` (`VQA_FEATURES`): `accuracy`,
    `question_type/<type>` and `answer_type/<type>`.
    """
    ids = questions["question_id"]
    references = dict(zip(ids, questions["answers"]))
    metrics = {"accuracy": score_vqa(predictions, references)["accuracy"]}
    for column in ("question_type", "answer_type"):
        by_type = score_vqa(predictions, references, dict(zip(ids, questions[column])))
        metrics.update({f"{column}/{key[len('accuracy/') :]}": v for key, v in by_type.items() if key != "accuracy"})
    return metrics


def score_pope_answers(questions: Dataset, predictions: dict[str, str]) -> dict[str, float]:
    """POPE's metrics of `predictions` (keyed by [`question_keys`]) on `questions`, per split: `<split>/<metric>`."""
    keys = question_keys(questions)
    labels = dict(zip(keys, questions["answer"]))
    metrics = {}
    for split in dict.fromkeys(questions["split"]):
        in_split = [key for key in keys if key.startswith(f"{split}/")]
        scores = score_pope({key: predictions[key] for key in in_split}, {key: labels[key] for key in in_split})
        metrics.update({f"{split}/{name}": scores[name] for name in POPE_METRICS})
    return metrics


def evaluate_vqa(
    model: PreTrainedModel, processor: ProcessorMixin, questions: Dataset, **generation
) -> tuple[dict[str, float], dict[str, str]]:
    """The answers of `model` to `questions` (`VQA_FEATURES`) and their [`score_vqa_answers`]."""
    predictions = dict(zip(question_keys(questions), answer_questions(model, processor, questions, **generation)))
    return score_vqa_answers(questions, predictions), predictions


def evaluate_pope(
    model: PreTrainedModel, processor: ProcessorMixin, questions: Dataset, **generation
) -> tuple[dict[str, float], dict[str, str]]:
    """The answers of `model` to `questions` (`POPE_FEATURES`), keyed by [`question_keys`], and their scores."""
    predictions = dict(zip(question_keys(questions), answer_questions(model, processor, questions, **generation)))
    return score_pope_answers(questions, predictions), predictions


def answers_table(rows: list[dict], metrics: list[str] | tuple[str, ...]) -> str:
    """
    Markdown table of evaluated models (rows with `model`, `projector`, `fusion`, `image_tokens`, `answers_per_s` and
    the metrics): `metrics` as fractions in [0, 1] (papers print them x100), and answers/s.
    """
    columns = ("model", "projector", "fusion", "image tokens", *metrics, "answers/s")
    cells = (
        (row["model"], row["projector"], row["fusion"], row["image_tokens"],
         *(format_score(row.get(metric)) for metric in metrics), f"{row['answers_per_s']:.1f}")  # fmt: skip
        for row in rows
    )
    return markdown_table(columns, cells, left_aligned=3) + f"\n\n{FRACTIONS_NOTE}\n"
