# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The standard COCO caption metrics (BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr-D), computed by pycocoevalcap.

[`score_captions`] is the one scorer of the repository: the training loop, `eval.py` and the 🤗 Evaluate module
`metrics/coco_caption` all call it. This module imports neither torch nor transformers, so scoring captions needs
only pycocoevalcap and a Java runtime.
"""

import atexit
import contextlib
import os
import reprlib
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import BinaryIO

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from .scoring_inputs import check_same_ids


COCO_CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
"""The keys of the dictionary returned by [`score_captions`], in order."""

CIDER_SCALE_NOTE = "Scores on pycocoevalcap's scale (papers report CIDEr x 100)."
"""Ends every table of scores: CIDEr 1.31 here is what papers write as 131."""

JAVA_INSTALL_HINT = (
    "Java is required by pycocoevalcap (PTB tokenizer, METEOR 1.5) to compute the COCO caption metrics. Install any "
    "Java runtime >= 8 and put `java` on PATH, e.g. `apt-get install default-jre-headless` on Debian/Ubuntu or "
    "`conda install openjdk` in a conda environment."
)
"""Ends the message of every [`JavaNotFoundError`]."""

JAVA_CHECK_TIMEOUT_S = 30.0
"""Seconds `java -version` may take before [`check_java`] declares the installation broken."""

METEOR_TIMEOUT_S = 300.0
"""Seconds, plus `METEOR_TIMEOUT_PER_ID_S` per id, after which a METEOR JVM that has not answered is killed."""

METEOR_TIMEOUT_PER_ID_S = 0.05
"""Per-id part of the METEOR timeout. The JVM loads its paraphrase table in ~10 s and scores ~0.5 ms per id."""

# Every line boundary of `str.splitlines`. pycocoevalcap's tokenizer only replaces "\n", but the Java PTB tokenizer
# also breaks lines at "\r", "\v", "\f", U+2028 and U+2029, which shifts every later caption onto the wrong id. It
# reads the other boundaries as whitespace, so replacing them too changes nothing.
_LINE_BREAKS_TO_SPACES = dict.fromkeys(map(ord, "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"), " ")

_STDERR_FD_LOCK = threading.Lock()


class JavaNotFoundError(RuntimeError):
    """Raised when no working `java` executable is on PATH; pycocoevalcap's tokenizer and METEOR need one."""


