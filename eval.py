# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""Evaluate captioning models: standard COCO caption metrics, comparison tables, attention maps and galleries."""

import argparse
import base64
import contextlib
import html
import io
import json
import math
import os
import re
import reprlib
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import BinaryIO

import PIL.Image
import PIL.ImageDraw
import torch
from datasets import Image as ImageFeature
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor

from caption_data import load_captions, open_image
from tiny_vlm import build_tiny_vlm


# ---------------------------------------------------------------------------------------------------------------------
# Caption scoring: the standard COCO caption metrics, computed by pycocoevalcap
# ---------------------------------------------------------------------------------------------------------------------

COCO_CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
"""The keys of the dictionary returned by [`score_captions`], in order."""

JAVA_INSTALL_HINT = (
    "Java is required by pycocoevalcap (PTB tokenizer, METEOR 1.5) to compute the COCO caption metrics. Install any "
    "Java runtime >= 8 and put `java` on PATH, e.g. `apt-get install default-jre-headless` on Debian/Ubuntu or "
    "`conda install openjdk` in a conda environment."
)
"""Ends the message of every [`JavaNotFoundError`]."""

JAVA_CHECK_TIMEOUT_S = 30.0
"""Seconds `java -version` may take before [`check_java`] declares the installation broken."""

METEOR_TIMEOUT_S = 300.0
"""Seconds, plus `METEOR_TIMEOUT_PER_ID_S` per id, after which a METEOR JVM that has not answered is killed."""

METEOR_TIMEOUT_PER_ID_S = 0.05
"""Per-id part of the METEOR timeout. The JVM loads its paraphrase table in ~10 s and scores ~0.5 ms per id."""

# Every line boundary of `str.splitlines`. pycocoevalcap's tokenizer only replaces "\n", but the Java PTB tokenizer
# also breaks lines at "\r", "\v", "\f", U+2028 and U+2029, which shifts every later caption onto the wrong id. It
# reads the other boundaries as whitespace, so replacing them too changes nothing.
_LINE_BREAKS_TO_SPACES = dict.fromkeys(map(ord, "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"), " ")

_STDERR_FD_LOCK = threading.Lock()


class JavaNotFoundError(RuntimeError):
    """Raised when no working `java` executable is on PATH; pycocoevalcap's tokenizer and METEOR need one."""


