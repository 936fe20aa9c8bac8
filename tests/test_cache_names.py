"""
The key/value cache under both of its names (`past_key_values` up to transformers 5.24, `cache` from 5.25), and the
images read at the step that starts a sequence only, whichever name and flags the installed `generate` passes. CI runs
this file under the pinned, the newest and the 4.57 releases.
"""

from unittest import mock

import pytest
import torch
import transformers
from transformers import DynamicCache

from evaluation.captioning import caption_messages
from evaluation.shared_images import generate_with_shared_prefill, shared_prefix_length
from modeling_vlm import CACHE_NAME
from models.tiny import build_tiny_vlm
from processing_vlm import IS_TRANSFORMERS_4


FUSIONS = ["early", "cross_attention"]


def prompt(processor, images):
    text = processor.apply_chat_template(caption_messages(), add_generation_prompt=True)
    return processor(images=images, text=[text] * len(images), return_tensors="pt")


def build(fusion: str, seed: int = 0):
    """A tiny model whose images change the output under either fusion (cross-attention gates opened)."""
    model, processor = build_tiny_vlm("mlp", seed=seed, fusion=fusion)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("_gate"):
                parameter.fill_(0.5)
    return model.eval(), processor


def test_cache_name_is_the_installed_releases():
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    assert CACHE_NAME == ("cache" if (major, minor) >= (5, 25) else "past_key_values")


@pytest.mark.parametrize("fusion", FUSIONS)
def test_forward_takes_the_cache_under_either_name(images, fusion):
    model, processor = build(fusion)
    batch = prompt(processor, images[:1])
    next_token = torch.tensor([[100]])
    with torch.no_grad():
        full = model(
            input_ids=torch.cat([batch["input_ids"], next_token], dim=1), pixel_values=batch["pixel_values"]
        ).logits[:, -1]
        steps = {}
        for name in ("cache", "past_key_values"):
            prefill = model(**batch, use_cache=True)
            assert CACHE_NAME in type(prefill).__dataclass_fields__  # the field has the installed release's name
            cache = getattr(prefill, CACHE_NAME)
            assert cache.get_seq_length() == batch["input_ids"].shape[1]
            step = model(input_ids=next_token, **{name: cache})
            steps[name] = step.logits[:, -1]
            assert getattr(step, CACHE_NAME) is cache and cache.get_seq_length() == batch["input_ids"].shape[1] + 1
        with pytest.raises(ValueError, match="Got the key/value cache twice, as `cache` and as `past_key_values`"):
            model(input_ids=next_token, cache=cache, past_key_values=cache)
    assert torch.equal(steps["cache"], steps["past_key_values"])
    torch.testing.assert_close(steps["cache"], full)


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_images_enter_at_the_step_that_starts_a_sequence(images, fusion, name):
    """`prepare_inputs_for_generation` as each release calls it: 4.57 with the cache only, 5.x with the flag too."""
    model, processor = build(fusion)
    batch = prompt(processor, images[:1])
    with torch.no_grad():
        filled = getattr(model(**batch, use_cache=True), CACHE_NAME)
    ids, pixels = batch["input_ids"], batch["pixel_values"]
    input_ids = torch.cat([ids, torch.tensor([[100]])], dim=1)

    def prepared(cache, **flags) -> dict:
        if IS_TRANSFORMERS_4:  # 4.x's generate slices the new tokens by their positions
            cached = cache.get_seq_length() if cache is not None else 0
            flags["cache_position"] = torch.arange(cached, input_ids.shape[1])
        flags[name] = cache
        return model.prepare_inputs_for_generation(input_ids, pixel_values=pixels, use_cache=True, **flags)

    for starts, inputs in [
        (True, prepared(None)),  # no cache: every step re-reads the sequence
        (True, prepared(DynamicCache())),  # 4.57's prefill
        (True, prepared(DynamicCache(), is_first_iteration=True)),  # 5.x's prefill
        (False, prepared(filled)),  # 4.57's and 5.x's decoding steps
        (False, prepared(filled, is_first_iteration=False)),
        (True, prepared(filled, is_first_iteration=True)),  # 5.x: a user's cache continued by a new prompt
    ]:
        assert (inputs.get("pixel_values") is pixels) == starts
        assert "past_key_values" not in inputs or CACHE_NAME == "past_key_values"  # the language model's own name
    assert prepared(filled)[CACHE_NAME] is filled


