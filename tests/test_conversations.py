"""Conversation data: both formats, the checks that name the sample, the loss on the answers only (token by token)."""

import json

import pytest
import torch
from datasets import Dataset
from PIL import Image

from data.conversations import (
    CONVERSATION_FEATURES,
    ConversationDataError,
    answer_marking_template,
    canonical_messages,
    encode_conversation,
    load_llava_conversations,
    load_messages_dataset,
)
from evaluation.captioning import caption_messages
from models.tiny import build_tiny_vlm
from processing_vlm import IGNORE_INDEX, make_chat_template


LLAVA_SAMPLE = {
    "id": "two-images",
    "image": ["red.png", "blue.png"],
    "conversations": [
        {"from": "human", "value": "<image>\nWhat is on the left?"},
        {"from": "gpt", "value": "a red circle."},
        {"from": "human", "value": "And here?\n<image>"},
        {"from": "gpt", "value": "a blue square."},
        {"from": "human", "value": "Which is larger?"},
        {"from": "gpt", "value": "the square"},
    ],
}
MESSAGES_SAMPLE = [  # as TRL's datasets store them: typed parts, `text` None on image parts
    {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "What is on the left?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "a red circle."}]},
    {"role": "user", "content": [{"type": "text", "text": "And here?"}, {"type": "image", "text": None}]},
    {"role": "assistant", "content": [{"type": "text", "text": "a blue square."}]},
    {"role": "user", "content": [{"type": "text", "text": "Which is larger?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "the square"}]},
]
ANSWERS = ["a red circle.", "a blue square.", "the square"]


@pytest.fixture(scope="module")
def processor():
    return build_tiny_vlm("mlp")[1]


@pytest.fixture
def image_files(tmp_path):
    Image.new("RGB", (40, 30), (220, 30, 30)).save(tmp_path / "red.png")
    Image.new("RGB", (30, 40), (30, 30, 220)).save(tmp_path / "blue.png")
    return tmp_path


def write_json(path, samples) -> str:
    path.write_text(json.dumps(samples))
    return str(path)


def encode(processor, dataset, row=0, **kwargs):
    template = answer_marking_template(processor)
    return encode_conversation(processor, dataset[row]["messages"], template, dataset[row]["id"], **kwargs)


def test_the_loss_is_on_each_answer_and_its_end_of_turn_only_token_by_token(processor, image_files):
    dataset = load_llava_conversations(write_json(image_files / "data.json", [LLAVA_SAMPLE]), image_root=image_files)
    input_ids, labels = encode(processor, dataset)

    # The tokens are those of inference: the plain template's text through the processor, images expanded.
    text = processor.apply_chat_template(dataset[0]["messages"])
    assert input_ids == processor(images=dataset[0]["images"], text=[text])["input_ids"][0]
    tokenizer, end_of_turn = processor.tokenizer, processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    runs, start = [], None  # the labelled stretches, in order
    for position, (token, label) in enumerate(zip(input_ids, labels)):
        assert label in (token, IGNORE_INDEX), f"position {position}: the label is neither the token nor -100"
        if label != IGNORE_INDEX and start is None:
            start = position
        if label == IGNORE_INDEX and start is not None:
            runs.append((start, position))
            start = None
    assert start is None or runs.append((start, len(labels))) is None
    assert [tokenizer.decode(input_ids[a:b]) for a, b in runs] == [answer + "<|im_end|>" for answer in ANSWERS]
    for a, b in runs:  # each run follows the assistant header and ends on the end-of-turn token
        assert input_ids[a - len(header) : a] == header and input_ids[b - 1] == end_of_turn
    placeholders = [p for p, token in enumerate(input_ids) if token == processor.image_token_id]
    assert len(placeholders) == 2 * processor.num_image_tokens
    assert all(labels[p] == IGNORE_INDEX for p in placeholders)
    assert sum(label != IGNORE_INDEX for label in labels) == sum(b - a for a, b in runs)


def test_with_tiles_the_tokens_are_those_of_inference_and_the_labels_the_answers(image_files):
    processor = build_tiny_vlm("mlp", max_tiles=4)[1]
    Image.new("RGB", (96, 40), (220, 30, 30)).save(image_files / "red.png")  # 2 x 1 tiles and the thumbnail
    Image.new("RGB", (64, 64), (30, 30, 220)).save(image_files / "blue.png")  # 2 x 2 and the thumbnail
    dataset = load_llava_conversations(write_json(image_files / "data.json", [LLAVA_SAMPLE]), image_root=image_files)
    images = dataset[0]["images"]
    inference = processor(images=images, text=[processor.apply_chat_template(dataset[0]["messages"])])
    input_ids, labels = encode(processor, dataset, num_tiles=[3, 5])
    assert input_ids == inference["input_ids"][0]
    assert sum(token == processor.image_token_id for token in input_ids) == 8 * processor.num_image_tokens
    answers = processor.tokenizer.decode([label for label in labels if label != IGNORE_INDEX])
    assert answers == "".join(answer + "<|im_end|>" for answer in ANSWERS)


def test_both_formats_give_the_same_rows_tokens_and_labels(processor, image_files, tmp_path):
    llava = load_llava_conversations(write_json(image_files / "data.json", [LLAVA_SAMPLE]), image_root=image_files)
    images = [Image.open(image_files / "red.png"), Image.open(image_files / "blue.png")]
    messages_dir = tmp_path / "messages"
    messages_dir.mkdir()
    dataset = Dataset.from_list([{"id": "two-images", "messages": MESSAGES_SAMPLE, "images": images}])
    dataset.to_parquet(str(messages_dir / "train.parquet"))
    messages = load_messages_dataset(str(messages_dir), split="train")

    assert llava.features == messages.features == CONVERSATION_FEATURES
    assert llava[0]["messages"] == messages[0]["messages"]
    assert [image.tobytes() for image in llava[0]["images"]] == [image.tobytes() for image in messages[0]["images"]]
    assert encode(processor, llava) == encode(processor, messages)


def test_string_contents_are_text_parts():
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    typed = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in plain]
    assert canonical_messages("s", plain) == canonical_messages("s", typed) == [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
    ]
    with pytest.raises(ConversationDataError, match="Sample 's': a content part must be"):
        canonical_messages("s", [{"role": "user", "content": [{"type": "video"}]}])


def test_a_caption_chat_gets_the_caption_collators_tokens_and_labels(processor):
    messages = caption_messages(caption="a big red circle on the left.")
    text = processor.apply_chat_template(messages)
    batch = processor(images=[Image.new("RGB", (8, 8))], text=[text], return_tensors="pt")
    expected_labels = processor.build_labels(batch["input_ids"])[0].tolist()
    template = answer_marking_template(processor)
    input_ids, labels = encode_conversation(processor, messages, template, "caption")
    assert (input_ids, labels) == (batch["input_ids"][0].tolist(), expected_labels)


def test_the_marked_template_renders_the_same_text_as_the_plain_one(processor):
    marked = make_chat_template(processor.image_token, mark_answers=True)
    plain = processor.chat_template
    for generation_prompt in (False, True):
        messages = MESSAGES_SAMPLE[:4] if generation_prompt else MESSAGES_SAMPLE
        rendered = [
            processor.apply_chat_template(messages, chat_template=template, add_generation_prompt=generation_prompt)
            for template in (plain, marked)
        ]
        assert rendered[0] == rendered[1]


def test_a_text_only_conversation_trains_on_its_answer(processor, tmp_path):
    sample = {"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
    dataset = load_llava_conversations(write_json(tmp_path / "text.json", [sample]))
    input_ids, labels = encode(processor, dataset)
    assert dataset[0]["images"] == [] and processor.image_token_id not in input_ids
    assert processor.tokenizer.decode([t for t in labels if t != IGNORE_INDEX]) == "Hello.<|im_end|>"


def with_turns(*turns, image=None, sample_id="bad"):
    sample = {"id": sample_id, "conversations": [{"from": who, "value": what} for who, what in turns]}
    return sample if image is None else {**sample, "image": image}


@pytest.mark.parametrize(
    "sample, message",
    [
        (with_turns(("human", "Hi"), ("human", "Hello?"), ("gpt", "Yes.")), r"has the turns \['user', 'user'"),
        (with_turns(("human", "<image>\nWhat?"), ("gpt", "A."), ("human", "And?"), image="red.png"), "final assistant"),
        (with_turns(("gpt", "Hi"), ("human", "Hello")), "from a user turn"),
        (with_turns(("human", "<image><image>\nWhat?"), ("gpt", "A."), image="red.png"), "2 image markers but 1 "),
        (with_turns(("human", "What?"), ("gpt", "A."), image="red.png"), "0 image markers but 1 images"),
        (with_turns(("human", "<image>What?"), ("gpt", "A."), image="missing.png"), "missing.png does not exist"),
        ({"id": "bad", "conversations": [{"from": "robot", "value": "Hi"}]}, "every turn must be"),
    ],
    ids=["not-alternating", "no-final-answer", "answer-first", "too-many-markers", "no-marker", "missing-file", "role"],
)
def test_bad_conversations_are_refused_naming_the_sample(image_files, sample, message):
    path = write_json(image_files / "bad.json", [sample])
    with pytest.raises(ConversationDataError, match=message) as error:
        load_llava_conversations(path, image_root=image_files)
    assert "Sample 'bad'" in str(error.value)


def test_bad_samples_are_skipped_and_reported_when_asked(image_files):
    no_answer, valid = with_turns(("human", "Hi"), sample_id="no-answer"), with_turns(("human", "?"), ("gpt", "!"))
    samples = [no_answer, LLAVA_SAMPLE, valid]
    refused = []
    dataset = load_llava_conversations(
        write_json(image_files / "mixed.json", samples), image_root=image_files, on_invalid=refused.append
    )
    assert dataset["id"] == ["two-images", "bad"]
    assert [str(error) for error in refused] == [
        "Sample 'no-answer' has the turns ['user']; a conversation is an optional system turn, then user and "
        "assistant turns alternating, from a user turn to a final assistant answer."
    ]


def test_unknown_roles_and_stray_image_tokens_in_messages_are_refused(tmp_path):
    directory = tmp_path / "messages"
    directory.mkdir()
    bad = [{"role": "narrator", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    stray = [{"role": "user", "content": "<image> what?"}, {"role": "assistant", "content": "A."}]
    rows = Dataset.from_dict({"id": ["narrator", "stray"], "messages": [bad, stray]})
    rows.to_parquet(str(directory / "train.parquet"))
    refused = []
    assert len(load_messages_dataset(str(directory), on_invalid=refused.append)) == 0
    assert "Sample 'narrator' has unknown roles ['narrator']" in str(refused[0])
    assert "Sample 'stray' has '<image>' inside a text part" in str(refused[1])


def test_an_answer_cut_away_by_max_length_is_an_error(processor, image_files):
    dataset = load_llava_conversations(write_json(image_files / "data.json", [LLAVA_SAMPLE]), image_root=image_files)
    length = len(encode(processor, dataset)[0])
    assert len(encode(processor, dataset, max_length=length)[0]) == length
    expected = f"Sample 'two-images' has {length} tokens .* max_length {length - 1}"
    with pytest.raises(ConversationDataError, match=expected):
        encode(processor, dataset, max_length=length - 1)


def test_a_template_without_answer_markers_is_refused(processor):
    other = build_tiny_vlm("mlp")[1]
    other.chat_template = processor.chat_template.replace("You are Qwen", "You are a VLM")
    with pytest.raises(ConversationDataError, match=r"does not mark the assistant's answers with \{% generation %\}"):
        answer_marking_template(other)
    # Markers that enclose nothing: the sample is named.
    empty = make_chat_template(processor.image_token) + "{% generation %}{% endgeneration %}"
    with pytest.raises(ConversationDataError, match="Sample 'x': no token is marked as an answer"):
        encode_conversation(processor, caption_messages(caption="a circle."), empty, "x")


def test_labels_line_up_with_a_batch_of_the_collated_length(processor, image_files):
    """The labels index the same positions as the ids: a shifted loss over them is finite and uses the answers."""
    model = build_tiny_vlm("mlp")[0]
    dataset = load_llava_conversations(write_json(image_files / "data.json", [LLAVA_SAMPLE]), image_root=image_files)
    input_ids, labels = encode(processor, dataset)
    pixel_values = processor.image_processor(dataset[0]["images"], return_tensors="pt")["pixel_values"]
    loss = model(input_ids=torch.tensor([input_ids]), pixel_values=pixel_values, labels=torch.tensor([labels])).loss
    assert torch.isfinite(loss)
