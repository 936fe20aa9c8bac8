"""`training.loop`: a run learns, resumes mid-epoch bit-identically, keeps frozen weights frozen, trains LoRA adapters,
skips unreadable images, and `training_step` is the step users run; offline on CPU with tiny models."""

import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from huggingface_hub import ModelCard
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from data.captions import make_shapes_dataset
from modeling_vlm import VLMForConditionalGeneration
from models.tiny import build_tiny_vlm
from tiny_runs import assert_same_weights, caption_inputs, saved_weights, tiny_args
from training import train, training_step
from training.checkpointing import latest_checkpoint
from training.data import CaptionCollator, build_eval_set
from training.loop import make_accelerator, replay_if_unreadable
from training.model_setup import TrainingSchedule, build_optimizer, configure_trainable_parameters


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
    untrained, trained = results.history[0], results.history[-1]
    assert (untrained["step"], trained["step"]) == (0, 63)
    # The untrained model writes noise; one epoch teaches the caption language: the loss at least halves (it drops
    # from about 6.2 to about 0.9) and CIDEr / METEOR rise well above the untrained model's ~0 (to about 0.4 / 0.2).
    assert trained["loss"] < 0.5 * untrained["loss"]
    assert trained["CIDEr"] > untrained["CIDEr"] + 0.1
    assert trained["METEOR"] > untrained["METEOR"] + 0.1

    output_dir = Path(args.output_dir)
    assert list((output_dir / "logs").rglob("events.out.tfevents.*"))
    assert (output_dir / "checkpoint-40" / "trainer_state.json").is_file()
    assert (output_dir / "best" / "trainable.safetensors").is_file()  # lean, as a checkpoint
    assert json.loads((output_dir / "training_results.json").read_text())["final_metrics"] == results.final_metrics
    model = AutoModelForImageTextToText.from_pretrained(output_dir, trust_remote_code=True)
    assert model.config.projector_type == "mlp"


def test_model_card_of_a_run_has_valid_metadata_and_its_metrics(learned_run):
    args, results = learned_run
    card = ModelCard.load(Path(args.output_dir) / "README.md")
    assert card.data.pipeline_tag == "image-text-to-text"
    assert card.data.library_name == "transformers"
    reported = {result.metric_name: result.metric_value for result in card.data.eval_results}
    final = results.final_metrics
    for metric in ("CIDEr", "METEOR", "BLEU-4", "ROUGE-L"):
        assert reported[metric] == round(final[metric], 4)
    assert reported["validation loss"] == round(final["loss"], 4)
    assert f"{final['CIDEr']:.4f}" in card.text
    for image_id, _, caption in results.sample_captions:
        assert image_id in card.text and caption in card.text
    assert "trust_remote_code=True" in card.text and "stage: finetune" in card.text


