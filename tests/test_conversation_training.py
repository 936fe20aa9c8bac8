"""Conversations in training: the chat collator (captions exactly as before, conversations with the loss on the answers,
images in order, unreadable ones dropped), the mixture's examples, the arguments that cannot work together, and a tiny
run on captions and questions that learns to answer."""

import json
import shutil
from dataclasses import replace

import pytest
import torch
from accelerate import Accelerator
from huggingface_hub import ModelCard

from data.captions import make_shapes_dataset
from data.conversations import ConversationDataError, answer_marking_template, encode_conversation
from data.shapes_vqa import make_shapes_conversations
from evaluation.vqa_metrics import VQA_SHORT_ANSWER_PROMPT
from models.tiny import build_tiny_vlm
from processing_vlm import IGNORE_INDEX
from tiny_runs import assert_same_weights, saved_weights, tiny_args, write_llava_file
from training import VLMTrainingArguments, train
from training.conversation_data import (
    ChatCollator,
    ConversationExamples,
    MixedExamples,
    conversation_examples,
    mixed_examples,
)
from training.data import CaptionCollator, CaptionExamples


@pytest.fixture(scope="module")
def processor():
    return build_tiny_vlm("mlp")[1]


def caption_examples(n: int = 3) -> CaptionExamples:
    return CaptionExamples(make_shapes_dataset(n, seed=1))


def conversations(n: int = 2) -> ConversationExamples:
    return ConversationExamples(make_shapes_conversations(n, VQA_SHORT_ANSWER_PROMPT, seed=1))


def test_captions_collate_exactly_as_the_caption_collator_does(processor):
    examples = [caption_examples()[i] for i in range(3)]
    examples[1]["caption"] = "a very long caption " * 10  # cut to max_caption_tokens by both
    expected = CaptionCollator(processor, max_caption_tokens=12)(examples)
    batch = ChatCollator(processor, max_caption_tokens=12)(examples)
    assert batch.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(batch[name], value) if isinstance(value, torch.Tensor) else batch[name] == value, name


def test_a_mixed_batch_puts_every_image_in_order_and_the_loss_on_the_answers(processor):
    examples = [conversations()[0], caption_examples()[2], conversations()[1]]
    batch = ChatCollator(processor)(examples)
    template = answer_marking_template(processor)
    expected = [
        encode_conversation(processor, examples[0]["messages"], template, "0"),
        ChatCollator(processor).as_chat(examples[1]),
        encode_conversation(processor, examples[2]["messages"], template, "2"),
    ]
    expected[1] = encode_conversation(processor, expected[1][1], template, "1")
    length = batch["input_ids"].shape[1]
    for row, (ids, labels) in enumerate(expected):
        assert batch["input_ids"][row, length - len(ids) :].tolist() == ids  # left padded
        assert batch["labels"][row, length - len(ids) :].tolist() == labels
        assert (batch["labels"][row, : length - len(ids)] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].sum() == len(ids)
    images = [*examples[0]["images"], examples[1]["image"], *examples[2]["images"]]
    expected_pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    assert torch.equal(batch["pixel_values"], expected_pixels)
    assert batch["num_skipped_images"] == 0


def test_an_unreadable_image_drops_its_conversation(processor):
    first, second = conversations()[0], conversations()[1]
    first["images"][1] = None
    batch = ChatCollator(processor)([first, second])
    assert batch["num_skipped_images"] == 1 and batch["input_ids"].shape[0] == 1
    assert len(batch["pixel_values"]) == len(second["images"]) == 2


def test_a_conversation_longer_than_max_length_is_named(processor):
    example = conversations()[0]
    with pytest.raises(ConversationDataError, match="Sample 'shapes-qa-train-00000' has .* more than max_length 20"):
        ChatCollator(processor, max_length=20)([example])


def test_cached_features_go_in_as_vision_features(processor):
    features = torch.randn(4, 16, 32)
    examples = [{"id": "a", "messages": conversations()[0]["messages"], "vision_features": list(features[:3])},
                {"image_id": "b", "caption": "a red circle.", "vision_features": features[3]}]  # fmt: skip
    batch = ChatCollator(processor)(examples)
    assert torch.equal(batch["vision_features"], features) and "pixel_values" not in batch


