"""
A run never loses work or resumes into garbage: a finished output directory is refused unless the run resumes it or
starts afresh; checkpoints hold what trains and a checksum of every file, and a corrupted one, or one trained on other
frozen weights, is refused by name; `best/` stays small until the run ends.
"""

import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import training.loop
from models.tiny import build_tiny_vlm
from tiny_runs import saved_weights, tiny_args
from training import train
from training.checkpointing import latest_checkpoint
from training.integrity import FROZEN_WEIGHTS_NAME, MANIFEST_NAME, CheckpointError, write_manifest


def checkpointed_args(tmp_path: Path, **overrides):
    """48 images in batches of 8: 6 steps, a checkpoint every 3."""
    return tiny_args(tmp_path, **{"save_steps": 3, "save_total_limit": 2, **overrides})


def test_a_finished_output_dir_is_refused_unless_resumed_or_overwritten(tmp_path):
    args = checkpointed_args(tmp_path)
    train(args)
    assert latest_checkpoint(args.output_dir) == str(Path(args.output_dir) / "checkpoint-6")
    with pytest.raises(ValueError, match="already holds a run") as error:
        train(replace(args, learning_rate=1e-4))
    assert "--resume_from_checkpoint latest" in str(error.value) and "--overwrite_output_dir" in str(error.value)

    # Afresh: the old run's checkpoints go first, so they neither rotate the new one out nor get resumed.
    fresh = train(replace(args, learning_rate=1e-4, overwrite_output_dir=True, max_steps=2, save_steps=2))
    assert sorted(path.name for path in Path(args.output_dir).glob("checkpoint-*")) == ["checkpoint-2"]
    assert fresh.global_step == 2
    assert json.loads((Path(args.output_dir) / "training_results.json").read_text())["global_step"] == 2
    with pytest.raises(ValueError, match="pass one of them"):
        replace(args, overwrite_output_dir=True, resume_from_checkpoint="latest")