def test_resume_mid_epoch_gives_the_uninterrupted_result_and_align_keeps_towers_frozen(tmp_path):
    # 72 images in micro-batches of 8 with 2 accumulation steps: 9 micro-batches, so 5 optimizer steps, per epoch.
    args = tiny_args(
        tmp_path, max_train_samples=72, gradient_accumulation_steps=2, max_steps=8, save_steps=3, save_total_limit=5,
        output_dir=str(tmp_path / "straight"),
    )
    straight = train(args)
    assert straight.global_step == 8
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
    expected = saved_weights(tmp_path / "straight")
    assert_same_weights(saved_weights(resumed_dir), expected)

    # Resumed in the second epoch: the rest of epoch 1 comes in epoch 1's order with epoch 1's references.
    state = json.loads((tmp_path / "straight" / "checkpoint-6" / "trainer_state.json").read_text())
    assert (state["global_step"], state["epoch"], state["step_in_epoch"]) == (6, 1, 2)
    second_epoch_dir = tmp_path / "resumed-in-epoch-1"
    shutil.copytree(tmp_path / "straight" / "checkpoint-6", second_epoch_dir / "checkpoint-6")
    train(replace(args, output_dir=str(second_epoch_dir), resume_from_checkpoint="latest"))
    assert_same_weights(saved_weights(second_epoch_dir), expected)

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
    assert [record["step"] for record in results.history] == [4] and "CIDEr" in results.final_metrics
    best = load_file(output_dir / "best" / "trainable.safetensors")
    assert set(best) == set(saved_weights(output_dir / "checkpoint-4"))  # lean: what trains
    initial = build_tiny_vlm("mlp", seed=0)[0].state_dict()

    # The checkpoint holds what trains only: the language model's adapters and the projector (trained whole).
    checkpoint = saved_weights(output_dir / "checkpoint-4")
    assert all("lora_" in name or "multi_modal_projector.modules_to_save" in name for name in checkpoint)
    assert any(".language_model." in name and "lora_B" in name for name in checkpoint)
    assert not any("vision_tower" in name for name in checkpoint)
    # Merged, every weight but the adapted projections and the projector is the untrained one.
    merged_weights = saved_weights(output_dir)
    adapted = r"language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$"
    for name, tensor in merged_weights.items():
        if not re.search(adapted, name) and not name.startswith("multi_modal_projector."):
            assert torch.equal(tensor, initial[name]), f"frozen {name} changed"

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
    assert results.global_step == 4  # 7 rows in batches of 4, twice
    assert results.skipped_train_images == 2  # the broken image, once per epoch
    assert (results.skipped_eval_images, results.num_eval_images) == (1, 2)
    assert len(results.history) == 2 and all(math.isfinite(record["loss"]) for record in results.history)
    assert results.feature_cache["train"] == ("computed" if cache_vision_features else None)


def caption_batch(processor, num_images: int) -> dict[str, torch.Tensor]:
    """A training batch of `num_images` shapes with their first reference, as the collator builds it."""
    shapes = make_shapes_dataset(num_images, split="train")
    examples = [{"image_id": row["image_id"], "caption": row["captions"][0], "image": row["image"]} for row in shapes]
    batch = CaptionCollator(processor)(examples)
    del batch["num_skipped_images"]
    return batch


def prepared_align_run(accelerator: Accelerator, model) -> tuple:
    """`model` in the `align` stage with AdamW (lr 1e-2) and a constant schedule, prepared by `accelerator`."""
    model = configure_trainable_parameters(model, "align")
    optimizer = build_optimizer(model, learning_rate=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return accelerator.prepare(model, optimizer, scheduler)


def test_training_step_is_forward_backward_clip_and_adamw_over_the_accumulation_cycle():
    """Two micro-batches of an accumulation cycle equal a hand-written step: each loss / 2 backward, clip, AdamW."""
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model, processor = build_tiny_vlm("mlp", seed=0)
    reference, _ = build_tiny_vlm("mlp", seed=0)
    batch = caption_batch(processor, 4)
    model, optimizer, scheduler = prepared_align_run(accelerator, model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss, grad_norm, objectives = training_step(model, batch, accelerator, optimizer, scheduler, max_grad_norm=0.1)
    assert grad_norm is None and objectives == {}  # mid-cycle: no optimizer step yet; a single-objective model
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    second_loss, grad_norm, _ = training_step(model, batch, accelerator, optimizer, scheduler, max_grad_norm=0.1)

    configure_trainable_parameters(reference, "align")
    reference_optimizer = build_optimizer(reference, learning_rate=1e-2)
    for _ in range(2):
        reference_loss = reference(**batch).loss
        (reference_loss / 2).backward()
    expected_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.1)
    reference_optimizer.step()
    torch.testing.assert_close(loss, reference_loss.detach())
    torch.testing.assert_close(second_loss, reference_loss.detach())
    torch.testing.assert_close(grad_norm, expected_norm)
    assert grad_norm > 0.1  # the clipping was active
    for (name, trained), expected in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(trained, expected, msg=name)
    assert not torch.equal(model.multi_modal_projector.linear_1.weight, before["multi_modal_projector.linear_1.weight"])


def test_training_step_with_zero_weight_learns_nothing():
    accelerator = Accelerator(cpu=True)
    model, processor = build_tiny_vlm("linear", seed=0)
    batch = caption_batch(processor, 1)
    model, optimizer, scheduler = prepared_align_run(accelerator, model)
    before = [p.detach().clone() for p in model.parameters()]
    loss, grad_norm, _ = training_step(model, batch, accelerator, optimizer, scheduler, 1.0, loss_weight=0.0)
    assert loss == 0 and grad_norm == 0
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        # 72 images, global batch 8, 2 accumulation steps: 9 micro-batches, 5 optimizer steps per epoch.
        ({"num_train_epochs": 3}, (9, 5, 15, 3, 0)),
        ({"num_train_epochs": 3, "max_steps": 8, "warmup_ratio": 0.3}, (9, 5, 8, 2, 3)),
        ({"num_train_epochs": 1, "warmup_steps": 2, "warmup_ratio": 0.9}, (9, 5, 5, 1, 2)),
    ],
)
def test_training_schedule(arguments, expected):
    schedule = TrainingSchedule.plan(72, batch_size=8, gradient_accumulation_steps=2, **arguments)
    got = (
        schedule.batches_per_epoch, schedule.steps_per_epoch, schedule.total_steps, schedule.num_epochs,
        schedule.warmup_steps,
    )  # fmt: skip
    assert got == expected