def check_java() -> str:
    """
    Check that a working `java` executable is on PATH, as pycocoevalcap's PTB tokenizer and METEOR 1.5 need.

    Returns:
        `str`: The path of the `java` executable.

    Raises:
        [`JavaNotFoundError`]: If `java` is not on PATH, or `java -version` fails or takes longer than
            `JAVA_CHECK_TIMEOUT_S` seconds.
    """
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(f"No `java` executable found on PATH. {JAVA_INSTALL_HINT}")
    try:
        completed = subprocess.run([java, "-version"], capture_output=True, timeout=JAVA_CHECK_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise JavaNotFoundError(f"`{java} -version` failed: {error}. {JAVA_INSTALL_HINT}") from error
    if completed.returncode != 0:
        output = completed.stderr.decode(errors="replace").strip()
        raise JavaNotFoundError(
            f"`{java} -version` exited with status {completed.returncode}: {output!r}. {JAVA_INSTALL_HINT}"
        )
    return java


def score_captions(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, str | Sequence[str]]
) -> dict[str, float]:
    """
    Score predicted captions with the standard COCO caption metrics, exactly as the COCO caption evaluation
    (pycocoevalcap's `COCOEvalCap`) does: both sides go through the Stanford PTB tokenizer (lower-cased, punctuation
    removed), then `Bleu(4)`, `Meteor()` (METEOR 1.5), `Rouge()` (ROUGE-L) and `Cider()` (CIDEr-D) score the corpus.

    Scores are on pycocoevalcap's own scale: BLEU, METEOR and ROUGE-L lie in [0, 1], and CIDEr is *not* multiplied by
    100 (a good COCO model scores around 1.1, not 110). CIDEr weights n-grams by their document frequency over all
    references, so it is only meaningful over a corpus: with a single id it is always 0.

    Two deviations from calling pycocoevalcap by hand, neither of which changes the numbers of ordinary captions:

    - Every line break (`"\\r"`, `"\\v"`, `"\\f"`, U+2028, ... not only `"\\n"`) becomes a space before tokenization.
      pycocoevalcap only replaces `"\\n"`, and any other line break makes the Java tokenizer emit an extra line, which
      moves every later caption onto the wrong id: silently wrong scores.
    - The METEOR JVM runs under a watchdog and is always shut down: if it crashes, hangs or answers garbage,
      a `RuntimeError` with its stderr is raised instead of blocking forever, and no `java` process outlives the call.

    Empty, whitespace-only and punctuation-only captions need no special case: the tokenizer turns them into empty
    strings, which METEOR 1.5 scores as 0 and the other metrics as a caption without words. METEOR reads one request
    per line, and the tokenized captions it gets never contain a line break. Characters the tokenizer cannot handle,
    such as emoji, are dropped by it. Its messages on stderr ("PTBTokenizer tokenized ...", "Untokenizable: ...") are
    captured and BLEU's statistics are not printed, so the call writes nothing to stdout or stderr.

    Args:
        predictions (`Mapping[Hashable, str]`):
            One predicted caption per id, e.g. `{391895: "a man riding a bike"}`. Ids are any hashable (usually `int`
            or `str`) and must be exactly the ids of `references`.
        references (`Mapping[Hashable, str | Sequence[str]]`):
            The reference captions of each id: a list of at least one caption, or a bare `str` for a single one.

    Returns:
        `dict[str, float]`: The corpus-level scores, keyed by [`COCO_CAPTION_METRICS`]: `"BLEU-1"` to `"BLEU-4"`,
        `"METEOR"`, `"ROUGE-L"` and `"CIDEr"`.

    Raises:
        `ValueError`: If an input is empty or not a mapping, the ids of the two sides differ, an id has no reference,
            a caption is not a `str`, or every reference is empty after tokenization.
        [`JavaNotFoundError`]: If no working `java` is on PATH.
        `RuntimeError`: If a Java subprocess of pycocoevalcap fails.

    Example:

    ```python
    >>> from eval import score_captions

    >>> predictions = {1: "a dog runs on the grass", 2: "a red car parked on the street"}
    >>> references = {1: ["a dog running across a lawn", "a brown dog on the grass"], 2: "a red car on a street"}
    >>> scores = score_captions(predictions, references)
    >>> list(scores)
    ['BLEU-1', 'BLEU-2', 'BLEU-3', 'BLEU-4', 'METEOR', 'ROUGE-L', 'CIDEr']
    ```
    """
    res, gts = _validate_captions(predictions, references)
    check_java()
    # Start the JVM first: loading METEOR's paraphrase table (~10 s) then overlaps tokenization and the other metrics.
    with _meteor_scorer() as meteor:
        gts = _tokenize(gts)
        res = _tokenize(res)
        if not any(reference for captions in gts.values() for reference in captions):
            raise ValueError(
                "Every reference caption is empty after PTB tokenization (which removes punctuation), so there is "
                "nothing to score against. Pass references that contain words."
            )
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        rouge, _ = Rouge().compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
        meteor_score = _meteor_score(meteor, gts, res)
    values = [*bleu, meteor_score, rouge, cider]
    return {name: float(value) for name, value in zip(COCO_CAPTION_METRICS, values, strict=True)}


def _preview(ids: list[Hashable], limit: int = 5) -> str:
    shown = ", ".join(repr(image_id) for image_id in ids[:limit])
    return shown if len(ids) <= limit else f"{shown}, ... ({len(ids)} in total)"


