"""Helpers of the model tests that run under every transformers release (torch and the Hub files only)."""

import pytest
import torch
from torch import nn

from configuration_vlm import VLMConfig
from evaluation.captioning import caption_messages
from modeling_vlm import VLMForConditionalGeneration
from models.tiny import TINY_VISION_CONFIG


def prompt_batch(processor, images, texts=None) -> dict[str, torch.Tensor]:
    """`images` with `texts` (by default the captioning prompt, one per image), as the processor batches them."""
    texts = texts or [processor.apply_chat_template(caption_messages(), add_generation_prompt=True)] * len(images)
    return processor(images=images, text=texts, return_tensors="pt")


def labelled_caption_batch(processor, images, captions=("red.", "blue.")) -> dict[str, torch.Tensor]:
    """A training batch: `images` with `captions` (one each) in the chat, labels on the captions."""
    texts = [processor.apply_chat_template(caption_messages(caption=caption)) for caption in captions]
    batch = processor(images=images, text=texts, return_tensors="pt")
    batch["labels"] = processor.build_labels(batch["input_ids"])
    return batch


# Language models without Llama's decoder layout, which the deep fusions refuse.
GPT2_TEXT_CONFIG = {"model_type": "gpt2", "vocab_size": 1024, "n_embd": 64, "n_layer": 2, "n_head": 4}
BERT_DECODER_TEXT_CONFIG = {"model_type": "bert", "vocab_size": 1024, "hidden_size": 64, "num_hidden_layers": 2,
                            "num_attention_heads": 4, "intermediate_size": 128, "is_decoder": True}  # fmt: skip


def assert_language_models_refused(fusion: str, gpt2_message: str) -> None:
    """
    A VLM of `fusion` is refused on GPT-2 (whose layers lack Llama's attention modules) with `gpt2_message`, and on a
    BERT decoder (whose layers are not where a causal language model keeps them) with the message naming the layers.
    """
    bert_message = f"fusion='{fusion}' works on the decoder layers, but .* BertLMHeadModel"
    for text_config, message in ((GPT2_TEXT_CONFIG, gpt2_message), (BERT_DECODER_TEXT_CONFIG, bert_message)):
        config = VLMConfig(vision_config=TINY_VISION_CONFIG, text_config=text_config, fusion=fusion)
        with pytest.raises(ValueError, match=message):
            VLMForConditionalGeneration(config)


def assert_checkpointing_gives_the_same_gradients(
    model: nn.Module, batch: dict[str, torch.Tensor], module: nn.Module, without_gradient: tuple[str, ...] = ()
) -> None:
    """
    `model`'s loss on `batch` gives every parameter of `module` a gradient (but those named with a prefix in
    `without_gradient`, which get none), and the same gradients again with gradient checkpointing.
    """

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(**batch).loss.backward()
        return {name: parameter.grad.clone() for name, parameter in module.named_parameters()}

    model.train()
    reference = gradients()
    assert all((grad.abs().sum() > 0) != name.startswith(without_gradient) for name, grad in reference.items())
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for name, grad in gradients().items():
        torch.testing.assert_close(grad, reference[name], msg=name)


def assert_generation_is_consistent(model: nn.Module, processor, images) -> None:
    """
    Greedy generation with the KV cache equals generation without it (tokens and scores) on two `images`; a batch of
    an image prompt and a longer text-only one, left-padded, gives each row the tokens it gets alone; beam search runs.
    """
    batch = prompt_batch(processor, images[:2])
    kwargs = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "output_scores": True}
    with_cache = model.generate(**batch, use_cache=True, return_dict_in_generate=True, **kwargs)
    without_cache = model.generate(**batch, use_cache=False, return_dict_in_generate=True, **kwargs)
    assert torch.equal(with_cache.sequences, without_cache.sequences)
    for cached, recomputed in zip(with_cache.scores, without_cache.scores):
        torch.testing.assert_close(cached, recomputed)

    texts = [
        processor.apply_chat_template(caption_messages(), add_generation_prompt=True),
        processor.apply_chat_template(
            [{"role": "user", "content": "No picture here, a longer text."}], add_generation_prompt=True
        ),  # fmt: skip
    ]
    per_text = [[images[0]], []]
    mixed = processor(images=per_text, text=texts, return_tensors="pt")
    assert (mixed["attention_mask"][:, 0] == 0).any()
    batched = model.generate(**mixed, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    for index, (row_images, text) in enumerate(zip(per_text, texts)):
        single = processor(images=row_images or None, text=[text], return_tensors="pt")
        alone = model.generate(**single, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        new_tokens = alone[0, single["input_ids"].shape[1] :].tolist()
        assert batched[index, mixed["input_ids"].shape[1] :].tolist() == new_tokens, index

    beams = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, num_beams=3, do_sample=False)
    assert beams.shape == (2, batch["input_ids"].shape[1] + 5)


def train_to_answer(model: nn.Module, processor, images, chats: list[list[dict]], directory, steps: int = 80) -> str:
    """
    `model` trained on `chats` (each a chat with its answers, for its image of `images`; loss on the answers) with
    AdamW at 3e-3 for `steps` steps, enough for a tiny model's greedy decoding to give the answers back (a random one
    writes newlines), then saved with `processor` in `directory`, whose path it returns.
    """
    texts = [processor.apply_chat_template(chat) for chat in chats]
    batch = processor(images=list(images), text=texts, return_tensors="pt")
    batch["labels"] = processor.build_labels(batch["input_ids"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)
