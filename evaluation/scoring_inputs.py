# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""The checks every scorer runs on its inputs (standard library only: scoring never loads a model)."""

from collections.abc import Hashable, Mapping


def preview_ids(ids: list[Hashable], limit: int = 5) -> str:
    """The first `limit` of `ids`, and how many there are in total when some are left out."""
    shown = ", ".join(repr(item) for item in ids[:limit])
    return shown if len(ids) <= limit else f"{shown}, ... ({len(ids)} in total)"


def check_same_ids(given: Mapping, expected: Mapping, given_name: str, expected_name: str, value: str) -> None:
    """
    Raises a `ValueError` naming the problem unless `given` and `expected` (called `given_name` and `expected_name`
    in the message; each maps an id to a `value`) are non-empty mappings with the same ids.
    """
    for name, mapping in ((given_name, given), (expected_name, expected)):
        if not isinstance(mapping, Mapping):
            raise ValueError(
                f"`{name}` must be a mapping from id to {value}, got {type(mapping).__name__}. For lists, pass "
                f"`dict(enumerate({name}))`."
            )
        if not mapping:
            raise ValueError(f"`{name}` is empty: pass at least one id with its {value}.")
    extra = [item for item in given if item not in expected]
    missing = [item for item in expected if item not in given]
    if extra or missing:
        problems = []
        if missing:
            problems.append(f"{len(missing)} id(s) of `{expected_name}` are missing from it: {preview_ids(missing)}")
        if extra:
            problems.append(f"{len(extra)} id(s) are not in `{expected_name}`: {preview_ids(extra)}")
        raise ValueError(
            f"`{given_name}` and `{expected_name}` must have the same ids; {'; '.join(problems)}. Score exactly the "
            "ids you have both for (ids are compared as they are: 1 and '1' are different ids)."
        )