def test_every_evaluation_scores_the_same_references(tmp_path):
    """With a zero learning rate the model never changes, so every evaluation must give the same validation loss."""
    args = tiny_args(
        tmp_path, learning_rate=0.0, max_train_samples=16, num_train_epochs=2, eval_strategy="epoch",
        eval_before_training=True, predict_with_generate=False,
    )
    losses = [record["loss"] for record in train(args).history]
    assert len(losses) == 3 and losses[0] == losses[1] == losses[2]


def test_training_order_depends_on_the_seed_and_the_epoch_only(tmp_path):
    """accelerate's seedable sampler shuffles; neighbouring seeds do not share their epoch orders one epoch apart."""

    def order(seed: int, epoch: int) -> list[int]:
        accelerator = make_accelerator(tiny_args(tmp_path, seed=seed))
        loader = accelerator.prepare_data_loader(torch.utils.data.DataLoader(range(32), batch_size=4, shuffle=True))
        loader.set_epoch(epoch)
        torch.manual_seed(seed + epoch + 123)  # the global generator plays no part
        return [int(index) for batch in loader for index in batch]

    assert order(0, 1) == order(0, 1) and sorted(order(0, 1)) == list(range(32))
    assert order(0, 0) != order(0, 1) and order(1, 0) != order(0, 0)
    assert order(1, 0) != order(0, 1) and order(1, 1) != order(0, 2)
    generator = torch.Generator().manual_seed(2 * 1_000_003 + 3)
    assert order(2, 3) == torch.randperm(32, generator=generator).tolist()


def test_a_batch_of_unreadable_images_replays_the_previous_one_with_zero_weight():
    kept = {"input_ids": torch.ones(1, 2)}
    assert replay_if_unreadable(kept, None) == (kept, 1.0, kept)
    assert replay_if_unreadable({}, kept) == (kept, 0.0, kept)
    assert replay_if_unreadable({}, None) == (None, 0.0, None)  # nothing to replay yet


