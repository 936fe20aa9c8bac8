"""
Training with CogVLM's visual experts: `align` trains the projector and the experts with the language model and the
tower frozen, resumes bit-identically from lean checkpoints, and `lora` is refused.
"""

from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForImageTextToText

import train_accelerate
from models.tiny import build_tiny_vlm
from tiny_runs import CONFIGS, assert_trains_only, resumed_weights, tiny_args
from training import train
from training.model_setup import configure_trainable_parameters


TRAINED = ("multi_modal_projector.", "visual_experts.")


def test_align_trains_the_experts_keeps_the_language_model_and_resumes_bit_identically(tmp_path):
    args = tiny_args(
        tmp_path, fusion="visual_expert", max_train_samples=64, max_steps=8, save_steps=4, eval_strategy="epoch",
        eval_before_training=True, predict_with_generate=True, max_new_tokens=8, output_dir=str(tmp_path / "straight"),
    )  # fmt: skip
    results = train(args)
    assert (results.fusion, results.num_image_tokens, results.visual_expert_layers) == ("visual_expert", 16, [0, 1])
    assert results.history[-1]["loss"] < results.history[0]["loss"] and "CIDEr" in results.final_metrics

    initial = build_tiny_vlm("mlp", fusion="visual_expert")[0].state_dict()
    # The last layer's query, output and MLP experts only change image positions' outputs, which no loss reads.
    idle = tuple(f"visual_experts.experts.1.{name}." for name in ("q_proj", "o_proj", "mlp"))
    weights = assert_trains_only(Path(args.output_dir), initial, TRAINED, idle)

    for name, tensor in resumed_weights(args, 4, tmp_path / "resumed").items():
        assert torch.equal(tensor, weights[name]), f"{name} differs after resuming"

    model = AutoModelForImageTextToText.from_pretrained(args.output_dir, trust_remote_code=True)
    assert (model.config.fusion, sorted(model.visual_experts.experts)) == ("visual_expert", ["0", "1"])
    card = ModelCard.load(Path(args.output_dir) / "README.md")
    assert "fusion-visual_expert" in card.data.tags
    assert "**visual experts** (deep fusion, as in CogVLM)" in card.text


def test_lora_is_refused_and_the_comparison_names_the_expert_runs():
    with pytest.raises(ValueError, match="stage='lora' with fusion='visual_expert'"):
        configure_trainable_parameters(build_tiny_vlm("mlp", fusion="visual_expert")[0], "lora")
    (run,) = train_accelerate.comparison_runs("qformer_expert", [], str(CONFIGS / "tiny_shapes.yaml"))
    assert (run.projector_type, run.fusion, Path(run.output_dir).name) == ("qformer", "visual_expert", "qformer_expert")
