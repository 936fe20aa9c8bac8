"""
Beam search and `num_return_sequences` expand the batch: each row's copies must read that row's images, also when a
row holds several (transformers repeats each image in place, which gave a row's copies the wrong ones).
"""

import pytest
import torch

from models.tiny import build_tiny_vlm


def two_and_one_image_prompts(processor) -> list[str]:
    """A chat about two images, and one about one image."""
    contents = ([{"type": "image"}, {"type": "image"}], [{"type": "image"}])
    return [
        processor.apply_chat_template(
            [{"role": "user", "content": [*images, {"type": "text", "text": "Describe the image briefly."}]}],
            add_generation_prompt=True,
        )
        for images in contents
    ]


@pytest.mark.parametrize(
    ("projector_type", "settings"),
    [("mlp", {}), ("perceiver", {"fusion": "cross_attention"}), ("mlp", {"max_tiles": 4}),
     ("mlp", {"fusion": "hybrid", "max_tiles": 4})],  # fmt: skip
)
def test_each_rows_beams_read_that_rows_images(projector_type, settings, images):
    model, processor = build_tiny_vlm(projector_type, **settings)
    with torch.no_grad():  # open the gates, so that the cross-attention blocks read the images
        for name, parameter in model.named_parameters():
            if name.endswith("gate"):
                parameter.fill_(1.0)
    texts, per_text = two_and_one_image_prompts(processor), [[images[0], images[1]], [images[2]]]
    batch = processor(images=per_text, text=texts, return_tensors="pt")
    options = {"max_new_tokens": 2, "num_beams": 2, "num_return_sequences": 2, "do_sample": False,
               "output_logits": True, "return_dict_in_generate": True}  # fmt: skip
    first_step = model.generate(**batch, **options).logits[0]  # (rows x beams, vocab): the prompt's next token
    for row, (row_images, text) in enumerate(zip(per_text, texts)):
        with torch.no_grad():
            alone = model(**processor(images=[row_images], text=[text], return_tensors="pt")).logits[:, -1]
        torch.testing.assert_close(first_step[2 * row : 2 * row + 2], alone.expand(2, -1))
