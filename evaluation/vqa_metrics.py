# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Visual question answering scores: VQAv2 accuracy exactly as the official VQA evaluation code computes it, and the
POPE object-hallucination metrics exactly as the POPE paper's official `evaluate.py` computes them.

This module uses only the standard library (no torch, no transformers, no numpy), so scoring never loads a model.
Scores are fractions in [0, 1]; papers and leaderboards print them x 100.

**VQAv2** ([`normalize_vqa_answer`], [`vqa_accuracy`], [`score_vqa`]) follows `VQAEval.evaluate` of
`PythonEvaluationTools/vqaEvaluation/vqaEval.py` in https://github.com/GT-Vision-Lab/VQA exactly:

- A prediction scores `min(1, matches / 3)` against each leave-one-out subset of the human answers (each subset drops
  one answer *by position*: the answers keep their `answer_id`, so equal strings are still dropped one at a time), and
  the average over the subsets is its accuracy. With 10 answers: 0, 1, 2, 3 matches give 0, 0.3, 0.6, 0.9, and 4 or
  more give 1.
- Newlines and tabs become spaces and both sides are stripped. Then, **only when the human answers are not all
  identical** (`len(set(gtAnswers)) > 1`), the human answers *and the prediction* are normalised
  ([`normalize_vqa_answer`]). When the ten humans agree nothing is normalised, so against ten `"yes"` the predictions
  `"Yes"` and `"yes."` score 0 (the authors' reason, GT-Vision-Lab/VQA issue #14: keep answers that read text in the
  image verbatim). lmms-eval (`lmms_eval/tasks/vqav2/utils.py`) always normalises both sides since its PR #794, so
  its numbers can be higher than the official ones; LLaVA-1.5 and MMF normalise their predictions before submitting
  them to the official server (`EvalAIAnswerProcessor`). Pass `{i: normalize_vqa_answer(a) for i, a in
  predictions.items()}` to do the same.
- The normalisation keeps the official code's quirks: its period pattern `(?!<=\\d)(\\.)(?!\\d)` is a typo for a
  lookbehind, so every period not followed by a digit is removed (`"2.5"` is kept, `"2."` becomes `"2"`); it passes
  `re.UNICODE` (32) as the `count` of `re.sub`, so at most 32 periods are removed; a comma between two digits anywhere
  makes *every* punctuation mark vanish instead of becoming a space (`"1,000"` -> `"1000"`); `"none"` becomes `"0"`;
  words are lower-cased before the contractions table is looked up, so its capitalised keys (`"Im"`, `"Ive"`) never
  match.

We differ from the official code only where it does not change a score: we do not round (it prints
`round(100 * accuracy, 2)`), we do not normalise the annotations in place, and bad inputs raise a `ValueError` that
says what to fix instead of an `AssertionError` or a `KeyError`. Per-answer-type accuracy ("yes/no", "number",
"other") is [`score_vqa`] with the answer types passed as `question_types`.

**POPE** ([`parse_pope_answer`], [`score_pope`]) follows `evaluate.py` of https://github.com/AoiDragon/POPE (copied
unchanged into LLaVA's `llava/eval/eval_pope.py`): the answer is cut at its first `"."`, commas are removed, and it is
`"no"` if one of its space-separated words is exactly `"No"`, `"no"` or `"not"`, else `"yes"`. Accuracy, precision,
recall and F1 take `"yes"` as the positive class; the yes-ratio is the share of *predictions* that are `"yes"`.
lmms-eval (`lmms_eval/tasks/pope/utils.py`) differs on two points: its yes-ratio counts the *labels* (always 0.5 on
the balanced POPE splits), and it parses nothing: an answer other than exactly "yes"/"no" (after lower-casing and
stripping), such as "Yes, there is.", is wrong for accuracy and neither positive nor negative for precision and recall.
Where the official code divides by zero (no "yes" prediction, no "yes" label), we return 0.0, as scikit-learn does
with its default `zero_division` (which also warns).
"""

import re
import reprlib
from collections.abc import Mapping, Sequence

from .scoring_inputs import check_same_ids


VQA_SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
"""LLaVA-1.5's suffix of VQAv2 (and POPE) questions, after a newline: `f"{question}\\n{VQA_SHORT_ANSWER_PROMPT}"`."""

