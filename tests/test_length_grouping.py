"""`group_by_length`: batches of captions of similar length, in an order that depends on the seed and epoch only."""

import json
import shutil
from dataclasses import replace

import torch
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader

from data.captions import make_shapes_dataset
from models.tiny import build_tiny_tokenizer
from tiny_runs import assert_same_weights, saved_weights, tiny_args
from training import train
from training.data import CaptionExamples, length_grouped_sampler


def padding(order: list[int], lengths: list[int], batch_size: int) -> int:
    batches = [[lengths[i] for i in order[start : start + batch_size]] for start in range(0, len(order), batch_size)]
    return sum(max(batch) * len(batch) - sum(batch) for batch in batches)


def test_length_grouped_order_cuts_padding_and_follows_each_epochs_references():
    tokenizer = build_tiny_tokenizer()
    examples = CaptionExamples(make_shapes_dataset(96, split="train"), seed=0)
    sampler = length_grouped_sampler(examples, tokenizer, max_caption_tokens=30, batch_size=8, seed=0)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        examples.set_epoch(epoch)
        lengths = sampler.lengths_of_epoch(epoch)
        drawn = [examples.captions[row][examples.reference_index(row, epoch)] for row in examples.rows]
        assert lengths == [min(len(ids), 30) for ids in tokenizer(drawn, add_special_tokens=False).input_ids]
        order = list(sampler)
        assert sorted(order) == list(range(96)) and len(sampler) == 96
        shuffled = torch.randperm(96, generator=torch.Generator().manual_seed(epoch)).tolist()
        assert padding(order, lengths, 8) < padding(shuffled, lengths, 8) / 2
    assert max(lengths) > min(lengths) + 10  # varied captions
    again = length_grouped_sampler(examples, tokenizer, max_caption_tokens=30, batch_size=8, seed=0)
    again.set_epoch(1)
    assert list(again) == order
    again.set_epoch(0)
    assert list(again) != order
    other_seed = length_grouped_sampler(examples, tokenizer, max_caption_tokens=30, batch_size=8, seed=1)
    other_seed.set_epoch(1)
    assert list(other_seed) != order


def test_processes_share_the_length_grouped_batches_without_overlap():
    examples = CaptionExamples(make_shapes_dataset(64, split="train"), seed=0)
    sampler = length_grouped_sampler(examples, build_tiny_tokenizer(), 30, batch_size=4, seed=0)
    sampler.set_epoch(2)
    single = [batch.tolist() for batch in DataLoader(range(64), batch_size=4, sampler=sampler)]
    shards = []
    for rank in (0, 1):
        loader = prepare_data_loader(
            DataLoader(range(64), batch_size=4, sampler=sampler), num_processes=2, process_index=rank,
            put_on_device=False, use_seedable_sampler=True,
        )  # fmt: skip
        loader.set_epoch(2)
        shards.append([batch.tolist() for batch in loader])
    assert [batch for pair in zip(*shards) for batch in pair] == single


def test_a_length_grouped_run_resumes_mid_epoch_to_the_uninterrupted_result(tmp_path):
    # 48 images in batches of 8: 6 steps per epoch; checkpoint-8 is in the middle of epoch 1.
    args = tiny_args(
        tmp_path, num_train_epochs=2, save_steps=8, group_by_length=True, output_dir=str(tmp_path / "straight")
    )
    train(args)
    state = json.loads((tmp_path / "straight" / "checkpoint-8" / "trainer_state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)
    shutil.copytree(tmp_path / "straight" / "checkpoint-8", tmp_path / "resumed" / "checkpoint-8")
    train(replace(args, output_dir=str(tmp_path / "resumed"), resume_from_checkpoint="latest"))
    assert_same_weights(saved_weights(tmp_path / "resumed"), saved_weights(tmp_path / "straight"))

    shuffled = tiny_args(tmp_path, num_train_epochs=2, output_dir=str(tmp_path / "shuffled"))
    train(shuffled)
    grouped, plain = saved_weights(tmp_path / "straight"), saved_weights(tmp_path / "shuffled")
    assert any(not torch.allclose(grouped[name], plain[name]) for name in grouped), "the grouped order was not used"
