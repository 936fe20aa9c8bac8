"""
Dynamic resolution (`max_tiles`): the grid rule is transformers' GotOcr2 one, an image becomes its tiles row by row and
then its thumbnail, the text gets NVLM's 1-D tile tags, and the model reads every tile with either fusion: batched
equals one by one, cached generation equals uncached, beam search runs. `max_tiles=1` is the model without tiles.
"""

import pytest
import torch
from PIL import Image

from configuration_vlm import VLMConfig
from models.tiny import TINY_TEXT_CONFIG, TINY_VISION_CONFIG, build_tiny_vlm
from tiling_vlm import THUMBNAIL_TAG, best_grid, cut_into_tiles, tile_tags


try:  # transformers 5.x keeps the PIL backend's function here; 4.57 in the processor's own module
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas
except ImportError:
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

TILE = TINY_VISION_CONFIG["image_size"]
SIZES = [(64, 64), (96, 40), (40, 96), (33, 200), (300, 31), (64, 32), (32, 64), (100, 99), (48, 40), (640, 480)]


@pytest.mark.parametrize("max_tiles", [1, 2, 4, 6, 12])
def test_the_grid_is_transformers_got_ocr2_grid(max_tiles):
    for width, height in SIZES:
        expected = get_optimal_tiled_canvas((height, width), (TILE, TILE), 1, max_tiles)
        assert best_grid(width, height, TILE, max_tiles) == tuple(expected), (width, height)


def quadrants(width: int, height: int) -> Image.Image:
    """An image whose four quadrants are red, green, blue and white (left to right, top to bottom)."""
    image = Image.new("RGB", (width, height))
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    for index, colour in enumerate(colours):
        left, top = (index % 2) * width // 2, (index // 2) * height // 2
        image.paste(colour, (left, top, left + width // 2, top + height // 2))
    return image


def test_an_image_becomes_its_tiles_row_by_row_then_its_thumbnail():
    image = quadrants(64, 64)
    tiles = cut_into_tiles(image, TILE, max_tiles=4, resample=Image.Resampling.BICUBIC)
    assert len(tiles) == 5 and tiles[-1] is image
    for tile, colour in zip(tiles[:4], [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]):
        assert tile.size == (TILE, TILE) and tile.getpixel((TILE // 2, TILE // 2)) == colour
    # One tile: no thumbnail.
    assert cut_into_tiles(image, TILE, max_tiles=1, resample=Image.Resampling.BICUBIC) == [image]
    assert tile_tags(1) == ["<tile_1>"]
    assert tile_tags(5) == ["<tile_1>", "<tile_2>", "<tile_3>", "<tile_4>", THUMBNAIL_TAG]


def test_the_processor_writes_each_tiles_tag_and_placeholders_and_pads_the_tiles():
    _, processor = build_tiny_vlm("mlp", max_tiles=4)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}]}]
    )
    inputs = processor(images=[quadrants(64, 64), quadrants(96, 40)], text=[text], return_tensors="pt")
    assert inputs["num_tiles"].tolist() == [5, 3]  # 2 x 2 + thumbnail; 2 x 1 (aspect 2.4) + thumbnail
    assert inputs["pixel_values"].shape == (2, 5, 3, TILE, TILE)
    assert inputs["pixel_values"][1, 3:].abs().sum() == 0  # the second image's padding
    placeholders = processor.image_token * processor.num_image_tokens
    decoded = processor.decode(inputs["input_ids"][0])
    first = "".join(tag + placeholders for tag in tile_tags(5))
    second = "".join(tag + placeholders for tag in tile_tags(3))
    assert f"{first}and{second}" in decoded
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 8 * processor.num_image_tokens
    untiled = build_tiny_vlm("mlp")[1](images=[quadrants(64, 64)], text=["<image>"], return_tensors="pt")
    assert "num_tiles" not in untiled and untiled["pixel_values"].shape == (1, 3, TILE, TILE)


def test_with_cross_attention_an_image_stays_one_marker_for_all_its_tiles():
    _, processor = build_tiny_vlm("perceiver", fusion="cross_attention", max_tiles=4)
    inputs = processor(images=[quadrants(64, 64)], text=["look <image> here"], return_tensors="pt")
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 1
    assert inputs["num_tiles"].tolist() == [5] and "tile_" not in processor.decode(inputs["input_ids"][0])


def chat_inputs(processor, images: list, questions: list[str]) -> dict:
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            add_generation_prompt=True,
        )
        for question in questions
    ]
    return processor(images=images, text=texts, return_tensors="pt")


