"""Names given by users: comma-separated lists, and the "did you mean" hint for an unknown one."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def split_names(text: str | None, convert: Callable[[str], T] = str) -> list[T]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (blanks dropped), each item passed through ``convert``."""
    return [convert(part.strip()) for part in (text or "").split(",") if part.strip()]


def did_you_mean(name: str, known: Iterable[str], n: int = 3, cutoff: float = 0.5) -> str:
    """``"; did you mean a, b?"`` for the names of ``known`` close to ``name``, else ``""``."""
    close = difflib.get_close_matches(name, list(known), n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(close)}?" if close else ""
