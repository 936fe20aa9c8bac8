"""`training.checkpointing`: checkpoints are written atomically, rotated, and `latest` picks complete ones only."""

import os
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from training.checkpointing import TrainerState, latest_checkpoint, save_checkpoint


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
