"""VLMForConditionalGeneration: shapes, loss, image merging, generation, and what passes through to the towers."""

import json

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from configuration_vlm import PROJECTOR_TYPES, VLMConfig
from evaluation.captioning import caption_messages
from loss_vlm import chunked_cross_entropy
from modeling_vlm import CACHE_NAME, PROJECTOR_CLASSES, VLMForConditionalGeneration
from models.tiny import TINY_CLIP_VISION_CONFIG, build_tiny_vlm
from processing_vlm import IS_TRANSFORMERS_4


def caption_batch(processor, images, answers=None):
    """A left-padded batch of captioning prompts (with answers and labels when `answers` is given)."""
    if answers is None:
        texts = [processor.apply_chat_template(caption_messages(), add_generation_prompt=True) for _ in images]
    else:
        texts = [processor.apply_chat_template(caption_messages(caption=answer)) for answer in answers]
    batch = processor(images=images, text=texts, return_tensors="pt")
    if answers is not None:
        batch["labels"] = processor.build_labels(batch["input_ids"])
    return batch


@pytest.mark.parametrize("projector_type", PROJECTOR_TYPES)
def test_forward_shapes_and_image_tokens(projector_type, images):
    model, processor = build_tiny_vlm(projector_type)
    batch = caption_batch(processor, images[:2])
    num_image_tokens = model.config.num_image_tokens
    expected_tokens = {"linear": 16, "mlp": 16, "qformer": 8, "perceiver": 8}[projector_type]
    assert num_image_tokens == processor.num_image_tokens == expected_tokens
    assert ((batch["input_ids"] == model.config.image_token_id).sum(dim=1) == num_image_tokens).all()

    with torch.no_grad():
        outputs = model(**batch)
    batch_size, seq_len = batch["input_ids"].shape
    assert outputs.logits.shape == (batch_size, seq_len, model.config.text_config.vocab_size)
    assert outputs.image_hidden_states.shape == (2, num_image_tokens, model.config.text_config.hidden_size)
    assert outputs.loss is None


@pytest.mark.parametrize("projector_type", PROJECTOR_TYPES)
def test_loss_on_labelled_positions_equals_full_logits_loss(projector_type, images):
    model, processor = build_tiny_vlm(projector_type)
    batch = caption_batch(processor, images[:2], answers=["a red box.", "a tall blue picture of the sky."])
    with torch.no_grad():
        outputs = model(**batch)
        full_logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert outputs.logits is None, "with labels and no logits_to_keep, no logits are materialised"
    reference = F.cross_entropy(
        full_logits[:, :-1].reshape(-1, full_logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=-100
    )
    assert torch.isfinite(outputs.loss)
    torch.testing.assert_close(outputs.loss, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("projector_type", ["mlp", "perceiver"])
def test_chunked_loss_equals_the_loss_in_one_piece_with_its_gradients(projector_type, images):
    model, processor = build_tiny_vlm(projector_type)
    batch = caption_batch(processor, images[:3], answers=["a red box.", "a tall blue picture of the sky.", "green."])
    num_labelled = int((batch["labels"][:, 1:] != -100).sum())
    trained = [model.multi_modal_projector, model.get_output_embeddings()]  # the head is tied to the input embeddings

    def loss_and_grads(chunk_size):
        model.config.loss_chunk_size = chunk_size
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for module in trained for p in module.parameters()]

    reference_loss, reference_grads = loss_and_grads(None)
    loss, grads = loss_and_grads(4)  # several chunks, the last one short
    assert num_labelled > 8 and num_labelled % 4
    torch.testing.assert_close(loss, reference_loss, rtol=1e-6, atol=1e-6)
    for actual, expected in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).loss, reference_loss, rtol=1e-6, atol=1e-6)


