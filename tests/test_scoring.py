"""Tests of the COCO caption scoring of `eval.py` and of the `metrics/coco_caption` 🤗 Evaluate module."""

import gc
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from eval import COCO_CAPTION_METRICS, JavaNotFoundError, score_captions


REPO_ROOT = Path(__file__).resolve().parents[1]

PREDICTIONS = {
    391895: "A man riding a motorcycle down a dirt road.",
    "shapes-7": "a red circle on a white background",
    522418: "",
    184613: "!!! ... ?",
    318219: "Un café crème à côté d'un croissant 🥐",
    554625: "一只猫坐在窗台上",
    "two-lines": "two dogs\nplaying in the snow",
}
REFERENCES = {
    391895: [
        "A man with a red helmet on a small moped on a dirt road.",
        "Man riding a motor bike on a dirt road on the countryside.",
        "A man riding on the back of a motorcycle.",
        "A dirt path with a young person on a motor bike rests to the foreground of a verdant area.",
        "A man in a red shirt and a red hat is on a motorcycle on a hill side.",
    ],
    "shapes-7": "a small red circle in the middle of a white image",
    522418: ["A woman wearing a net on her head cutting a cake.", "A woman cutting a large white sheet cake."],
    184613: ["A kitchen with wooden cabinets, a stove and a window."],
    318219: ["A café crème next to a croissant on a plate.", "Un café et un croissant sur une table 🥐."],
    554625: ["一只猫坐在窗台上看着外面", "A cat sitting on a window sill."],
    "two-lines": ["Two dogs play in the snow.", "Two dogs are\nrunning through deep snow."],
}


def pycocoevalcap_scores(predictions: dict, references: dict) -> dict[str, float]:
    """What pycocoevalcap's `COCOEvalCap.evaluate` computes, written out with its own classes."""
    gts, res = {}, {}
    for image_id, prediction in predictions.items():
        captions = [references[image_id]] if isinstance(references[image_id], str) else references[image_id]
        gts[image_id] = [{"caption": caption} for caption in captions]
        res[image_id] = [{"caption": prediction}]
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    bleu, _ = Bleu(4).compute_score(gts, res)
    meteor_scorer = Meteor()
    meteor, _ = meteor_scorer.compute_score(gts, res)
    del meteor_scorer  # `Meteor.__del__` stops its JVM
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return dict(zip(COCO_CAPTION_METRICS, [*bleu, meteor, rouge, cider], strict=True))


def java_children() -> set[int]:
    """Ids of the `java` processes, zombies included, whose parent is this test process."""
    children = set()
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_file.read_text()
        except OSError:  # the process ended meanwhile
            continue
        command = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent_id = int(stat[stat.rindex(")") + 2 :].split()[1])
        if command == "java" and parent_id == os.getpid():
            children.add(int(stat_file.parent.name))
    return children


def evaluate_module_scores(predictions: dict, references: dict) -> dict[str, float]:
    """The `metrics/coco_caption` module, loaded by `evaluate.load` from its local path, on the same captions."""
    import evaluate

    coco_caption = evaluate.load(str(REPO_ROOT / "metrics" / "coco_caption"))
    return coco_caption.compute(predictions=list(predictions.values()), references=list(references.values()))


class FixedCaptionsRun(NamedTuple):
    score_captions: dict[str, float]
    pycocoevalcap: dict[str, float]
    evaluate_module: dict[str, float]
    java_children_left: set[int]


@pytest.fixture(scope="module")
def fixed_captions_run() -> FixedCaptionsRun:
    """Score the fixed captions with `score_captions`, with pycocoevalcap by hand and with the evaluate module."""
    # Each run spends ~10 s in a METEOR JVM loading its paraphrase table: running them side by side saves time.
    with pytest.MonkeyPatch.context() as monkeypatch, ThreadPoolExecutor(max_workers=2) as pool:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
        before = java_children()
        expected = pool.submit(pycocoevalcap_scores, PREDICTIONS, REFERENCES)
        from_evaluate = pool.submit(evaluate_module_scores, PREDICTIONS, REFERENCES)
        scores = score_captions(PREDICTIONS, REFERENCES)
        expected, from_evaluate = expected.result(), from_evaluate.result()
        return FixedCaptionsRun(scores, expected, from_evaluate, java_children() - before)