def _validate_captions(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, str | Sequence[str]]
) -> tuple[dict[Hashable, list[str]], dict[Hashable, list[str]]]:
    """Check the inputs of [`score_captions`] and return them as `(res, gts)`: one list of captions per id."""
    for name, mapping in (("predictions", predictions), ("references", references)):
        if not isinstance(mapping, Mapping):
            raise ValueError(
                f"`{name}` must be a mapping from id to caption(s), got {type(mapping).__name__}. For lists, pass "
                f"`dict(enumerate({name}))`."
            )
        if not mapping:
            raise ValueError(f"`{name}` is empty: pass at least one id with its caption(s).")
    only_predicted = [image_id for image_id in predictions if image_id not in references]
    only_referenced = [image_id for image_id in references if image_id not in predictions]
    if only_predicted or only_referenced:
        problems = []
        if only_predicted:
            problems.append(
                f"{len(only_predicted)} id(s) have a prediction but no reference: {_preview(only_predicted)}"
            )
        if only_referenced:
            problems.append(
                f"{len(only_referenced)} id(s) have references but no prediction: {_preview(only_referenced)}"
            )
        raise ValueError(
            f"`predictions` and `references` must have the same ids; {'; '.join(problems)}. Score exactly the ids "
            "you have both for (ids are compared as they are: 1 and '1' are different ids)."
        )
    res, gts = {}, {}
    for image_id, prediction in predictions.items():
        if not isinstance(prediction, str):
            raise ValueError(
                f"The prediction for id {image_id!r} must be a str, got {type(prediction).__name__}: pass exactly one "
                "caption string per id."
            )
        captions = references[image_id]
        captions = [captions] if isinstance(captions, str) else captions
        if not isinstance(captions, Sequence) or not all(isinstance(caption, str) for caption in captions):
            raise ValueError(
                f"The references of id {image_id!r} must be a str or a list of str, got {reprlib.repr(captions)}."
            )
        if not captions:
            raise ValueError(f"Id {image_id!r} has no reference caption: give every id at least one reference.")
        res[image_id] = [prediction]
        gts[image_id] = list(captions)
    return res, gts


@contextlib.contextmanager
def _stderr_fd_redirected_to(sink: BinaryIO) -> Iterator[None]:
    """
    Point file descriptor 2, which Java subprocesses inherit, at `sink` for the duration of the block. Whatever other
    threads write to file descriptor 2 meanwhile lands in `sink` too.
    """
    with _STDERR_FD_LOCK:
        sys.stderr.flush()
        saved_fd = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)


def _tokenize(captions: dict[Hashable, list[str]]) -> dict[Hashable, list[str]]:
    """Run pycocoevalcap's `PTBTokenizer` on `{id: [caption, ...]}`, with line breaks turned into spaces."""
    entries = {
        image_id: [{"caption": caption.translate(_LINE_BREAKS_TO_SPACES)} for caption in texts]
        for image_id, texts in captions.items()
    }
    with tempfile.TemporaryFile() as java_log:
        with _stderr_fd_redirected_to(java_log):
            tokenized = PTBTokenizer().tokenize(entries)
        expected_counts = {image_id: len(texts) for image_id, texts in captions.items()}
        if {image_id: len(texts) for image_id, texts in tokenized.items()} != expected_counts:
            java_log.seek(0)
            raise RuntimeError(
                "pycocoevalcap's PTB tokenizer (a Java subprocess) returned incomplete output. Its stderr:\n"
                + java_log.read().decode(errors="replace")[-2000:]
            )
    return tokenized


@contextlib.contextmanager
def _meteor_scorer() -> Iterator[Meteor]:
    """Start pycocoevalcap's METEOR 1.5 JVM and stop it when the block ends, whatever happened inside."""
    meteor = Meteor()
    try:
        yield meteor
    finally:
        _stop_meteor(meteor)


def _stop_meteor(meteor: Meteor) -> str:
    """Kill and reap the METEOR JVM, close its pipes and return its stderr. Safe to call more than once."""
    # `Meteor.compute_score` does not release its lock when it raises, and `Meteor.__del__` acquires it: without this,
    # garbage collection of a failed scorer would block forever.
    if meteor.lock.locked():
        meteor.lock.release()
    meteor.meteor_p.kill()
    return meteor.meteor_p.communicate()[1].decode(errors="replace")


