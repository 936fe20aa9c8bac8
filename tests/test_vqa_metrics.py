"""`evaluation.vqa_metrics`: VQAv2 accuracy as the official VQA code computes it, and POPE as POPE's `evaluate.py`.

Every expected value is computed by hand in the test. With 10 human answers of which `k` match the prediction, the
official leave-one-out average is `(k * min(1, (k - 1) / 3) + (10 - k) * min(1, k / 3)) / 10`.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.vqa_metrics import (
    POPE_METRICS,
    VQA_SHORT_ANSWER_PROMPT,
    normalize_vqa_answer,
    parse_pope_answer,
    score_pope,
    score_vqa,
    vqa_accuracy,
)


REPO_ROOT = Path(__file__).resolve().parents[1]


def test_constants():
    assert VQA_SHORT_ANSWER_PROMPT == "Answer the question using a single word or phrase."
    assert POPE_METRICS == ("accuracy", "precision", "recall", "f1", "yes_ratio")


def test_module_needs_only_the_standard_library():
    code = (
        "import sys, evaluation.vqa_metrics; "
        "print(sorted({'torch', 'transformers', 'numpy', 'PIL'} & set(sys.modules)))"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Two", "2"),  # lower-cased, then number word -> digit
        ("the dog.", "dog"),  # final period removed, article dropped
        ("isnt", "isn't"),  # contractions table
        ("1,000", "1000"),  # a comma between digits: every punctuation mark is removed (not replaced by a space)
        ("1,000 t-shirts", "1000 tshirts"),  # ... including marks elsewhere in the answer
        ("yes!", "yes"),  # "!" touches no space: replaced by a space, then stripped
        ("black-and-white", "black and white"),  # "-" touches no space: replaced by a space
        ("black - white", "black white"),  # "-" touches a space: removed, then whitespace collapsed
        ("red, white", "red white"),
        ("an apple", "apple"),
        ("A", ""),  # a lone article leaves nothing
        ("2.5", "2.5"),  # a period followed by a digit is kept
        ("2.", "2"),
        ("mr. smith", "mr smith"),
        ("it's", "it's"),  # the apostrophe is not a punctuation mark of the official list
        ("none", "0"),  # the official number map has "none" -> "0"
        ("Im", "im"),  # the table's key "Im" never matches: words are lower-cased before the lookup
        ("somebody'd", "somebodyd"),  # the table's one reversed entry
        (" The\tDog \n", "dog"),
        ("x" + "." * 40, "x" + "." * 8),  # the official code passes re.UNICODE (32) as re.sub's count: 40 - 32 = 8 left
    ],
)
def test_normalize_vqa_answer(answer, expected):
    assert normalize_vqa_answer(answer) == expected


@pytest.mark.parametrize(
    "matches, expected",
    [
        (0, 0.0),
        # Dropping the 1 match leaves 0 -> 0; dropping one of the 9 others leaves 1 -> 1/3: (0 + 9 / 3) / 10 = 0.3.
        (1, 0.3),
        # Dropping a match leaves 1 -> 1/3 (twice); dropping another leaves 2 -> 2/3 (8 times): (2/3 + 16/3) / 10 = 0.6.
        (2, 0.6),
        # Dropping a match leaves 2 -> 2/3 (3 times); dropping another leaves 3 -> 1 (7 times): (2 + 7) / 10 = 0.9.
        (3, 0.9),
        # Every subset keeps at least 3 matches -> 1.
        (4, 1.0),
    ],
)
def test_vqa_accuracy_leave_one_out(matches, expected):
    # "Two" matches "2" only after normalisation; the fillers "3"/"4" make the answers non-unanimous.
    human_answers = ["2"] * matches + ["3", "4"] * 5
    human_answers = human_answers[:10]
    assert len(human_answers) == 10 and human_answers.count("2") == matches
    assert vqa_accuracy("Two", human_answers) == pytest.approx(expected)


def test_vqa_accuracy_unanimous_answers_are_not_normalised():
    # The official code normalises only when `len(set(gtAnswers)) > 1`: ten identical answers are compared raw, after
    # newlines/tabs -> spaces and strip.
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("yes.", ["yes"] * 10) == 0.0
    assert vqa_accuracy("dog", ["the dog"] * 10) == 0.0
    assert vqa_accuracy("2", ["two"] * 10) == 0.0


def test_vqa_accuracy_non_unanimous_answers_normalise_both_sides():
    # {"yes", "Yes"} has 2 elements: all answers and the prediction are normalised, so all 10 match "Yes." -> 1.
    assert vqa_accuracy("Yes.", ["yes"] * 9 + ["Yes"]) == 1.0
    assert vqa_accuracy("Dog!", ["the dog"] * 9 + ["dog"]) == 1.0
    # 2 of 10 match after normalisation ("two", "2"): 0.6 as in the leave-one-out table.
    assert vqa_accuracy("2", ["two", "2"] + ["3"] * 8) == pytest.approx(0.6)


def test_vqa_accuracy_single_answer_is_always_zero():
    # The only subset is empty: min(1, 0 / 3) = 0, as in the official loop.
    assert vqa_accuracy("yes", ["yes"]) == 0.0


@pytest.mark.parametrize(
    "human_answers, message",
    [([], "has no human answer"), ("yes", "must be a list of str"), (["yes", 1], "all be str")],
)
def test_vqa_accuracy_rejects_bad_answers(human_answers, message):
    with pytest.raises(ValueError, match=message):
        vqa_accuracy("yes", human_answers)


PREDICTIONS = {1: "Red.", 2: "blue", 3: "two", 4: "Yes"}
REFERENCES = {
    1: ["red"] * 6 + ["dark red"] * 4,  # normalised: "Red." -> "red", 6 matches -> 1.0
    2: ["blue"] * 2 + ["green"] * 8,  # 2 matches -> 0.6
    3: ["2"] * 3 + ["3"] * 7,  # normalised: "two" -> "2", 3 matches -> 0.9
    4: ["yes"] * 10,  # unanimous: "Yes" is compared raw -> 0.0
}
QUESTION_TYPES = {1: "what color is the", 2: "what color is the", 3: "how many", 4: "is the"}


def test_score_vqa_overall_and_per_question_type():
    scores = score_vqa(PREDICTIONS, REFERENCES, QUESTION_TYPES)
    assert scores == pytest.approx(
        {
            "accuracy": 0.625,  # (1.0 + 0.6 + 0.9 + 0.0) / 4
            "accuracy/how many": 0.9,
            "accuracy/is the": 0.0,
            "accuracy/what color is the": 0.8,  # (1.0 + 0.6) / 2
        }
    )
    assert list(scores) == ["accuracy", "accuracy/how many", "accuracy/is the", "accuracy/what color is the"]
    assert score_vqa(PREDICTIONS, REFERENCES) == pytest.approx({"accuracy": 0.625})


def test_score_vqa_per_answer_type():
    answer_types = {1: "other", 2: "other", 3: "number", 4: "yes/no"}
    scores = score_vqa(PREDICTIONS, REFERENCES, answer_types)
    assert scores == pytest.approx(
        {"accuracy": 0.625, "accuracy/number": 0.9, "accuracy/other": 0.8, "accuracy/yes/no": 0}
    )


@pytest.mark.parametrize(
    "predictions, references, question_types, message",
    [
        ({1: "Red.", 2: "blue", 3: "two"}, REFERENCES, None, r"1 id\(s\) of `references` are missing from it: 4"),
        ({**PREDICTIONS, 99: "cat"}, REFERENCES, None, r"1 id\(s\) are not in `references`: 99"),
        ({str(i): p for i, p in PREDICTIONS.items()}, REFERENCES, None, "1 and '1' are different ids"),
        ({}, {}, None, "`predictions` is empty"),
        (PREDICTIONS, {}, None, "`references` is empty"),
        (PREDICTIONS, {**REFERENCES, 2: []}, None, "Id 2 has no human answer"),
        (PREDICTIONS, {**REFERENCES, 2: "blue"}, None, "id 2 must be a list of str"),
        ({**PREDICTIONS, 3: None}, REFERENCES, None, "prediction for id 3 must be a str"),
        (PREDICTIONS, REFERENCES, {1: "how many"}, r"3 id\(s\) of `references` are missing from it: 2, 3, 4"),
        (list(PREDICTIONS.values()), REFERENCES, None, "must be a mapping"),
    ],
)
def test_score_vqa_errors(predictions, references, question_types, message):
    with pytest.raises(ValueError, match=message):
        score_vqa(predictions, references, question_types)


def test_score_vqa_error_lists_a_few_ids():
    references = {i: ["yes"] * 10 for i in range(20)}
    with pytest.raises(ValueError, match=r"20 id\(s\) of `references` are missing from it: 0, 1, 2, 3, 4, \.\.\."):
        score_vqa({"x": "yes"}, references)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes, there is a cat.", "yes"),
        ("No.", "no"),
        ("There is not a dog in the image.", "no"),
        ("Yes. But it is not red.", "yes"),  # only the first sentence counts
        ("I don't know", "yes"),  # no word is "No"/"no"/"not": the official default is "yes"
        ("No, there is no cat.", "no"),  # "No," loses its comma
        ("no", "no"),
        ("There is no cat", "no"),
        ("NO", "yes"),  # case-sensitive: only "No", "no" and "not"
        ("Not really.", "yes"),
        ("No!", "yes"),  # whole words: "No!" is not "No"
        ("cannot", "yes"),
        ("Yes\nno", "yes"),  # split on " " only: "Yes\nno" is one word
        ("", "yes"),
    ],
)
def test_parse_pope_answer(text, expected):
    assert parse_pope_answer(text) == expected


# TP = 2, FN = 2, FP = 1, TN = 3.
POPE_PREDICTIONS = {
    "tp1": "Yes, there is a dog in the image.",
    "tp2": "yes",
    "fn1": "No.",
    "fn2": "There is not a bicycle in the image.",
    "fp1": "Yes. There is no cat.",  # first sentence only: "yes"
    "tn1": "No, there is no cat.",
    "tn2": "no",
    "tn3": "I do not see a car.",
}
POPE_LABELS = {
    "tp1": "yes",
    "tp2": "yes",
    "fn1": "yes",
    "fn2": "yes",
    "fp1": "no",
    "tn1": "no",
    "tn2": "no",
    "tn3": "no",
}


def test_score_pope():
    scores = score_pope(POPE_PREDICTIONS, POPE_LABELS)
    assert list(scores) == list(POPE_METRICS)
    assert scores == pytest.approx(
        {
            "accuracy": 0.625,  # (TP + TN) / 8 = (2 + 3) / 8
            "precision": 2 / 3,  # TP / (TP + FP) = 2 / 3
            "recall": 0.5,  # TP / (TP + FN) = 2 / 4
            "f1": 4 / 7,  # 2 * (2/3) * (1/2) / (2/3 + 1/2) = (2/3) / (7/6)
            "yes_ratio": 0.375,  # (TP + FP) / 8 = 3 / 8 predictions are "yes"
        }
    )
    # lmms-eval's yes-ratio would count the labels instead: 4 / 8.
    labels_yes_ratio = sum(label == "yes" for label in POPE_LABELS.values()) / len(POPE_LABELS)
    assert labels_yes_ratio == 0.5 and scores["yes_ratio"] != labels_yes_ratio


def test_score_pope_without_positives_defines_zero():
    # No "yes" prediction: TP + FP = 0 -> precision 0.0, so recall 0 / 2 = 0.0 and F1 0.0; accuracy 2 / 4.
    scores = score_pope({1: "No.", 2: "no", 3: "No", 4: "not"}, {1: "yes", 2: "yes", 3: "no", 4: "no"})
    assert scores == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}
    # No "yes" label: TP + FN = 0 -> recall 0.0; precision 0 / 1 = 0.0.
    scores = score_pope({1: "Yes", 2: "No"}, {1: "no", 2: "no"})
    assert scores == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.5}


@pytest.mark.parametrize(
    "predictions, labels, message",
    [
        ({1: "Yes"}, {1: "Yes"}, 'label of id 1 must be exactly "yes" or "no", got \'Yes\''),
        ({"a": "Yes", "b": "No"}, {"a": "yes", "b": "1"}, "label of id 'b' must be exactly"),
        ({1: "Yes"}, {2: "yes"}, r"missing from it: 2; 1 id\(s\) are not in `labels`: 1"),
        ({}, {1: "yes"}, "`predictions` is empty"),
        ({1: None}, {1: "yes"}, "prediction for id 1 must be a str"),
    ],
)
def test_score_pope_errors(predictions, labels, message):
    with pytest.raises(ValueError, match=message):
        score_pope(predictions, labels)