@pytest.mark.parametrize("damage", ["flipped bits", "missing file", "no manifest"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path, damage):
    args = checkpointed_args(tmp_path, max_steps=3)
    train(args)
    checkpoint = Path(args.output_dir) / "checkpoint-3"
    weights = checkpoint / "model.safetensors"
    if damage == "flipped bits":
        data = bytearray(weights.read_bytes())
        for offset in range(len(data) - 400, len(data) - 350):  # inside the tensors, past the header
            data[offset] ^= 0xFF
        weights.write_bytes(bytes(data))
        message = r"model\.safetensors is corrupted: its sha256 is"
    elif damage == "missing file":
        weights.unlink()
        message = r"model\.safetensors is listed in checksums\.sha256 but missing"
    else:
        (checkpoint / MANIFEST_NAME).unlink()
        message = r"checkpoint-3 has no checksums\.sha256"
    with pytest.raises(CheckpointError, match=message):
        train(replace(args, max_steps=6, resume_from_checkpoint="latest"))


def test_resuming_onto_other_frozen_weights_is_refused(tmp_path):
    args = checkpointed_args(tmp_path, max_steps=3)
    train(args)
    other_towers, processor = build_tiny_vlm("mlp", seed=1)
    with pytest.raises(CheckpointError, match="was trained on other frozen weights"):
        train(replace(args, max_steps=6, resume_from_checkpoint="latest"), other_towers, processor)


def test_an_align_run_leaves_one_complete_model_and_lean_checkpoints_and_best(tmp_path):
    args = checkpointed_args(tmp_path, eval_strategy="epoch", predict_with_generate=False, metric_for_best_model="loss")
    results = train(args)
    output_dir = Path(args.output_dir)
    checkpoint = output_dir / "checkpoint-6"
    projector = {name for name in saved_weights(output_dir) if name.startswith("multi_modal_projector.")}
    assert set(saved_weights(checkpoint)) == projector  # no frozen tower, no language model
    frozen = json.loads((checkpoint / FROZEN_WEIGHTS_NAME).read_text())
    weights = saved_weights(output_dir)
    num_frozen = sum(tensor.numel() for name, tensor in weights.items() if name not in projector)
    assert frozen["source"]["model"] == "tiny" and frozen["num_parameters"] == num_frozen
    assert {line.split("  ")[1] for line in (checkpoint / MANIFEST_NAME).read_text().splitlines()} >= {
        "model.safetensors", "optimizer.bin", "trainer_state.json", FROZEN_WEIGHTS_NAME
    }  # fmt: skip

    # best/ is lean like a checkpoint: the best evaluation's trainable weights and the frozen weights' reference.
    best_files = sorted(path.name for path in (output_dir / "best").iterdir())
    assert best_files == [FROZEN_WEIGHTS_NAME, "trainable.safetensors"]
    assert set(load_file(output_dir / "best" / "trainable.safetensors")) == projector
    assert json.loads((output_dir / "best" / FROZEN_WEIGHTS_NAME).read_text()) == frozen
    # One complete model on disk: every other weights file holds the projector only.
    others = [path for path in output_dir.rglob("*.safetensors") if path != output_dir / "model.safetensors"]
    assert len(others) == 3 and all(set(load_file(path)) == projector for path in others)  # 2 checkpoints, best
    assert results.saved_step is None and "This repository holds the last model (step 6)." in (
        output_dir / "README.md"
    ).read_text()


def test_load_best_model_at_end_saves_the_best_evaluation_not_the_last(tmp_path, monkeypatch):
    losses = itertools.cycle([0.9, 0.5, 0.7])  # in each run, the evaluation after epoch 2 (step 6) is the best
    monkeypatch.setattr(training.loop, "evaluate", lambda *args, **kwargs: ({"loss": next(losses)}, {}))
    args = checkpointed_args(
        tmp_path, eval_strategy="epoch", metric_for_best_model="loss", num_train_epochs=3, max_train_samples=24,
        load_best_model_at_end=True,
    )  # fmt: skip
    results = train(args)
    assert (results.best_step, results.global_step, results.saved_step) == (6, 9, 6)
    output_dir = Path(args.output_dir)
    best, saved = load_file(output_dir / "best" / "trainable.safetensors"), saved_weights(output_dir)
    assert best and all(torch.equal(saved[name], tensor) for name, tensor in best.items())
    last = train(replace(args, load_best_model_at_end=False, output_dir=str(tmp_path / "last")))
    assert not all(torch.equal(saved_weights(tmp_path / "last")[name], tensor) for name, tensor in best.items())
    assert last.saved_step is None
    assert "This repository holds the best model (step 6)." in (output_dir / "README.md").read_text()


def test_overwriting_refuses_to_remove_the_model_the_run_starts_from(tmp_path):
    model, processor = build_tiny_vlm("mlp")
    model.save_pretrained(tmp_path / "run" / "best")
    processor.save_pretrained(tmp_path / "run" / "best")
    args = tiny_args(tmp_path, model=None, model_name_or_path=str(tmp_path / "run" / "best"), overwrite_output_dir=True)
    with pytest.raises(ValueError, match=r"would remove .*best, which the model is built from"):
        train(args)
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_only_what_a_run_writes_counts_as_a_run_and_is_removed(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".gitkeep").touch()
    train(checkpointed_args(tmp_path, max_steps=3))  # a .gitkeep is no run
    (tmp_path / "run" / "notes.txt").write_text("mine")
    train(checkpointed_args(tmp_path, max_steps=1, save_steps=0, overwrite_output_dir=True))
    assert {path.name for path in (tmp_path / "run").iterdir()} >= {".gitkeep", "notes.txt", "model.safetensors"}
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_resuming_latest_where_a_run_left_no_checkpoint_is_refused(tmp_path):
    args = checkpointed_args(tmp_path, max_steps=2, save_steps=0)
    train(args)
    with pytest.raises(ValueError, match="holds a run but no complete checkpoint to resume from"):
        train(replace(args, max_steps=4, resume_from_checkpoint="latest"))


def test_resuming_an_earlier_checkpoint_abandons_what_came_after_it(tmp_path):
    """Checkpoints and a best/ of the abandoned continuation must neither survive rotation nor pass for the best."""
    args = checkpointed_args(
        tmp_path, save_total_limit=5, eval_strategy="epoch", predict_with_generate=False, metric_for_best_model="loss",
        num_train_epochs=2, max_train_samples=24,  # 3 steps per epoch, evaluated after steps 3 and 6
    )
    train(args)
    output_dir = Path(args.output_dir)
    save_file({"w": torch.zeros(1)}, str(output_dir / "best" / "trainable.safetensors"), metadata={"step": "6"})
    state = json.loads((output_dir / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["best_step"] is None  # saved at the epoch's last step, before its evaluation
    abandoned = (output_dir / "checkpoint-6" / "trainer_state.json").stat().st_mtime_ns
    resumed = train(replace(args, resume_from_checkpoint=str(output_dir / "checkpoint-3"), save_steps=2))
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == [f"checkpoint-{n}" for n in (3, 4, 6)]
    assert (output_dir / "checkpoint-6" / "trainer_state.json").stat().st_mtime_ns != abandoned  # written anew
    assert resumed.best_step in (3, 6)
    best = load_file(output_dir / "best" / "trainable.safetensors")
    assert all(name.startswith("multi_modal_projector.") for name in best)  # the stale file was not kept


def test_a_checkpoint_without_its_frozen_weights_reference_is_refused(tmp_path):
    args = checkpointed_args(tmp_path, max_steps=3)
    train(args)
    checkpoint = Path(args.output_dir) / "checkpoint-3"
    (checkpoint / FROZEN_WEIGHTS_NAME).unlink()
    write_manifest(checkpoint)
    with pytest.raises(CheckpointError, match="has no frozen_weights.json"):
        train(replace(args, max_steps=6, resume_from_checkpoint="latest"))