def test_training_step_without_a_batch_still_steps_the_schedule():
    accelerator = Accelerator(cpu=True)
    model, optimizer, scheduler = prepared_align_run(accelerator, build_tiny_vlm("mlp", seed=0)[0])
    before = [p.detach().clone() for p in model.parameters()]
    loss, grad_norm, objectives = training_step(model, None, accelerator, optimizer, scheduler, 1.0)
    assert loss is None and grad_norm == 0 and objectives == {} and scheduler.scheduler.last_epoch == 1
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_the_training_loader_is_prepared_with_the_model(tmp_path, monkeypatch):
    """DeepSpeed sizes its micro-batches from a loader passed to the same `prepare` call as the model."""
    prepared_together = []
    prepare = Accelerator.prepare

    def recording_prepare(self, *objects, **kwargs):
        prepared_together.append({type(item).__name__ for item in objects})
        return prepare(self, *objects, **kwargs)

    monkeypatch.setattr(Accelerator, "prepare", recording_prepare)
    train(tiny_args(tmp_path, max_train_samples=8, max_steps=1))
    assert {"VLMForConditionalGeneration", "AdamW", "DataLoader", "LambdaLR"} in prepared_together


def test_captioning_the_evaluation_set_leaves_the_global_generator_alone():
    """Dropout (LoRA, projector) draws from the global generator: evaluating must not move it."""
    accelerator = Accelerator(cpu=True)
    processor = build_tiny_vlm("mlp", seed=0)[1]
    eval_set = build_eval_set(
        accelerator, make_shapes_dataset(3, split="validation"), None, CaptionCollator(processor), 0, 2, 0
    )
    before = torch.random.get_rng_state()
    assert [len(batch["image"]) for batch in eval_set.caption_loader] == [2, 1]
    assert torch.equal(torch.random.get_rng_state(), before)


def test_a_run_with_a_chunked_loss_trains_as_one_with_the_loss_in_one_piece(tmp_path):
    common = dict(max_train_samples=16, num_train_epochs=2, eval_strategy="epoch", predict_with_generate=False)
    reference = train(tiny_args(tmp_path / "one_piece", **common))
    chunked = train(tiny_args(tmp_path / "chunked", loss_chunk_size=7, **common))
    for expected, actual in zip(reference.history, chunked.history, strict=True):
        assert actual["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert_same_weights(saved_weights(tmp_path / "chunked" / "run"), saved_weights(tmp_path / "one_piece" / "run"))
    saved_config = json.loads((tmp_path / "chunked" / "run" / "config.json").read_text())
    assert saved_config["loss_chunk_size"] == 7


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"loss_chunk_size": 0}, r"loss_chunk_size=0 is invalid; it must be a positive integer"),
        ({"loss_chunk_size": 64, "stage": "qformer_stage1"}, "stage qformer_stage1 has no language model: unset it"),
    ],
)
def test_invalid_loss_chunk_size_is_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_args(tmp_path, **overrides)


def test_a_compiled_run_saves_and_resumes_under_the_models_own_names(tmp_path, monkeypatch):
    """`accelerate launch --dynamo_backend ...` compiles the prepared model; what the run saves must not know it."""
    common = dict(
        max_train_samples=32, num_train_epochs=2, eval_strategy="epoch", predict_with_generate=False,
        metric_for_best_model="loss",
    )  # fmt: skip
    reference = train(tiny_args(tmp_path / "eager", **common))
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "eager")  # dynamo's wrapper, without inductor's compile time
    args = tiny_args(tmp_path / "compiled", save_steps=6, **common)
    AcceleratorState._reset_state(reset_partial_state=True)  # the state keeps the dynamo settings of its first run
    try:
        compiled = train(args)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "the model was not compiled"
        resumed = train(replace(args, resume_from_checkpoint="latest"))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert [r["loss"] for r in compiled.history] == pytest.approx([r["loss"] for r in reference.history], rel=1e-6)
    run_dir = tmp_path / "compiled" / "run"
    assert_same_weights(saved_weights(run_dir), saved_weights(tmp_path / "eager" / "run"))
    best = [load_file(tmp_path / run / "run" / "best" / "trainable.safetensors") for run in ("compiled", "eager")]
    assert_same_weights(*best)
    VLMForConditionalGeneration.from_pretrained(run_dir)
    assert resumed.global_step == 8
    assert_same_weights(saved_weights(run_dir), saved_weights(tmp_path / "eager" / "run"))
