"""`caption_metrics.score_captions` (exactly pycocoevalcap's numbers) and the `metrics/coco_caption` Evaluate module."""

import contextlib
import gc
import io
import math
import os
from pathlib import Path
from typing import NamedTuple

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from evaluation.caption_metrics import (
    _METEOR_OF_PROCESS,
    COCO_CAPTION_METRICS,
    JavaNotFoundError,
    _stop_running_meteor,
    _tokenize,
    score_captions,
)


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
    meteor_scorer = Meteor()  # created first: its JVM loads the paraphrase table (~10 s) during tokenization
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    bleu, _ = Bleu(4).compute_score(gts, res)
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


class ScoringRun(NamedTuple):
    scores: dict[str, float]
    printed: str
    java_children_left: set[int]


@pytest.fixture(scope="module")
def scoring_run() -> ScoringRun:
    """`score_captions` on the fixed captions, with what it printed and the `java` processes it left behind."""
    before = java_children()
    with contextlib.redirect_stdout(io.StringIO()) as stdout, contextlib.redirect_stderr(io.StringIO()) as stderr:
        scores = score_captions(PREDICTIONS, REFERENCES)
    return ScoringRun(scores, stdout.getvalue() + stderr.getvalue(), java_children() - before)


def test_scores_equal_pycocoevalcap(scoring_run):
    assert list(scoring_run.scores) == list(COCO_CAPTION_METRICS)
    assert all(type(value) is float for value in scoring_run.scores.values())
    assert scoring_run.scores == pycocoevalcap_scores(PREDICTIONS, REFERENCES)
    assert 0 < scoring_run.scores["BLEU-1"] < 1 and scoring_run.scores["CIDEr"] > 0


def test_empty_prediction_gives_finite_numbers(scoring_run):
    assert PREDICTIONS[522418] == ""
    assert all(math.isfinite(value) for value in scoring_run.scores.values())


def test_nothing_is_printed(scoring_run):
    # Python-level output, such as BLEU's statistics; the Java tokenizer's stderr is checked below.
    assert scoring_run.printed == ""


def running_meteor_pid() -> int:
    meteor = _METEOR_OF_PROCESS[os.getpid()]
    assert meteor.meteor_p.poll() is None
    return meteor.meteor_p.pid


def test_one_meteor_jvm_serves_every_call_and_nothing_else_is_left_running(scoring_run):
    # The tokenizer's JVMs end with their call; METEOR's (10 s to load its paraphrase table) stays for the next one.
    assert scoring_run.java_children_left <= {running_meteor_pid()}
    assert java_children() == {running_meteor_pid()}
    assert score_captions(PREDICTIONS, REFERENCES) == scoring_run.scores
    assert java_children() == {running_meteor_pid()}


def test_an_interrupted_call_stops_the_jvm_and_the_next_call_starts_a_new_one(scoring_run, monkeypatch):
    # Ctrl-C mid-request leaves pycocoevalcap's lock taken and an answer in the pipe: reusing that JVM would block
    # forever or read the wrong answer.
    interrupted = _METEOR_OF_PROCESS[os.getpid()]

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(interrupted, "_stat", interrupt)
    with pytest.raises(KeyboardInterrupt):
        score_captions(PREDICTIONS, REFERENCES)
    assert interrupted.meteor_p.poll() is not None
    assert score_captions(PREDICTIONS, REFERENCES) == scoring_run.scores
    assert running_meteor_pid() != interrupted.meteor_p.pid
    pid = running_meteor_pid()
    _stop_running_meteor()  # what the process does at exit
    assert java_children() == set() and not Path(f"/proc/{pid}").exists()


def test_evaluate_module_matches_score_captions(scoring_run, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import evaluate

    coco_caption = evaluate.load(str(REPO_ROOT / "metrics" / "coco_caption"))
    results = coco_caption.compute(predictions=list(PREDICTIONS.values()), references=list(REFERENCES.values()))
    assert results == scoring_run.scores


def test_tokenizer_reads_line_breaks_as_spaces_silently(capfd):
    # pycocoevalcap alone moves every caption after a "\r", "\f" or U+2028 onto a later id. The emoji makes the Java
    # tokenizer warn "Untokenizable" on stderr, which must not come through.
    captions = {
        1: ["A man riding\ra motorcycle\fdown a dirt road."],
        2: ["a red circle in\u2028the middle 🥐", "two dogs\x85in\vthe snow"],
        3: [""],
    }
    assert _tokenize(captions) == {
        1: ["a man riding a motorcycle down a dirt road"],
        2: ["a red circle in the middle", "two dogs in the snow"],
        3: [""],
    }
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
    monkeypatch.setattr("evaluation.caption_metrics.METEOR_TIMEOUT_S", 0.0)
    monkeypatch.setattr("evaluation.caption_metrics.METEOR_TIMEOUT_PER_ID_S", 0.0)
    before = java_children()
    with pytest.raises(RuntimeError, match="METEOR 1.5 .* gave no answer within 0 s and was killed"):
        score_captions({1: "a cat", 2: "a dog"}, {1: ["a cat on a mat"], 2: "a dog"})
    gc.collect()  # `Meteor.__del__` takes the lock its failed `compute_score` held: this must not block
    assert java_children() - before == set()


def test_mismatched_ids_are_listed():
    with pytest.raises(ValueError, match=r"1 id\(s\) are not in `references`: 'extra'") as error:
        score_captions({1: "a", "extra": "b"}, {1: ["a"], 7: ["c"], 8: ["d"]})
    assert "2 id(s) of `references` are missing from it: 7, 8" in str(error.value)
    with pytest.raises(ValueError, match=r"9 id\(s\) of `references` are missing from it: 1, 2, 3, 4, 5, \.\.\. \(9"):
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
