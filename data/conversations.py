# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Conversation data for instruction tuning (seed 001's third stage, LLaVA-1.5's stage 2), built on 🤗 Datasets.

Two formats are read into one schema, [`CONVERSATION_FEATURES`]:

- LLaVA's JSON: a list of `{"id", "image": a path or a list of paths (optional), "conversations": [{"from": "human" |
  "gpt" | "system", "value": "<image>\\nWhat is ...?"}, ...]}`, the images relative to an image root
  ([`load_llava_conversations`]); `<image>` marks where each image goes.
- The messages format of transformers and TRL: a `messages` column of `{"role", "content"}` turns whose content is a
  string or a list of `{"type": "image"}` / `{"type": "text", "text": ...}` parts, and an `images` column
  ([`load_messages_dataset`]).

Each row has an `id`, its `images` (none, one or several, in the order of their image parts) and its `messages`, every
content a list of parts. [`check_conversation`] refuses what cannot be trained on, naming the sample: an unknown role,
roles that do not alternate user / assistant (after an optional system turn), no final answer, an image count that
differs from the image parts. [`encode_conversation`] tokenizes a conversation with the loss on the assistant's tokens
only, read off the chat template's `{% generation %}` markers.
"""

import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from datasets import Dataset, Features, Image, List, Value, load_dataset

from processing_vlm import IGNORE_INDEX, VLMProcessor, make_chat_template


PART_FEATURES = {"type": Value("string"), "text": Value("string")}
CONVERSATION_FEATURES = Features(
    {
        "id": Value("string"),
        "images": List(Image()),
        "messages": List({"role": Value("string"), "content": List(PART_FEATURES)}),
    }
)
"""The schema of every conversation dataset, in column order. Image parts have `text` `None`."""

LLAVA_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
ROLES = ("system", "user", "assistant")
IMAGE_TOKEN = "<image>"
"""How LLaVA's JSON marks an image in a turn's text."""
GENERATION_MARKER = "{% generation %}"


class ConversationDataError(ValueError):
    """A conversation that cannot be trained on; the message names the sample and what to change."""


def text_part(text: str) -> dict[str, str | None]:
    return {"type": "text", "text": text}


def image_part() -> dict[str, str | None]:
    return {"type": "image", "text": None}


def llava_turn_content(value: str) -> list[dict[str, str | None]]:
    """
    The parts of one LLaVA turn: `<image>` markers become image parts where they stand, and the text around them
    text parts, stripped of the whitespace that separates it from an image (LLaVA writes `"<image>\\nQuestion"`).
    """
    parts = []
    for index, piece in enumerate(value.split(IMAGE_TOKEN)):
        if index:
            parts.append(image_part())
        piece = piece.strip() if IMAGE_TOKEN in value else piece
        if piece:
            parts.append(text_part(piece))
    return parts


def llava_messages(sample_id: str, conversations: Any) -> list[dict[str, Any]]:
    """The messages of a LLaVA `conversations` list (`from` human / gpt / system, `value` text)."""
    if not isinstance(conversations, list):
        raise ConversationDataError(
            f"Sample {sample_id!r}: `conversations` must be a list of turns, not {conversations!r:.80}."
        )
    messages = []
    for turn in conversations:
        speaker = turn.get("from") if isinstance(turn, dict) else None
        if speaker not in LLAVA_ROLES or not isinstance(turn.get("value"), str):
            raise ConversationDataError(
                f"Sample {sample_id!r}: every turn must be {{'from': one of {sorted(LLAVA_ROLES)}, 'value': text}}, "
                f"got {turn!r:.80}."
            )
        messages.append({"role": LLAVA_ROLES[speaker], "content": llava_turn_content(turn["value"])})
    return messages


def canonical_messages(sample_id: str, messages: Any) -> list[dict[str, Any]]:
    """`messages` of the transformers/TRL format with every content as a list of `image` / `text` parts."""
    if not isinstance(messages, list):
        raise ConversationDataError(f"Sample {sample_id!r}: `messages` must be a list of turns, not {messages!r:.80}.")
    canonical = []
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ConversationDataError(
                f"Sample {sample_id!r}: every message must be {{'role': ..., 'content': ...}}, got {message!r:.80}."
            )
        content = message["content"]
        parts = [text_part(content)] if isinstance(content, str) else [_part(sample_id, part) for part in content]
        canonical.append({"role": message["role"], "content": parts})
    return canonical


def _part(sample_id: str, part: Any) -> dict[str, str | None]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "image":
        return image_part()
    if kind == "text" and isinstance(part.get("text"), str):
        return text_part(part["text"])
    raise ConversationDataError(
        f"Sample {sample_id!r}: a content part must be {{'type': 'image'}} or {{'type': 'text', 'text': ...}}, got "
        f"{part!r:.80}."
    )


def check_conversation(sample_id: str, messages: list[dict[str, Any]], num_images: int) -> None:
    """
    Raises [`ConversationDataError`] naming `sample_id` unless `messages` (canonical) is an optional system turn, then
    user and assistant turns alternating from a user turn to a final assistant answer, with exactly `num_images`
    image parts, none of them in an answer, and no literal `<image>` left in a text part.
    """
    roles = [message["role"] for message in messages]
    unknown = sorted({role for role in roles if role not in ROLES})
    if unknown:
        raise ConversationDataError(f"Sample {sample_id!r} has unknown roles {unknown}; the roles are {ROLES}.")
    turns = roles[1:] if roles[:1] == ["system"] else roles
    expected = ["user", "assistant"] * (len(turns) // 2)
    if not turns or turns != expected:
        raise ConversationDataError(
            f"Sample {sample_id!r} has the turns {roles}; a conversation is an optional system turn, then user and "
            "assistant turns alternating, from a user turn to a final assistant answer."
        )
    parts = [(message["role"], part) for message in messages for part in message["content"]]
    num_image_parts = sum(part["type"] == "image" for _, part in parts)
    if num_image_parts != num_images:
        raise ConversationDataError(
            f"Sample {sample_id!r} has {num_image_parts} image markers but {num_images} images; give one image per "
            f"marker ({IMAGE_TOKEN} in LLaVA's JSON, a {{'type': 'image'}} part in messages)."
        )
    if any(role == "assistant" and part["type"] == "image" for role, part in parts):
        raise ConversationDataError(f"Sample {sample_id!r} has an image in an answer; images go in user turns.")
    if any(part["type"] == "text" and IMAGE_TOKEN in part["text"] for _, part in parts):
        raise ConversationDataError(
            f"Sample {sample_id!r} has {IMAGE_TOKEN!r} inside a text part; write each image as a {{'type': 'image'}} "
            "part."
        )


def load_llava_conversations(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    max_samples: int | None = None,
    on_invalid: Callable[[ConversationDataError], None] | None = None,
) -> Dataset:
    """
    Loads a LLaVA JSON file (e.g. `llava_v1_5_mix665k.json`) as a dataset of [`CONVERSATION_FEATURES`].

    Args:
        path: The JSON file: a list of samples (see the module docstring).
        image_root: The directory the samples' image paths are relative to (absolute paths are kept).
        max_samples: Keep the first `max_samples` samples.
        on_invalid: Called with the error of each sample that cannot be trained on (see [`check_conversation`], and a
            missing image file), which is then left out; by default the error is raised.
    """
    with open(path, encoding="utf-8") as file:
        samples = json.load(file)
    if not isinstance(samples, list):
        raise ConversationDataError(f"{path} must hold a JSON list of samples, not a {type(samples).__name__}.")
    rows = []
    for index, sample in enumerate(samples[:max_samples]):
        sample_id = str(sample.get("id", index)) if isinstance(sample, dict) else str(index)
        try:
            if not isinstance(sample, dict):
                raise ConversationDataError(f"Sample {sample_id!r} must be a JSON object, not {sample!r:.80}.")
            images = _llava_image_paths(sample_id, sample.get("image"), image_root)
            messages = llava_messages(sample_id, sample.get("conversations"))
            check_conversation(sample_id, messages, len(images))
        except ConversationDataError as error:
            if on_invalid is None:
                raise
            on_invalid(error)
            continue
        rows.append((sample_id, images, messages))
    return conversation_dataset(rows)


def _llava_image_paths(sample_id: str, image: Any, image_root: str | os.PathLike | None) -> list[str]:
    """The absolute paths of a LLaVA sample's `image` field (none, a path, or a list of paths), which must exist."""
    names = [] if image is None else [image] if isinstance(image, str) else image
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConversationDataError(
            f"Sample {sample_id!r}: `image` must be a path or a list of paths, not {image!r:.80}."
        )
    paths = [os.path.join(os.path.expanduser(image_root or ""), name) for name in names]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise ConversationDataError(
            f"Sample {sample_id!r}: image file {missing[0]} does not exist; pass the directory the JSON's image paths "
            "are relative to as image_root."
        )
    return [os.path.abspath(path) for path in paths]


def load_messages_dataset(
    source: str,
    split: str = "train",
    max_samples: int | None = None,
    on_invalid: Callable[[ConversationDataError], None] | None = None,
    **load_kwargs,
) -> Dataset:
    """
    Loads a dataset of the transformers/TRL messages format (`messages`, optional `images` and `id` columns) with
    `datasets.load_dataset` as a dataset of [`CONVERSATION_FEATURES`]. `on_invalid` as in
    [`load_llava_conversations`]; `load_kwargs` go to `load_dataset`.
    """
    dataset = load_dataset(source, split=split, **load_kwargs)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if "messages" not in dataset.column_names:
        raise ConversationDataError(
            f"Dataset {source!r} ({split}) has no `messages` column; its columns are {dataset.column_names}."
        )
    has_ids = "id" in dataset.column_names
    ids = [str(value) for value in dataset["id"]] if has_ids else [str(row) for row in range(len(dataset))]
    images = [[]] * len(dataset)
    if "images" in dataset.column_names:  # undecoded: `{"bytes", "path"}` per image
        images = dataset.cast_column("images", List(Image(decode=False)))["images"]
    rows = []
    for sample_id, messages, sample_images in zip(ids, dataset["messages"], images):
        try:
            messages = canonical_messages(sample_id, messages)
            check_conversation(sample_id, messages, len(sample_images or []))
        except ConversationDataError as error:
            if on_invalid is None:
                raise
            on_invalid(error)
            continue
        rows.append((sample_id, sample_images or [], messages))
    return conversation_dataset(rows)


def conversation_dataset(rows: Sequence[tuple[str, list, list[dict[str, Any]]]]) -> Dataset:
    """A dataset of [`CONVERSATION_FEATURES`] from `(id, images, canonical messages)` rows."""
    columns = {"id": [row[0] for row in rows], "images": [row[1] for row in rows], "messages": [row[2] for row in rows]}
    return Dataset.from_dict(columns, features=CONVERSATION_FEATURES)


def answer_marking_template(processor: VLMProcessor) -> str:
    """
    The chat template that marks the answers with `{% generation %}`: the processor's own if it has the markers, the
    marked twin of [`make_chat_template`] if it is that template; any other template raises, since its answers
    cannot be found exactly.
    """
    template = processor.chat_template
    if template and re.search(r"\{%-?\s*generation\s*-?%\}", template):
        return template
    if template == make_chat_template(processor.image_token):
        return make_chat_template(processor.image_token, mark_answers=True)
    raise ConversationDataError(
        f"The processor's chat template does not mark the assistant's answers with {GENERATION_MARKER} ... "
        "{% endgeneration %}, so the loss cannot be put on the answers only. Wrap each assistant answer and its "
        "end-of-turn token in these markers (processing_vlm.make_chat_template(mark_answers=True) is such a template)."
    )


def with_tiled_images(
    messages: list[dict[str, Any]], processor: VLMProcessor, num_tiles: Sequence[int]
) -> list[dict[str, Any]]:
    """
    `messages` with each image part, in order, replaced by the text the processor writes for an image of its
    `num_tiles` tiles (tags and placeholders): the chat then renders to the very text `processor(images, text)`
    tokenizes.
    """
    counts = iter(num_tiles)

    def part(content_part: dict[str, Any]) -> dict[str, Any]:
        if content_part["type"] != "image":
            return content_part
        return text_part(processor.tiled_image_text(next(counts)))

    def content(message: dict[str, Any]) -> str | list[dict[str, Any]]:
        parts = message["content"]
        return parts if isinstance(parts, str) else [part(content_part) for content_part in parts]

    return [{**message, "content": content(message)} for message in messages]


def encode_conversation(
    processor: VLMProcessor,
    messages: list[dict[str, Any]],
    template: str,
    sample_id: str,
    max_length: int | None = None,
    num_tiles: Sequence[int] | None = None,
) -> tuple[list[int], list[int]]:
    """
    `(input_ids, labels)` of a checked conversation: its chat (`template`, see [`answer_marking_template`]) tokenized,
    each image token expanded to the processor's `num_image_tokens` placeholders (with tiled images, `num_tiles` per
    image in order, to its tiles' tags and placeholders: [`with_tiled_images`]), and labels equal to the ids on the
    tokens the template marks as answers (each answer and its end-of-turn token), `-100` elsewhere.

    Raises [`ConversationDataError`] naming `sample_id` when no token is marked, or when the sequence is longer than
    `max_length` (its last answer would be cut away).
    """
    if num_tiles is not None:
        messages = with_tiled_images(messages, processor, num_tiles)
    encoding = processor.tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    input_ids, labels = [], []
    per_image = processor.num_image_tokens if num_tiles is None else 1  # tiled: the placeholders are in the text
    for token, marked in zip(encoding["input_ids"], encoding["assistant_masks"]):
        copies = per_image if token == processor.image_token_id else 1
        input_ids += [token] * copies
        labels += [token if marked and copies == 1 else IGNORE_INDEX] * copies
    if all(label == IGNORE_INDEX for label in labels):
        raise ConversationDataError(
            f"Sample {sample_id!r}: no token is marked as an answer; the chat template's {GENERATION_MARKER} markers "
            "must enclose each assistant answer."
        )
    if max_length is not None and len(input_ids) > max_length:
        raise ConversationDataError(
            f"Sample {sample_id!r} has {len(input_ids)} tokens with its image placeholders, more than max_length "
            f"{max_length}: its last answer would be cut away. Raise max_length, or shorten or leave out the sample."
        )
    return input_ids, labels
