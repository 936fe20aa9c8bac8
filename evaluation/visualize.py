# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Pictures of what a captioning model looks at (the maps of [`attention_maps`]), and of what it writes:

- [`save_attention_grid`], [`save_saliency_map`]: maps over the image as labelled PNGs with a title and a colour
  bar; [`save_model_picture`] draws the one that fits a model;
- [`write_gallery`]: `gallery.html` and `contact_sheet.png`, every model's caption beside each image, under a heading
  with the dataset and every model's scores.

Everything is drawn with PIL. The layout constants below fix every picture's size (the tests compute sizes from them).
"""

import base64
import functools
import html
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import PIL.ImageOps
import torch
from transformers import PreTrainedModel, ProcessorMixin

from .attention_maps import (
    CROSS_ATTENTION_MAP_FUSIONS,
    PROJECTORS_WITH_ATTENTION_MAPS,
    attending_layers,
    cross_attention_maps,
    projector_attention_maps,
    saliency_map,
)
from .caption_metrics import CIDER_SCALE_NOTE
from .captioning import CAPTION_PROMPT
from .markdown_tables import format_score


GALLERY_METRICS = ("CIDEr", "METEOR", "BLEU-4", "ROUGE-L")
EMPTY_CAPTION = "(empty)"
ELLIPSIS = "…"

# Layout, in pixels. Text lines have fixed heights so that a picture's size never depends on its text.
FONT_SIZE, TITLE_FONT_SIZE = 12, 14
LINE_HEIGHT, TITLE_LINE_HEIGHT = 16, 18
MARGIN = 8
GAP = 4  # between tiles, and after the last one
ROW_LABEL_WIDTH = 56
COLOUR_BAR_WIDTH, COLOUR_BAR_TICKS_WIDTH = 14, 44
COLOUR_BAR_AREA = GAP + COLOUR_BAR_WIDTH + COLOUR_BAR_TICKS_WIDTH + LINE_HEIGHT + MARGIN
SHEET_TOP = MARGIN + 2 * TITLE_LINE_HEIGHT + LINE_HEIGHT  # two title lines, then the column labels
ATTENTION_TILE = 96
SALIENCY_SIZE = 224
SALIENCY_CAPTION_LINES = 4
GALLERY_IMAGE_SIZE = 224
CONTACT_SHEET_THUMBNAIL = 128
CONTACT_SHEET_COLUMN_WIDTH = 220
CONTACT_SHEET_MAX_LINES = 8
CONTACT_SHEET_HEADER_HEIGHT = LINE_HEIGHT + GAP
CONTACT_SHEET_ROW_HEIGHT = max(CONTACT_SHEET_THUMBNAIL + LINE_HEIGHT, CONTACT_SHEET_MAX_LINES * LINE_HEIGHT) + 2 * GAP

# Colours: the page, separators between tiles (the page itself), text, and the heat map from 0 through mid to max.
BACKGROUND, TEXT, MUTED_TEXT, RULE = (255, 255, 255), (0, 0, 0), (110, 110, 110), (215, 215, 215)
HEATMAP_COLOURS = {"black": (0, 0, 4), "mid": (190, 55, 85), "white": (252, 255, 164)}
HEATMAP_ALPHA = 0.6


def save_model_picture(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    model_name: str,
    image_id: str,
    image: PIL.Image.Image,
    caption: str,
    path: str,
    prompt: str = CAPTION_PROMPT,
) -> None:
    """
    PNG of what `model` (called `model_name`) looks at in `image`: with cross-attention (or adapter) fusion, where its
    `caption` (its answer to `prompt`) attends in each gated block (or adaption prompt); else the projector's
    attention grid for Q-Former and Perceiver models, the gradient saliency of its `caption` for the others.
    """
    config = model.config
    heading = f"{model_name} · {config.projector_type} projector · image {image_id}"
    if config.fusion in CROSS_ATTENTION_MAP_FUSIONS:
        maps = cross_attention_maps(model, processor, image, caption, prompt)
        grid = maps.shape[-1]
        explanation = f"Caption tokens' cross-attention over the {grid}x{grid} patch grid, per gated block; last: mean."
        layers = config.cross_attention_layer_indices or config.adapter_layer_indices
        rows = [f"layer {layer}" for layer in layers] + ["mean"]
        title = (f"{heading} · cross-attention", explanation)
        save_attention_grid(image, maps[:, None], path, title, rows, ["caption"])
        return
    if config.projector_type not in PROJECTORS_WITH_ATTENTION_MAPS:
        save_saliency_map(image, saliency_map(model, processor, image, caption, prompt), caption, path, heading)
        return
    maps = projector_attention_maps(model, processor, image)
    token = "query" if config.projector_type == "qformer" else "latent"
    grid = maps.shape[-1]
    explanation = f"Attention of each {token} over the {grid}x{grid} patch grid, heads averaged; last row: layer mean."
    columns = [f"q{i}" if token == "query" else f"latent {i}" for i in range(maps.shape[1])]
    rows = [f"layer {layer}" for layer in attending_layers(config)] + ["mean"]
    save_attention_grid(image, maps, path, (heading, explanation), rows, columns)


def overlay_heatmap(image: PIL.Image.Image, heatmap: torch.Tensor, size: int, vmax: float) -> PIL.Image.Image:
    """
    `image` in grey, resized to `size` x `size`, under `heatmap` `(grid, grid)` coloured from 0 to `vmax` (one colour
    per patch, as in the colour bar).
    """
    heat = _colourize(heatmap, vmax).resize((size, size), PIL.Image.Resampling.NEAREST)
    grey = PIL.ImageOps.grayscale(image.convert("RGB")).convert("RGB").resize((size, size))
    return PIL.Image.blend(grey, heat, HEATMAP_ALPHA)


def save_attention_grid(
    image: PIL.Image.Image,
    maps: torch.Tensor,
    path: str,
    title: tuple[str, str],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    tile: int = ATTENTION_TILE,
) -> None:
    """
    PNG of `maps` `(rows, columns, grid, grid)` (attention probabilities) over `image`: the image itself atop a first
    column, then one `tile`-pixel tile per map, labelled by `row_labels` and `column_labels`, under the two `title`
    lines, with a colour bar from 0 to the largest probability.
    """
    if (len(row_labels), len(column_labels)) != tuple(maps.shape[:2]):
        raise ValueError(f"{len(row_labels)} x {len(column_labels)} labels for {tuple(maps.shape[:2])} maps.")
    vmax = float(maps.max())
    thumbnail = image.convert("RGB").resize((tile, tile))
    tiles = [
        [thumbnail if row == 0 else None] + [overlay_heatmap(image, heat, tile, vmax) for heat in maps[row]]
        for row in range(maps.shape[0])
    ]
    scale = (vmax, "attention probability")
    _tile_sheet(tiles, tile, title, row_labels, ["image", *column_labels], scale).save(path)


def save_saliency_map(image: PIL.Image.Image, saliency: torch.Tensor, caption: str, path: str, heading: str) -> None:
    """PNG of `image` beside its `saliency` `(grid, grid)` for `caption`, under `heading`, the caption below them."""
    grid = saliency.shape[-1]
    explanation = f"Gradient saliency of the caption over the {grid}x{grid} patch grid (shares summing to 1)."
    overlay = overlay_heatmap(image, saliency, SALIENCY_SIZE, float(saliency.max()))
    tiles = [[image.convert("RGB").resize((SALIENCY_SIZE, SALIENCY_SIZE)), overlay]]
    width = MARGIN + 2 * (SALIENCY_SIZE + GAP) + COLOUR_BAR_AREA
    words = f"Caption: {caption.strip() or EMPTY_CAPTION}"
    footer = _fit_lines(words, _font(FONT_SIZE), width - 2 * MARGIN, SALIENCY_CAPTION_LINES)
    footer += [""] * (SALIENCY_CAPTION_LINES - len(footer))
    scale = (float(saliency.max()), "saliency share")
    _tile_sheet(tiles, SALIENCY_SIZE, (heading, explanation), [""], ["image", "saliency"], scale, footer).save(path)


def _tile_sheet(
    tiles: list[list[PIL.Image.Image | None]],
    tile: int,
    title: tuple[str, str],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    scale: tuple[float, str],
    footer: Sequence[str] = (),
) -> PIL.Image.Image:
    """
    `tiles` (rows of `tile` x `tile` images, `None` for an empty cell) `GAP` apart under two `title` lines (the first
    losing its start rather than its end when too long: a model path's end tells most) and the column labels, the row
    labels on their left (no room taken when all are empty), a colour bar from 0 to `scale = (max, name)` on their
    right, and the `footer` lines under them.
    """
    left = MARGIN + (ROW_LABEL_WIDTH if any(row_labels) else 0)
    pitch, bar_height = tile + GAP, len(tiles) * (tile + GAP) - GAP
    width = left + len(column_labels) * pitch + COLOUR_BAR_AREA
    sheet = PIL.Image.new("RGB", (width, SHEET_TOP + bar_height + GAP + len(footer) * LINE_HEIGHT + MARGIN), BACKGROUND)
    draw = PIL.ImageDraw.Draw(sheet)
    font, title_font = _font(FONT_SIZE), _font(TITLE_FONT_SIZE)
    draw.text((MARGIN, MARGIN), _fit_tail(title[0], title_font, width - 2 * MARGIN), font=title_font, fill=TEXT)
    explanation = _fit_line(title[1], font, width - 2 * MARGIN)
    draw.text((MARGIN, MARGIN + TITLE_LINE_HEIGHT), explanation, font=font, fill=MUTED_TEXT)
    for column, label in enumerate(column_labels):
        x = left + column * pitch + tile // 2
        draw.text((x, SHEET_TOP - LINE_HEIGHT), _fit_line(label, font, tile), font=font, fill=TEXT, anchor="ma")
    for row, images in enumerate(tiles):
        y = SHEET_TOP + row * pitch
        label = _fit_line(row_labels[row], font, ROW_LABEL_WIDTH - GAP)
        draw.text((MARGIN, y + tile // 2), label, font=font, fill=TEXT, anchor="lm")
        for column, picture in enumerate(images):
            if picture is not None:
                sheet.paste(picture, (left + column * pitch, y))
    _draw_colour_bar(sheet, left + len(column_labels) * pitch, bar_height, *scale)
    _draw_lines(draw, (MARGIN, SHEET_TOP + bar_height + GAP), footer, TEXT)
    return sheet


def _draw_colour_bar(sheet: PIL.Image.Image, x: int, height: int, vmax: float, name: str) -> None:
    """A vertical colour bar at `(x, SHEET_TOP)` from `vmax` (top) to 0 (bottom), its ticks, and `name` beside it."""
    gradient = torch.linspace(vmax, 0, height)[:, None].expand(height, COLOUR_BAR_WIDTH)
    sheet.paste(_colourize(gradient, vmax), (x, SHEET_TOP))
    draw, font = PIL.ImageDraw.Draw(sheet), _font(FONT_SIZE)
    ticks_x = x + COLOUR_BAR_WIDTH + GAP
    draw.text((ticks_x, SHEET_TOP), f"{vmax:.3g}", font=font, fill=TEXT, anchor="lt")
    draw.text((ticks_x, SHEET_TOP + height), "0", font=font, fill=TEXT, anchor="ld")
    label = PIL.Image.new("RGB", (height, LINE_HEIGHT), BACKGROUND)
    PIL.ImageDraw.Draw(label).text((height // 2, 0), _fit_line(name, font, height), font=font, fill=TEXT, anchor="ma")
    sheet.paste(label.rotate(90, expand=True), (x + COLOUR_BAR_WIDTH + COLOUR_BAR_TICKS_WIDTH, SHEET_TOP))


def _colourize(values: torch.Tensor, vmax: float) -> PIL.Image.Image:
    """RGB image of `values` `(height, width)` in the heat-map colours: 0 (and below) darkest, `vmax` brightest."""
    levels = (values.float() / max(vmax, 1e-12)).clamp(0, 1).mul(255).round().byte().numpy()
    return PIL.ImageOps.colorize(PIL.Image.fromarray(levels), **HEATMAP_COLOURS)


@functools.cache
def _font(size: int) -> PIL.ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font at `size` pixels (no font file needed)."""
    return PIL.ImageFont.load_default(size=size)


def _fit_lines(text: str, font: PIL.ImageFont.FreeTypeFont, width: int, max_lines: int) -> list[str]:
    """
    `text` word-wrapped into lines at most `width` pixels wide (longer words are broken), at most `max_lines` of them:
    when it needs more, the last one ends with an ellipsis.
    """
    lines, current = [], ""
    for word in text.split():
        if font.getlength(f"{current} {word}".strip()) <= width:
            current = f"{current} {word}".strip()
            continue
        lines += [current] if current else []
        while font.getlength(word) > width:
            cut = next((n for n in range(len(word) - 1, 0, -1) if font.getlength(word[:n]) <= width), 1)
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    lines += [current] if current else []
    if len(lines) <= max_lines:
        return lines
    last = lines[max_lines - 1]
    while last and font.getlength(last + ELLIPSIS) > width:
        last = last[:-1]
    return lines[: max_lines - 1] + [last.rstrip() + ELLIPSIS]


def _fit_line(text: str, font: PIL.ImageFont.FreeTypeFont, width: int) -> str:
    """`text` on one line at most `width` pixels wide, cut with an ellipsis if needed."""
    return (_fit_lines(text, font, width, 1) or [""])[0]


def _fit_tail(text: str, font: PIL.ImageFont.FreeTypeFont, width: int) -> str:
    """`text` on one line at most `width` pixels wide, its start replaced by an ellipsis if needed (for paths)."""
    if font.getlength(text) <= width:
        return text
    start = next((i for i in range(1, len(text)) if font.getlength(ELLIPSIS + text[i:]) <= width), len(text))
    return ELLIPSIS + text[start:]


def write_gallery(
    output_dir: str,
    ids: Sequence[str],
    images: Sequence[PIL.Image.Image],
    references: Sequence[Sequence[str]],
    captions_by_model: dict[str, list[str]],
    heading: str,
    metrics_by_model: Mapping[str, Mapping[str, float]],
) -> None:
    """
    `gallery.html` (images embedded) and `contact_sheet.png`: each image, a reference and every model's caption,
    under `heading` (the dataset and split) and one line of `GALLERY_METRICS` per model of `metrics_by_model`.
    """
    columns = [("ground truth", [refs[0] for refs in references])] + list(captions_by_model.items())
    scores = [
        (name, " · ".join(f"{metric} {format_score(metrics.get(metric))}" for metric in GALLERY_METRICS))
        for name, metrics in metrics_by_model.items()
    ]
    gallery = Gallery(ids, images, columns, heading, scores)
    with open(os.path.join(output_dir, "gallery.html"), "w", encoding="utf-8") as file:
        file.write(gallery_html(gallery))
    contact_sheet(gallery).save(os.path.join(output_dir, "contact_sheet.png"))


@dataclass
class Gallery:
    """
    What a caption gallery shows: a `heading`, one `(model name, its scores)` line per model, then per image its id,
    the image and one caption per `(name, captions)` of `columns`.
    """

    ids: Sequence[str]
    images: Sequence[PIL.Image.Image]
    columns: list[tuple[str, list[str]]]
    heading: str
    scores: list[tuple[str, str]]


def gallery_html(gallery: Gallery) -> str:
    """An HTML page of `gallery`: its heading and score lines, then a table with one row per (embedded) image."""
    ids, images, columns, heading, scores = (
        gallery.ids, gallery.images, gallery.columns, gallery.heading, gallery.scores
    )  # fmt: skip
    rows = []
    for index, image_id in enumerate(ids):
        buffer = io.BytesIO()
        images[index].convert("RGB").resize((GALLERY_IMAGE_SIZE, GALLERY_IMAGE_SIZE)).save(buffer, format="PNG")
        cells = "".join(_caption_cell(captions[index]) for _, captions in columns)
        rows.append(
            f'<tr id="{html.escape(str(image_id))}"><td><img src="data:image/png;base64,'
            f'{base64.b64encode(buffer.getvalue()).decode()}" width="{GALLERY_IMAGE_SIZE}">'
            f"<br>{html.escape(str(image_id))}</td>{cells}</tr>"
        )
    headers = "".join(f"<th>{html.escape(name)}</th>" for name, _ in columns)
    score_lines = "".join(f"<li>{html.escape(name)}: {html.escape(line)}</li>" for name, line in scores)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Caption gallery</title><style>"
        "body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:6px;vertical-align:top;max-width:260px;overflow-wrap:anywhere}"
        ".empty{color:#888;font-style:italic}.note{color:#666}"
        f"</style></head><body><h1>Caption gallery</h1><p>{html.escape(heading)}</p><ul>{score_lines}</ul>"
        f"<p class='note'>{html.escape(CIDER_SCALE_NOTE)}</p><table><tr><th>image</th>{headers}</tr>{''.join(rows)}"
        "</table></body></html>"
    )