def test_the_mixture_is_the_captions_then_the_conversations_and_hears_the_epoch():
    captions, talks = caption_examples(4), conversations(2)
    mixed = mixed_examples(captions, talks)
    assert isinstance(mixed, MixedExamples) and len(mixed) == 4 + len(talks)
    assert mixed[3]["image_id"] == captions[3]["image_id"] and mixed[4]["id"] == "shapes-qa-train-00000"
    drawn = [captions.reference_index(0, epoch) for epoch in range(6)]
    assert len(set(drawn)) > 1  # the reference changes with the epoch
    mixed.set_epoch(5)
    assert mixed[0]["caption"] == captions.captions[0][drawn[5]]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"max_length": 0}, "max_length=0 is invalid"),
        ({"dataset": "llava.json", "conversations": "shapes"}, "is a conversation file, and conversations="),
        ({"dataset": "llava.json", "stage": "qformer_stage1"}, "stage qformer_stage1 trains on image-caption pairs"),
    ],
)
def test_arguments_that_cannot_work_together_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        VLMTrainingArguments(model="tiny", **settings)


def test_stage1_leaves_out_the_conversations_and_questions_of_a_shared_config():
    args = VLMTrainingArguments(model="tiny", stage="qformer_stage1", conversations="shapes", eval_vqa="shapes")
    assert (args.conversations, args.eval_vqa, args.eval_pope) == (None, None, None)


def test_an_image_less_batch_has_no_pixels(processor):
    text_only = {"id": "t", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
    ], "images": []}  # fmt: skip
    batch = ChatCollator(processor)([text_only])
    assert "pixel_values" not in batch and "vision_features" not in batch
    model = build_tiny_vlm("mlp")[0]
    assert torch.isfinite(model(**{k: v for k, v in batch.items() if k != "num_skipped_images"}).loss)


def test_a_tiny_run_on_captions_and_questions_learns_to_answer(tmp_path):
    """The untrained model answers nothing right; trained on the mixture, it answers in the questions' vocabulary."""
    args = tiny_args(
        tmp_path, stage="finetune", max_train_samples=32, num_train_epochs=3, learning_rate=3e-3, warmup_ratio=0.05,
        per_device_train_batch_size=16, conversations="shapes", max_train_conversations=200, eval_strategy="epoch",
        eval_before_training=True, eval_vqa="shapes", eval_pope="shapes", max_eval_questions=30,
        per_device_eval_batch_size=30, max_new_tokens=8, group_by_length=True,
    )  # fmt: skip
    results = train(args)
    untrained, final = results.history[0], results.final_metrics
    assert untrained["VQA/accuracy"] == 0.0 and final["VQA/accuracy"] > untrained["VQA/accuracy"]
    assert {f"POPE/{split}/f1" for split in ("random", "popular", "adversarial")} <= final.keys()
    assert results.num_train_conversations == len(make_shapes_conversations(200, VQA_SHORT_ANSWER_PROMPT))
    assert results.num_train_images == 32


