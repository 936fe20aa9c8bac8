# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
[`EpochLengthGroupedSampler`]: a training order that puts captions of similar length in the same batch, so that less
of every batch is padding (`group_by_length`).
"""

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices


class EpochLengthGroupedSampler(Sampler[int]):
    """
    transformers' length-grouped order (what `TrainingArguments.group_by_length` uses: a shuffle, then mega-batches of
    up to 50 batches each sorted by length, the longest batch first) over the lengths of the examples in the current
    epoch. The shuffle is seeded from `seed + epoch`, the epoch that the prepared loader sets (`set_epoch`), so the
    order is the same on every process and after a resume; `lengths_of_epoch` may change with the epoch (a caption
    drawn anew every epoch).

    Args:
        num_examples (`int`): examples in the dataset.
        lengths_of_epoch (`Callable[[int], list[int]]`): the length of every example, in tokens, in a given epoch.
        batch_size (`int`): examples per batch (per process).
        seed (`int`): seed of epoch 0's shuffle.
    """

    def __init__(self, num_examples: int, lengths_of_epoch: Callable[[int], list[int]], batch_size: int, seed: int):
        self.num_examples = num_examples
        self.lengths_of_epoch = lengths_of_epoch
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_examples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths_of_epoch(self.epoch), self.batch_size, generator=generator))
