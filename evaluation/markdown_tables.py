# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""The one markdown-table writer of the repository: the projector comparison, evaluation, model cards, benchmarks."""

from collections.abc import Iterable, Sequence


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[object]], left_aligned: int | None = None) -> str:
    """
    A GitHub-flavoured markdown table, one line per row, without a trailing newline.

    Args:
        columns (`Sequence[str]`): the header cells.
        rows (`Iterable[Sequence[object]]`): the cells of each row, formatted with `str`.
        left_aligned (`int`, *optional*): how many leading columns are left-aligned (names); the others are
            right-aligned (numbers). Every column is left-aligned when `None`.
    """
    rows = [list(row) for row in rows]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"A table row has {len(row)} cells but the header has {len(columns)}: {row!r}.")
    num_left = len(columns) if left_aligned is None else left_aligned
    separator = ["---"] * num_left + ["---:"] * (len(columns) - num_left)
    lines = [_line(columns), _line(separator)] + [_line(row) for row in rows]
    return "\n".join(lines)


def format_score(value: float | None) -> str:
    """A metric with four decimals, or `n/a` when it was not computed."""
    return "n/a" if value is None else f"{value:.4f}"


def _line(cells: Sequence[object]) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"