@pytest.mark.parametrize(
    ("projector_type", "fusion"), [("mlp", "early"), ("perceiver", "cross_attention"), ("mlp", "hybrid")]
)
def test_every_tile_is_read_and_batched_cached_and_beam_generation_agree(projector_type, fusion):
    model, processor = build_tiny_vlm(projector_type, seed=3, fusion=fusion, max_tiles=4)
    with torch.no_grad():  # open the gates, so that cross-attention reads the tiles
        for parameter in (p for n, p in model.named_parameters() if n.endswith("_gate")):
            parameter.fill_(0.5)
    images, questions = [quadrants(64, 64), quadrants(96, 40)], ["what is it?", "a"]
    inputs = chat_inputs(processor, images, questions)
    with torch.no_grad():
        logits = model(**inputs).logits
        changed = inputs["pixel_values"].clone()
        changed[0, 1] = 0.0  # the first image's second tile
        assert not torch.allclose(model(**{**inputs, "pixel_values": changed}).logits[0], logits[0])
        generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=5, do_sample=False, use_cache=False)
        assert torch.equal(generated, uncached)
        length = inputs["input_ids"].shape[1]
        for row, (image, question) in enumerate(zip(images, questions)):
            alone = chat_inputs(processor, [image], [question])
            alone_tokens = model.generate(**alone, max_new_tokens=5, do_sample=False)[0, alone["input_ids"].shape[1] :]
            assert generated[row, length:].tolist() == alone_tokens.tolist()
            padding = int((inputs["attention_mask"][row] == 0).sum())
            torch.testing.assert_close(model(**alone).logits[0], logits[row, padding:], atol=1e-5, rtol=1e-5)
        beams = model.generate(**inputs, max_new_tokens=4, do_sample=False, num_beams=2)
        assert beams.shape == (2, length + 4)


def test_hybrid_puts_the_thumbnail_in_the_sequence_and_reads_the_tiles_through_the_blocks():
    model, processor = build_tiny_vlm("mlp", seed=5, fusion="hybrid", max_tiles=4)
    early, early_processor = build_tiny_vlm("mlp")
    early.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("cross_attention_blocks")})
    image, question = quadrants(96, 40), "what is it?"
    inputs = chat_inputs(processor, [image], [question])
    assert torch.equal(inputs["input_ids"], chat_inputs(early_processor, [image], [question])["input_ids"])
    assert inputs["num_tiles"].tolist() == [3]  # 2 x 1 tiles and the thumbnail
    text_only = processor(text=["Describe the image briefly."], return_tensors="pt")
    with torch.no_grad():
        # At initialisation (gates at 0): the early-fusion model of the thumbnail, and on text the bare language model.
        assert torch.equal(model(**inputs).logits, early(**chat_inputs(early_processor, [image], [question])).logits)
        bare = model.language_model(**text_only).logits
        assert torch.equal(model(**text_only).logits, bare)
        for parameter in (p for n, p in model.named_parameters() if n.endswith("_gate")):
            parameter.fill_(0.5)
        outputs = model(**inputs, output_attentions=True)
    tokens = model.config.num_visual_tokens
    first = int((inputs["input_ids"][0] == processor.image_token_id).nonzero()[0])
    for attention in outputs.cross_attentions:  # the two tiles' keys; the text from the thumbnail on reads them
        assert attention.shape[-1] == 2 * tokens
        torch.testing.assert_close(attention[0, :, first:].sum(-1), torch.ones_like(attention[0, :, first:, 0]))


def test_tiles_one_is_the_model_without_tiles():
    tiled, processor = build_tiny_vlm("mlp", seed=5, max_tiles=1)
    plain, _ = build_tiny_vlm("mlp", seed=5)
    inputs = chat_inputs(processor, [quadrants(64, 64)], ["what is it?"])
    assert "num_tiles" not in inputs
    with torch.no_grad():
        assert torch.equal(tiled(**inputs).logits, plain(**inputs).logits)


def test_bad_tile_inputs_are_refused_naming_max_tiles():
    model, processor = build_tiny_vlm("mlp", max_tiles=4)
    inputs = chat_inputs(processor, [quadrants(64, 64)], ["what?"])
    with pytest.raises(ValueError, match=r"num_tiles=\[6\] is invalid for max_tiles=4: each of the 1 images has 1 "):
        model(**{**inputs, "num_tiles": torch.tensor([6])})
    with pytest.raises(ValueError, match="tiled images are .* with num_tiles"):
        model(**{name: value for name, value in inputs.items() if name != "num_tiles"})
    with pytest.raises(ValueError, match=r"smaller than one 32x32 tile, so max_tiles=4 would only upsample it"):
        processor(images=[Image.new("RGB", (20, 30))], text=["<image>"])
    config = {"vision_config": TINY_VISION_CONFIG, "text_config": TINY_TEXT_CONFIG}
    for value in (0, "4", True):
        with pytest.raises(ValueError, match=f"max_tiles={value!r} is invalid; it must be a positive integer"):
            VLMConfig(**config, max_tiles=value)
