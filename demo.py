"""
Offline demo: builds a tiny VLM for every projector type, captions synthetic images with `generate`, saves it, and
loads it back through `AutoModelForImageTextToText` / `AutoProcessor` with `trust_remote_code=True`.

The models are untrained (random weights), so the captions are noise: the demo shows the plumbing, from pixels to
tokens, on a 2-core CPU in well under a minute.
"""

import tempfile
import time

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from caption_data import make_shapes_dataset
from configuration_vlm import PROJECTOR_TYPES
from tiny_vlm import build_tiny_vlm


def main() -> None:
    samples = make_shapes_dataset(num_images=4, split="validation")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image briefly."}]}]
    print(f"{'projector':<10} {'image tokens':>12} {'projector params':>16} {'reloaded == original':>20}  first caption")
    for projector_type in PROJECTOR_TYPES:
        start = time.perf_counter()
        model, processor = build_tiny_vlm(projector_type)
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=list(samples["image"]), text=[prompt] * len(samples), return_tensors="pt")
        generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        with tempfile.TemporaryDirectory() as directory:
            model.save_pretrained(directory)
            processor.save_pretrained(directory)
            reloaded = AutoModelForImageTextToText.from_pretrained(directory, trust_remote_code=True)
            reloaded_processor = AutoProcessor.from_pretrained(directory, trust_remote_code=True)
            same = torch.equal(reloaded.generate(**inputs, max_new_tokens=12, do_sample=False), generated)
        captions = reloaded_processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        num_params = sum(p.numel() for p in model.multi_modal_projector.parameters())
        print(
            f"{projector_type:<10} {model.config.num_image_tokens:>12} {num_params:>16,} {str(same):>20}  "
            f"{captions[0]!r} ({time.perf_counter() - start:.1f} s)"
        )
    print(f"\nreference captions of the first image: {samples[0]['captions']}")


if __name__ == "__main__":
    main()
