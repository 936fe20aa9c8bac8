"""`train_accelerate.py`: YAML configs and flags, the shipped configs, a two-process `accelerate launch`, and the
projector comparison command with its table."""

import json
import math
import os
import pty
import subprocess
import sys

import pytest
from accelerate.commands.config.config_args import load_config_from_file

import train_accelerate
from tiny_runs import CONFIGS, REPO_ROOT, launch_two_processes, saved_weights, tiny_args
from training import train
from training.checkpointing import latest_checkpoint
from training.integrity import CheckpointError
from training.model_setup import build_model


def test_accelerate_launch_two_cpu_processes(tmp_path):
    output_dir = tmp_path / "run"
    command = [
        "train_accelerate.py", "--config", str(CONFIGS / "tiny_shapes.yaml"),
        "--use_cpu", "--max_train_samples", "64", "--max_eval_samples", "5", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "2", "--max_new_tokens", "8",
        "--save_steps", "2", "--report_to", "none", "--output_dir", str(output_dir),
        "--feature_cache_dir", str(tmp_path / "feature_cache"), "--eval_before_training",
        "--max_train_conversations", "16", "--max_eval_questions", "3",
    ]
    completed = launch_two_processes(command)
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

    # The two processes' checkpoint holds the trainable weights under the model's own names (no DDP `module.`), and
    # records its process count: one process resuming it would change the batches, and is refused.
    assert all(name.startswith(("language_model.", "multi_modal_projector.")) for name in
               saved_weights(output_dir / "checkpoint-4"))  # fmt: skip
    flags = command[command.index("--config"):]
    one_process = train_accelerate.parse_args([*flags[2:], "--resume_from_checkpoint", "latest"], flags[1])
    with pytest.raises(CheckpointError, match=r"other settings \(num_processes 2 -> 1\)"):
        train(one_process)


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
        assert args.stage in ("align", "finetune", "lora", "qformer_stage1", "contrastive"), path
    coco = {path.stem: train_accelerate.parse_args([], path) for path in CONFIGS.glob("coco_*.yaml")}
    for name, args in coco.items():
        assert (args.vision_model, args.text_model) == ("google/siglip-base-patch16-224", "Qwen/Qwen2.5-0.5B-Instruct")
        assert (args.num_train_epochs, args.max_train_samples, args.max_eval_samples) == (10, 1000, 1000), name
        assert args.mixed_precision == "bf16" and args.dataset == "coco-karpathy", name
    assert coco["coco_qformer_lora"].stage == "lora" and coco["coco_mlp"].stage == "align"
    contrastive = train_accelerate.parse_args([], CONFIGS / "contrastive_siglip.yaml")
    assert (contrastive.stage, contrastive.contrastive_loss, contrastive.metric_for_best_model) == (
        "contrastive", "sigmoid", "recall_mean"
    )
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


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("projector_lr", "-0.001", "a number >= 0"),
        ("learning_rate", "-0.5", "a number >= 0"),
        ("max_train_samples", "0", "a positive integer"),
        ("max_eval_samples", "0", "a positive integer"),
        ("per_device_train_batch_size", "0", "a positive integer"),
        ("logging_steps", "0", "a positive integer"),
        ("gradient_accumulation_steps", "0", "a positive integer"),
        ("save_total_limit", "0", "a positive integer"),
        ("save_steps", "-5", "an integer >= 0"),
        ("max_steps", "0", r"a positive integer, or -1 \(unset\)"),
        ("warmup_ratio", "1.5", r"a number in \[0, 1\]"),
        ("adam_beta2", "1", r"a number in \[0, 1\)"),
        ("max_grad_norm", "nan", "a number > 0"),
    ],
)
def test_a_bad_number_is_refused_naming_the_flag_before_anything_loads(flag, value, expected, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("training started before the arguments were checked")

    monkeypatch.setattr(train_accelerate, "train", must_not_run)
    with pytest.raises(ValueError, match=rf"^{flag}=\S+ is invalid; it must be {expected}\.$"):
        train_accelerate.main(["--config", str(CONFIGS / "tiny_shapes.yaml"), f"--{flag}", value])


def test_a_value_of_a_wrong_type_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"^per_device_train_batch_size='16' is invalid; it must be a positive int"):
        tiny_args(tmp_path, per_device_train_batch_size="16")
    with pytest.raises(ValueError, match=r"^learning_rate=True is invalid; it must be a number >= 0"):
        tiny_args(tmp_path, learning_rate=True)


