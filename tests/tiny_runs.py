"""Helpers of the training tests: tiny offline runs and what they leave on disk."""

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from data.captions import make_shapes_dataset
from data.shapes_vqa import make_shapes_conversations
from evaluation.captioning import caption_messages
from evaluation.question_answering import VQA_SHORT_ANSWER_PROMPT
from training import VLMTrainingArguments, train


REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = REPO_ROOT / "configs"
TWO_CPU_PROCESSES = CONFIGS / "accelerate" / "cpu.yaml"  # DDP over gloo


def launch_two_processes(
    arguments: list[str], config_file: Path = TWO_CPU_PROCESSES, timeout: int = 300
) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file <config_file> <arguments>` in the repository, on a free port, 1 thread each."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
        "--main_process_port", str(port), *arguments,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


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


def assert_same_weights(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float = 1e-6
) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=atol, rtol=0, msg=name)


def saved_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def caption_inputs(processor, num_images: int = 2):
    images = [image.convert("RGB") for image in make_shapes_dataset(num_images, split="test")["image"]]
    prompt = processor.apply_chat_template(caption_messages(), add_generation_prompt=True)
    return processor(images=images, text=[prompt] * num_images, return_tensors="pt")


def write_llava_file(directory: Path, num_scenes: int, seed: int = 0, extra: list[dict] | None = None) -> Path:
    """
    The shapes conversations about `num_scenes` training scenes as LLaVA's JSON (`directory/llava.json`, its images as
    PNG files beside it), followed by the `extra` samples.
    """
    samples = []
    for row in make_shapes_conversations(num_scenes, VQA_SHORT_ANSWER_PROMPT, seed=seed):
        names = []
        for index, image in enumerate(row["images"]):
            names.append(f"{row['id']}-{index}.png")
            image.save(directory / names[-1])
        turns = [{"from": "human" if m["role"] == "user" else "gpt",
                  "value": "".join("<image>\n" if p["type"] == "image" else p["text"] for p in m["content"])}
                 for m in row["messages"]]  # fmt: skip
        samples.append({"id": row["id"], "image": names, "conversations": turns})
    path = directory / "llava.json"
    path.write_text(json.dumps(samples + (extra or [])))
    return path


def resumed_weights(args: VLMTrainingArguments, step: int, directory: Path) -> dict[str, torch.Tensor]:
    """The final weights of the run of `args` resumed, in `directory`, from a copy of its `checkpoint-{step}`."""
    name = f"checkpoint-{step}"
    shutil.copytree(Path(args.output_dir) / name, directory / name)
    train(replace(args, output_dir=str(directory), resume_from_checkpoint="latest", eval_before_training=False))
    return saved_weights(directory)


def assert_trains_only(
    output_dir: Path, initial: dict[str, torch.Tensor], trained: tuple[str, ...], idle: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """
    The final weights of the run in `output_dir` (started from the state dict `initial`), checked: every weight under
    the `trained` prefixes moved (but those under `idle`, which get no gradient) and every other one stayed; its
    `checkpoint-4` holds exactly the `trained` ones.
    """
    weights = saved_weights(output_dir)
    assert set(weights) == set(initial) - {"language_model.lm_head.weight"}  # tied to the input embeddings
    for name, tensor in weights.items():
        if name.startswith(trained) and not name.startswith(idle):
            assert not torch.equal(tensor, initial[name]), f"{name} did not train"
        else:
            assert torch.equal(tensor, initial[name]), f"frozen {name} changed"
    assert set(saved_weights(output_dir / "checkpoint-4")) == {name for name in initial if name.startswith(trained)}
    return weights