def check_java() -> str:
    """
    Check that a working `java` executable is on PATH, as pycocoevalcap's PTB tokenizer and METEOR 1.5 need.

    Returns:
        `str`: The path of the `java` executable.

    Raises:
        [`JavaNotFoundError`]: If `java` is not on PATH, or `java -version` fails or takes longer than
            `JAVA_CHECK_TIMEOUT_S` seconds.
    """
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(f"No `java` executable found on PATH. {JAVA_INSTALL_HINT}")
    try:
        completed = subprocess.run([java, "-version"], capture_output=True, timeout=JAVA_CHECK_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise JavaNotFoundError(f"`{java} -version` failed: {error}. {JAVA_INSTALL_HINT}") from error
    if completed.returncode != 0:
        output = completed.stderr.decode(errors="replace").strip()
        raise JavaNotFoundError(
            f"`{java} -version` exited with status {completed.returncode}: {output!r}. {JAVA_INSTALL_HINT}"
        )
    return java


def score_captions(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, str | Sequence[str]]
) -> dict[str, float]:
    """
    Score predicted captions with the standard COCO caption metrics, exactly as the COCO caption evaluation
    (pycocoevalcap's `COCOEvalCap`) does: both sides go through the Stanford PTB tokenizer (lower-cased, punctuation
    removed), then `Bleu(4)`, `Meteor()` (METEOR 1.5), `Rouge()` (ROUGE-L) and `Cider()` (CIDEr-D) score the corpus.

    Scores are on pycocoevalcap's own scale: BLEU, METEOR and ROUGE-L lie in [0, 1], and CIDEr is *not* multiplied by
    100 (a good COCO model scores around 1.1, not 110). CIDEr weights n-grams by their document frequency over all
    references, so it is only meaningful over a corpus: with a single id it is always 0.

    Two deviations from calling pycocoevalcap by hand, neither of which changes the numbers of ordinary captions:

    - Every line break (`"\\r"`, `"\\v"`, `"\\f"`, U+2028, ... not only `"\\n"`) becomes a space before tokenization.
      pycocoevalcap only replaces `"\\n"`, and any other line break makes the Java tokenizer emit an extra line, which
      moves every later caption onto the wrong id: silently wrong scores.
    - The METEOR JVM runs under a watchdog: if it crashes, hangs or answers garbage, it is killed and a
      `RuntimeError` with its stderr is raised instead of blocking forever (the next call starts a new one).
    - The METEOR JVM is started once per process and kept for the next call: it takes about 10 s to load its
      paraphrase table (and then holds about 1 GB), while scoring takes milliseconds, so a run that evaluates every
      epoch pays the load once. It is stopped when the process exits.

    Empty, whitespace-only and punctuation-only captions need no special case: the tokenizer turns them into empty
    strings, which METEOR 1.5 scores as 0 and the other metrics as a caption without words. METEOR reads one request
    per line, and the tokenized captions it gets never contain a line break. Characters the tokenizer cannot handle,
    such as emoji, are dropped by it. Its messages on stderr ("PTBTokenizer tokenized ...", "Untokenizable: ...") are
    captured and BLEU's statistics are not printed, so the call writes nothing to stdout or stderr.

    Args:
        predictions (`Mapping[Hashable, str]`):
            One predicted caption per id, e.g. `{391895: "a man riding a bike"}`. Ids are any hashable (usually `int`
            or `str`) and must be exactly the ids of `references`.
        references (`Mapping[Hashable, str | Sequence[str]]`):
            The reference captions of each id: a list of at least one caption, or a bare `str` for a single one.

    Returns:
        `dict[str, float]`: The corpus-level scores, keyed by [`COCO_CAPTION_METRICS`]: `"BLEU-1"` to `"BLEU-4"`,
        `"METEOR"`, `"ROUGE-L"` and `"CIDEr"`.

    Raises:
        `ValueError`: If an input is empty or not a mapping, the ids of the two sides differ, an id has no reference,
            a caption is not a `str`, or every reference is empty after tokenization.
        [`JavaNotFoundError`]: If no working `java` is on PATH.
        `RuntimeError`: If a Java subprocess of pycocoevalcap fails.

    Example:

    ```python
    >>> from caption_metrics import score_captions

    >>> predictions = {1: "a dog runs on the grass", 2: "a red car parked on the street"}
    >>> references = {1: ["a dog running across a lawn", "a brown dog on the grass"], 2: "a red car on a street"}
    >>> scores = score_captions(predictions, references)
    >>> list(scores)
    ['BLEU-1', 'BLEU-2', 'BLEU-3', 'BLEU-4', 'METEOR', 'ROUGE-L', 'CIDEr']
    ```
    """
    res, gts = _validate_captions(predictions, references)
    check_java()
    # Start the JVM first: loading METEOR's paraphrase table (~10 s) then overlaps tokenization and the other metrics.
    meteor = _running_meteor()
    gts = _tokenize(gts)
    res = _tokenize(res)
    if not any(reference for captions in gts.values() for reference in captions):
        raise ValueError(
            "Every reference caption is empty after PTB tokenization (which removes punctuation), so there is "
            "nothing to score against. Pass references that contain words."
        )
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    meteor_score = _meteor_score(meteor, gts, res)
    values = [*bleu, meteor_score, rouge, cider]
    return {name: float(value) for name, value in zip(COCO_CAPTION_METRICS, values, strict=True)}


def _validate_captions(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, str | Sequence[str]]
) -> tuple[dict[Hashable, list[str]], dict[Hashable, list[str]]]:
    """Check the inputs of [`score_captions`] and return them as `(res, gts)`: one list of captions per id."""
    check_same_ids(predictions, references, "predictions", "references", "caption(s)")
    res, gts = {}, {}
    for image_id, prediction in predictions.items():
        if not isinstance(prediction, str):
            raise ValueError(
                f"The prediction for id {image_id!r} must be a str, got {type(prediction).__name__}: pass exactly one "
                "caption string per id."
            )
        captions = references[image_id]
        captions = [captions] if isinstance(captions, str) else captions
        if not isinstance(captions, Sequence) or not all(isinstance(caption, str) for caption in captions):
            raise ValueError(
                f"The references of id {image_id!r} must be a str or a list of str, got {reprlib.repr(captions)}."
            )
        if not captions:
            raise ValueError(f"Id {image_id!r} has no reference caption: give every id at least one reference.")
        res[image_id] = [prediction]
        gts[image_id] = list(captions)
    return res, gts