def test_a_conversation_only_run_trains_on_a_llava_file_and_answers(tmp_path):
    """LLaVA-1.5's stage-2 shape: a LLaVA JSON as the dataset, the loss on its answers, questions at evaluation."""
    path = write_llava_file(tmp_path, num_scenes=24, seed=5, extra=[{"id": "no-answer", "conversations": [
        {"from": "human", "value": "Hi"}]}])  # fmt: skip
    conversations = make_shapes_conversations(24, VQA_SHORT_ANSWER_PROMPT, seed=5)
    args = tiny_args(
        tmp_path, stage="finetune", dataset=str(path), image_root=str(tmp_path), skip_invalid_conversations=True,
        num_train_epochs=1, per_device_train_batch_size=8, eval_strategy="epoch", eval_vqa="shapes",
        max_eval_questions=10, per_device_eval_batch_size=10, max_new_tokens=4,
    )  # fmt: skip
    assert args.conversations_only and args.metric_for_best_model == "VQA/accuracy"
    results = train(args)
    assert results.num_train_conversations == len(conversations) and results.num_train_images == 0
    assert "VQA/accuracy" in results.final_metrics and "loss" not in results.final_metrics
    assert results.global_step == -(-len(conversations) // 8)
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_the_model_card_reports_the_answers_scores(tmp_path):
    args = tiny_args(
        tmp_path, stage="finetune", max_train_samples=16, conversations="shapes", max_train_conversations=6,
        eval_vqa="shapes", eval_pope="shapes", max_eval_questions=6, eval_strategy="epoch", max_new_tokens=4,
    )  # fmt: skip
    results = train(args)
    card = ModelCard.load(str(tmp_path / "run" / "README.md"))
    reported = {(r.task_type, r.metric_name, r.dataset_split): r.metric_value for r in card.data.eval_results}
    for metric in ("VQA/accuracy", "POPE/random/f1", "POPE/popular/f1", "POPE/adversarial/f1"):
        split = "validation" if metric.startswith("VQA") else metric.split("/")[1]
        assert reported[("visual-question-answering", metric, split)] == round(results.final_metrics[metric], 4)
    assert "| VQA/accuracy | POPE/random/f1 |" in card.text


@pytest.mark.parametrize("group_by_length", [False, True], ids=["seedable-sampler", "length-grouped"])
def test_a_mixed_run_resumes_mid_epoch_to_the_uninterrupted_result(tmp_path, group_by_length):
    # 48 captions and 20 conversations (12 scenes' 60 questions, 3 to one) in batches of 8: 9 steps per epoch.
    args = tiny_args(
        tmp_path, num_train_epochs=2, save_steps=12, conversations="shapes", max_train_conversations=12,
        group_by_length=group_by_length, output_dir=str(tmp_path / "straight"),
    )  # fmt: skip
    train(args)
    state = json.loads((tmp_path / "straight" / "checkpoint-12" / "trainer_state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"]) == (1, 3)
    shutil.copytree(tmp_path / "straight" / "checkpoint-12", tmp_path / "resumed" / "checkpoint-12")
    train(replace(args, output_dir=str(tmp_path / "resumed"), resume_from_checkpoint="latest"))
    assert_same_weights(saved_weights(tmp_path / "resumed"), saved_weights(tmp_path / "straight"))


def test_cached_features_of_a_conversation_are_those_of_its_own_images(tmp_path):
    model, processor = build_tiny_vlm("mlp")
    args = tiny_args(tmp_path, conversations="shapes", max_train_conversations=6)
    cached, features, refused = conversation_examples(args, Accelerator(cpu=True), model, processor, True)
    assert features is cached.vision_features and refused == []
    opened = ConversationExamples(make_shapes_conversations(6, VQA_SHORT_ANSWER_PROMPT))
    for index in (0, len(opened) - 1):
        pixel_values = processor.image_processor(opened[index]["images"], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            expected = model.get_vision_features(pixel_values)
        torch.testing.assert_close(torch.stack(cached[index]["vision_features"]), expected)


@pytest.mark.parametrize(("projector_type", "fusion"), [("perceiver", "early"), ("mlp", "hybrid")])
def test_a_tiled_mixed_run_reads_every_tile_learns_keeps_the_towers_and_resumes(tmp_path, projector_type, fusion):
    # 48 captions and 8 conversations (a 64 px scene: 2 x 2 tiles and a thumbnail; early fusion puts the Perceiver's 8
    # latents of each in the sequence, hybrid the MLP's 16 of the thumbnail), align, 2 epochs.
    args = tiny_args(
        tmp_path, projector_type=projector_type, fusion=fusion, num_train_epochs=2, save_steps=4,
        conversations="shapes", max_train_conversations=8, learning_rate=1e-2, save_total_limit=5,
        model_config={"max_tiles": 4}, eval_strategy="epoch", eval_before_training=True, max_eval_questions=10,
        eval_vqa="shapes", output_dir=str(tmp_path / "straight"),
    )  # fmt: skip
    results = train(args)
    assert results.feature_cache == {"train": None, "eval": None, "conversations": None}  # tiles are read, not cached
    assert results.history[-1]["loss"] < results.history[0]["loss"] - 0.02  # align: the projector alone learns
    expected = saved_weights(tmp_path / "straight")
    initial = build_tiny_vlm(projector_type, seed=0, fusion=fusion, max_tiles=4)[0].state_dict()
    for name, tensor in expected.items():  # align: the projector (and hybrid's blocks) train, nothing else
        trained = name.startswith(("multi_modal_projector.", "cross_attention_blocks."))
        assert torch.equal(tensor, initial[name]) != trained, name
    shutil.copytree(tmp_path / "straight" / "checkpoint-4", tmp_path / "resumed" / "checkpoint-4")
    train(replace(args, output_dir=str(tmp_path / "resumed"), resume_from_checkpoint="latest"))
    assert_same_weights(saved_weights(tmp_path / "resumed"), expected)