def _caption_cell(caption: str) -> str:
    """A table cell with `caption`, or with `EMPTY_CAPTION` greyed out when the caption is blank."""
    return f"<td>{html.escape(caption)}</td>" if caption.strip() else f"<td class='empty'>{EMPTY_CAPTION}</td>"


def contact_sheet(gallery: Gallery) -> PIL.Image.Image:
    """
    A PNG version of [`gallery_html`]: the heading, scores and CIDEr-scale note on top, then one row per image: its
    thumbnail and id, then one column per `(name, captions)` of `columns`, wrapped and cut with an ellipsis. Model
    names too long for their place lose their start (a path keeps its end).
    """
    ids, images, columns, heading, scores = (
        gallery.ids, gallery.images, gallery.columns, gallery.heading, gallery.scores
    )  # fmt: skip
    thumb, width = CONTACT_SHEET_THUMBNAIL, CONTACT_SHEET_COLUMN_WIDTH
    header_top = MARGIN + TITLE_LINE_HEIGHT + (len(scores) + 1) * LINE_HEIGHT + GAP
    table_top = header_top + CONTACT_SHEET_HEADER_HEIGHT
    size = (3 * MARGIN + thumb + width * len(columns), table_top + CONTACT_SHEET_ROW_HEIGHT * len(ids) + MARGIN)
    sheet = PIL.Image.new("RGB", size, BACKGROUND)
    draw, font, title_font = PIL.ImageDraw.Draw(sheet), _font(FONT_SIZE), _font(TITLE_FONT_SIZE)
    text_width = size[0] - 2 * MARGIN
    title = _fit_line(f"Caption gallery: {heading}", title_font, text_width)
    draw.text((MARGIN, MARGIN), title, font=title_font, fill=TEXT)
    lines = [f"{_fit_tail(name, font, text_width - font.getlength(f': {line}'))}: {line}" for name, line in scores]
    _draw_lines(draw, (MARGIN, MARGIN + TITLE_LINE_HEIGHT), lines, TEXT)
    note_top = MARGIN + TITLE_LINE_HEIGHT + len(scores) * LINE_HEIGHT
    _draw_lines(draw, (MARGIN, note_top), [_fit_line(CIDER_SCALE_NOTE, font, text_width)], MUTED_TEXT)
    column_x = [2 * MARGIN + thumb + column * width for column in range(len(columns))]
    _draw_lines(draw, (MARGIN, header_top), ["image"], TEXT)
    for x, (name, _) in zip(column_x, columns):
        _draw_lines(draw, (x, header_top), [_fit_tail(name, font, width - MARGIN)], TEXT)
    for index, image in enumerate(images):
        top = table_top + index * CONTACT_SHEET_ROW_HEIGHT
        draw.line((MARGIN, top, size[0] - MARGIN, top), fill=RULE)
        sheet.paste(image.convert("RGB").resize((thumb, thumb)), (MARGIN, top + GAP))
        draw.rectangle((MARGIN - 1, top + GAP - 1, MARGIN + thumb, top + GAP + thumb), outline=RULE)
        _draw_lines(draw, (MARGIN, top + GAP + thumb), [_fit_line(str(ids[index]), font, thumb)], MUTED_TEXT)
        for x, (_, captions) in zip(column_x, columns):
            text = _fit_lines(captions[index], font, width - MARGIN, CONTACT_SHEET_MAX_LINES)
            _draw_lines(draw, (x, top + GAP), text or [EMPTY_CAPTION], TEXT if text else MUTED_TEXT)
    return sheet


def _draw_lines(draw: PIL.ImageDraw.ImageDraw, xy: tuple[int, int], lines: Sequence[str], fill: tuple) -> None:
    """`lines` of `FONT_SIZE` text from `xy` down, `LINE_HEIGHT` apart."""
    for index, line in enumerate(lines):
        draw.text((xy[0], xy[1] + index * LINE_HEIGHT), line, font=_font(FONT_SIZE), fill=fill)
