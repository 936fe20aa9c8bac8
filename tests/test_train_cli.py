"""`train_accelerate.py`: YAML configs and flags, the shipped configs, a two-process `accelerate launch`, and the
projector comparison command with its table."""

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace

import pytest
from accelerate.commands.config.config_args import load_config_from_file

import train_accelerate
from tiny_runs import CONFIGS, REPO_ROOT, tiny_args
from training import train
from training.checkpointing import latest_checkpoint
from training.model_setup import build_model


def test_accelerate_launch_two_cpu_processes(tmp_path):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    output_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "accelerate" / "cpu.yaml"),
        "--main_process_port", str(port), "train_accelerate.py", "--config", str(CONFIGS / "tiny_shapes.yaml"),
        "--use_cpu", "--max_train_samples", "64", "--max_eval_samples", "5", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "2", "--max_new_tokens", "8",
        "--save_steps", "2", "--report_to", "none", "--output_dir", str(output_dir),
        "--feature_cache_dir", str(tmp_path / "feature_cache"), "--eval_before_training",
        "--max_train_conversations", "16", "--max_eval_questions", "3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        command, check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((output_dir / "training_results.json").read_text())
    assert results["num_processes"] == 2
    # 64 captions and 30 conversations (16 scenes' 80 questions, 3 to a conversation) in batches of 8 per process.
    assert (results["num_train_images"], results["num_train_conversations"]) == (64, 30)
    assert results["global_step"] == 6  # 47 examples per process: 6 batches of 8
    assert results["num_eval_images"] == 5 and "CIDEr" in results["final_metrics"]  # captions gathered from both
    # The answers are gathered from both processes: every question is scored (3 VQA questions, 3 per POPE split).
    assert "VQA/accuracy" in results["final_metrics"] and "POPE/adversarial/f1" in results["final_metrics"]
    assert latest_checkpoint(output_dir) == str(output_dir / "checkpoint-6")
    assert (output_dir / "README.md").is_file()
    # The untrained model's validation loss over 5 images in batches of 2 per process: accelerate evens out the last
    # batches with 3 duplicates, which the evaluation leaves out; one process in one batch gives the same loss.
    alone = train(
        tiny_args(
            tmp_path, stage="finetune", max_train_samples=8, max_eval_samples=5, max_steps=1, eval_strategy="epoch",
            eval_before_training=True, predict_with_generate=False, output_dir=str(tmp_path / "alone"),
        )
    )
    assert math.isclose(results["history"][0]["loss"], alone.history[0]["loss"], rel_tol=1e-5)

    # The two processes' checkpoint holds the trainable weights under the model's own names: one process resumes it.
    resumed_dir = tmp_path / "resumed-alone"
    shutil.copytree(output_dir / "checkpoint-4", resumed_dir / "checkpoint-4")
    one_process = tiny_args(tmp_path, stage="finetune", max_train_samples=64, output_dir=str(resumed_dir))
    resumed = train(replace(one_process, resume_from_checkpoint="latest"))
    assert resumed.global_step == 8  # 64 images in batches of 8 on one process, resumed at step 4


def test_comparison_command_prints_the_table_with_the_untrained_baseline(tmp_path, capsys):
    results = train_accelerate.main(
        ["--config", str(CONFIGS / "tiny_shapes.yaml"), "--compare", "linear,perceiver_xattn",
         "--max_train_samples", "64", "--max_eval_samples", "8", "--num_train_epochs", "2",
         "--per_device_train_batch_size", "8", "--predict_with_generate", "false", "--report_to", "none",
         "--save_steps", "0", "--max_train_conversations", "8", "--max_eval_questions", "4",
         "--output_dir", str(tmp_path / "compare"), "--feature_cache_dir", str(tmp_path / "feature_cache")]
    )
    assert [(r.projector_type, r.fusion) for r in results] == [("linear", "early"), ("perceiver", "cross_attention")]
    assert [r.output_dir for r in results] == [str(tmp_path / "compare" / p) for p in ("linear", "perceiver_xattn")]
    assert results[1].feature_cache == {"train": "hit", "eval": "hit", "conversations": "hit"}
    untrained_loss = results[0].history[0]["loss"]
    assert all(r.final_metrics["loss"] < untrained_loss for r in results)
    table = (tmp_path / "compare" / "comparison.md").read_text()
    assert table in capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[:5] for row in rows] == [
        ["| untrained", "linear", "early", "16", "16"], ["| linear", "linear", "early", "16", "16"],
        ["| perceiver_xattn", "perceiver", "cross_attention", "1", "8"],
    ]  # fmt: skip
    assert f"{untrained_loss:.4f}" in rows[0]


