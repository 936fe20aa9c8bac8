"""Answering questions: LLaVA's prompt, batched answers equal to one-by-one ones, VQA and POPE scores wired per type
and split, and `python eval.py --task vqa|pope` end to end, offline."""

import json
from unittest import mock

import pytest
import torch

import eval as vlm_eval
from data.questions import load_pope_questions, load_vqa_questions
from evaluation import question_answering
from evaluation.captioning import generate_replies
from evaluation.question_answering import answer_questions, evaluate_pope, evaluate_vqa, question_prompt
from models.tiny import build_tiny_vlm


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_vlm("mlp", seed=3)


def test_the_prompt_is_llavas_short_answer_prompt(tiny):
    _, processor = tiny
    text = question_prompt(processor, "How many shapes are there?")
    assert text.endswith(
        "<|im_start|>user\n<image>How many shapes are there?\nAnswer the question using a single word or phrase."
        "<|im_end|>\n<|im_start|>assistant\n"
    )


def test_batched_answers_equal_one_by_one(tiny):
    model, processor = tiny
    questions = load_vqa_questions("shapes", "test", max_samples=7)
    batched = answer_questions(model, processor, questions, batch_size=4, max_new_tokens=4)
    assert batched == answer_questions(model, processor, questions, batch_size=1, max_new_tokens=4)
    assert len(batched) == 7


def test_vqa_scores_per_question_and_answer_type(tiny, monkeypatch):
    model, processor = tiny
    questions = load_vqa_questions("shapes", "test", max_samples=20)
    # Right (a human answer every annotator gave) on even rows, wrong on odd ones.
    answers = [row[0] if index % 2 == 0 else "zzz" for index, row in enumerate(questions["answers"])]
    monkeypatch.setattr(question_answering, "answer_questions", lambda *args, **kwargs: answers)
    metrics, predictions = evaluate_vqa(model, processor, questions)
    assert predictions == dict(zip(questions["question_id"], answers))
    assert metrics["accuracy"] == pytest.approx(0.5)
    for column, prefix in (("question_type", "question_type/"), ("answer_type", "answer_type/")):
        rows_of = {}
        for index, kind in enumerate(questions[column]):
            rows_of.setdefault(kind, []).append(index)
        for kind, rows in rows_of.items():
            expected = sum(index % 2 == 0 for index in rows) / len(rows)
            assert metrics[prefix + kind] == pytest.approx(expected), prefix + kind


def test_pope_scores_each_split_on_its_own(tiny, monkeypatch):
    model, processor = tiny
    questions = load_pope_questions("shapes", max_samples=4)
    assert questions["split"] == ["random"] * 4 + ["popular"] * 4 + ["adversarial"] * 4
    monkeypatch.setattr(question_answering, "answer_questions", lambda *args, **kwargs: ["Yes."] * len(questions))
    metrics, predictions = evaluate_pope(model, processor, questions)
    assert sorted(predictions) == sorted(f"{s}/{q}" for s, q in zip(questions["split"], questions["question_id"]))
    for split in ("random", "popular", "adversarial"):
        labels = [a for a, s in zip(questions["answer"], questions["split"]) if s == split]
        share = labels.count("yes") / len(labels)
        assert metrics[f"{split}/accuracy"] == pytest.approx(share)  # every answer is yes
        assert (metrics[f"{split}/recall"], metrics[f"{split}/yes_ratio"]) == (1.0, 1.0)
        assert metrics[f"{split}/precision"] == pytest.approx(share)


@pytest.mark.parametrize("task", ["vqa", "pope"])
def test_the_cli_answers_scores_and_writes_every_output(tmp_path, task):
    model, processor = build_tiny_vlm("perceiver", seed=1, fusion="cross_attention")
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    output_dir = tmp_path / "out"
    rows = vlm_eval.main(
        ["--model", str(saved), "--model", "tiny:mlp", "--task", task, "--max_samples", "6", "--max_new_tokens", "3",
         "--batch_size", "4", "--output_dir", str(output_dir)]
    )  # fmt: skip
    assert [(row["projector"], row["fusion"]) for row in rows] == [("perceiver", "cross_attention"), ("mlp", "early")]
    num_questions = 6 if task == "vqa" else 18
    for slug in (vlm_eval.file_slug(str(saved)), "tiny_mlp"):
        predictions = json.loads((output_dir / f"predictions_{slug}.json").read_text())
        metrics = json.loads((output_dir / f"metrics_{slug}.json").read_text())
        assert len(predictions) == metrics["num_questions"] == num_questions
        assert metrics["task"] == task
        assert ("question_type/counting" in metrics) if task == "vqa" else ("adversarial/f1" in metrics)
    table = (output_dir / "comparison.md").read_text()
    header = table.splitlines()[0]
    assert header.startswith("| model | projector | fusion | image tokens |") and header.endswith("| answers/s |")
    assert ("| accuracy | answer_type/yes/no |" in header) if task == "vqa" else ("| random/accuracy |" in header)


def test_a_question_source_that_cannot_be_read_ends_with_its_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        vlm_eval.main(["--model", "tiny:mlp", "--task", "pope", "--dataset", str(tmp_path / "missing.parquet")])
    assert exit_info.value.code == 2
    assert "missing.parquet" in capsys.readouterr().err


@pytest.mark.parametrize("fusion", ["early", "cross_attention"])
def test_questions_about_one_image_share_its_vision_features_and_get_the_same_answers(fusion):
    model, processor = build_tiny_vlm("perceiver", seed=4, fusion=fusion)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("_gate"):
                parameter.fill_(0.5)
    questions = load_vqa_questions("shapes", "test", max_samples=15)  # 3 images, 5 questions each
    texts = [question_prompt(processor, question) for question in questions["question"]]
    images = questions["image"]
    separate = generate_replies(model, processor, images, texts, batch_size=8, max_new_tokens=5)
    with mock.patch.object(model, "get_vision_features", wraps=model.get_vision_features) as tower:
        shared = generate_replies(model, processor, images, texts, 8, 5, image_keys=questions["image_id"])
    assert shared == separate
    # Batches of 8 questions: rows 0-7 show images 0 and 1, rows 8-14 images 1 and 2.
    assert [len(call.args[0]) for call in tower.call_args_list] == [2, 2]
