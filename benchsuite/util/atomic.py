"""Atomic file writes, the one way benchsuite writes files a reader may see: records, tables, cache
entries. A reader sees the old file or the complete new one, never a part; a temp file a killed
writer left behind is recognised by its name and removed later (:func:`clean_stale_temps`)."""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

TEMP_NAME = re.compile(r"\.(?P<target>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def temp_path(path: Path) -> Path:
    """``.<name>.<host>.<pid>.<random>.tmp`` beside ``path``: who left it can be told from the name."""
    return path.parent / f".{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


@contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new content into (streamed, e.g. while extracting); on success
    it is synced and renamed into place, on any error removed. Created with the usual permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_file(path) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


def clean_stale_temps(folder: Path, max_age_s: float = 3600.0) -> list[Path]:
    """Remove temp files under ``folder`` that a killed writer left: those of a process of this host
    that is gone, or (another host's) older than ``max_age_s``. Returns what was removed."""
    removed = []
    host = _host()
    for tmp in Path(folder).rglob(".*.tmp"):
        match = TEMP_NAME.fullmatch(tmp.name)
        if match is None or not tmp.is_file():
            continue
        try:
            stale = (not _alive(int(match["pid"])) if match["host"] == host
                     else time.time() - tmp.stat().st_mtime > max_age_s)
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
