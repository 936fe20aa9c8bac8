"""
Training with cross-attention fusion: `align` trains the projector and the gated blocks with the language model frozen,
resumes bit-identically from lean checkpoints, `lora` trains the blocks whole beside the adapters, and the comparison
runs early and deep fusion side by side.
"""

import json
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from peft import PeftModel
from transformers import AutoModelForImageTextToText

import train_accelerate
from models.tiny import build_tiny_vlm
from tiny_runs import CONFIGS, assert_trains_only, caption_inputs, resumed_weights, saved_weights, tiny_args
from training import ALL_RUNS, train


TRAINED = ("multi_modal_projector.", "cross_attention_blocks.")


def test_align_opens_the_gates_lowers_the_loss_and_keeps_the_language_model_frozen(tmp_path):
    args = tiny_args(
        tmp_path, projector_type="perceiver", fusion="cross_attention", max_train_samples=64, max_steps=8,
        save_steps=4, eval_strategy="epoch", eval_before_training=True, predict_with_generate=True, max_new_tokens=8,
        output_dir=str(tmp_path / "straight"),
    )  # fmt: skip
    results = train(args)
    assert (results.fusion, results.num_image_tokens, results.num_visual_tokens) == ("cross_attention", 1, 8)
    assert results.cross_attention_layers == [0, 1]
    assert results.history[-1]["loss"] < results.history[0]["loss"]
    assert "CIDEr" in results.final_metrics

    initial = build_tiny_vlm("perceiver", fusion="cross_attention")[0].state_dict()
    weights = assert_trains_only(Path(args.output_dir), initial, TRAINED)
    assert all(tensor.abs().item() > 1e-4 for name, tensor in weights.items() if name.endswith("_gate")), "gates at 0"

    for name, tensor in resumed_weights(args, 4, tmp_path / "resumed").items():
        assert torch.equal(tensor, weights[name]), f"{name} differs after resuming"

    model = AutoModelForImageTextToText.from_pretrained(args.output_dir, trust_remote_code=True)
    assert (model.config.fusion, sorted(model.cross_attention_blocks)) == ("cross_attention", ["0", "1"])
    card = ModelCard.load(Path(args.output_dir) / "README.md")
    assert "fusion-cross_attention" in card.data.tags
    assert "**gated cross-attention** (deep fusion" in card.text and "before decoder layers 0, 1" in card.text


def test_lora_trains_the_blocks_whole_beside_the_adapters(tmp_path):
    args = tiny_args(
        tmp_path, projector_type="mlp", fusion="cross_attention", stage="lora", learning_rate=1e-2,
        lora_dropout=0.0, max_steps=4, save_steps=4,
    )  # fmt: skip
    train(args)
    output_dir = Path(args.output_dir)
    checkpoint = saved_weights(output_dir / "checkpoint-4")
    assert any("cross_attention_blocks.1.modules_to_save" in name and "attention_gate" in name for name in checkpoint)
    assert all("lora_" in name or ".modules_to_save." in name for name in checkpoint)

    merged = AutoModelForImageTextToText.from_pretrained(output_dir, trust_remote_code=True).eval()
    base = build_tiny_vlm("mlp", seed=0, fusion="cross_attention")[0]
    assert all(block.attention_gate.item() != 0 for block in merged.cross_attention_blocks.values())
    with_peft = PeftModel.from_pretrained(base, output_dir / "adapter").eval()
    inputs = caption_inputs(build_tiny_vlm("mlp", fusion="cross_attention")[1])
    with torch.no_grad():
        expected = merged(**inputs).logits
        torch.testing.assert_close(with_peft(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
        untrained = build_tiny_vlm("mlp", seed=0, fusion="cross_attention")[0]
        assert not torch.allclose(untrained(**inputs).logits, expected, atol=1e-3)


def test_comparison_runs_name_the_deep_fusion_rows(tmp_path):
    runs = train_accelerate.comparison_runs("all", ["--output_dir", str(tmp_path)], str(CONFIGS / "tiny_shapes.yaml"))
    bridges = runs[: len(ALL_RUNS)]  # then the Q-Former's stage 1 and the qformer run after it
    assert [(r.projector_type, r.fusion) for r in bridges] == [
        ("linear", "early"), ("mlp", "early"), ("qformer", "early"), ("perceiver", "early"),
        ("perceiver", "cross_attention"),
    ]  # fmt: skip
    assert [Path(r.output_dir).name for r in bridges] == list(ALL_RUNS)
    (run,) = train_accelerate.comparison_runs("mlp_xattn", [], str(CONFIGS / "tiny_shapes.yaml"))
    assert (run.projector_type, run.fusion, Path(run.output_dir).name) == ("mlp", "cross_attention", "mlp_xattn")
    family = train_accelerate.comparison_runs(str(CONFIGS / "coco"), [], None)
    assert [(r.projector_type, r.fusion) for r in family][-1] == ("perceiver", "cross_attention")
    config = json.dumps({"cross_attention_every": 2})
    flags = ["--model_config", config]
    (run,) = train_accelerate.comparison_runs("perceiver_xattn", flags, str(CONFIGS / "tiny_shapes.yaml"))
    assert run.model_config == {"cross_attention_every": 2}
