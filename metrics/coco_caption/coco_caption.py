# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""🤗 Evaluate wrapper of the COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr) of the repository."""

import datasets
import evaluate


# `evaluate.load` copies this script into its modules cache (~/.cache/huggingface/modules/evaluate_modules/...) and
# imports it from there, so paths relative to this file no longer lead to the repository; the only other files it
# copies along are siblings named in top-level relative imports (`from .x import y`), and `caption_metrics.py` is not
# a sibling. The scoring code therefore comes from the repository's `evaluation.caption_metrics` module (which needs
# pycocoevalcap and Java, not torch), importable once the repository is installed (`pip install -e .`) or on
# PYTHONPATH. This keeps a single copy of the code, so `evaluation.caption_metrics.JavaNotFoundError` raised here is
# the class callers catch. The import is indented on purpose: evaluate scans top-level import lines only and would turn
# a failure into a misleading "pip install evaluation" hint.
try:
    from evaluation.caption_metrics import score_captions
except ImportError as error:
    raise ImportError(
        "The coco_caption metric imports `score_captions` from the repository's `evaluation/caption_metrics.py`: "
        "install the repository with `pip install -e .` from its root, or put the root on PYTHONPATH."
    ) from error


_CITATION = """\
@article{chen2015microsoft,
  title={Microsoft {COCO} Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh and
          Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  journal={arXiv preprint arXiv:1504.00325},
  year={2015}
}
"""

_DESCRIPTION = """\
The standard COCO caption evaluation, computed exactly as pycocoevalcap's `COCOEvalCap`: predictions and references
go through the Stanford PTB tokenizer (lower-cased, punctuation removed), then BLEU-1 to BLEU-4, METEOR 1.5, ROUGE-L
and CIDEr-D score the corpus. Scores are on pycocoevalcap's scale: CIDEr is not multiplied by 100. Needs Java
(JRE >= 8) on PATH.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`):
        One predicted caption per example.
    references (`list[list[str]]` or `list[str]`):
        The reference captions of each example: a list of at least one caption, or a bare `str` for a single one.

Returns:
    `dict[str, float]`: `"BLEU-1"`, `"BLEU-2"`, `"BLEU-3"`, `"BLEU-4"`, `"METEOR"`, `"ROUGE-L"` and `"CIDEr"`.

Examples:

    >>> coco_caption = evaluate.load("metrics/coco_caption")
    >>> results = coco_caption.compute(
    ...     predictions=["a dog runs on the grass", "a red car"],
    ...     references=[["a dog running across a lawn", "a brown dog on the grass"], ["a red car on a street"]],
    ... )
    >>> list(results)
    ['BLEU-1', 'BLEU-2', 'BLEU-3', 'BLEU-4', 'METEOR', 'ROUGE-L', 'CIDEr']
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CocoCaption(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.List(datasets.Value("string"))}
            ),
            codebase_urls=["https://github.com/salaniz/pycocoevalcap"],
            reference_urls=["https://arxiv.org/abs/1504.00325", "https://cocodataset.org/#captions-eval"],
        )

    # A bare str reference is wrapped into a list before encoding: the `List` feature would silently encode it as the
    # list of its characters. (evaluate appends the inputs description to the docstrings of `add_batch` and `add`.)
    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """Add a batch of predictions and references; a bare `str` reference counts as a single reference."""
        if references is not None:
            references = [[reference] if isinstance(reference, str) else reference for reference in references]
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs) -> None:
        """Add one prediction and its references; a bare `str` reference counts as a single reference."""
        reference = [reference] if isinstance(reference, str) else reference
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        return score_captions(dict(enumerate(predictions)), dict(enumerate(references)))
