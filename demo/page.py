# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The demo page (gradio): an image (uploaded, or one of the synthetic scenes) and a prompt; every ticked model answers
side by side, streamed token by token, with its latency and speed, the picture of where it looked, and its config
and scores; the conversation goes on over several turns until the image changes or it is cleared. Another model can
be loaded from the page. What cannot be answered or loaded shows as a message at the top, and the page stays usable.
"""

import functools
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import gradio as gr
import PIL.Image
import torch

from data.shapes import shapes_image_id, shapes_scenes
from evaluation.visualize import EMPTY_CAPTION

from .chat import DEFAULT_MAX_NEW_TOKENS, DemoInputError, check_prompt, open_image, save_reply_map, stream_reply
from .models import DemoModel, DemoModelError, load_demo_model


MAX_MODEL_SLOTS = 4
"""Models side by side on one page."""
NUM_EXAMPLES = 4
EXAMPLE_SPLIT = "test"
Turns = dict[str, list[tuple[str, str]]]
"""Each model's conversation so far: `(prompt, reply)` pairs by model name."""


@dataclass
class PageModels:
    """The models on the page, in slot order, what the page does with them, and the messages of those not loaded."""

    models: list[DemoModel]
    errors: list[str] = field(default_factory=list)
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS


def load_page_models(
    names: Sequence[str], device: str, dtype: torch.dtype, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
) -> PageModels:
    """The first [`MAX_MODEL_SLOTS`] of `names` that load; a message for each that does not, or that has no slot."""
    page_models = PageModels([], device=device, dtype=dtype, max_new_tokens=max_new_tokens)
    for name in names:
        try:
            _add_model(page_models, name)
        except DemoModelError as error:
            page_models.errors.append(str(error))
    return page_models


def _add_model(page_models: PageModels, name: str) -> DemoModel:
    if len(page_models.models) >= MAX_MODEL_SLOTS:
        raise DemoModelError(f"Not loading {name!r}: the page shows at most {MAX_MODEL_SLOTS} models side by side.")
    if name.strip() in {demo_model.name for demo_model in page_models.models}:
        raise DemoModelError(f"{name.strip()!r} is already on the page.")
    demo_model = load_demo_model(name, page_models.device, page_models.dtype)
    page_models.models.append(demo_model)
    return demo_model


def write_examples(directory: str, count: int = NUM_EXAMPLES) -> list[str]:
    """PNG files of the first `count` synthetic scenes of the held-out split, in `directory`; their paths."""
    paths = []
    for index, scene in enumerate(shapes_scenes(count, split=EXAMPLE_SPLIT)):
        path = os.path.join(directory, f"{shapes_image_id(EXAMPLE_SPLIT, index)}.png")
        with open(path, "wb") as file:
            file.write(scene.png)
        paths.append(path)
    return paths


def chat_history(turns: Sequence[tuple[str, str]]) -> list[dict]:
    """A conversation as the chatbot shows it; an empty reply shows as `(empty)`."""
    history = []
    for prompt, reply in turns:
        history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply or EMPTY_CAPTION}]
    return history


def message_markdown(messages: Sequence[str]) -> str:
    """The messages shown at the top of the page, one per line."""
    return "  \n".join(f"⚠️ {message}" for message in messages)


def answer(
    page_models: PageModels, maps_dir: str, path: str | None, prompt: str | None, selected: list[str], turns: Turns
) -> Iterator[list]:
    """
    Streams each ticked model's reply in turn. Yields the page's outputs: the message, the turns, then for every slot
    its chat, its latency line and its map (`gr.skip()` where nothing changed).
    """
    outputs = [gr.skip()] * (2 + 3 * MAX_MODEL_SLOTS)
    try:
        image, prompt = open_image(path), check_prompt(prompt)
        if not set(selected) & {demo_model.name for demo_model in page_models.models}:
            raise DemoInputError("No model ticked: tick at least one model to answer.")
    except DemoInputError as error:
        yield [message_markdown([str(error)]), *outputs[1:]]
        return
    messages = []
    for slot, demo_model in enumerate(page_models.models):
        if demo_model.name not in selected:
            continue
        earlier = turns.setdefault(demo_model.name, [])
        chat_at, stats_at, map_at = 2 + 3 * slot, 3 + 3 * slot, 4 + 3 * slot
        try:
            for progress in stream_reply(demo_model, image, earlier, prompt, page_models.max_new_tokens):
                outputs[chat_at] = chat_history([*earlier, (prompt, progress.text)])
                outputs[stats_at] = progress.describe()
                yield [message_markdown(messages), turns, *outputs[2:]]
            earlier.append((prompt, progress.text))
        except DemoInputError as error:
            messages.append(str(error))
            outputs[chat_at] = chat_history(earlier)
        except Exception as error:  # a model failing must leave the page and the other models working
            messages.append(f"{demo_model.name} could not answer: {type(error).__name__}: {error}")
            outputs[chat_at] = chat_history(earlier)
        else:
            map_path = os.path.join(maps_dir, f"slot{slot}-turn{len(earlier)}-{os.getpid()}.png")
            outputs[map_at] = _reply_map(demo_model, image, earlier[-1], map_path, messages)
        yield [message_markdown(messages), turns, *outputs[2:]]