def test_chunked_cross_entropy_under_autocast():
    torch.manual_seed(0)
    head, hidden, labels = nn.Linear(256, 1000, bias=False), torch.randn(40, 256), torch.randint(0, 1000, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        one_piece = F.cross_entropy(head(hidden).float(), labels, reduction="sum")
        training = chunked_cross_entropy(hidden.requires_grad_(), head, labels, chunk_size=16)
        with torch.no_grad():
            evaluation = chunked_cross_entropy(hidden, head, labels, chunk_size=16)
    # Training runs the head in bf16 as the one-piece path does, and returns the sum in bf16.
    assert training.dtype == torch.bfloat16
    torch.testing.assert_close(training.float(), one_piece.detach(), rtol=2**-8, atol=0)
    # Evaluation keeps the loss in fp32: the same number as the one-piece path.
    assert evaluation.dtype == torch.float32
    torch.testing.assert_close(evaluation, one_piece.detach(), rtol=1e-6, atol=1e-4)


def test_chunked_loss_without_torch_support_names_the_fix(images, monkeypatch):
    model, processor = build_tiny_vlm("mlp", loss_chunk_size=8)
    batch = caption_batch(processor, images[:1], answers=["red."])
    monkeypatch.delattr(F, "linear_cross_entropy")
    with pytest.raises(RuntimeError, match=r"loss_chunk_size=8 needs torch.nn.functional.linear_cross_entropy"):
        model(**batch)


def test_logits_to_keep_keeps_last_positions(images):
    model, processor = build_tiny_vlm("mlp")
    batch = caption_batch(processor, images[:1])
    with torch.no_grad():
        full = model(**batch).logits
        last = model(**batch, logits_to_keep=1).logits
    assert last.shape[1] == 1
    torch.testing.assert_close(last[:, 0], full[:, -1])


def test_vision_features_give_the_same_output_as_pixel_values(images):
    model, processor = build_tiny_vlm("perceiver")
    batch = caption_batch(processor, images[:2])
    with torch.no_grad():
        from_pixels = model(**batch).logits
        features = model.get_vision_features(batch["pixel_values"])
        from_features = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], vision_features=features).logits
    assert features.shape == (2, model.config.num_patches, model.config.vision_config.hidden_size)
    torch.testing.assert_close(from_pixels, from_features)


def test_vision_feature_layer_selects_hidden_state(images):
    model, processor = build_tiny_vlm("mlp", vision_feature_layer=-2)
    pixel_values = processor(images=images[:1], text=["<image>"], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.vision_tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2]
        last = model.vision_tower(pixel_values=pixel_values).last_hidden_state
        torch.testing.assert_close(model.get_vision_features(pixel_values), expected)
    assert not torch.allclose(expected, last)