POPE_METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
"""The keys of the dictionary returned by [`score_pope`], in order."""

# The official tables, entry for entry (vqaEval.py, `VQAEval.__init__`).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = tuple(';/[]"{}()=+\\_-><@`,?!')  # ASCII marks but # $ % & ' * . : ^ | ~
# Official: "(?!<=\d)(\.)(?!\d)". Its "(?!<=\d)" (meant as "(?<!\d)") is a lookahead that always holds at a ".".
_PERIOD_STRIP = re.compile(r"\.(?!\d)")
# Official: `self.periodStrip.sub("", outText, re.UNICODE)`, i.e. count=re.UNICODE=32.
_PERIOD_STRIP_COUNT = 32
_COMMA_BETWEEN_DIGITS = re.compile(r"\d,\d")
_POPE_NEGATIONS = frozenset({"No", "no", "not"})


def normalize_vqa_answer(answer: str) -> str:
    """
    Normalise an answer as the official VQA evaluation does (`processPunctuation`, then `processDigitArticle`).

    Newlines and tabs become spaces and the answer is stripped; punctuation marks (all but `'`, `:` and `.`) are
    removed when one of them touches a space or the answer has a comma between digits, else replaced by a space;
    periods are removed unless a digit follows; then the answer is lower-cased, number words up to "ten" (and "none")
    become digits, the articles "a", "an" and "the" are dropped, missing apostrophes of contractions are restored
    ("isnt" -> "isn't") and the words are joined by single spaces.

    Note that [`vqa_accuracy`] applies it only when the human answers are not all identical, as the official code does.

    Args:
        answer (`str`):
            A predicted or human answer.

    Returns:
        `str`: The normalised answer, e.g. `"2"` for `"Two."` and `"dog"` for `"the dog"`.

    Example:

    ```python
    >>> from evaluation.vqa_metrics import normalize_vqa_answer

    >>> normalize_vqa_answer("The two dogs!"), normalize_vqa_answer("1,000"), normalize_vqa_answer("2.5")
    ('2 dogs', '1000', '2.5')
    ```
    """
    return _process_digit_article(_process_punctuation(_clean_whitespace(answer)))


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """
    VQA accuracy of one predicted answer against the human answers of its question, as the official code computes it.

    For each human answer, the prediction scores `min(1, matches / 3)` against the *other* answers; the accuracy is
    the average of these scores. Both sides are normalised with [`normalize_vqa_answer`] only when the human answers
    (stripped) are not all identical: against ten `"yes"`, `"Yes"` scores 0.

    Args:
        prediction (`str`):
            The predicted answer.
        human_answers (`Sequence[str]`):
            The human answers of the question (10 for VQAv2), duplicates included, e.g.
            `[a["answer"] for a in annotation["answers"]]`. With a single answer no other answer is left to match, so
            the accuracy is always 0, as in the official loop.

    Returns:
        `float`: The accuracy, in [0, 1].

    Raises:
        `ValueError`: If `human_answers` is empty or a bare `str`, or an answer is not a `str`.

    Example:

    ```python
    >>> from evaluation.vqa_metrics import vqa_accuracy

    >>> vqa_accuracy("Two", ["2", "2", "two", "3", "3", "3", "3", "3", "4", "4"])
    0.9
    ```
    """
    _check_answers(prediction, human_answers, "the question")
    prediction = _clean_whitespace(prediction)
    answers = [_clean_whitespace(answer) for answer in human_answers]
    if len(set(answers)) > 1:
        answers = [_process_digit_article(_process_punctuation(answer)) for answer in answers]
        prediction = _process_digit_article(_process_punctuation(prediction))
    matches = sum(answer == prediction for answer in answers)
    # Leave-one-out: dropping answer i leaves `matches - (answer i matches)` matching answers.
    scores = [min(1, float(matches - (answer == prediction)) / 3) for answer in answers]
    return float(sum(scores)) / len(scores)


