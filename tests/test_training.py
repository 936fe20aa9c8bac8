"""`train_accelerate.py` / `training_vlm.py`: learning, resuming, freezing, LoRA, feature cache, checkpoints, model card,
multi-process launch and the projector comparison, offline on CPU with tiny models."""

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.commands.config.config_args import load_config_from_file
from huggingface_hub import ModelCard
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

import train_accelerate
import training_vlm
from caption_data import KARPATHY_SOURCE, make_shapes_dataset
from conftest import caption_messages
from modeling_vlm import VLMForConditionalGeneration
from tiny_vlm import build_tiny_vlm
from training_vlm import (
    TrainerState,
    VLMTrainingArguments,
    latest_checkpoint,
    save_checkpoint,
    train,
    write_model_card,
)


REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = REPO_ROOT / "configs"


def tiny_args(tmp_path: Path, **overrides) -> VLMTrainingArguments:
    """A tiny, fast, offline run without evaluation or checkpoints unless `overrides` ask for them."""
    defaults = {
        "model": "tiny",
        "stage": "align",
        "dataset": "shapes",
        "max_train_samples": 48,
        "max_eval_samples": 8,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "learning_rate": 3e-3,
        "warmup_ratio": 0.0,
        "eval_strategy": "no",
        "max_new_tokens": 16,
        "save_steps": 0,
        "report_to": "none",
        "output_dir": str(tmp_path / "run"),
        "feature_cache_dir": str(tmp_path / "feature_cache"),
    }
    return VLMTrainingArguments(**{**defaults, **overrides})


def saved_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def caption_inputs(processor, num_images: int = 2):
    images = [image.convert("RGB") for image in make_shapes_dataset(num_images, split="test")["image"]]
    prompt = processor.apply_chat_template(caption_messages(), add_generation_prompt=True)
    return processor(images=images, text=[prompt] * num_images, return_tensors="pt")


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    """One epoch of the tiny finetune recipe on 1000 shapes, evaluated before and after, logged to TensorBoard."""
    tmp_path = tmp_path_factory.mktemp("learn")
    args = tiny_args(
        tmp_path,
        stage="finetune",
        max_train_samples=1000,
        max_eval_samples=40,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=40,
        lr_scheduler_type="constant",
        eval_strategy="epoch",
        eval_before_training=True,
        max_new_tokens=32,
        num_sample_captions=3,
        save_steps=40,
        report_to="tensorboard",
    )
    return args, train(args)


def test_tiny_config_learns(learned_run):
    args, results = learned_run
    untrained, trained = results["history"][0], results["history"][-1]
    assert (untrained["step"], trained["step"]) == (0, 63)
    # The untrained model writes noise; one epoch teaches the caption language: the loss at least halves (it drops
    # from about 6.2 to about 0.9) and CIDEr / METEOR rise well above the untrained model's ~0 (to about 0.4 / 0.2).
    assert trained["loss"] < 0.5 * untrained["loss"]
    assert trained["CIDEr"] > untrained["CIDEr"] + 0.1
    assert trained["METEOR"] > untrained["METEOR"] + 0.1

    output_dir = Path(args.output_dir)
    assert list((output_dir / "logs").rglob("events.out.tfevents.*"))
    assert (output_dir / "checkpoint-40" / "trainer_state.json").is_file()
    assert (output_dir / "best" / "model.safetensors").is_file()
    assert json.loads((output_dir / "training_results.json").read_text())["final_metrics"] == results["final_metrics"]
    model = AutoModelForImageTextToText.from_pretrained(output_dir, trust_remote_code=True)
    assert model.config.projector_type == "mlp"


def test_model_card_of_a_run_has_valid_metadata_and_its_metrics(learned_run):
    args, results = learned_run
    card = ModelCard.load(Path(args.output_dir) / "README.md")
    assert card.data.pipeline_tag == "image-text-to-text"
    assert card.data.library_name == "transformers"
    reported = {result.metric_name: result.metric_value for result in card.data.eval_results}
    final = results["final_metrics"]
    for metric in ("CIDEr", "METEOR", "BLEU-4", "ROUGE-L"):
        assert reported[metric] == round(final[metric], 4)
    assert reported["validation loss"] == round(final["loss"], 4)
    assert f"{final['CIDEr']:.4f}" in card.text
    for image_id, _, caption in results["sample_captions"]:
        assert image_id in card.text and caption in card.text
    assert "trust_remote_code=True" in card.text and "stage: finetune" in card.text