def test_flags_override_the_yamls_model_source_and_none_unsets_a_value(tmp_path):
    config = CONFIGS / "tiny_shapes.yaml"
    saved = train_accelerate.parse_args(["--model_name_or_path", str(tmp_path)], config)
    assert (saved.model, saved.model_name_or_path) == (None, str(tmp_path))
    towers = train_accelerate.parse_args(["--vision_model", "v", "--text_model", "t"], config)
    assert (towers.model, towers.vision_model, towers.text_model) == (None, "v", "t")
    for spelling in ("none", "None", "null", ""):
        args = train_accelerate.parse_args([f"--conversations={spelling}", "--eval_vqa", spelling], config)
        assert (args.conversations, args.eval_vqa, args.eval_pope) == (None, None, "shapes")
    with pytest.raises(ValueError, match="Choose exactly one model source"):
        train_accelerate.parse_args(["--model", "none"], config)  # unset, and nothing in its place
    both = tmp_path / "both.yaml"
    both.write_text(f"model: tiny\nmodel_name_or_path: {tmp_path}\n")
    with pytest.raises(ValueError, match=rf"{both} sets several model sources \(model, model_name_or_path\)"):
        train_accelerate.parse_args([], both)


@pytest.mark.parametrize("stdin", ["closed", "a terminal"])
def test_training_from_a_saved_model_asks_nothing_and_warns_nothing(tmp_path, stdin):
    saved = tmp_path / "saved"
    train(tiny_args(tmp_path, output_dir=str(saved), max_steps=1))
    command = [
        sys.executable, "train_accelerate.py", "--config", str(CONFIGS / "tiny_shapes.yaml"), "--model_name_or_path",
        str(saved), "--max_steps", "1", "--max_train_samples", "8", "--per_device_train_batch_size", "8",
        "--conversations", "none", "--eval_vqa", "none", "--eval_pope", "none", "--eval_strategy", "no",
        "--report_to", "none", "--save_steps", "0", "--output_dir", str(tmp_path / "continued"),
        "--feature_cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    terminal = None
    if stdin == "a terminal":
        terminal, stdin_end = pty.openpty()
    else:
        stdin_end = subprocess.DEVNULL
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    try:
        completed = subprocess.run(command, cwd=REPO_ROOT, env=env, stdin=stdin_end, capture_output=True, text=True,
                                   timeout=120)  # fmt: skip
    finally:
        if terminal is not None:
            os.close(terminal), os.close(stdin_end)
    assert completed.returncode == 0, completed.stderr[-3000:]
    for unwanted in ("Do you wish to run the custom code", "trust_remote_code", "You are using a model of type"):
        assert unwanted not in completed.stdout + completed.stderr


def compare_on_captions(tmp_path, runs: str, *flags: str) -> list:
    """`--compare runs` on the tiny shapes captions (no questions), one epoch of batches of 16, 8 evaluation images."""
    return train_accelerate.main(
        ["--config", str(CONFIGS / "tiny_shapes.yaml"), "--compare", runs, "--max_eval_samples", "8",
         "--num_train_epochs", "1", "--per_device_train_batch_size", "16", "--report_to", "none",
         "--save_steps", "0", "--conversations", "none", "--eval_vqa", "none", "--eval_pope", "none",
         "--output_dir", str(tmp_path / "compare"), "--feature_cache_dir", str(tmp_path / "feature_cache"), *flags]
    )  # fmt: skip


def test_a_contrastive_run_in_the_comparison_trains_the_tower_first_and_counts_both_stages(tmp_path):
    results = compare_on_captions(tmp_path, "mlp,mlp_contrastive", "--max_train_samples", "64",
                                  "--predict_with_generate", "false")  # fmt: skip
    assert [(r.stage, os.path.basename(r.output_dir)) for r in results] == [
        ("finetune", "mlp"), ("contrastive", "stage1"), ("finetune", "mlp_contrastive")
    ]
    stage1_dir = str(tmp_path / "compare" / "mlp_contrastive" / "stage1")
    assert results[2].feature_cache["train"] == "computed"  # the trained tower's own features, not mlp's
    config = json.loads((tmp_path / "compare" / "mlp_contrastive" / "config.json").read_text())
    assert config["vision_init"] == stage1_dir
    table = (tmp_path / "compare" / "comparison.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| mlp_contrastive |"))
    assert f"| contrastive {results[1].global_step} + finetune {results[2].global_step} |" in row


def test_tiled_and_hybrid_runs_in_the_comparison_read_up_to_four_tiles(tmp_path):
    results = compare_on_captions(tmp_path, "mlp_tiles,mlp_hybrid", "--max_train_samples", "32",
                                  "--max_new_tokens", "4")  # fmt: skip
    assert [(r.fusion, r.max_tiles, r.feature_cache["train"]) for r in results] == [
        ("early", 4, None), ("hybrid", 4, None)
    ]  # fmt: skip
    assert results[1].cross_attention_layers == [0, 1]
    for name in ("mlp_tiles", "mlp_hybrid"):
        config = json.loads((tmp_path / "compare" / name / "config.json").read_text())
        assert config["max_tiles"] == 4 and config["fusion"] == ("hybrid" if name == "mlp_hybrid" else "early")
        assert (tmp_path / "compare" / name / "tiling_vlm.py").is_file()
    table = (tmp_path / "compare" / "comparison.md").read_text()
    assert "| mlp_tiles | mlp | early | 16 per tile | 16 per tile |" in table
    assert "| mlp_hybrid | mlp | hybrid | 16 | 16 per tile |" in table
