# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
What makes a checkpoint trustworthy to resume from:

- a checksum manifest ([`write_manifest`], [`verify_manifest`]): the sha256 of every file, in `sha256sum` format, so
  that a flipped bit or a truncated file is refused by name (and `sha256sum -c checksums.sha256` checks it by hand);
- a reference to the weights the run does not train ([`FrozenWeights`]): where they come from and a fingerprint of
  their values. Checkpoints leave those weights out; a run resumes only onto the same frozen weights.
"""

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn


MANIFEST_NAME = "checksums.sha256"
FROZEN_WEIGHTS_NAME = "frozen_weights.json"
READ_CHUNK_BYTES = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: incomplete, corrupted, or trained on other frozen weights."""


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, as `sha256sum` prints it."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(READ_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: str | os.PathLike) -> None:
    """Writes `checksums.sha256` into `directory`: the sha256 of every file below it, one `<hash>  <path>` a line."""
    root = Path(directory)
    files = sorted(path for path in root.rglob("*") if path.is_file() and path.name != MANIFEST_NAME)
    lines = [f"{file_sha256(path)}  {path.relative_to(root).as_posix()}\n" for path in files]
    (root / MANIFEST_NAME).write_text("".join(lines), encoding="utf-8")


def verify_manifest(directory: str | os.PathLike) -> None:
    """
    Raises [`CheckpointError`] naming the file when a file of `directory`'s manifest is missing or its sha256 differs,
    or when the manifest itself is missing.
    """
    root = Path(directory)
    advice = "Resume from another checkpoint (--resume_from_checkpoint DIR) or start afresh (--overwrite_output_dir)."
    if not (root / MANIFEST_NAME).is_file():
        raise CheckpointError(
            f"{root} has no {MANIFEST_NAME}: it was not written completely by this trainer. {advice}"
        )
    for line in (root / MANIFEST_NAME).read_text(encoding="utf-8").splitlines():
        expected, name = line.split("  ", 1)
        path = root / name
        if not path.is_file():
            raise CheckpointError(
                f"{path} is listed in {MANIFEST_NAME} but missing: the checkpoint is incomplete. {advice}"
            )
        actual = file_sha256(path)
        if actual != expected:
            raise CheckpointError(
                f"{path} is corrupted: its sha256 is {actual}, the checkpoint recorded {expected}. {advice}"
            )


def hash_tensors(digest: "hashlib._Hash", tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Feeds `digest` the name and the raw bytes of every `(name, tensor)`, in order."""
    for name, tensor in tensors:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


@dataclass(frozen=True)
class FrozenWeights:
    """
    The weights a run does not train, by reference: `source` (where the run built its model from), and a sha256
    `fingerprint` over the names and values of its `num_parameters` frozen parameters.
    """

    source: dict[str, str | None]
    fingerprint: str
    num_parameters: int

    @classmethod
    def of(cls, model: nn.Module, source: dict[str, str | None]) -> "FrozenWeights":
        """The frozen parameters of `model` (those without `requires_grad`), built from `source`."""
        frozen = [(name, parameter) for name, parameter in model.named_parameters() if not parameter.requires_grad]
        digest = hashlib.sha256()
        hash_tensors(digest, frozen)
        return cls(source, digest.hexdigest(), sum(parameter.numel() for _, parameter in frozen))

    def save(self, directory: str | os.PathLike) -> None:
        """Writes `frozen_weights.json` into `directory` (a checkpoint being written)."""
        with open(os.path.join(directory, FROZEN_WEIGHTS_NAME), "w", encoding="utf-8") as file:
            json.dump(asdict(self), file, indent=2)

    def check(self, checkpoint: str | os.PathLike) -> None:
        """Raises [`CheckpointError`] unless `checkpoint` was trained on these very frozen weights."""
        if not os.path.isfile(os.path.join(checkpoint, FROZEN_WEIGHTS_NAME)):
            raise CheckpointError(
                f"{checkpoint} has no {FROZEN_WEIGHTS_NAME}, so the frozen weights it was trained on are unknown: it "
                "was not written by this trainer. Start afresh (--overwrite_output_dir)."
            )
        with open(os.path.join(checkpoint, FROZEN_WEIGHTS_NAME), encoding="utf-8") as file:
            recorded = FrozenWeights(**json.load(file))
        if recorded.fingerprint != self.fingerprint:
            raise CheckpointError(
                f"{checkpoint} was trained on other frozen weights ({recorded.num_parameters:,} parameters from "
                f"{recorded.source}, fingerprint {recorded.fingerprint[:16]}) than this run built "
                f"({self.num_parameters:,} from {self.source}, fingerprint {self.fingerprint[:16]}). Resume with the "
                "model source, stage and settings the checkpoint was trained with."
            )