def test_placeholder_count_mismatch_raises(images):
    model, processor = build_tiny_vlm("qformer")
    batch = caption_batch(processor, images[:2])
    with pytest.raises(ValueError, match=r"16 image placeholder tokens .* but 1 image\(s\) x 8 tokens per image = 8"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"][:1])
    with pytest.raises(ValueError, match="image placeholder tokens .* but no `pixel_values`"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_text_only_batch(images):
    model, processor = build_tiny_vlm("mlp")
    texts = [processor.apply_chat_template([{"role": "user", "content": "Hello there."}], add_generation_prompt=True)]
    batch = processor(text=texts, return_tensors="pt")
    assert "pixel_values" not in batch
    with torch.no_grad():
        outputs = model(**batch)
    assert outputs.logits.shape[:2] == batch["input_ids"].shape and outputs.image_hidden_states is None
    generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == batch["input_ids"].shape[1] + 3


def test_empty_input_raises(images):
    """An empty prompt used to fail inside Qwen's attention (forward, 5.x generate) or with an IndexError (4.57)."""
    model, processor = build_tiny_vlm("mlp")
    empty = processor(text=[""], return_tensors="pt")
    assert empty["input_ids"].shape == (1, 0)
    message = (
        "The input is empty (0 tokens); pass a prompt of at least one token, e.g. built with "
        "processor.apply_chat_template(...) and the processor."
    )
    with pytest.raises(ValueError) as error:
        model(**empty)
    assert str(error.value) == message
    with pytest.raises(ValueError) as error:
        model.generate(**empty, max_new_tokens=3)
    assert str(error.value) == message


def test_input_longer_than_max_position_embeddings_raises(images):
    """Such inputs used to run on, past the positions the language model was trained for."""
    model, processor = build_tiny_vlm("mlp", text_config={"max_position_embeddings": 64})
    too_long = processor(images=images[:1], text=["<image>" + " red" * 60], return_tensors="pt")
    length = too_long["input_ids"].shape[1]
    assert length > 64
    with pytest.raises(ValueError) as error:
        model(**too_long)
    assert str(error.value) == (
        f"The input is {length} tokens long but the language model handles at most 64 "
        "(text_config.max_position_embeddings); shorten the text or pass fewer images (each takes 16 tokens)."
    )

    prompt = caption_batch(processor, images[:1])
    prompt_length = prompt["input_ids"].shape[1]
    with torch.no_grad():
        cache = getattr(model(**prompt, use_cache=True), CACHE_NAME)
        with pytest.raises(ValueError) as error:
            model(input_ids=torch.full((1, 65 - prompt_length), 100), cache=cache)
        assert str(error.value).startswith(
            f"The input is 65 tokens long ({prompt_length} cached + {65 - prompt_length} new) but the language model "
            "handles at most 64 (text_config.max_position_embeddings)"
        )
        last_step = model(input_ids=torch.full((1, 64 - prompt_length), 100), cache=cache)
    assert last_step.logits.shape[1] == 64 - prompt_length and cache.get_seq_length() == 64


def test_generation_past_max_position_embeddings_is_refused_before_it_starts(images):
    model, processor = build_tiny_vlm("mlp", text_config={"max_position_embeddings": 64})
    batch = caption_batch(processor, images[:1])
    prompt_length = batch["input_ids"].shape[1]
    room = 64 - prompt_length
    with pytest.raises(ValueError) as error:
        model.generate(**batch, max_new_tokens=room + 1, do_sample=False)
    assert str(error.value) == (
        f"Generation could reach 65 tokens (a {prompt_length}-token prompt and up to {room + 1} new tokens) but the "
        "language model handles at most 64 (text_config.max_position_embeddings); "
        f"set max_new_tokens to at most {room}."
    )
    generated = model.generate(**batch, max_new_tokens=room, min_new_tokens=room, do_sample=False)
    assert generated.shape == (1, 64)


def bias_towards_image_token(model: VLMForConditionalGeneration) -> None:
    """Adds 100 to the image token's logit everywhere, so that it is the argmax and near-certain when sampling."""
    bias = torch.zeros(model.config.text_config.vocab_size)
    bias[model.config.image_token_id] = 100.0
    model.get_output_embeddings().register_forward_hook(lambda module, args, output: output + bias)


def assert_image_token_is_never_generated(model: VLMForConditionalGeneration, batch) -> None:
    prompt_length = batch["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(**batch).logits[:, -1]
    assert (logits.argmax(dim=-1) == model.config.image_token_id).all()
    torch.manual_seed(0)
    for options in ({"do_sample": False}, {"do_sample": True}, {"do_sample": True, "top_k": 0}, {"num_beams": 2}):
        generated = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, **options)
        assert generated.shape[1] == prompt_length + 6
        assert model.config.image_token_id not in generated[:, prompt_length:].flatten().tolist(), options


def test_image_token_is_never_generated(tmp_path, images):
    """Without `suppress_tokens` the image token would be generated, and the next step would fail for lack of pixels."""
    model, processor = build_tiny_vlm("qformer")
    assert model.generation_config.suppress_tokens == [model.config.image_token_id]
    assert VLMForConditionalGeneration(model.config).generation_config.suppress_tokens == [model.config.image_token_id]
    batch = caption_batch(processor, images[:2])
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved["suppress_tokens"] == [model.config.image_token_id]

    bias_towards_image_token(model)
    assert_image_token_is_never_generated(model, batch)
    auto_classes = ["AutoModelForImageTextToText"] + (["AutoModelForVision2Seq"] if IS_TRANSFORMERS_4 else [])
    for auto_class in auto_classes:
        reloaded = getattr(transformers, auto_class).from_pretrained(tmp_path, trust_remote_code=True)
        bias_towards_image_token(reloaded)
        assert_image_token_is_never_generated(reloaded, batch)

    # A model saved before the token was suppressed gets it suppressed when it is loaded.
    (tmp_path / "generation_config.json").write_text(json.dumps({**saved, "suppress_tokens": None}))
    reloaded = getattr(transformers, auto_classes[0]).from_pretrained(tmp_path, trust_remote_code=True)
    assert reloaded.generation_config.suppress_tokens == [model.config.image_token_id]


@pytest.mark.parametrize("projector_type", PROJECTOR_TYPES)
def test_overfits_two_image_caption_pairs(projector_type, images):
    torch.manual_seed(0)
    model, processor = build_tiny_vlm(projector_type)
    model.train()
    batch = caption_batch(processor, images[:2], answers=["a red square.", "a blue sky."])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], f"loss went from {losses[0]:.3f} to {losses[-1]:.3f}"


@pytest.mark.parametrize("projector_type", PROJECTOR_TYPES)
def test_generation_with_cache_equals_without_cache(projector_type, images):
    model, processor = build_tiny_vlm(projector_type)
    batch = caption_batch(processor, images[:1])
    with_cache = model.generate(**batch, max_new_tokens=8, do_sample=False, use_cache=True)
    without_cache = model.generate(**batch, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without_cache)


@pytest.mark.parametrize("projector_type", PROJECTOR_TYPES)
def test_batched_left_padded_generation_equals_one_by_one(projector_type, images):
    model, processor = build_tiny_vlm(projector_type)
    texts = [
        processor.apply_chat_template(caption_messages(), add_generation_prompt=True),
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour dominates this picture?"}]}],
            add_generation_prompt=True,
        ),
    ]
    batch = processor(images=images[:2], text=texts, return_tensors="pt")
    assert processor.tokenizer.padding_side == "left" and (batch["attention_mask"][:, 0] == 0).any()
    batched = model.generate(**batch, max_new_tokens=8, do_sample=False)
    prompt_len = batch["input_ids"].shape[1]
    for index, (image, text) in enumerate(zip(images, texts)):
        single = processor(images=[image], text=[text], return_tensors="pt")
        alone = model.generate(**single, max_new_tokens=8, do_sample=False)
        assert batched[index, prompt_len:].tolist() == alone[0, single["input_ids"].shape[1] :].tolist()