def _meteor_score(meteor: Meteor, gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]]) -> float:
    """`meteor.compute_score(gts, res)`, raising `RuntimeError` instead of blocking when the JVM dies or hangs."""
    # `Meteor` writes one request line and blocks on reading the answer line: a dead JVM makes that read return ""
    # (pycocoevalcap then fails to parse it) or the write fail, but a stuck one would block forever. The watchdog kills
    # a stuck JVM, which turns the endless read into the first case.
    timeout = METEOR_TIMEOUT_S + METEOR_TIMEOUT_PER_ID_S * len(res)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        meteor.meteor_p.kill()

    watchdog = threading.Timer(timeout, kill)
    watchdog.start()
    try:
        score, _ = meteor.compute_score(gts, res)
    except (OSError, ValueError) as error:
        what = f"gave no answer within {timeout:g} s and was killed" if timed_out.is_set() else "failed"
        stderr = _stop_meteor(meteor)[-2000:]
        raise RuntimeError(
            f"pycocoevalcap's METEOR 1.5 (a Java subprocess) {what}: {error!r}. Its stderr:\n{stderr}"
        ) from error
    finally:
        watchdog.cancel()
    return score


# ---------------------------------------------------------------------------------------------------------------------
# Captioning models: batched generation, the comparison table, attention maps and galleries
# ---------------------------------------------------------------------------------------------------------------------

CAPTION_PROMPT = "Describe the image briefly."
"""The user turn of the common COCO-Karpathy captioning protocol; the image comes first."""


def caption_messages(prompt: str = CAPTION_PROMPT, caption: str | None = None) -> list[dict]:
    """The COCO captioning chat: the image then `prompt` as the user turn, and `caption` as the answer if given."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    if caption is not None:
        messages.append({"role": "assistant", "content": caption})
    return messages


def caption_prompt(processor, prompt: str = CAPTION_PROMPT) -> str:
    """The chat-formatted captioning prompt, ending with the assistant header."""
    return processor.apply_chat_template(caption_messages(prompt), add_generation_prompt=True)


def generate_captions(
    model,
    processor,
    images: Sequence,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    prompt: str = CAPTION_PROMPT,
    progress: bool = False,
) -> list[str]:
    """
    Greedy captions of `images`, generated in batches (left padding, KV cache), one string per image. The images go
    to the model's device and dtype.
    """
    text = caption_prompt(processor, prompt)
    captions = []
    for start in tqdm(range(0, len(images), batch_size), desc="captioning", disable=not progress):
        chunk = list(images[start : start + batch_size])
        inputs = processor(images=chunk, text=[text] * len(chunk), return_tensors="pt").to(model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        with torch.inference_mode():
            generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        captions += [caption.strip() for caption in processor.batch_decode(new_tokens, skip_special_tokens=True)]
    return captions


def readable_samples(dataset) -> tuple[list[str], list, list[list[str]], int]:
    """`(ids, RGB images, reference lists, number skipped)` of a caption dataset; unreadable images are skipped."""
    ids, images, references, skipped = [], [], [], 0
    for row in dataset.cast_column("image", ImageFeature(decode=False)):
        image = open_image(row["image"])
        if image is None:
            skipped += 1
            continue
        ids.append(row["image_id"])
        images.append(image)
        references.append(list(row["captions"]))
    return ids, images, references, skipped


def load_captioning_model(name: str, device: str, dtype):
    """A model and processor from a directory or Hub id, or `tiny:<projector_type>` for an untrained tiny model."""
    if name.startswith("tiny:"):

        model, processor = build_tiny_vlm(name.split(":", 1)[1])
    else:
        model = AutoModelForImageTextToText.from_pretrained(name, trust_remote_code=True, dtype=dtype)
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=True)
    return model.to(device=device, dtype=dtype).eval(), processor


def comparison_table(rows: list[dict]) -> str:
    """Markdown table of evaluated models; metrics on pycocoevalcap's scale (CIDEr not multiplied by 100)."""
    header = (
        "| model | projector | image tokens | parameters | projector parameters | BLEU-4 | METEOR | ROUGE-L | CIDEr | captions/s |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    lines = [
        f"| {row['model']} | {row['projector']} | {row['image_tokens']} | {row['parameters']:,} | "
        f"{row['projector_parameters']:,} | {row['BLEU-4']:.4f} | {row['METEOR']:.4f} | {row['ROUGE-L']:.4f} | "
        f"{row['CIDEr']:.4f} | {row['captions_per_s']:.1f} |"
        for row in rows
    ]
    return header + "\n".join(lines) + "\n\nScores on pycocoevalcap's scale (papers report CIDEr x 100).\n"


