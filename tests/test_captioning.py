"""`captioning`: the captioning chat and batched greedy generation."""

from data.captions import make_shapes_dataset
from evaluation.captioning import CAPTION_PROMPT, caption_messages, generate_captions
from models.tiny import build_tiny_vlm


def test_caption_messages_put_the_image_first_then_the_prompt_and_the_caption_as_the_answer():
    assert caption_messages(caption="a red circle.") == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_PROMPT}]},
        {"role": "assistant", "content": "a red circle."},
    ]
    assert caption_messages("What is it?")[0]["content"][1]["text"] == "What is it?" and len(caption_messages()) == 1


def test_batched_captions_equal_one_by_one():
    images = [image.convert("RGB") for image in make_shapes_dataset(num_images=3, split="test")["image"]]
    model, processor = build_tiny_vlm("perceiver")
    batched = generate_captions(model, processor, images, batch_size=3, max_new_tokens=6)
    alone = [generate_captions(model, processor, [image], batch_size=1, max_new_tokens=6)[0] for image in images]
    assert batched == alone and len(batched) == 3