def test_beam_search_and_sampling(images):
    model, processor = build_tiny_vlm("qformer")
    batch = caption_batch(processor, images[:2])
    beams = model.generate(**batch, max_new_tokens=5, num_beams=3, do_sample=False)
    assert beams.shape[0] == 2
    torch.manual_seed(1)
    first = model.generate(**batch, max_new_tokens=5, do_sample=True, top_k=20)
    torch.manual_seed(1)
    second = model.generate(**batch, max_new_tokens=5, do_sample=True, top_k=20)
    assert torch.equal(first, second)


@pytest.mark.parametrize("projector_type", ["mlp", "qformer", "perceiver"])
def test_gradient_checkpointing_gives_the_same_gradients(projector_type, images):
    model, processor = build_tiny_vlm(projector_type)
    model.train()
    batch = caption_batch(processor, images[:2], answers=["red.", "blue."])

    def projector_grads():
        model.zero_grad()
        model(**batch).loss.backward()
        return [p.grad.clone() for p in model.multi_modal_projector.parameters()]

    reference = projector_grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.language_model.is_gradient_checkpointing and model.vision_tower.is_gradient_checkpointing
    for expected, actual in zip(reference, projector_grads()):
        torch.testing.assert_close(actual, expected)


def test_attention_implementation_and_dtype_pass_through_to_the_towers(images):
    _, processor = build_tiny_vlm("mlp")
    eager, _ = build_tiny_vlm("mlp", attn_implementation="eager")
    sdpa, _ = build_tiny_vlm("mlp", attn_implementation="sdpa")
    for model, implementation in ((eager, "eager"), (sdpa, "sdpa")):
        assert model.vision_tower.config._attn_implementation == implementation
        assert model.language_model.config._attn_implementation == implementation
    batch = caption_batch(processor, images[:2])
    with torch.no_grad():
        torch.testing.assert_close(sdpa(**batch).logits, eager(**batch).logits, rtol=1e-4, atol=1e-5)
        sdpa.to(torch.bfloat16)
        bf16_logits = sdpa(**batch).logits
    assert bf16_logits.dtype == torch.bfloat16 and torch.isfinite(bf16_logits.float()).all()
    assert sdpa.vision_tower.dtype == sdpa.language_model.dtype == torch.bfloat16


