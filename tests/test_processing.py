"""VLMProcessor: SigLIP preprocessing, image-token expansion, chat template, labels, input checks."""

import numpy as np
import pytest
import torch
from PIL import Image

from captioning import caption_messages
from processing_vlm import to_rgb_image
from tiny_vlm import build_tiny_processor


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