def test_scores_equal_pycocoevalcap(fixed_captions_run):
    scores = fixed_captions_run.score_captions
    assert list(scores) == list(COCO_CAPTION_METRICS)
    assert all(type(value) is float for value in scores.values())
    assert scores == fixed_captions_run.pycocoevalcap
    assert 0 < scores["BLEU-1"] < 1 and scores["CIDEr"] > 0


def test_empty_prediction_gives_finite_numbers(fixed_captions_run):
    assert PREDICTIONS[522418] == ""
    assert all(math.isfinite(value) for value in fixed_captions_run.score_captions.values())


def test_no_java_process_left_running(fixed_captions_run):
    assert fixed_captions_run.java_children_left == set()


def test_evaluate_module_matches_score_captions(fixed_captions_run):
    assert fixed_captions_run.evaluate_module == fixed_captions_run.score_captions


def test_line_breaks_act_as_spaces_and_nothing_is_printed(fixed_captions_run, capfd):
    # pycocoevalcap alone moves every caption after a "\r", "\f" or U+2028 onto a later id.
    predictions = {**PREDICTIONS, 391895: "A man riding\ra motorcycle\fdown a dirt road."}
    references = {**REFERENCES, "shapes-7": "a small red circle in\u2028the middle of a white image"}
    assert score_captions(predictions, references) == fixed_captions_run.score_captions
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("java", ["missing", "broken"])
def test_java_problem_raises_with_install_hint(java, tmp_path, monkeypatch):
    if java == "broken":
        fake_java = tmp_path / "java"
        fake_java.write_text("#!/bin/sh\necho 'Error: could not create the Java Virtual Machine.' >&2\nexit 1\n")
        fake_java.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaNotFoundError, match="apt-get install default-jre-headless") as error:
        score_captions({1: "a cat"}, {1: ["a cat on a mat"]})
    assert "PTB tokenizer, METEOR 1.5" in str(error.value) and "conda install openjdk" in str(error.value)
    assert isinstance(error.value, RuntimeError)


def test_stuck_meteor_is_killed_instead_of_hanging(monkeypatch):
    monkeypatch.setattr("eval.METEOR_TIMEOUT_S", 0.0)
    monkeypatch.setattr("eval.METEOR_TIMEOUT_PER_ID_S", 0.0)
    before = java_children()
    with pytest.raises(RuntimeError, match="METEOR 1.5 .* gave no answer within 0 s and was killed"):
        score_captions({1: "a cat", 2: "a dog"}, {1: ["a cat on a mat"], 2: "a dog"})
    gc.collect()  # `Meteor.__del__` takes the lock its failed `compute_score` held: this must not block
    assert java_children() - before == set()


def test_mismatched_ids_are_listed():
    with pytest.raises(ValueError, match=r"prediction but no reference: 'extra'") as error:
        score_captions({1: "a", "extra": "b"}, {1: ["a"], 7: ["c"], 8: ["d"]})
    assert "references but no prediction: 7, 8" in str(error.value)
    with pytest.raises(ValueError, match=r"9 id\(s\) have references but no prediction: 1, 2, 3, 4, 5, \.\.\. \(9 in"):
        score_captions({0: "a"}, {image_id: ["a"] for image_id in range(10)})
    with pytest.raises(ValueError, match="1 and '1' are different ids"):
        score_captions({1: "a"}, {"1": ["a"]})


@pytest.mark.parametrize(
    "predictions, references, message",
    [
        ({}, {}, "`predictions` is empty"),
        ({1: "a"}, {}, "`references` is empty"),
        (["a cat"], [["a cat"]], "must be a mapping from id to caption"),
        ({1: ["a cat"]}, {1: ["a cat"]}, "prediction for id 1 must be a str, got list"),
        ({1: None}, {1: ["a cat"]}, "prediction for id 1 must be a str, got NoneType"),
        ({1: "a cat"}, {1: []}, "Id 1 has no reference caption"),
        ({1: "a cat"}, {1: ["a cat", 3]}, "references of id 1 must be a str or a list of str"),
    ],
)
def test_invalid_input_raises_value_error(predictions, references, message):
    with pytest.raises(ValueError, match=message):
        score_captions(predictions, references)


def test_references_without_words_raise():
    with pytest.raises(ValueError, match="Every reference caption is empty after PTB tokenization"):
        score_captions({1: "a cat", 2: ""}, {1: ["..."], 2: ["", "!"]})
