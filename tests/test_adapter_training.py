"""
Training with LLaMA-Adapter V2's gated adaption prompts: `align` trains the projector and the prompts with the language
model and the tower frozen and resumes bit-identically from lean checkpoints; `lora` trains each layer's prompt whole
beside the adapters; the comparison names the adapter runs.
"""

from pathlib import Path

import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForImageTextToText

import train_accelerate
from models.tiny import build_tiny_vlm
from tiny_runs import CONFIGS, assert_trains_only, resumed_weights, saved_weights, tiny_args
from training import train


TRAINED = ("multi_modal_projector.", "adaption_prompts.")


def test_align_opens_the_gates_keeps_the_language_model_and_resumes_bit_identically(tmp_path):
    args = tiny_args(
        tmp_path, fusion="adapter", max_train_samples=64, max_steps=8, save_steps=4, eval_strategy="epoch",
        eval_before_training=True, predict_with_generate=True, max_new_tokens=8, output_dir=str(tmp_path / "straight"),
    )  # fmt: skip
    results = train(args)
    assert (results.fusion, results.num_image_tokens, results.num_visual_tokens) == ("adapter", 1, 16)
    assert results.adapter_layers == [0, 1]
    assert results.history[-1]["loss"] < results.history[0]["loss"] and "CIDEr" in results.final_metrics

    initial = build_tiny_vlm("mlp", fusion="adapter")[0].state_dict()
    weights = assert_trains_only(Path(args.output_dir), initial, TRAINED)
    assert all(tensor.abs().min() > 1e-4 for name, tensor in weights.items() if name.endswith(".gate")), "gates at 0"

    for name, tensor in resumed_weights(args, 4, tmp_path / "resumed").items():
        assert torch.equal(tensor, weights[name]), f"{name} differs after resuming"

    model = AutoModelForImageTextToText.from_pretrained(args.output_dir, trust_remote_code=True)
    assert (model.config.fusion, sorted(model.adaption_prompts.layers)) == ("adapter", ["0", "1"])
    card = ModelCard.load(Path(args.output_dir) / "README.md")
    assert "fusion-adapter" in card.data.tags
    assert "**gated adaption prompts** (deep fusion, as in\nLLaMA-Adapter V2)" in card.text


def test_lora_trains_the_prompts_whole_beside_the_adapters_and_the_comparison_names_the_runs(tmp_path):
    args = tiny_args(
        tmp_path, fusion="adapter", stage="lora", learning_rate=1e-2, lora_dropout=0.0, max_steps=4, save_steps=4
    )
    train(args)
    checkpoint = saved_weights(Path(args.output_dir) / "checkpoint-4")
    assert {"adaption_prompts.layers.0.modules_to_save.default.gate",
            "adaption_prompts.layers.1.modules_to_save.default.prompt"} <= {name.removeprefix("base_model.model.")
                                                                            for name in checkpoint}  # fmt: skip
    assert all("lora_" in name or ".modules_to_save." in name for name in checkpoint)
    merged = AutoModelForImageTextToText.from_pretrained(args.output_dir, trust_remote_code=True)
    assert all(prompt.gate.abs().min() > 1e-4 for prompt in merged.adaption_prompts.layers.values())

    (run,) = train_accelerate.comparison_runs("qformer_adapter", [], str(CONFIGS / "tiny_shapes.yaml"))
    assert (run.projector_type, run.fusion, Path(run.output_dir).name) == ("qformer", "adapter", "qformer_adapter")
