# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Pictures of what a captioning model looks at, and of what it writes:

- [`projector_attention_maps`]: where each Q-Former query / Perceiver latent attends over the patch grid;
- [`saliency_map`]: the gradient saliency of a caption over the patch grid, for projectors without attention;
- [`save_attention_grid`], [`overlay_heatmap`]: those maps blended over the image, as PNG;
- [`write_gallery`]: `gallery.html` and `contact_sheet.png`, every model's caption beside each image.
"""

import base64
import html
import io
import math
import os
import textwrap
from collections.abc import Sequence

import PIL.Image
import PIL.ImageDraw
import torch
from transformers import PreTrainedModel, ProcessorMixin

from captioning import caption_messages


GALLERY_IMAGE_SIZE = 224
CONTACT_SHEET_THUMBNAIL = 128
CONTACT_SHEET_COLUMN_WIDTH = 220
CONTACT_SHEET_LINE_HEIGHT = 12
CONTACT_SHEET_MAX_LINES = 8
CONTACT_SHEET_WRAP = 34


def projector_attention_maps(model: PreTrainedModel, processor: ProcessorMixin, image: PIL.Image.Image) -> torch.Tensor:
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


def saliency_map(
    model: PreTrainedModel, processor: ProcessorMixin, image: PIL.Image.Image, caption: str
) -> torch.Tensor:
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


def overlay_heatmap(image: PIL.Image.Image, heatmap: torch.Tensor, size: int) -> PIL.Image.Image:
    """`image` resized to `size` x `size` with `heatmap` `(grid, grid)` (any scale) blended on top in red."""
    heat = (heatmap / heatmap.max().clamp_min(1e-12) * 255).byte().numpy()
    heat = PIL.Image.fromarray(heat, mode="L").resize((size, size), PIL.Image.Resampling.BILINEAR)
    red = PIL.Image.merge("RGB", (heat, PIL.Image.new("L", heat.size), PIL.Image.new("L", heat.size)))
    return PIL.Image.blend(image.convert("RGB").resize((size, size)), red, 0.55)


def save_attention_grid(image: PIL.Image.Image, maps: torch.Tensor, path: str, tile: int = 96) -> None:
    """
    PNG grid of `maps` `(rows, columns, grid, grid)`: one row per layer (the last row is the mean over layers), one
    column per query / latent, each tile `tile` x `tile` pixels.
    """
    rows, columns = maps.shape[:2]
    sheet = PIL.Image.new("RGB", (columns * tile, rows * tile), "white")
    for row in range(rows):
        for column in range(columns):
            sheet.paste(overlay_heatmap(image, maps[row, column], tile), (column * tile, row * tile))
    sheet.save(path)


def write_gallery(
    output_dir: str,
    ids: Sequence[str],
    images: Sequence[PIL.Image.Image],
    references: Sequence[Sequence[str]],
    captions_by_model: dict[str, list[str]],
) -> None:
    """`gallery.html` (images embedded) and `contact_sheet.png`: each image, a reference, every model's caption."""
    with open(os.path.join(output_dir, "gallery.html"), "w", encoding="utf-8") as file:
        file.write(gallery_html(ids, images, references, captions_by_model))
    columns = [("ground truth", [refs[0] for refs in references])] + list(captions_by_model.items())
    contact_sheet(images, columns).save(os.path.join(output_dir, "contact_sheet.png"))


def gallery_html(
    ids: Sequence[str],
    images: Sequence[PIL.Image.Image],
    references: Sequence[Sequence[str]],
    captions_by_model: dict[str, list[str]],
) -> str:
    """An HTML page with one table row per image: the image (embedded PNG), a reference, every model's caption."""
    rows = []
    for index, image_id in enumerate(ids):
        buffer = io.BytesIO()
        images[index].convert("RGB").resize((GALLERY_IMAGE_SIZE, GALLERY_IMAGE_SIZE)).save(buffer, format="PNG")
        cells = "".join(f"<td>{html.escape(captions[index])}</td>" for captions in captions_by_model.values())
        rows.append(
            f'<tr id="{html.escape(str(image_id))}"><td><img src="data:image/png;base64,'
            f'{base64.b64encode(buffer.getvalue()).decode()}" width="{GALLERY_IMAGE_SIZE}">'
            f"<br>{html.escape(str(image_id))}</td><td>{html.escape(references[index][0])}</td>{cells}</tr>"
        )
    model_headers = "".join(f"<th>{html.escape(name)}</th>" for name in captions_by_model)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Caption gallery</title><style>"
        "td,th{border:1px solid #ccc;padding:6px;vertical-align:top;max-width:260px}table{border-collapse:collapse}"
        f"</style></head><body><table><tr><th>image</th><th>ground truth</th>{model_headers}</tr>{''.join(rows)}"
        "</table></body></html>"
    )


def contact_sheet(images: Sequence[PIL.Image.Image], columns: list[tuple[str, list[str]]]) -> PIL.Image.Image:
    """One row per image: its thumbnail, then one text column per `(name, captions)` of `columns`."""
    thumb, width = CONTACT_SHEET_THUMBNAIL, CONTACT_SHEET_COLUMN_WIDTH
    row_height = max(thumb, 14 + CONTACT_SHEET_LINE_HEIGHT * CONTACT_SHEET_MAX_LINES) + 8
    sheet = PIL.Image.new("RGB", (thumb + 8 + width * len(columns), 20 + row_height * len(images)), "white")
    draw = PIL.ImageDraw.Draw(sheet)
    for column, (name, _) in enumerate(columns):
        draw.text((thumb + 8 + column * width, 4), name[:CONTACT_SHEET_WRAP], fill="black")
    for index, image in enumerate(images):
        top = 20 + index * row_height
        sheet.paste(image.convert("RGB").resize((thumb, thumb)), (0, top))
        for column, (_, captions) in enumerate(columns):
            lines = textwrap.wrap(captions[index], width=CONTACT_SHEET_WRAP)[:CONTACT_SHEET_MAX_LINES] or ["(empty)"]
            draw.multiline_text((thumb + 8 + column * width, top), "\n".join(lines), fill="black", spacing=2)
    return sheet