@contextlib.contextmanager
def _stderr_fd_redirected_to(sink: BinaryIO) -> Iterator[None]:
    """
    Point file descriptor 2, which Java subprocesses inherit, at `sink` for the duration of the block. Whatever other
    threads write to file descriptor 2 meanwhile lands in `sink` too.
    """
    with _STDERR_FD_LOCK:
        sys.stderr.flush()
        saved_fd = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)


def _tokenize(captions: dict[Hashable, list[str]]) -> dict[Hashable, list[str]]:
    """Run pycocoevalcap's `PTBTokenizer` on `{id: [caption, ...]}`, with line breaks turned into spaces."""
    entries = {
        image_id: [{"caption": caption.translate(_LINE_BREAKS_TO_SPACES)} for caption in texts]
        for image_id, texts in captions.items()
    }
    with tempfile.TemporaryFile() as java_log:
        with _stderr_fd_redirected_to(java_log):
            tokenized = PTBTokenizer().tokenize(entries)
        expected_counts = {image_id: len(texts) for image_id, texts in captions.items()}
        if {image_id: len(texts) for image_id, texts in tokenized.items()} != expected_counts:
            java_log.seek(0)
            raise RuntimeError(
                "pycocoevalcap's PTB tokenizer (a Java subprocess) returned incomplete output. Its stderr:\n"
                + java_log.read().decode(errors="replace")[-2000:]
            )
    return tokenized


_METEOR_OF_PROCESS: dict[int, Meteor] = {}
_METEOR_START_LOCK = threading.Lock()


def _running_meteor() -> Meteor:
    """
    This process's METEOR 1.5 JVM, started on first use and again after one died or was stopped. Keyed by process id: a
    forked child must not write to its parent's JVM, whose pipes it inherits.
    """
    with _METEOR_START_LOCK:
        meteor = _METEOR_OF_PROCESS.get(os.getpid())
        if meteor is None or meteor.meteor_p.poll() is not None:
            meteor = _METEOR_OF_PROCESS[os.getpid()] = Meteor()
        return meteor


@atexit.register
def _stop_running_meteor() -> None:
    meteor = _METEOR_OF_PROCESS.pop(os.getpid(), None)
    if meteor is not None:
        _stop_meteor(meteor)


def _stop_meteor(meteor: Meteor) -> str:
    """Kill and reap the METEOR JVM, close its pipes and return its stderr. Safe to call more than once."""
    # `Meteor.compute_score` does not release its lock when it raises, and `Meteor.__del__` acquires it: without this,
    # garbage collection of a failed scorer would block forever.
    if meteor.lock.locked():
        meteor.lock.release()
    meteor.meteor_p.kill()
    return meteor.meteor_p.communicate()[1].decode(errors="replace")


def _meteor_score(meteor: Meteor, gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]]) -> float:
    """`meteor.compute_score(gts, res)`, raising `RuntimeError` instead of blocking when the JVM dies or hangs."""
    # `Meteor` writes one request line and blocks on reading the answer line: a dead JVM makes that read return ""
    # (pycocoevalcap then fails to parse it) or the write fail, but a stuck one would block forever. The watchdog kills
    # a stuck JVM, which turns the endless read into the first case.
    timeout = METEOR_TIMEOUT_S + METEOR_TIMEOUT_PER_ID_S * len(res)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        meteor.meteor_p.kill()

    watchdog = threading.Timer(timeout, kill)
    watchdog.start()
    try:
        score, _ = meteor.compute_score(gts, res)
    except (OSError, ValueError) as error:
        what = f"gave no answer within {timeout:g} s and was killed" if timed_out.is_set() else "failed"
        stderr = _stop_meteor(meteor)[-2000:]
        raise RuntimeError(
            f"pycocoevalcap's METEOR 1.5 (a Java subprocess) {what}: {error!r}. Its stderr:\n{stderr}"
        ) from error
    except BaseException:
        # Interrupted mid-request (Ctrl-C): the JVM's answer is still in its pipe and pycocoevalcap kept its lock, so
        # the next call would read this one's answer or block forever. Stop it; the next call starts a new one.
        _stop_meteor(meteor)
        raise
    finally:
        watchdog.cancel()
    return score