def test_qformer_layout_follows_blip2_and_bert():
    model, _ = build_tiny_vlm("qformer", qformer_num_layers=4, qformer_cross_attention_frequency=2)
    layers = model.multi_modal_projector.qformer.encoder.layer
    assert [layer.has_cross_attention for layer in layers] == [True, False, True, False]
    names = {name for name, _ in model.multi_modal_projector.named_parameters()}
    # BERT's self-attention / FFN parameter names, as in transformers' BLIP-2 Q-Former.
    assert "qformer.encoder.layer.1.attention.attention.query.weight" in names
    assert "qformer.encoder.layer.1.intermediate_query.dense.weight" in names
    assert "qformer.encoder.layer.0.crossattention.attention.key.weight" in names
    assert "qformer.encoder.layer.1.crossattention.attention.key.weight" not in names
    vision_dim = model.config.vision_config.hidden_size
    assert layers[0].intermediate_query.dense.out_features == 4 * vision_dim
    assert model.multi_modal_projector.query_tokens.shape == (1, 8, vision_dim)


def test_projector_attentions_are_distributions_over_the_patches(images):
    for projector_type, num_layers in (("qformer", 1), ("perceiver", 2)):
        model, processor = build_tiny_vlm(projector_type)
        batch = caption_batch(processor, images[:2])
        with torch.no_grad():
            attentions = model(**batch, output_attentions=True).projector_attentions
        num_patches = model.config.num_patches
        num_keys = num_patches + (8 if projector_type == "perceiver" else 0)
        assert len(attentions) == num_layers
        for attention in attentions:
            assert attention.shape == (2, 2, 8, num_keys)
            torch.testing.assert_close(attention.sum(-1), torch.ones(2, 2, 8))


def test_real_size_projectors_match_seed_000():
    """Parameter counts of the projectors between SigLIP-base (768) and Qwen2.5-0.5B (896), built from configs only."""
    vision, text = 768, 896
    config = VLMConfig()
    assert (config.num_patches, VLMConfig(projector_type="qformer").num_image_tokens) == (196, 32)
    assert VLMConfig(projector_type="perceiver").num_image_tokens == 64
    counts = {
        projector_type: sum(p.numel() for p in PROJECTOR_CLASSES[projector_type](VLMConfig(projector_type=projector_type)).parameters())
        for projector_type in PROJECTOR_CLASSES
    }
    assert counts["linear"] == vision * text + text
    assert counts["mlp"] == vision * text + text + text * text + text
    bert_layer = 4 * (vision * vision + vision) + 2 * vision + 2 * vision * 4 * vision + 5 * vision + 2 * vision
    cross_layer = 4 * (vision * vision + vision) + 2 * vision
    qformer = 32 * vision + 2 * vision + 12 * bert_layer + 6 * cross_layer + vision * text + text
    assert counts["qformer"] == qformer
    perceiver_layer = 3 * 2 * vision + 4 * vision * vision + 2 * vision * 4 * vision + 5 * vision
    assert counts["perceiver"] == 64 * vision + 2 * perceiver_layer + 2 * vision + vision * text + text


