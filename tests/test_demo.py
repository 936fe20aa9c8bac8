"""
The demo page's logic without a browser (tests/browser/ drives the page itself): loading models with messages,
each model's summary, streamed replies equal to evaluation's, multi-turn chats, the maps, and every bad input.
"""

import gradio as gr
import PIL.Image
import pytest
import torch

import app
from data.images import open_image
from demo import chat, models, page
from demo_models import example_captions, save_captioner
from evaluation.captioning import generate_replies
from evaluation.visualize import EMPTY_CAPTION


PROMPT = "Describe the image briefly."


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two tiny captioners of the example scenes, saved: early fusion (mlp) and cross-attention (perceiver)."""
    root = tmp_path_factory.mktemp("demo_models")
    return {
        "mlp": str(save_captioner(root / "mlp", "mlp")),
        "xattn": str(save_captioner(root / "perceiver_xattn", "perceiver", fusion="cross_attention")),
    }


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return page.write_examples(str(tmp_path_factory.mktemp("examples")))


@pytest.fixture(scope="module")
def page_models(saved):
    return page.load_page_models([saved["mlp"], saved["xattn"]], "cpu", torch.float32)


def test_the_summary_names_the_bridge_the_size_and_the_card_scores(page_models):
    mlp, xattn = page_models.models
    parameters = sum(parameter.numel() for parameter in mlp.model.parameters())
    assert mlp.summary.splitlines()[1].strip() == (
        f"mlp projector · early fusion · image tokens: 16 · {parameters:,} parameters, 1,234 trained"
    )
    assert "perceiver projector · cross_attention fusion · image tokens: 1" in xattn.summary
    assert mlp.summary.endswith("CIDEr 1.234")
    untrained = models.load_demo_model("tiny:linear")
    assert untrained.summary.endswith("no scores in a model card") and "trained" not in untrained.summary


@pytest.mark.parametrize("which", ["mlp", "xattn"])
def test_the_streamed_reply_is_what_evaluation_generates(saved, examples, which):
    demo_model = models.load_demo_model(saved[which])
    image = chat.open_image(examples[0])
    steps = list(chat.stream_reply(demo_model, image, [], PROMPT))
    text = demo_model.processor.apply_chat_template(chat.chat_messages([], PROMPT), add_generation_prompt=True)
    expected = generate_replies(demo_model.model, demo_model.processor, [image], [text], 1, chat.DEFAULT_MAX_NEW_TOKENS)
    assert steps[-1].text == expected[0] == example_captions()[0]
    assert len(steps) > 2 and all(
        later.text.startswith(earlier.text.strip()) for earlier, later in zip(steps, steps[1:])
    )
    tokens = demo_model.processor.tokenizer(expected[0] + "<|im_end|>")["input_ids"]
    assert steps[-1].tokens == len(tokens)  # the caption's tokens and the end of turn
    assert 0 < steps[-1].first_token_s <= steps[-1].seconds


def test_a_conversation_carries_the_image_once_and_every_earlier_turn(page_models, examples, tmp_path):
    messages = chat.chat_messages([("first?", "one."), ("second?", "two.")], "third?")
    assert [message["role"] for message in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"][0] == {"type": "image"}
    assert all({"type": "image"} not in message["content"] for message in messages[2::2])
    turns = {}
    for prompt in (PROMPT, "And the colour?"):
        *_, last = page.answer(page_models, str(tmp_path), examples[0], prompt, ["ignored"], turns)
    assert last[0].startswith("⚠️ No model ticked")
    names = [demo_model.name for demo_model in page_models.models]
    for prompt in (PROMPT, "And the colour?"):
        *_, last = page.answer(page_models, str(tmp_path), examples[0], prompt, names[:1], turns)
    assert [prompt for prompt, _ in turns[names[0]]] == [PROMPT, "And the colour?"]
    assert turns[names[0]][0][1] == example_captions()[0]
    assert last[2] == page.chat_history(turns[names[0]]) and len(last[2]) == 4
    assert names[1] not in turns and last[5] == gr.skip()


def test_every_answer_comes_with_its_latency_and_a_map(page_models, examples, tmp_path):
    names = [demo_model.name for demo_model in page_models.models]
    *_, last = page.answer(page_models, str(tmp_path), examples[1], PROMPT, names, {})
    assert last[0] == ""
    for slot in range(2):
        chat_value, stats, picture = last[2 + 3 * slot : 5 + 3 * slot]
        assert chat_value[-1] == {"role": "assistant", "content": example_captions()[1]}
        assert stats.startswith("first token ") and stats.endswith(" tokens/s")
        with open(picture, "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n"


def test_an_empty_reply_shows_as_empty_and_draws_no_map(tmp_path):
    demo_model = models.load_demo_model("tiny:mlp")  # untrained: it writes newlines only
    assert chat.save_reply_map(demo_model, None, PROMPT, "", str(tmp_path / "map.png")) is None
    assert page.chat_history([(PROMPT, "")]) == [
        {"role": "user", "content": PROMPT}, {"role": "assistant", "content": EMPTY_CAPTION}
    ]  # fmt: skip


def test_an_upload_is_read_as_training_and_evaluation_read_images(tmp_path):
    # A 16-bit grey PNG at mid-grey (Pillow's convert("RGB") would clip it to white) and a photo turned by its EXIF
    # orientation: the page shows and answers what `eval.py` would read.
    grey = tmp_path / "grey16.png"
    PIL.Image.new("I;16", (4, 4), 32768).save(grey)
    exif = PIL.Image.Exif()
    exif[PIL.Image.ExifTags.Base.Orientation] = 6  # rotated 90°: displayed as 3x6
    turned = tmp_path / "turned.jpg"
    PIL.Image.new("RGB", (6, 3), (200, 30, 30)).save(turned, exif=exif)
    assert chat.open_image(str(grey)).getpixel((0, 0)) == (128, 128, 128)
    assert chat.open_image(str(turned)).size == (3, 6)
    for path in (grey, turned):
        assert chat.open_image(str(path)).tobytes() == open_image(str(path)).tobytes()


@pytest.mark.parametrize(
    ("path", "prompt", "message"),
    [
        (None, PROMPT, "No image: upload one or pick an example first."),
        ("broken", PROMPT, "The uploaded file is not an image this page can read (UnidentifiedImageError)"),
        ("example", "   ", "Empty prompt: type a question or an instruction"),
    ],
)
def test_bad_input_gives_a_message_and_changes_nothing_else(page_models, examples, tmp_path, path, prompt, message):
    if path == "broken":
        path = tmp_path / "broken.png"
        path.write_bytes(b"not a picture at all")
    elif path == "example":
        path = examples[0]
    turns = {}
    outputs = list(page.answer(page_models, str(tmp_path), path and str(path), prompt, ["x"], turns))
    assert len(outputs) == 1 and outputs[0][0].startswith(f"⚠️ {message}")
    assert turns == {} and all(value == gr.skip() for value in outputs[0][1:])


def test_a_prompt_too_long_for_the_model_is_a_message_and_the_others_still_answer(page_models, examples, tmp_path):
    limit = page_models.models[0].model.config.text_config.max_position_embeddings
    prompt = "red " * limit
    names = [demo_model.name for demo_model in page_models.models]
    turns = {}
    *_, last = page.answer(page_models, str(tmp_path), examples[0], prompt, names, turns)
    assert last[0].startswith(f"⚠️ Too long for {names[0]}: the conversation takes ")
    assert f"reads at most {limit}, 64 of them kept for its answer" in last[0]
    assert turns == {names[0]: [], names[1]: []} and last[2] == []


def test_a_model_that_fails_leaves_the_others_answering(page_models, examples, tmp_path, monkeypatch):
    failing = page_models.models[0]
    monkeypatch.setattr(
        failing.model, "generate", lambda **kwargs: (_ for _ in ()).throw(RuntimeError("out of memory"))
    )
    names = [demo_model.name for demo_model in page_models.models]
    *_, last = page.answer(page_models, str(tmp_path), examples[0], PROMPT, names, {})
    assert last[0] == f"⚠️ {failing.name} could not answer: RuntimeError: out of memory"
    assert last[5][-1]["content"] == example_captions()[0]


def test_a_map_that_cannot_be_drawn_is_said_so_and_the_answer_stands(page_models, examples, tmp_path, monkeypatch):
    def fail(*args):
        raise MemoryError("no room for the gradients")

    monkeypatch.setattr(page, "save_reply_map", fail)
    name = page_models.models[0].name
    turns = {}
    *_, last = page.answer(page_models, str(tmp_path), examples[0], PROMPT, [name], turns)
    assert last[0] == f"⚠️ {name} answered, but its map could not be drawn: MemoryError: no room for the gradients"
    assert last[2][-1]["content"] == example_captions()[0] and last[4] is None
    assert turns == {name: [(PROMPT, example_captions()[0])]}


def test_models_that_do_not_load_are_messages(tmp_path, saved):
    (tmp_path / "empty").mkdir()
    names = ["tiny:transformer", str(tmp_path / "missing"), str(tmp_path / "empty"), saved["mlp"], saved["mlp"]]
    page_models = page.load_page_models(names, "cpu", torch.float32)
    assert [demo_model.name for demo_model in page_models.models] == [saved["mlp"]]
    unknown, missing, empty, again = page_models.errors
    assert unknown.startswith("Could not load 'tiny:transformer': unknown projector 'transformer'; choose one of")
    assert missing == (
        f"Could not load {str(tmp_path / 'missing')!r}: {tmp_path / 'missing'} does not exist; pass a saved model "
        "directory, a Hub id like user/name, or tiny:<projector>."
    )
    assert empty.startswith(f"Could not load {str(tmp_path / 'empty')!r}: ")
    assert again == f"{saved['mlp']!r} is already on the page."
    outputs = page.load_from_page(page_models, "  ", [])
    assert outputs[0].startswith("⚠️ Type a model path")
    outputs = page.load_from_page(page_models, "tiny:qformer", [saved["mlp"]])
    assert outputs[0] == "Loaded tiny:qformer." and outputs[1].value == [saved["mlp"], "tiny:qformer"]
    assert [update.visible for update in outputs[2::2]] == [True, True, False, False]


def test_the_page_holds_at_most_four_models(saved):
    page_models = page.load_page_models(
        ["tiny:linear", "tiny:mlp", "tiny:qformer", "tiny:perceiver"], "cpu", torch.float32
    )
    outputs = page.load_from_page(page_models, saved["mlp"], [])
    assert outputs[0] == f"⚠️ Not loading {saved['mlp']!r}: the page shows at most 4 models side by side."


def test_the_page_opens_on_the_named_models_the_last_demo_run_or_untrained_models(tmp_path, monkeypatch):
    monkeypatch.delenv(models.MODELS_VARIABLE, raising=False)
    assert models.default_model_names(str(tmp_path / "nothing")) == ["tiny:mlp", "tiny:perceiver"]
    for run in ("qformer", "mlp", "logs", "linear"):
        (tmp_path / run).mkdir()
    for run in ("qformer", "mlp", "linear"):
        (tmp_path / run / "config.json").write_text("{}")
    assert models.default_model_names(str(tmp_path), limit=2) == [str(tmp_path / "linear"), str(tmp_path / "mlp")]
    monkeypatch.setenv(models.MODELS_VARIABLE, " user/vlm-mlp, tiny:qformer ,")
    assert models.default_model_names(str(tmp_path)) == ["user/vlm-mlp", "tiny:qformer"]


def test_a_new_image_starts_a_new_conversation_and_an_unreadable_one_says_so(examples, tmp_path):
    preview, message, turns, *views = page.new_conversation(examples[0])
    assert preview.size == (64, 64) and message == "" and turns == {}
    assert views == [[], "", None] * page.MAX_MODEL_SLOTS
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    preview, message, *_ = page.new_conversation(str(broken))
    assert preview is None and message.startswith("⚠️ The uploaded file is not an image")


def test_the_page_builds_with_the_example_scenes(page_models, tmp_path):
    blocks = page.build_page(page_models, str(tmp_path))
    assert isinstance(blocks, gr.Blocks)
    assert sorted(path.name for path in tmp_path.glob("*.png")) == [f"shapes-test-0000{i}.png" for i in range(4)]


def test_the_command_line_refuses_a_reply_length_below_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        app.main(["--max_new_tokens", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith("error: --max_new_tokens must be at least 1, got 0.\n")