@pytest.mark.parametrize("fusion", FUSIONS)
def test_generate_reads_the_images_once_per_sequence(images, fusion):
    """With a cache the images are projected at the prefill only; without, at every step; the tokens agree."""
    model, processor = build(fusion, seed=2)
    batch = prompt(processor, images[:2])
    tokens, calls = {}, {}
    for use_cache in (True, False):
        with mock.patch.object(model, "get_image_features", wraps=model.get_image_features) as projector:
            tokens[use_cache] = model.generate(
                **batch, max_new_tokens=4, min_new_tokens=4, do_sample=False, use_cache=use_cache
            )
        calls[use_cache] = [call.args[0] for call in projector.call_args_list]
    assert len(calls[True]) == 1 and torch.equal(calls[True][0], batch["pixel_values"])
    assert len(calls[False]) == 4
    assert torch.equal(tokens[True], tokens[False])


@pytest.mark.parametrize(
    "mode",
    [{"num_beams": 3, "num_return_sequences": 2}, {"do_sample": True, "top_k": 20, "num_return_sequences": 2}],
    ids=["beam", "sample"],
)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_beams_and_samples_give_the_same_tokens_with_and_without_the_cache(images, fusion, mode):
    """The cache (with the cross-attention images in it) follows the beams' reordering and the expanded rows."""
    model, processor = build(fusion, seed=3)
    batch = prompt(processor, images[:2])
    generated = {}
    for use_cache in (True, False):
        torch.manual_seed(0)
        generated[use_cache] = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, use_cache=use_cache, **mode)
    assert generated[True].shape == (4, batch["input_ids"].shape[1] + 5)
    assert torch.equal(generated[True], generated[False])
    assert torch.equal(generated[True][:, : batch["input_ids"].shape[1]], batch["input_ids"].repeat_interleave(2, 0))


QUESTIONS = ["Is there a red circle?", "How many shapes are there?", "What color is the square?", "Is it big?"]


@pytest.mark.parametrize(
    ("projector_type", "fusion"),
    [("mlp", "early"), ("qformer", "early"), ("perceiver", "cross_attention"), ("mlp", "hybrid")],
)
def test_a_prefix_prefilled_once_per_image_answers_each_question_as_alone(images, projector_type, fusion):
    """Each image's chat up to its image tokens (or marker), prefilled once and copied to its questions (of unequal
    lengths, so padded between prefix and question), gives the tokens each question gets alone."""
    model, processor = build_tiny_vlm(projector_type, seed=3, fusion=fusion)
    torch.manual_seed(0)
    with torch.no_grad():  # weights large enough that every question gets its own tokens; the gates open
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2 and not name.startswith("vision_tower."):
                parameter.normal_(0, 0.05 if name.startswith("cross_attention_blocks.") else 0.2)
            elif name.endswith("_gate"):
                parameter.fill_(0.5)
    model.eval()
    rows = [(image_index, question) for image_index in range(2) for question in QUESTIONS[: 3 + image_index]]
    texts = [
        processor.apply_chat_template(caption_messages(question), add_generation_prompt=True) for _, question in rows
    ]
    row_images, keys = [images[index] for index, _ in rows], [str(index) for index, _ in rows]
    shared = generate_with_shared_prefill(model, processor, row_images, texts, keys, 0, max_new_tokens=6)
    alone = []
    for image, text in zip(row_images, texts):
        inputs = processor(images=[image], text=[text], return_tensors="pt")
        generated = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        alone.append(generated[0, inputs["input_ids"].shape[1] :])
    alone = torch.stack(alone)
    assert len({tuple(tokens) for tokens in alone.tolist()}) == len(rows)  # the comparison can tell rows apart
    assert torch.equal(shared, alone)


def test_rows_whose_prefixes_differ_are_not_shared():
    assert shared_prefix_length([[5, 9, 9, 1, 2], [5, 9, 9, 3]], image_token_id=9) == 3
    assert shared_prefix_length([[5, 9, 9, 1], [6, 9, 9, 1]], image_token_id=9) is None  # another system prompt
    assert shared_prefix_length([[5, 9, 1], [5, 9, 9, 1]], image_token_id=9) is None  # another prefix length
    assert shared_prefix_length([[5, 1], [5, 9, 1]], image_token_id=9) is None  # a row without an image