def test_model_card_names_both_towers_and_the_dataset(tmp_path):
    args = VLMTrainingArguments(
        vision_model="google/siglip-base-patch16-224",
        text_model="Qwen/Qwen2.5-0.5B-Instruct",
        dataset="coco-karpathy",
        image_root=str(tmp_path),
        push_to_hub="user/vlm-mlp",
    )
    metrics = {"loss": 3.2, "CIDEr": 1.31, "METEOR": 0.2052, "BLEU-4": 0.25, "ROUGE-L": 0.45}
    results = {
        "projector_type": "mlp", "num_image_tokens": 196, "trainable_parameters": 1_500_000,
        "total_parameters": 600_000_000, "num_train_images": 1000, "num_eval_images": 1000,
        "final_metrics": metrics, "best_metric": 1.31, "best_step": 320,
        "history": [{"epoch": 10, "step": 320, **metrics}],
        "sample_captions": [("391895", "a man riding a bike", "a man on a bicycle")],
        "hardware": "1 x NVIDIA H100", "num_processes": 1, "mixed_precision": "bf16",
        "wall_time_s": 3600.0, "train_time_s": 3000.0, "samples_per_second": 3.3,
    }
    write_model_card(str(tmp_path), args, results)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == ["google/siglip-base-patch16-224", "Qwen/Qwen2.5-0.5B-Instruct"]
    assert card.data.datasets == [KARPATHY_SOURCE]
    assert card.data.model_name == "user/vlm-mlp"
    cider = next(result for result in card.data.eval_results if result.metric_name == "CIDEr")
    assert (cider.metric_value, cider.dataset_type, cider.dataset_split) == (1.31, KARPATHY_SOURCE, "validation")
    assert 'from_pretrained("user/vlm-mlp", trust_remote_code=True)' in card.text


def test_resume_mid_epoch_gives_the_uninterrupted_result_and_align_keeps_towers_frozen(tmp_path):
    # 72 images in micro-batches of 8 with 2 accumulation steps: 9 micro-batches, so 5 optimizer steps, per epoch.
    args = tiny_args(
        tmp_path, max_train_samples=72, gradient_accumulation_steps=2, max_steps=8, save_steps=3, save_total_limit=5,
        output_dir=str(tmp_path / "straight"),
    )
    straight = train(args)
    assert straight["global_step"] == 8
    state = json.loads((tmp_path / "straight" / "checkpoint-3" / "trainer_state.json").read_text())
    assert (state["global_step"], state["epoch"], state["step_in_epoch"]) == (3, 0, 6)  # mid-epoch

    # An interrupted run: its last complete checkpoint, a save cut short and a directory without trainer state.
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight" / "checkpoint-3", resumed_dir / "checkpoint-3")
    shutil.copytree(tmp_path / "straight" / "checkpoint-6", resumed_dir / "tmp-checkpoint-6")
    (resumed_dir / "tmp-checkpoint-6" / "trainer_state.json").unlink()
    (resumed_dir / "checkpoint-7").mkdir()
    assert latest_checkpoint(resumed_dir) == str(resumed_dir / "checkpoint-3")
    train(replace(args, output_dir=str(resumed_dir), resume_from_checkpoint="latest"))

    expected, actual = saved_weights(tmp_path / "straight"), saved_weights(resumed_dir)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-6, rtol=0, msg=name)

    initial = build_tiny_vlm("mlp", seed=0)[0].state_dict()
    for name, tensor in expected.items():
        if name.startswith("multi_modal_projector."):
            assert not torch.equal(tensor, initial[name]), f"{name} did not train"
        else:
            assert torch.equal(tensor, initial[name]), f"frozen {name} changed"