def projector_attention_maps(model, processor, image) -> torch.Tensor:
    """
    Where each Q-Former query / Perceiver latent looks: `(num_layers + 1, num_image_tokens, grid, grid)`, the
    cross-attention of every attending layer averaged over heads, then the mean over layers. Each map is a
    distribution over the patch grid (sums to 1); the Perceiver's attention to the latents themselves is left out
    and its patch part renormalised.
    """
    pixel_values = processor.image_processor([image], return_tensors="pt")["pixel_values"].to(model.device, model.dtype)
    with torch.no_grad():
        attentions = model.get_image_features(pixel_values, output_attentions=True).cross_attentions
    if not attentions:
        raise ValueError(f"projector_type={model.config.projector_type!r} has no attention maps; use saliency_map.")
    num_patches = model.config.num_patches
    per_layer = torch.stack([attention[0].float().mean(0)[:, :num_patches] for attention in attentions])
    per_layer = per_layer / per_layer.sum(-1, keepdim=True)
    maps = torch.cat([per_layer, per_layer.mean(0, keepdim=True)])
    grid = math.isqrt(num_patches)
    return maps.reshape(maps.shape[0], maps.shape[1], grid, grid).cpu()


def saliency_map(model, processor, image, caption: str) -> torch.Tensor:
    """
    Gradient saliency of `caption` over the patch grid, `(grid, grid)` summing to 1: the norm of the gradient of the
    caption's log-likelihood with respect to each patch token of the vision tower.
    """
    text = processor.apply_chat_template(caption_messages(caption=caption))
    inputs = processor(images=[image], text=[text], return_tensors="pt").to(model.device)
    with torch.no_grad():
        vision_features = model.get_vision_features(inputs.pop("pixel_values").to(model.dtype))
    vision_features.requires_grad_(True)
    loss = model(**inputs, vision_features=vision_features, labels=processor.build_labels(inputs["input_ids"])).loss
    (gradient,) = torch.autograd.grad(loss, vision_features)
    saliency = gradient[0].float().norm(dim=-1)
    saliency = saliency / saliency.sum()
    grid = math.isqrt(saliency.numel())
    return saliency.reshape(grid, grid).cpu()


def _overlay(image, heatmap, size: int):
    """`image` resized to `size` x `size` with `heatmap` (a 2-D tensor) blended on top in red."""
    heat = (heatmap / heatmap.max().clamp_min(1e-12) * 255).byte().numpy()
    heat = PIL.Image.fromarray(heat, mode="L").resize((size, size), PIL.Image.Resampling.BILINEAR)
    red = PIL.Image.merge("RGB", (heat, PIL.Image.new("L", heat.size), PIL.Image.new("L", heat.size)))
    return PIL.Image.blend(image.convert("RGB").resize((size, size)), red, 0.55)


def save_attention_grid(image, maps, path: str, tile: int = 96) -> None:
    """PNG grid: one row per layer (the last row is the mean over layers), one column per query / latent."""
    rows, columns = maps.shape[:2]
    sheet = PIL.Image.new("RGB", (columns * tile, rows * tile), "white")
    for row in range(rows):
        for column in range(columns):
            sheet.paste(_overlay(image, maps[row, column], tile), (column * tile, row * tile))
    sheet.save(path)


