"""VLMProcessor: SigLIP preprocessing, image-token expansion, chat template, labels, input checks."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.captioning import caption_messages
from models.tiny import build_tiny_processor
from processing_vlm import to_rgb_image


@pytest.fixture
def processor():
    return build_tiny_processor(num_image_tokens=8)


def test_pixel_values_are_siglip_preprocessing(processor, images):
    """Bicubic resize to the tower's size, rescale by 1/255, normalise with mean = std = 0.5 to [-1, 1]."""
    pixel_values = processor(images=images[:1], text=["<image>"], return_tensors="pt")["pixel_values"]
    resized = np.asarray(images[0].resize((32, 32), Image.Resampling.BICUBIC), dtype=np.float32)
    expected = torch.from_numpy((resized / 255.0 - 0.5) / 0.5).permute(2, 0, 1)
    assert pixel_values.shape == (1, 3, 32, 32)
    torch.testing.assert_close(pixel_values[0], expected, rtol=0, atol=1e-5)
    assert pixel_values.min() >= -1.0 and pixel_values.max() <= 1.0


def test_each_image_token_becomes_num_image_tokens_placeholders(processor, images):
    texts = ["<image>a", "b<image> and <image>c"]
    batch = processor(images=[[images[0]], [images[1], images[2]]], text=texts, return_tensors="pt")
    counts = (batch["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    assert counts == [8, 16]
    assert batch["pixel_values"].shape[0] == 3
    flat = processor(images=images, text=texts, return_tensors="pt")
    assert torch.equal(flat["input_ids"], batch["input_ids"]) and torch.equal(flat["pixel_values"], batch["pixel_values"])


def test_mixed_lengths_are_left_padded(processor, images):
    texts = ["<image>short", "<image>a much longer text with many more words in it"]
    batch = processor(images=images[:2], text=texts, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1
    assert batch["attention_mask"][1].all()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1"])
def test_any_pil_mode_becomes_rgb(processor, mode):
    image = Image.new(mode, (20, 20))
    assert to_rgb_image(image).mode == "RGB"
    assert processor(images=[image], text=["<image>"], return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)


def test_transparent_pixels_are_composited_on_white():
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    opaque = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    assert to_rgb_image(transparent).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb_image(opaque).getpixel((0, 0)) == (255, 0, 0)


def test_numpy_and_tensor_images_equal_pil(processor, images):
    array = np.asarray(images[2])
    as_pil = processor(images=[images[2]], text=["<image>"], return_tensors="pt")["pixel_values"]
    for image in (array, array.transpose(2, 0, 1), torch.from_numpy(array.copy()), torch.from_numpy(array / 255.0).float()):
        torch.testing.assert_close(processor(images=[image], text=["<image>"], return_tensors="pt")["pixel_values"], as_pil)
    grayscale = processor(images=[np.zeros((10, 12), dtype=np.uint8)], text=["<image>"], return_tensors="pt")
    assert grayscale["pixel_values"].shape == (1, 3, 32, 32)


EIGHT_BIT_RAMP = np.tile(np.arange(256), (4, 1))  # (4, 256): 0, 1, ..., 255 on every row
SIXTEEN_BIT_RAMP = EIGHT_BIT_RAMP * 257  # 0, 257, ..., 65535: the same grey levels with 16 bits


def sixteen_bit_pil(mode: str, dtype: str) -> Image.Image:
    return Image.frombytes(mode, (256, 4), SIXTEEN_BIT_RAMP.astype(dtype).tobytes())


@pytest.mark.parametrize(
    "make_image",
    [
        pytest.param(lambda: sixteen_bit_pil("I;16", "<u2"), id="PIL I;16"),
        pytest.param(lambda: sixteen_bit_pil("I;16B", ">u2"), id="PIL I;16B"),
        pytest.param(lambda: sixteen_bit_pil("I;16L", "<u2"), id="PIL I;16L"),
        pytest.param(lambda: sixteen_bit_pil("I;16N", "=u2"), id="PIL I;16N"),
        pytest.param(lambda: Image.fromarray(SIXTEEN_BIT_RAMP.astype(np.int32)), id="PIL I above 255"),
        pytest.param(lambda: Image.fromarray(EIGHT_BIT_RAMP.astype(np.int32)), id="PIL I within 255"),
        pytest.param(lambda: Image.fromarray((EIGHT_BIT_RAMP / 255).astype(np.float32)), id="PIL F within 0-1"),
        pytest.param(lambda: Image.fromarray(EIGHT_BIT_RAMP.astype(np.float32)), id="PIL F within 0-255"),
        pytest.param(lambda: SIXTEEN_BIT_RAMP.astype(np.uint16), id="numpy uint16"),
        pytest.param(lambda: np.stack([SIXTEEN_BIT_RAMP.astype(np.uint16)] * 3, axis=-1), id="numpy uint16 RGB"),
        pytest.param(lambda: torch.from_numpy(SIXTEEN_BIT_RAMP).to(torch.uint16), id="torch uint16"),
        pytest.param(lambda: torch.from_numpy(SIXTEEN_BIT_RAMP), id="torch int64 above 255"),
        pytest.param(lambda: EIGHT_BIT_RAMP / 255, id="numpy float64 within 0-1"),
        pytest.param(lambda: torch.from_numpy(EIGHT_BIT_RAMP / 255).float().expand(3, 4, 256), id="torch float CHW"),
    ],
)
def test_wide_and_float_pixels_are_scaled_to_eight_bits(make_image):
    """16-bit and float images keep their grey levels: a 0-65535 (or 0-1) ramp becomes the 0-255 ramp, exactly."""
    rgb = np.asarray(to_rgb_image(make_image()))
    assert rgb.shape == (4, 256, 3)
    assert (rgb == EIGHT_BIT_RAMP[..., None]).all()
    assert rgb.mean() == 127.5  # clipping made the 16-bit ramp 99.6 % white, and the 0-1 float one black


@pytest.mark.parametrize(
    ("make_image", "file_name"),
    [
        pytest.param(lambda: sixteen_bit_pil("I;16", "<u2"), "ramp.png", id="16-bit PNG"),
        pytest.param(lambda: Image.fromarray((EIGHT_BIT_RAMP / 255).astype(np.float32)), "ramp.tiff", id="float TIFF"),
    ],
)
def test_wide_and_float_image_files_are_scaled_to_eight_bits(make_image, file_name, tmp_path):
    """Read by path: transformers' `load_image` converts to RGB on opening, which clips 16-bit pixels."""
    make_image().save(tmp_path / file_name)
    assert (np.asarray(to_rgb_image(tmp_path / file_name)) == EIGHT_BIT_RAMP[..., None]).all()


def test_float_pixels_above_one_are_read_as_eight_bit_values():
    values = np.array([[0.0, 0.4, 0.6, 254.6, 255.0]] * 2, dtype=np.float32)
    for image in (Image.fromarray(values), values, torch.from_numpy(values)):
        assert np.asarray(to_rgb_image(image))[0, :, 0].tolist() == [0, 0, 1, 255, 255]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([[-1.0, 0.0, 1.0]], dtype=np.float32), r"Image values lie in \[-1, 1\]; float pixels must lie in"),
        (np.array([[0.0, 300.0]], dtype=np.float32), r"lie in \[0, 300\]; float pixels must lie in \[0, 1\] or"),
        (np.array([[0, 70000]], dtype=np.int64), r"lie in \[0, 70000\]; integer pixels must lie in \[0, 255\] or"),
    ],
)
def test_pixels_no_rule_can_read_are_refused(values, message):
    """Normalised pixels (SigLIP's are in [-1, 1]) passed by mistake must not be silently clipped."""
    for image in (values, torch.from_numpy(values)):
        with pytest.raises(ValueError, match=message):
            to_rgb_image(image)