def test_lora_trains_adapters_only_and_they_reload(tmp_path):
    args = tiny_args(
        tmp_path, stage="lora", learning_rate=1e-2, lora_dropout=0.0, max_steps=4, save_steps=4, eval_strategy="epoch"
    )
    results = train(args)
    output_dir = Path(args.output_dir)
    # Stopped mid-epoch by max_steps, then evaluated once: captions generated through the PeftModel.
    assert [record["step"] for record in results["history"]] == [4] and "CIDEr" in results["final_metrics"]
    assert (output_dir / "best" / "adapter_config.json").is_file()
    initial = build_tiny_vlm("mlp", seed=0)[0].state_dict()

    # Before the merge (checkpoint at the last step): every weight but the adapters and the projector is untouched.
    checkpoint = saved_weights(output_dir / "checkpoint-4")
    adapters = [name for name in checkpoint if "lora_" in name or "modules_to_save" in name]
    assert any(".language_model." in name and "lora_B" in name for name in adapters)
    assert not any("vision_tower" in name and "lora_" in name for name in adapters)
    for name, tensor in checkpoint.items():
        if name not in adapters:
            original = name.removeprefix("base_model.model.").replace(".base_layer", "").replace(".original_module", "")
            assert torch.equal(tensor, initial[original]), f"frozen {name} changed"

    processor = build_tiny_vlm("mlp", seed=0)[1]
    inputs = caption_inputs(processor)
    merged = VLMForConditionalGeneration.from_pretrained(output_dir).eval()
    with_peft = PeftModel.from_pretrained(build_tiny_vlm("mlp", seed=0)[0], output_dir / "adapter").eval()
    with_load_adapter = build_tiny_vlm("mlp", seed=0)[0]
    with_load_adapter.load_adapter(str(output_dir / "adapter"))
    untrained = build_tiny_vlm("mlp", seed=0)[0]
    with torch.no_grad():
        expected = merged(**inputs).logits
        torch.testing.assert_close(with_peft(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(with_load_adapter.eval()(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(untrained(**inputs).logits, expected, atol=1e-3)


@pytest.mark.parametrize("cache_vision_features", [True, False], ids=["feature-cache", "pixels"])
def test_corrupt_images_are_skipped_and_counted(tmp_path, cache_vision_features):
    shapes = make_shapes_dataset(8, split="train")
    for split, rows in (("train", range(6)), ("validation", range(6, 8))):
        folder = tmp_path / "data" / split
        folder.mkdir(parents=True)
        metadata = []
        for row in rows:
            shapes[row]["image"].save(folder / f"{row}.png")
            metadata.append({"file_name": f"{row}.png", "caption": shapes[row]["captions"][0]})
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
        metadata.append({"file_name": "broken.png", "caption": "a broken image."})
        (folder / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in metadata))

    args = tiny_args(
        tmp_path, dataset=str(tmp_path / "data"), max_train_samples=None, max_eval_samples=None, num_train_epochs=2,
        per_device_train_batch_size=4, eval_strategy="epoch", predict_with_generate=False,
        cache_vision_features=cache_vision_features,
    )
    results = train(args)
    assert results["global_step"] == 4  # 7 rows in batches of 4, twice
    assert results["skipped_train_images"] == 2  # the broken image, once per epoch
    assert (results["skipped_eval_images"], results["num_eval_images"]) == (1, 2)
    assert len(results["history"]) == 2 and all(math.isfinite(record["loss"]) for record in results["history"])
    assert results["feature_cache"]["train"] == ("computed" if cache_vision_features else None)


def test_feature_cache_is_reused_across_epochs_and_runs(tmp_path):
    def count_vision_calls(model) -> list[int]:
        calls = [0]
        model.vision_tower.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        return calls

    args = tiny_args(
        tmp_path, max_train_samples=32, num_train_epochs=2, eval_strategy="epoch", predict_with_generate=False
    )
    model, processor = build_tiny_vlm("mlp", seed=0)
    calls = count_vision_calls(model)
    first = train(args, model, processor)
    assert first["feature_cache"] == {"train": "computed", "eval": "computed"}
    assert calls[0] == 32 // 8 + 8 // 8  # the caching batches only: no tower forward in 2 epochs and evaluations
    assert len(list(Path(args.feature_cache_dir).glob("*.safetensors"))) == 2

    # Another projector on the same tower and data: the cached features are used, the tower never runs.
    model, processor = build_tiny_vlm("linear", seed=0)
    calls = count_vision_calls(model)
    second = train(replace(args, projector_type="linear", output_dir=str(tmp_path / "linear")), model, processor)
    assert second["feature_cache"] == {"train": "hit", "eval": "hit"}
    assert calls[0] == 0
    assert second["history"][-1]["loss"] < 10


def test_checkpoints_are_written_atomically_and_rotated(tmp_path, monkeypatch):
    accelerator = Accelerator()
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    for step in (1, 2, 3):
        save_checkpoint(accelerator, TrainerState(global_step=step), str(tmp_path), save_total_limit=2)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3"]

    def crash_midway(directory):
        os.makedirs(directory)
        Path(directory, "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed during save")

    monkeypatch.setattr(accelerator, "save_state", crash_midway)
    with pytest.raises(RuntimeError, match="killed during save"):
        save_checkpoint(accelerator, TrainerState(global_step=4), str(tmp_path), save_total_limit=2)
    assert (tmp_path / "tmp-checkpoint-4").is_dir() and not (tmp_path / "checkpoint-4").exists()
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")


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
        "--feature_cache_dir", str(tmp_path / "feature_cache"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(command, check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((output_dir / "training_results.json").read_text())
    assert results["num_processes"] == 2
    assert results["global_step"] == 4  # 64 images / (8 per process x 2 processes)
    assert results["num_eval_images"] == 5 and "CIDEr" in results["final_metrics"]  # captions gathered from both
    assert latest_checkpoint(output_dir) == str(output_dir / "checkpoint-4")
    assert (output_dir / "README.md").is_file()


def test_comparison_command_prints_the_table_with_the_untrained_baseline(tmp_path, capsys):
    results = train_accelerate.main(
        ["--config", str(CONFIGS / "tiny_shapes.yaml"), "--compare", "linear,qformer", "--max_train_samples", "64",
         "--max_eval_samples", "8", "--num_train_epochs", "2", "--per_device_train_batch_size", "8",
         "--predict_with_generate", "false", "--report_to", "none", "--save_steps", "0",
         "--output_dir", str(tmp_path / "compare"), "--feature_cache_dir", str(tmp_path / "feature_cache")]
    )
    assert [r["projector_type"] for r in results] == ["linear", "qformer"]
    assert [r["output_dir"] for r in results] == [str(tmp_path / "compare" / p) for p in ("linear", "qformer")]
    assert results[1]["feature_cache"] == {"train": "hit", "eval": "hit"}
    untrained_loss = results[0]["history"][0]["loss"]
    assert all(r["final_metrics"]["loss"] < untrained_loss for r in results)
    table = (tmp_path / "compare" / "comparison.md").read_text()
    assert table in capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| untrained", "| linear", "| qformer"]
    assert f"{untrained_loss:.4f}" in rows[0]


def test_yaml_config_and_command_line_overrides(tmp_path):
    args = train_accelerate.parse_args(["--learning_rate", "0.5", "--no_cache_vision_features"], CONFIGS / "tiny_shapes.yaml")
    assert (args.model, args.stage, args.max_train_samples) == ("tiny", "finetune", 5000)
    assert (args.learning_rate, args.cache_vision_features) == (0.5, False)
    (tmp_path / "bad.yaml").write_text("model: tiny\nlearning_rte: 0.1\n")
    with pytest.raises(ValueError, match="learning_rte"):
        train_accelerate.parse_args([], tmp_path / "bad.yaml")
    runs = train_accelerate.comparison_runs(str(CONFIGS / "coco"), ["--image_root", "/data/coco"], None)
    assert [(r.projector_type, r.stage, r.image_root) for r in runs] == [
        (p, "align", "/data/coco") for p in ("linear", "mlp", "qformer", "perceiver")
    ]


def test_shipped_configs_are_valid():
    for path in CONFIGS.glob("*.yaml"):
        args = train_accelerate.parse_args([], path)
        assert args.stage in ("align", "finetune", "lora"), path
    coco = {path.stem: train_accelerate.parse_args([], path) for path in CONFIGS.glob("coco_*.yaml")}
    for name, args in coco.items():
        assert (args.vision_model, args.text_model) == ("google/siglip-base-patch16-224", "Qwen/Qwen2.5-0.5B-Instruct")
        assert (args.num_train_epochs, args.max_train_samples, args.max_eval_samples) == (10, 1000, 1000), name
        assert args.mixed_precision == "bf16" and args.dataset == "coco-karpathy", name
    assert coco["coco_qformer_lora"].stage == "lora" and coco["coco_mlp"].stage == "align"
    kinds = {path.stem: load_config_from_file(str(path)).distributed_type for path in (CONFIGS / "accelerate").glob("*.yaml")}
    assert {name: str(kind).split(".")[-1] for name, kind in kinds.items()} == {
        "cpu": "MULTI_GPU", "single_gpu": "NO", "multi_gpu": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED"
    }


def test_push_to_hub_creates_the_repo_and_uploads_the_output_dir(tmp_path, monkeypatch):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs["repo_id"], kwargs))

    monkeypatch.setattr(training_vlm, "HfApi", FakeApi)
    training_vlm.push_output_dir(str(tmp_path), "user/vlm-qformer", private=True)
    assert [call[:2] for call in calls] == [("create_repo", "user/vlm-qformer"), ("upload_folder", "user/vlm-qformer")]
    assert calls[0][2]["private"] and calls[1][2]["folder_path"] == str(tmp_path)
    assert "checkpoint-*" in calls[1][2]["ignore_patterns"]
