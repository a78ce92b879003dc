"""Generated blocks in hand-written files: the text between ``<!-- name -->`` and ``<!-- /name -->`` markers,
rewritten from measurements by the command that owns the block (the README's tables and sections)."""

from __future__ import annotations

from pathlib import Path

from benchsuite.util.atomic import write_atomic


def markers(name: str) -> tuple[str, str]:
    """The opening and closing marker of block ``name``."""
    return f"<!-- {name} -->", f"<!-- /{name} -->"


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with block ``name``'s content replaced by ``body`` (between the markers, one newline each
    side). A missing or unclosed block is a ValueError naming the markers."""
    mark, end = markers(name)
    if mark not in text or end not in text.split(mark, 1)[1]:
        raise ValueError(f"no {mark} ... {end} block to rewrite")
    head, rest = text.split(mark, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{mark}\n{body}\n{end}{tail}"


def read_block(text: str, name: str) -> str | None:
    """The content of block ``name`` (without the newlines next to the markers), or None without one."""
    mark, end = markers(name)
    if mark not in text or end not in text.split(mark, 1)[1]:
        return None
    return text.split(mark, 1)[1].split(end, 1)[0].strip("\n")


def update_block(path: Path, name: str, body: str) -> None:
    """Rewrite block ``name`` of the file at ``path`` (atomically); exits with the reason if it has none."""
    try:
        new = replace_block(path.read_text(), name, body)
    except ValueError as exc:
        raise SystemExit(f"{path}: {exc}") from None
    write_atomic(path, new)