def test_yaml_config_and_command_line_overrides(tmp_path):
    flags = ["--learning_rate", "0.5", "--no_cache_vision_features"]
    args = train_accelerate.parse_args(flags, CONFIGS / "tiny_shapes.yaml")
    assert (args.model, args.stage, args.max_train_samples) == ("tiny", "finetune", 5000)
    assert (args.learning_rate, args.cache_vision_features) == (0.5, False)
    (tmp_path / "bad.yaml").write_text("model: tiny\nlearning_rte: 0.1\n")
    with pytest.raises(ValueError, match="learning_rte"):
        train_accelerate.parse_args([], tmp_path / "bad.yaml")
    runs = train_accelerate.comparison_runs(str(CONFIGS / "coco"), ["--image_root", "/data/coco"], None)
    assert [(r.projector_type, r.fusion, r.stage, r.image_root) for r in runs] == [
        (p, "early", "align", "/data/coco") for p in ("linear", "mlp", "qformer", "perceiver")
    ] + [("perceiver", "cross_attention", "align", "/data/coco")]


def test_shipped_configs_are_valid():
    for path in CONFIGS.glob("*.yaml"):
        args = train_accelerate.parse_args([], path)
        assert args.stage in ("align", "finetune", "lora", "qformer_stage1"), path
    coco = {path.stem: train_accelerate.parse_args([], path) for path in CONFIGS.glob("coco_*.yaml")}
    for name, args in coco.items():
        assert (args.vision_model, args.text_model) == ("google/siglip-base-patch16-224", "Qwen/Qwen2.5-0.5B-Instruct")
        assert (args.num_train_epochs, args.max_train_samples, args.max_eval_samples) == (10, 1000, 1000), name
        assert args.mixed_precision == "bf16" and args.dataset == "coco-karpathy", name
    assert coco["coco_qformer_lora"].stage == "lora" and coco["coco_mlp"].stage == "align"
    stage1 = train_accelerate.parse_args([], CONFIGS / "qformer_stage1.yaml")
    assert (stage1.stage, stage1.vision_model, stage1.bert_model, stage1.text_model) == (
        "qformer_stage1", "google/siglip-base-patch16-224", "bert-base-uncased", None
    )
    assert stage1.metric_for_best_model == "recall_mean" and stage1.dataset == "coco-karpathy"
    llava = {path.stem: train_accelerate.parse_args([], path) for path in CONFIGS.glob("llava_*.yaml")}
    assert sorted(llava) == ["llava_instruct", "llava_instruct_lora"]
    for name, args in llava.items():  # LLaVA-1.5's stage 2: one epoch over the conversations, global batch 128
        assert args.conversations_only and args.model_name_or_path == "outputs/coco_mlp", name
        assert (args.num_train_epochs, args.per_device_train_batch_size * args.gradient_accumulation_steps) == (1, 128)
        assert (args.max_length, args.mixed_precision, args.group_by_length) == (2048, "bf16", True), name
    assert (llava["llava_instruct"].stage, llava["llava_instruct"].learning_rate) == ("finetune", 2e-5)
    assert (llava["llava_instruct_lora"].stage, llava["llava_instruct_lora"].lora_r) == ("lora", 128)
    accelerate_configs = (CONFIGS / "accelerate").glob("*.yaml")
    kinds = {path.stem: load_config_from_file(str(path)).distributed_type for path in accelerate_configs}
    assert {name: str(kind).split(".")[-1] for name, kind in kinds.items()} == {
        "cpu": "MULTI_GPU", "single_gpu": "NO", "multi_gpu": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED"
    }


def test_help_lists_every_option_with_its_help(capsys):
    with pytest.raises(SystemExit) as exit_code:
        train_accelerate.main(["--help"])
    assert exit_code.value.code == 0
    printed = capsys.readouterr().out
    for option in ("--config", "--compare", "--model_config", "--overwrite_output_dir", "--max_caption_tokens"):
        assert option in printed, option
    assert [action.dest for action in train_accelerate.build_parser()._actions if not action.help] == []


def test_model_config_sets_projector_settings_from_yaml_or_json(tmp_path):
    (tmp_path / "run.yaml").write_text(
        "model: tiny\nprojector_type: perceiver\nmodel_config:\n  perceiver_num_latents: 4\n  perceiver_num_layers: 1\n"
    )
    args = train_accelerate.parse_args([], tmp_path / "run.yaml")
    assert args.model_config == {"perceiver_num_latents": 4, "perceiver_num_layers": 1}
    model, _ = build_model(args)
    assert (model.config.num_image_tokens, len(model.multi_modal_projector.layers)) == (4, 1)
    flags = ["--model", "tiny", "--model_config", '{"qformer_num_queries": 3}', "--projector_type", "qformer"]
    assert build_model(train_accelerate.parse_args(flags))[0].config.num_image_tokens == 3

    with pytest.raises(ValueError, match=r"model_config has unknown keys \['perceiver_latents'\]"):
        train_accelerate.parse_args(["--model", "tiny", "--model_config", '{"perceiver_latents": 4}'])
    flags = ["--model", "tiny", "--projector_type", "perceiver", "--model_config", '{"perceiver_num_heads": 3}']
    with pytest.raises(ValueError, match=r"perceiver_num_heads=3 is invalid; it must divide the vision hidden size"):
        build_model(train_accelerate.parse_args(flags))
    flags = ["--model_name_or_path", str(tmp_path), "--model_config", '{"qformer_num_queries": 3}']
    with pytest.raises(ValueError, match="would change the projector of the saved model"):
        train_accelerate.parse_args(flags)