def test_image_and_token_count_mismatch_raises(processor, images):
    with pytest.raises(ValueError, match=r"The text has 1 image tokens \('<image>'\) but 2 images were given"):
        processor(images=images[:2], text=["<image>caption"])
    with pytest.raises(ValueError, match=r"The text has 2 image tokens \('<image>'\) but 0 images were given"):
        processor(text=["<image>", "<image>"])
    with pytest.raises(ValueError, match=r"Text 1 has 1 image tokens .* but 2 images were given for it"):
        processor(images=[[images[0]], images[1:]], text=["<image>", "<image>"])


def test_unreadable_image_raises(processor, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a jpeg")
    with pytest.raises(ValueError, match="Could not read the image .*corrupt.jpg"):
        processor(images=[str(corrupt)], text=["<image>"])
    with pytest.raises(ValueError, match="Could not read the image .*missing.png"):
        processor(images=[str(tmp_path / "missing.png")], text=["<image>"])
    truncated = tmp_path / "truncated.png"
    buffer = tmp_path / "full.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer)
    truncated.write_bytes(buffer.read_bytes()[:60])
    with pytest.raises(ValueError, match="truncated.png"):
        processor(images=[str(truncated)], text=["<image>"])


def test_empty_videos_and_audio_are_accepted(processor, images):
    """lmms-eval's chat model passes `videos=[]` and `audios=[]` (plural) along with the images."""
    texts = ["<image>A red picture.", "<image>A blue one."]
    reference = processor(images=images[:2], text=texts, padding=True, return_tensors="pt")
    for empty in ({"videos": [], "audios": []}, {"videos": None, "audio": []}, {"audio": None, "audios": ()}):
        batch = processor(text=texts, padding=True, return_tensors="pt", images=images[:2], **empty)
        assert batch.keys() == reference.keys()
        for name in reference:
            assert torch.equal(batch[name], reference[name]), name


@pytest.mark.parametrize("name", ["videos", "audio", "audios"])
def test_non_empty_videos_or_audio_raise(processor, name):
    with pytest.raises(ValueError) as error:
        processor(text=["Hello."], **{name: [np.zeros((2, 8, 8, 3), dtype=np.uint8)]})
    assert str(error.value) == (
        f"VLMProcessor handles images and text only, but `{name}` is not empty; leave `{name}` out or pass None or an "
        "empty list."
    )


NO_WARNING_SCRIPT = textwrap.dedent(
    """
    import json, logging
    import transformers
    from PIL import Image

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("transformers").addHandler(handler)  # every transformers module logs below this one

    from models.tiny import build_tiny_vlm

    model, processor = build_tiny_vlm("mlp")
    processor(images=[Image.new("RGB", (40, 30), (200, 20, 20))], text=["<image>A red picture."], return_tensors="pt")
    print("WARNINGS" + json.dumps([record.getMessage() for record in records if record.levelno >= logging.WARNING]))
    """
)


def test_building_and_running_the_tiny_processor_logs_no_warning():
    """
    Without torchvision, transformers 5.x warns once per process, and at import time, when `SiglipImageProcessor` is
    touched; the tiny builders name the PIL backend instead. A fresh process, since the warning is logged only once.
    """
    repo_root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    process = subprocess.run(
        [sys.executable, "-c", NO_WARNING_SCRIPT], cwd=repo_root, env=env, capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, process.stderr[-4000:]
    assert json.loads(process.stdout.split("WARNINGS", 1)[1]) == []


def test_chat_template_is_qwen_chatml_with_image_parts(processor):
    prompt = processor.apply_chat_template(caption_messages(), add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>Describe the image briefly.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with_system = processor.apply_chat_template(
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    )
    assert with_system == "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"


def test_labels_supervise_only_the_answer_and_its_end_of_turn(processor, images):
    texts = [processor.apply_chat_template(caption_messages(caption=answer)) for answer in ("A red box.", "Blue.")]
    batch = processor(images=images[:2], text=texts, return_tensors="pt")
    labels = processor.build_labels(batch["input_ids"])
    for row, answer in enumerate(("A red box.", "Blue.")):
        supervised = labels[row][labels[row] != -100]
        assert processor.tokenizer.decode(supervised) == answer + "<|im_end|>"
        assert torch.equal(labels[row][labels[row] != -100], batch["input_ids"][row][labels[row] != -100])
    prompt_only = processor(images=images[:1], text=[texts[0].split("<|im_start|>assistant")[0]], return_tensors="pt")
    assert (processor.build_labels(prompt_only["input_ids"]) == -100).all()


def test_batch_decode_skips_special_tokens(processor):
    ids = processor.tokenizer("<|im_start|>assistant\na red circle.<|im_end|>")["input_ids"]
    assert processor.batch_decode([ids], skip_special_tokens=True) == ["assistant\na red circle."]


def test_missing_image_token_in_tokenizer_raises(processor):
    with pytest.raises(ValueError, match="The tokenizer has no '<img>' token; add it"):
        type(processor)(image_processor=processor.image_processor, tokenizer=processor.tokenizer, image_token="<img>")


@pytest.mark.parametrize(
    ("shape", "input_data_format", "last"),
    [
        ((3, 50, 3), "channels_last", True),  # an RGB image 3 pixels tall
        ((3, 50, 3), "channels_first", False),
        ((4, 50, 4), "channels_last", True),  # RGBA, 4 pixels tall
        ((4, 50, 4), "channels_first", False),
        ((1, 7, 1), "channels_last", True),
        ((3, 4, 256), None, False),  # the only end of size 1 or 3
        ((4, 256, 3), None, True),  # RGB 4 pixels tall: an end of 3 before an end of 4
        ((4, 20, 30), None, False),  # RGBA channels first
    ],
)
def test_where_an_arrays_channels_are_follows_one_rule_or_the_callers_word(processor, shape, input_data_format, last):
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    channels_last = array if last else array.transpose(1, 2, 0)
    expected = np.broadcast_to(channels_last[..., :3], (*channels_last.shape[:2], 3))  # grey: one channel, three times
    image = to_rgb_image(array, input_data_format)
    assert (np.asarray(image) == expected).all()
    pixel_values = processor(images=[array], text=["<image>"], input_data_format=input_data_format,
                             return_tensors="pt")["pixel_values"]  # fmt: skip
    as_pil = processor(images=[image], text=["<image>"], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixel_values, as_pil)


@pytest.mark.parametrize("shape", [(3, 50, 3), (1, 50, 3), (4, 50, 4), (1, 9, 1)])
def test_an_array_that_may_hold_its_channels_at_either_end_is_refused_unless_told(processor, shape):
    array = np.zeros(shape, dtype=np.uint8)
    with pytest.raises(ValueError, match=rf"shape \{re.escape(str(shape))[1:]} may hold its channels first or last; "
                                         "say which with input_data_format="):  # fmt: skip
        processor(images=[array], text=["<image>"], return_tensors="pt")
    with pytest.raises(ValueError, match="input_data_format='HWC' is invalid; choose 'channels_first' or"):
        to_rgb_image(array, "HWC")