def test_from_pretrained_backbones_with_local_directories(tmp_path, images, monkeypatch):
    """
    The real-recipe builder, on local tiny checkpoints: towers keep their weights, the image token is added and never
    generated, and the image processor is the PIL one whether or not torchvision is installed.
    """
    image_processor_requests, original_from_pretrained = [], transformers.AutoImageProcessor.from_pretrained

    def load_image_processor(*args, **kwargs):
        image_processor_requests.append(kwargs)
        return original_from_pretrained(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoImageProcessor, "from_pretrained", load_image_processor)
    tiny, tiny_processor = build_tiny_vlm("mlp", seed=3)
    tiny.vision_tower.save_pretrained(tmp_path / "vision")
    tiny_processor.image_processor.save_pretrained(tmp_path / "vision")
    tiny.language_model.save_pretrained(tmp_path / "text")
    tokenizer = tiny_processor.tokenizer
    tokenizer.save_pretrained(tmp_path / "text")

    model, processor = VLMForConditionalGeneration.from_pretrained_backbones(
        vision=tmp_path / "vision", text=tmp_path / "text", projector_type="perceiver", image_token="<img>", perceiver_num_heads=2
    )
    assert processor.image_token == "<img>" and processor.num_image_tokens == model.config.num_image_tokens == 64
    assert image_processor_requests == [{"use_fast": False} if IS_TRANSFORMERS_4 else {"backend": "pil"}]
    assert type(processor.image_processor).__name__ == type(tiny_processor.image_processor).__name__
    assert model.generation_config.suppress_tokens == [model.config.image_token_id]
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<img>") == len(tokenizer)
    assert model.get_input_embeddings().num_embeddings >= len(processor.tokenizer)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    for name, tensor in tiny.vision_tower.state_dict().items():
        assert torch.equal(model.vision_tower.state_dict()[name], tensor), name
    torch.testing.assert_close(
        model.language_model.model.layers[0].self_attn.q_proj.weight, tiny.language_model.model.layers[0].self_attn.q_proj.weight
    )
    assert all(p.device.type == "cpu" for p in model.parameters())
    prompt = processor.apply_chat_template(caption_messages(), add_generation_prompt=True)
    assert "<img>" in prompt
    batch = processor(images=images[:1], text=[prompt], return_tensors="pt")
    tiny_pixels = tiny_processor(images=images[:1], text=["<image>"], return_tensors="pt")["pixel_values"]
    assert torch.equal(batch["pixel_values"], tiny_pixels)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def saved_with_edited_config(tmp_path, edit, projector_type="mlp", **tiny_settings):
    """A tiny model saved to `tmp_path`, its config.json then changed by `edit`."""
    model, _ = build_tiny_vlm(projector_type, **tiny_settings)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    edit(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(
    ("saved", "edited", "module", "fields"),
    [
        ({"projector_type": "mlp"}, {"projector_type": "linear"}, "multi_modal_projector", "projector_type"),
        ({"projector_type": "perceiver"}, {"perceiver_num_layers": 3}, "multi_modal_projector", "projector_type"),
        ({"projector_type": "perceiver", "fusion": "cross_attention", "cross_attention_layers": [1]},
         {"cross_attention_layers": None}, "cross_attention_blocks",
         "fusion, cross_attention_every and cross_attention_layers"),
    ],
)  # fmt: skip
def test_a_config_that_does_not_match_its_weights_is_refused_naming_module_and_field(
    tmp_path, saved, edited, module, fields
):
    directory = saved_with_edited_config(tmp_path, lambda config: config.update(edited), **saved)
    with pytest.raises(ValueError, match=rf"parameters of {module} are missing .* made by the config's {fields}"):
        VLMForConditionalGeneration.from_pretrained(directory)
    with pytest.raises(ValueError, match=rf"parameters of {module} are missing"):
        transformers.AutoModelForImageTextToText.from_pretrained(directory, trust_remote_code=True)


@pytest.mark.parametrize("field", ["projector_type", "fusion", "vision_config", "text_config", "image_token_id"])
def test_a_saved_config_without_a_required_field_is_refused_naming_it(tmp_path, field):
    directory = saved_with_edited_config(tmp_path, lambda config: config.pop(field))
    with pytest.raises(ValueError, match=rf"^The VLM config lacks {field}: a config saved with the model holds"):
        VLMForConditionalGeneration.from_pretrained(directory)
    with pytest.raises(ValueError, match=rf"^The VLM config lacks {field}"):
        transformers.AutoConfig.from_pretrained(directory, trust_remote_code=True)


def test_a_matching_saved_model_loads_with_its_loading_info_on_request(tmp_path):
    directory = saved_with_edited_config(tmp_path, lambda config: None, projector_type="qformer")
    model, info = VLMForConditionalGeneration.from_pretrained(directory, output_loading_info=True)
    assert isinstance(model, VLMForConditionalGeneration) and not info["missing_keys"]


@pytest.mark.parametrize(("strategy", "num_tokens"), [("default", 16), ("full", 17)])
@pytest.mark.parametrize("layer", [-1, -2])
def test_a_clip_tower_feeds_its_patches_with_or_without_its_class_token(images, strategy, num_tokens, layer):
    """LLaVA-1.5's bridge: CLIP's layer -2, class token dropped ("default") or kept ("full"); 32 px, 8 px patches."""
    model, processor = build_tiny_vlm(
        "mlp", vision_config=TINY_CLIP_VISION_CONFIG, vision_feature_layer=layer, vision_feature_select_strategy=strategy
    )
    assert type(model.vision_tower).__name__ == "CLIPVisionModel"
    assert model.config.num_patches == model.config.num_image_tokens == processor.num_image_tokens == num_tokens
    pixel_values = processor.image_processor(images[:2], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        features = model.get_vision_features(pixel_values)
        outputs = model.vision_tower(pixel_values=pixel_values, output_hidden_states=True)
    layer_tokens = outputs.last_hidden_state if layer == -1 else outputs.hidden_states[layer]  # 1 class + 16 patches
    torch.testing.assert_close(features, layer_tokens[:, 17 - num_tokens :])
    inputs = caption_batch(processor, images[:2])
    with torch.no_grad():
        assert model(**inputs).logits.shape[:2] == inputs["input_ids"].shape


def test_an_unknown_feature_select_strategy_is_refused():
    with pytest.raises(ValueError, match=r"vision_feature_select_strategy='cls_patch' is invalid; choose 'default'"):
        VLMConfig(vision_feature_select_strategy="cls_patch")
    assert VLMConfig(vision_feature_select_strategy="full").num_patches == 196  # SigLIP has no class token to keep


def test_from_pretrained_backbones_builds_llavas_bridge_on_a_clip_dual_encoder(tmp_path, images):
    """LLaVA-1.5's recipe on a local tiny CLIP checkpoint (both towers, as openai/clip-* ships): its vision half."""
    clip_config = transformers.CLIPConfig(
        vision_config={k: v for k, v in TINY_CLIP_VISION_CONFIG.items() if k != "model_type"},
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=16,
    )
    torch.manual_seed(0)
    clip = transformers.CLIPModel(clip_config)
    clip.save_pretrained(tmp_path / "clip")
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "clip"
    )
    tiny, tiny_processor = build_tiny_vlm("mlp")
    tiny.language_model.save_pretrained(tmp_path / "text")
    tiny_processor.tokenizer.save_pretrained(tmp_path / "text")

    model, processor = VLMForConditionalGeneration.from_pretrained_backbones(
        vision=tmp_path / "clip", text=tmp_path / "text", projector_type="mlp", vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )  # fmt: skip
    assert type(model.vision_tower).__name__ == "CLIPVisionModel"
    assert processor.num_image_tokens == model.config.num_image_tokens == 16  # the class token dropped
    with torch.no_grad():  # the dual encoder's own vision weights: the same layer -2 tokens, less the class token
        expected = clip.vision_model(pixel_values=torch.zeros(1, 3, 32, 32), output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(model.get_vision_features(torch.zeros(1, 3, 32, 32)), expected[:, 1:])
    prompt = processor.apply_chat_template(caption_messages(), add_generation_prompt=True)
    batch = processor(images=images[:2], text=[prompt] * 2, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape[:2] == batch["input_ids"].shape