def write_gallery(output_dir: str, ids, images, references, captions_by_model: dict[str, list[str]]) -> None:
    """`gallery.html` (images embedded) and `contact_sheet.png`: each image, a reference caption, every model's caption."""
    rows = []
    for index, image_id in enumerate(ids):
        buffer = io.BytesIO()
        images[index].convert("RGB").resize((224, 224)).save(buffer, format="PNG")
        cells = "".join(f"<td>{html.escape(captions[index])}</td>" for captions in captions_by_model.values())
        rows.append(
            f'<tr id="{html.escape(str(image_id))}"><td><img src="data:image/png;base64,'
            f'{base64.b64encode(buffer.getvalue()).decode()}" width="224"><br>{html.escape(str(image_id))}</td>'
            f"<td>{html.escape(references[index][0])}</td>{cells}</tr>"
        )
    model_headers = "".join(f"<th>{html.escape(name)}</th>" for name in captions_by_model)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Caption gallery</title><style>"
        "td,th{border:1px solid #ccc;padding:6px;vertical-align:top;max-width:260px}table{border-collapse:collapse}"
        f"</style></head><body><table><tr><th>image</th><th>ground truth</th>{model_headers}</tr>{''.join(rows)}"
        "</table></body></html>"
    )
    with open(os.path.join(output_dir, "gallery.html"), "w", encoding="utf-8") as file:
        file.write(page)

    thumb, column_width, line_height = 128, 220, 12
    columns = [("ground truth", [refs[0] for refs in references])] + list(captions_by_model.items())
    row_height = max(thumb, 14 + line_height * 8) + 8
    sheet = PIL.Image.new("RGB", (thumb + 8 + column_width * len(columns), 20 + row_height * len(ids)), "white")
    draw = PIL.ImageDraw.Draw(sheet)
    for column, (name, _) in enumerate(columns):
        draw.text((thumb + 8 + column * column_width, 4), name[:34], fill="black")
    for index in range(len(ids)):
        top = 20 + index * row_height
        sheet.paste(images[index].convert("RGB").resize((thumb, thumb)), (0, top))
        for column, (_, captions) in enumerate(columns):
            lines = textwrap.wrap(captions[index], width=34)[:8] or ["(empty)"]
            draw.multiline_text((thumb + 8 + column * column_width, top), "\n".join(lines), fill="black", spacing=2)
    sheet.save(os.path.join(output_dir, "contact_sheet.png"))


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """The `python eval.py` command line; returns the table rows."""
    parser = argparse.ArgumentParser(description=__doc__)
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
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    os.makedirs(args.output_dir, exist_ok=True)
    dataset = load_captions(
        args.dataset, args.split, image_root=args.image_root, max_samples=args.max_samples,
        image_column=args.image_column, caption_column=args.caption_column,
    )
    ids, images, references, skipped = readable_samples(dataset)
    if skipped:
        print(f"skipped {skipped} unreadable images")
    check_java()

    rows, captions_by_model = [], {}
    for name in args.model:
        model, processor = load_captioning_model(name, device, dtype)
        start = time.perf_counter()
        captions = generate_captions(model, processor, images, args.batch_size, args.max_new_tokens, args.prompt, progress=True)
        elapsed = time.perf_counter() - start
        metrics = score_captions(dict(zip(ids, captions)), dict(zip(ids, references)))
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
        with open(os.path.join(args.output_dir, f"predictions_{slug}.json"), "w", encoding="utf-8") as file:
            json.dump([{"image_id": i, "caption": c} for i, c in zip(ids, captions)], file, indent=1, ensure_ascii=False)
        with open(os.path.join(args.output_dir, f"metrics_{slug}.json"), "w", encoding="utf-8") as file:
            json.dump({"model": name, "split": args.split, "num_images": len(ids), "skipped": skipped, **metrics}, file, indent=2)
        rows.append(
            {
                "model": name,
                "projector": model.config.projector_type,
                "image_tokens": model.config.num_image_tokens,
                "parameters": sum(p.numel() for p in model.parameters()),
                "projector_parameters": sum(p.numel() for p in model.multi_modal_projector.parameters()),
                "captions_per_s": len(ids) / elapsed,
                **metrics,
            }
        )
        captions_by_model[name] = captions
        if args.attention_maps:
            for index in range(min(args.num_pictures, len(ids))):
                path = os.path.join(args.output_dir, f"attention_{slug}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(ids[index]))}.png")
                if model.config.projector_type in ("qformer", "perceiver"):
                    save_attention_grid(images[index], projector_attention_maps(model, processor, images[index]), path)
                else:
                    _overlay(images[index], saliency_map(model, processor, images[index], captions[index]), 224).save(path)

    table = comparison_table(rows)
    with open(os.path.join(args.output_dir, "comparison.md"), "w", encoding="utf-8") as file:
        file.write(table)
    print(table)
    if args.gallery:
        count = min(args.num_pictures, len(ids))
        write_gallery(
            args.output_dir, ids[:count], images[:count], references[:count],
            {name: captions[:count] for name, captions in captions_by_model.items()},
        )
    return rows


if __name__ == "__main__":
    main()