def _reply_map(
    demo_model: DemoModel, image: PIL.Image.Image, turn: tuple[str, str], path: str, messages: list[str]
) -> str | None:
    """The map of `turn`'s reply, saved at `path`; if drawing fails, None and a message in `messages` saying so."""
    prompt, reply = turn
    try:
        return save_reply_map(demo_model, image, prompt, reply, path)
    except Exception as error:  # the answer stands: only its picture is missing
        messages.append(f"{demo_model.name} answered, but its map could not be drawn: {type(error).__name__}: {error}")
        return None


def new_conversation(path: str | None) -> list:
    """The outputs of a new image (or of Clear): its preview or the reason it cannot be read, and empty chats."""
    try:
        preview, message = (open_image(path) if path else None), ""
    except DemoInputError as error:
        preview, message = None, message_markdown([str(error)])
    return [preview, message, {}, *[[], "", None] * MAX_MODEL_SLOTS]


def load_from_page(page_models: PageModels, name: str, selected: list[str]) -> list:
    """Loads `name` into the next slot: the message, the ticked models, then every slot's visibility and summary."""
    try:
        demo_model = _add_model(page_models, name or "")
    except DemoModelError as error:
        return [message_markdown([str(error)]), gr.skip(), *[gr.skip()] * (2 * MAX_MODEL_SLOTS)]
    names = [model.name for model in page_models.models]
    ticked = gr.CheckboxGroup(choices=names, value=[*selected, demo_model.name])
    return [f"Loaded {demo_model.name}.", ticked, *_slot_updates(page_models)]


def _slot_updates(page_models: PageModels) -> list:
    updates = []
    for slot in range(MAX_MODEL_SLOTS):
        loaded = slot < len(page_models.models)
        updates += [gr.Column(visible=loaded), page_models.models[slot].summary if loaded else ""]
    return updates


def build_page(page_models: PageModels, work_dir: str | None = None) -> gr.Blocks:
    """The page, for `page_models`; the example scenes and the maps are written under `work_dir` (a new temp dir)."""
    work_dir = work_dir or tempfile.mkdtemp(prefix="vlm-demo-")
    examples = write_examples(work_dir)
    names = [demo_model.name for demo_model in page_models.models]
    with gr.Blocks(title="Teach a text-only LLM to see: the demo") as page:
        gr.Markdown("# Talk to the vision-language models side by side")
        message = gr.Markdown(message_markdown(page_models.errors), elem_id="demo-message")
        turns = gr.State({})
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                upload = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="image-upload")
                preview = gr.Image(label="The image", type="pil", interactive=False, height=200, elem_id="preview")
                gr.Examples([[path] for path in examples], inputs=[upload], label="Synthetic scenes (held out)")
                prompt = gr.Textbox(label="Prompt", value="Describe the image briefly.", lines=2, elem_id="prompt")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear = gr.Button("Clear the conversation", elem_id="clear")
                ticked = gr.CheckboxGroup(names, value=names, label="Models that answer", elem_id="ticked")
                model_path = gr.Textbox(label="Load another model (path, Hub id or tiny:<projector>)", elem_id="path")
                load = gr.Button("Load", elem_id="load")
            with gr.Column(scale=3):
                slots, views = _build_slots()
        conversation = [turns, *views]
        upload.change(new_conversation, [upload], [preview, message, *conversation])
        clear.click(new_conversation, [upload], [preview, message, *conversation])
        maps_dir = os.path.join(work_dir, "maps")
        os.makedirs(maps_dir, exist_ok=True)
        respond = functools.partial(answer, page_models, maps_dir)
        send.click(respond, [upload, prompt, ticked, turns], [message, *conversation])
        prompt.submit(respond, [upload, prompt, ticked, turns], [message, *conversation])
        load.click(functools.partial(load_from_page, page_models), [model_path, ticked], [message, ticked, *slots])
        page.load(lambda: _slot_updates(page_models), None, slots)
    return page


def _build_slots() -> tuple[list, list]:
    """Each slot's column and summary (what loading changes), and its chat, latency line and map (what answers do)."""
    slots, views = [], []
    with gr.Row():
        for slot in range(MAX_MODEL_SLOTS):
            with gr.Column(visible=False, min_width=220, elem_id=f"model-{slot}") as column:
                summary = gr.Markdown(elem_id=f"model-{slot}-summary")
                chat = gr.Chatbot(label="Conversation", height=260, elem_id=f"model-{slot}-chat")
                stats = gr.Markdown(elem_id=f"model-{slot}-stats")
                picture = gr.Image(
                    label="Where it looked", show_label=False, interactive=False, elem_id=f"model-{slot}-map"
                )
            slots += [column, summary]
            views += [chat, stats, picture]
    return slots, views