def score_vqa(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    question_types: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """
    Score predicted answers with the official VQAv2 accuracy, overall and per question type.

    Each question scores [`vqa_accuracy`]; the overall accuracy is the mean over the questions and the accuracy of a
    question type the mean over its questions, as `VQAEval.accuracy["overall"]` and `["perQuestionType"]` (without
    their `round(100 * x, 2)`).

    Args:
        predictions (`Mapping[str, str]`):
            One predicted answer per question id. Ids are any hashable (VQAv2's are `int`) and must be exactly the ids
            of `references`.
        references (`Mapping[str, Sequence[str]]`):
            The human answers of each question (10 for VQAv2), as a list of strings.
        question_types (`Mapping[str, str]`, *optional*):
            The type of each question id, e.g. `"what color is the"` (VQAv2's `question_type`). Pass the answer types
            (`"yes/no"`, `"number"`, `"other"`) instead to get the official per-answer-type accuracy.

    Returns:
        `dict[str, float]`: `{"accuracy": ...}`, plus `"accuracy/<question type>"` for each type present (sorted by
        type) when `question_types` is given; fractions in [0, 1] (papers print x 100).

    Raises:
        `ValueError`: If an input is empty or not a mapping, the ids of `predictions`, `references` and
            `question_types` differ, a question has no human answer, or an answer or a type is not a `str`.

    Example:

    ```python
    >>> from evaluation.vqa_metrics import score_vqa

    >>> references = {1: ["red"] * 6 + ["dark red"] * 4, 2: ["2"] * 3 + ["3"] * 7}
    >>> score_vqa({1: "Red.", 2: "two"}, references, {1: "what color is the", 2: "how many"})
    {'accuracy': 0.95, 'accuracy/how many': 0.9, 'accuracy/what color is the': 1.0}
    ```
    """
    check_same_ids(predictions, references, "predictions", "references", "answer")
    if question_types is not None:
        check_same_ids(question_types, references, "question_types", "references", "question type")
    per_question, per_type = [], {}
    for question_id, answers in references.items():
        _check_answers(predictions[question_id], answers, f"id {question_id!r}")
        accuracy = vqa_accuracy(predictions[question_id], answers)
        per_question.append(accuracy)
        if question_types is not None:
            question_type = question_types[question_id]
            if not isinstance(question_type, str):
                raise ValueError(f"The question type of id {question_id!r} must be a str, got {question_type!r}.")
            per_type.setdefault(question_type, []).append(accuracy)
    scores = {"accuracy": float(sum(per_question)) / len(per_question)}
    for question_type in sorted(per_type):
        scores[f"accuracy/{question_type}"] = float(sum(per_type[question_type])) / len(per_type[question_type])
    return scores


def parse_pope_answer(text: str) -> str:
    """
    Read a generated POPE answer as "yes" or "no", exactly as POPE's official `evaluate.py` does.

    Only the text before the first `"."` counts; commas are removed and the rest is split on the space character
    (not on other whitespace). The answer is "no" if one of these words is exactly `"No"`, `"no"` or `"not"`, and
    "yes" otherwise: the match is case-sensitive and on whole words, so `"NO"`, `"Not really"`, `"No!"`,
    `"I don't know"`, `"cannot"` and the empty string are all "yes".

    Args:
        text (`str`):
            The generated answer, e.g. `"Yes, there is a cat in the image."`.

    Returns:
        `str`: `"yes"` or `"no"`.

    Example:

    ```python
    >>> from evaluation.vqa_metrics import parse_pope_answer

    >>> parse_pope_answer("There is not a dog in the image."), parse_pope_answer("Yes. But it is not red.")
    ('no', 'yes')
    ```
    """
    words = text.split(".")[0].replace(",", "").split(" ")
    return "no" if _POPE_NEGATIONS.intersection(words) else "yes"


def score_pope(predictions: Mapping[str, str], labels: Mapping[str, str]) -> dict[str, float]:
    """
    Score generated POPE answers against their "yes"/"no" labels, as POPE's official `evaluate.py` does.

    Each answer is read with [`parse_pope_answer`]; "yes" is the positive class. Score each POPE split
    (random, popular, adversarial: how the absent objects were sampled) on its own, as the paper reports them.

    Args:
        predictions (`Mapping[str, str]`):
            One generated answer per question id, e.g. `{"3": "No, there is no car."}`. Must have exactly the ids of
            `labels`.
        labels (`Mapping[str, str]`):
            The label of each question id: exactly `"yes"` or `"no"`.

    Returns:
        `dict[str, float]`: Keyed by [`POPE_METRICS`]: `"accuracy"`, `"precision"` (0.0 without any "yes"
        prediction), `"recall"` (0.0 without any "yes" label), `"f1"` (0.0 when precision and recall are 0) and
        `"yes_ratio"`, the share of *predictions* read as "yes" (not of labels, unlike lmms-eval).

    Raises:
        `ValueError`: If an input is empty or not a mapping, the ids differ, a prediction is not a `str`, or a label
            is not exactly "yes" or "no".

    Example:

    ```python
    >>> from evaluation.vqa_metrics import score_pope

    >>> scores = score_pope({1: "Yes.", 2: "No, there is not.", 3: "Yes"}, {1: "yes", 2: "no", 3: "no"})
    >>> scores["accuracy"], scores["precision"], scores["recall"], scores["yes_ratio"]
    (0.6666666666666666, 0.5, 1.0, 0.6666666666666666)
    ```
    """
    check_same_ids(predictions, labels, "predictions", "labels", "answer")
    tp = fp = tn = fn = 0
    for question_id, label in labels.items():
        if label not in ("yes", "no"):
            raise ValueError(
                f'The label of id {question_id!r} must be exactly "yes" or "no", got {reprlib.repr(label)}. Map your '
                'labels to lower-case "yes"/"no" first.'
            )
        prediction = predictions[question_id]
        if not isinstance(prediction, str):
            raise ValueError(f"The prediction for id {question_id!r} must be a str, got {type(prediction).__name__}.")
        predicted_yes, labelled_yes = parse_pope_answer(prediction) == "yes", label == "yes"
        tp += predicted_yes and labelled_yes
        fp += predicted_yes and not labelled_yes
        tn += not predicted_yes and not labelled_yes
        fn += not predicted_yes and labelled_yes
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    total = tp + fp + tn + fn
    values = ((tp + tn) / total, precision, recall, f1, (tp + fp) / total)
    return dict(zip(POPE_METRICS, values, strict=True))


def _clean_whitespace(answer: str) -> str:
    return answer.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    remove_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        # As in the official code, the test looks at the input text, not at the partly processed one.
        if remove_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    words = (_NUMBER_WORDS.get(word, word) for word in text.lower().split())
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def _check_answers(prediction: str, human_answers: Sequence[str], where: str) -> None:
    if not isinstance(prediction, str):
        raise ValueError(f"The prediction for {where} must be a str, got {type(prediction).__name__}.")
    if isinstance(human_answers, str) or not isinstance(human_answers, Sequence):
        raise ValueError(
            f"The human answers of {where} must be a list of str (10 for VQAv2), got {reprlib.repr(human_answers)}."
        )
    if not human_answers:
        raise ValueError(f"{where[0].upper()}{where[1:]} has no human answer: give every question its human answers.")
    if not all(isinstance(answer, str) for answer in human_answers):
        raise ValueError(f"The human answers of {where} must all be str, got {reprlib.repr(human_answers)}.")
