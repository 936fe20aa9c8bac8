"""
Training with tokenized early fusion: `align` trains the code embeddings only, on the VQ tokenizer's codes from the
feature cache, and resumes bit-identically; the tokenizer cannot be unfrozen; the comparison names the run.
"""

from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

import train_accelerate
from models.tiny import build_tiny_vlm
from tiny_runs import CONFIGS, assert_trains_only, resumed_weights, tiny_args
from training import train
from training.model_setup import configure_trainable_parameters


def test_align_trains_the_code_embeddings_on_cached_codes_and_resumes_bit_identically(tmp_path):
    args = tiny_args(
        tmp_path, fusion="tokenized", max_train_samples=64, max_steps=8, save_steps=4, eval_strategy="epoch",
        eval_before_training=True, predict_with_generate=True, max_new_tokens=8, output_dir=str(tmp_path / "straight"),
    )  # fmt: skip
    results = train(args)
    assert (results.projector_type, results.fusion, results.num_image_tokens) == ("codebook", "tokenized", 16)
    assert results.feature_cache["train"] == "computed"
    assert results.history[-1]["loss"] < results.history[0]["loss"] and "CIDEr" in results.final_metrics
    cached = [load_file(path)["features"] for path in (tmp_path / "feature_cache").glob("*.safetensors")]
    assert {(features.dtype, features.shape[1:]) for features in cached} == {(torch.long, (16,))}  # codes, per image

    initial = build_tiny_vlm("codebook", fusion="tokenized")[0].state_dict()
    weights = assert_trains_only(Path(args.output_dir), initial, ("multi_modal_projector.",))
    for name, tensor in resumed_weights(args, 4, tmp_path / "resumed").items():
        assert torch.equal(tensor, weights[name]), f"{name} differs after resuming"

    model = AutoModelForImageTextToText.from_pretrained(args.output_dir, trust_remote_code=True)
    assert (model.config.fusion, type(model.vision_tower).__name__) == ("tokenized", "ChameleonVQVAE")
    card = ModelCard.load(Path(args.output_dir) / "README.md")
    assert "fusion-tokenized" in card.data.tags and "**VQ image tokenizer** (tokenized early fusion" in card.text


def test_the_tokenizer_stays_frozen_and_the_comparison_names_the_run():
    with pytest.raises(ValueError, match="unfreeze_vision with fusion='tokenized': the VQ tokenizer's codes are"):
        configure_trainable_parameters(build_tiny_vlm("codebook", fusion="tokenized")[0], "align", unfreeze_vision=True)
    (run,) = train_accelerate.comparison_runs("tokenized", [], str(CONFIGS / "tiny_shapes.yaml"))
    assert (run.projector_type, run.fusion, Path(run.output_dir).name) == ("codebook", "tokenized", "tokenized")
