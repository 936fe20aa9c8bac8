"""`training.data`: captions are cut to `max_caption_tokens`; a prompt that cannot fit the language model is refused."""

import pytest

from data.captions import make_shapes_dataset
from models.tiny import build_tiny_vlm
from tiny_runs import tiny_args
from training import train
from training.data import CaptionCollator


def test_long_captions_are_cut_to_max_caption_tokens():
    processor = build_tiny_vlm("mlp")[1]
    caption = " ".join(["a big red circle on the left of a small blue square"] * 200)  # 2,200 words
    image = make_shapes_dataset(1)[0]["image"]
    batch = CaptionCollator(processor, max_caption_tokens=16)([{"image_id": "0", "caption": caption, "image": image}])
    labelled = batch["labels"][0][batch["labels"][0] != -100]
    assert len(labelled) == 16 + 1  # the caption's first 16 tokens, then the end of turn
    assert caption.startswith(processor.tokenizer.decode(labelled[:-1]))
    short = CaptionCollator(processor, max_caption_tokens=16).truncate("a red circle.")
    assert short == "a red circle."


def test_a_prompt_that_cannot_fit_the_language_model_is_refused(tmp_path):
    message = r"longest training sequence has \d+ tokens .* max_position_embeddings \(512\)"
    with pytest.raises(ValueError, match=message):
        train(tiny_args(tmp_path, prompt="Describe the image, " * 200, max_steps=1))


def test_an_evaluation_that_could_generate_past_the_language_model_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"Captioning the evaluation images could reach \d+ tokens .* \(512\)"):
        train(tiny_args(tmp_path, max_new_tokens=500, eval_strategy="epoch", max_steps=1))


def test_the_caption_evaluation_shows_its_progress(tmp_path, capfd):
    train(tiny_args(tmp_path, max_train_samples=8, max_eval_samples=4, max_steps=1, eval_strategy="epoch"))
    assert "captioning the evaluation images: 100%" in capfd.readouterr().err
