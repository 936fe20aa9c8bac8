"""
lmms-eval's generic chat model (`--model huggingface`, `lmms_eval/models/chat/huggingface.py` of lmms-eval 0.7.x)
replayed call by call on a saved model, as `--model_args pretrained=DIR,trust_remote_code=True` runs it. Left out:
`device_map` (it needs accelerate, which the transformers 4.57 environment lacks; on CPU it changes nothing) and moving
the batch to the device.
"""

import pytest
import torch
from model_checks import train_to_answer
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
)

from models.tiny import build_tiny_vlm


COCO_PROMPT = "Provide a one-sentence caption for the provided image."  # coco2017_cap_val's `doc_to_text`
COCO_GENERATION_KWARGS = {"max_new_tokens": 64, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False}


def user_turn(image, question: str) -> list[dict]:
    """What lmms-eval's `ChatMessages.to_hf_messages` makes of a task's image and `doc_to_text`."""
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


def load_like_lmms_eval(pretrained: str):
    """`Huggingface.__init__`: the model class is picked by `model_type`, which remote code never matches."""
    config = AutoConfig.from_pretrained(pretrained, trust_remote_code=True)
    if config.model_type in AutoModelForCausalLM._model_mapping.keys():
        model_cls = AutoModelForCausalLM
    elif config.model_type in AutoModelForImageTextToText._model_mapping.keys():
        model_cls = AutoModelForImageTextToText
    else:
        model_cls = AutoModel
    assert model_cls is AutoModel
    model = model_cls.from_pretrained(pretrained, trust_remote_code=True, torch_dtype="bfloat16").eval()
    processor = AutoProcessor.from_pretrained(pretrained, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(pretrained, trust_remote_code=True)
    return model, processor, tokenizer


def generate_until_like_lmms_eval(model, processor, tokenizer, docs, padding_side_kwarg: bool):
    """
    `Huggingface.generate_until` on one batch of `(image, question)` documents with coco2017_cap_val's generation
    kwargs. Releases after 0.7.2 also pass `padding_side` ("left" for batches) to the processor.
    """
    batched_messages = [user_turn(image, question) for image, question in docs]
    texts = [processor.apply_chat_template(msg, tokenize=False, add_generation_prompt=True) for msg in batched_messages]
    kwargs = {"images": [image for image, _ in docs], "videos": [], "audios": []}
    if padding_side_kwarg:
        kwargs["padding_side"] = "left" if len(docs) > 1 else "right"
    inputs = processor(text=texts, padding=True, return_tensors="pt", **kwargs)
    gen_kwargs = {**COCO_GENERATION_KWARGS, "temperature": None, "top_p": None}  # what temperature 0 becomes
    cont = model.generate(
        **inputs,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=gen_kwargs["do_sample"],
        temperature=gen_kwargs["temperature"],
        top_p=gen_kwargs["top_p"],
        num_beams=gen_kwargs["num_beams"],
        max_new_tokens=gen_kwargs["max_new_tokens"],
        use_cache=True,
    )
    generated_ids_trimmed = [out_ids[len(in_ids) :] for in_ids, out_ids in zip(inputs.input_ids, cont)]
    answers = processor.batch_decode(
        generated_ids_trimmed, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    return answers, inputs


@pytest.fixture(scope="module")
def docs_and_answers():
    red, blue = Image.new("RGB", (48, 40), (220, 30, 30)), Image.new("RGB", (32, 64), (20, 40, 230))
    question = "Which colour fills this picture, from its top to its bottom? Answer in a word."
    docs = [(red, COCO_PROMPT), (blue, question)]
    return docs, ["A red box.", "Blue, all of it."]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, docs_and_answers) -> str:
    """A tiny VLM trained until it gives the answers (a random one answers everything with newlines), saved."""
    docs, answers = docs_and_answers
    torch.manual_seed(0)
    model, processor = build_tiny_vlm("mlp")
    chats = [
        user_turn(image, question) + [{"role": "assistant", "content": answer}]
        for (image, question), answer in zip(docs, answers)
    ]
    images = [image for image, _ in docs]
    return train_to_answer(model, processor, images, chats, tmp_path_factory.mktemp("lmms-eval-model"))


@pytest.mark.parametrize("padding_side_kwarg", [False, True], ids=["0.7.2", "later"])
def test_lmms_eval_chat_model_gives_batched_captions_equal_to_one_by_one(
    saved_model, docs_and_answers, padding_side_kwarg
):
    docs, expected = docs_and_answers
    model, processor, tokenizer = load_like_lmms_eval(saved_model)
    assert model.dtype == torch.bfloat16
    answers, inputs = generate_until_like_lmms_eval(model, processor, tokenizer, docs, padding_side_kwarg)
    assert inputs["pixel_values"].shape[0] == 2
    lengths = inputs["attention_mask"].sum(dim=1)
    short = int(lengths.argmin())
    assert lengths[0] != lengths[1], "the prompts must differ in length for padding to show"
    assert inputs["attention_mask"][short, 0] == 0 and inputs["attention_mask"][1 - short].all(), "left padding"
    assert answers == expected
    for doc, answer in zip(docs, expected):
        assert generate_until_like_lmms_eval(model, processor, tokenizer, [doc], padding_side_kwarg)[0] == [answer]
