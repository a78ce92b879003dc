"""The asset cache: its folder, a manifest of digests, per-artifact locks, checks and temp clean-up.

Every file benchsuite writes into the cache (wheels, extracted wheel members, the converted model, the
zero-shot task data, the recovery corpus) is recorded in ``manifest.json`` at the cache root, keyed by its
path relative to the cache: ``{"sha256", "size", "mtime_ns"}``. A use compares the file's size and mtime_ns
with the record (one ``stat``); only when they differ, or there is no record yet, is the file hashed in full
(:func:`check`). ``benchsuite cache verify`` hashes every recorded file (:func:`verify_all`). Digests of
files outside the cache (a user's checkpoint, see :func:`external_digest`) are kept under ``external/`` keys.

An artifact is checked and (re)written under its own lock (:func:`locked`: a file lock under ``.locks/``), so
two processes never write the same artifact, and the one that waits then uses the other's result. Inside
the lock, temp files left by a killed holder are removed (:func:`remove_temps`): the lock proves nobody else
writes them. Locks nest in one order only: model -> wheel member -> wheel, and recovery corpus -> task data
-> wheel member -> wheel; the manifest's own lock is innermost and held only to rewrite it.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from benchsuite.api.errors import AssetError
from benchsuite.util.atomic import write_atomic

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
#: manifest key prefix of digests of files outside the cache (see :func:`external_digest`)
EXTERNAL = "external/"
_locks: dict[Path, FileLock] = {}
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


def cache_dir() -> Path:
    """``$BENCHSUITE_CACHE``, else ``$XDG_CACHE_HOME/benchsuite``, else ``~/.cache/benchsuite``."""
    if os.environ.get("BENCHSUITE_CACHE"):
        path, source = Path(os.environ["BENCHSUITE_CACHE"]).expanduser(), "BENCHSUITE_CACHE"
    elif os.environ.get("XDG_CACHE_HOME"):
        path, source = Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "benchsuite", "XDG_CACHE_HOME"
    else:
        path, source = Path.home() / ".cache" / "benchsuite", "the home folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AssetError(f"the benchsuite cache {path} (from {source}) can't be created: "
                         f"{exc.strerror or exc}; set BENCHSUITE_CACHE to a writable folder") from None
    if not path.is_dir():
        raise AssetError(f"the benchsuite cache {path} (from {source}) is not a folder; "
                         "set BENCHSUITE_CACHE to a writable folder")
    return path


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    return hash_files([path])


def hash_files(paths: list[Path]) -> str:
    """The sha256 hex digest of the files' bytes, concatenated in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def publish(path: Path) -> None:
    """Give a temp file or folder (created 0600/0700) the usual permissions before renaming it."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def key(path: Path) -> str:
    """The manifest key of a path in the cache: its path relative to the cache, with ``/``."""
    path = Path(path)
    return (path.parent.resolve() / path.name).relative_to(cache_dir().resolve()).as_posix()


# --- locks -------------------------------------------------------------------------------------


@contextmanager
def locked(path: Path, what: str | None = None) -> Iterator[None]:
    """Hold the lock of the cache artifact ``path`` (``.locks/<its key>.lock``). If another process holds
    it, say so on stderr (naming ``what`` it is doing) and wait. Re-entrant within a process."""
    lock_file = cache_dir() / ".locks" / (key(path).replace("/", "__") + ".lock")
    if lock_file not in _locks:
        _locks[lock_file] = FileLock(lock_file)
    lock = _locks[lock_file]
    try:
        lock_file.parent.mkdir(exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if what:
                print(f"waiting for another benchsuite process to finish {what} ({lock_file})", file=sys.stderr,
                      flush=True)
            lock.acquire()
    except OSError as exc:
        if exc.errno not in _READ_ONLY:
            raise
        log.debug("no lock for %s in a read-only cache (%s)", path, exc)  # nothing will be written there either
        yield
        return
    try:
        yield
    finally:
        lock.release()


def remove_temps(folder: Path, prefix: str) -> None:
    """Remove the entries of ``folder`` named ``prefix*``: temp files and folders left by a killed process.
    Call it only while holding the lock of the artifact they belong to."""
    for path in Path(folder).glob(glob.escape(prefix) + "*"):
        log.info("removing %s, left by an interrupted benchsuite process", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


# --- the manifest ------------------------------------------------------------------------------


def manifest_path() -> Path:
    return cache_dir() / "manifest.json"


def load_manifest() -> dict[str, dict[str, Any]]:
    """The manifest's records by key (empty if there is no manifest yet)."""
    path = manifest_path()
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("the cache manifest %s is unreadable (%s); cached files will be checked or fetched again", path,
                    exc)
        return {}
    return entries if isinstance(entries, dict) else {}


@contextmanager
def _editing_manifest() -> Iterator[dict[str, dict[str, Any]]]:
    """The manifest's records to change in place; written back atomically, under the manifest's lock."""
    path = manifest_path()
    with locked(path):
        remove_temps(path.parent, f".{path.name}.")
        entries = load_manifest()
        yield entries
        try:
            store(path, json.dumps(entries, indent=1, sort_keys=True) + "\n", recorded=False)
        except OSError as exc:  # a read-only cache: checks stay correct, only slower
            log.debug("could not update %s: %s", path, exc)


def record(path: Path, sha256: str | None = None) -> str:
    """Record ``path`` with its digest (computed if not given), size and mtime_ns; return the digest."""
    return record_files({Path(path): sha256})[Path(path)]


def record_files(digests: dict[Path, str | None]) -> dict[Path, str]:
    """Record several files at once (digests computed where None); return every digest."""
    done = {path: digest or sha256_file(path) for path, digest in digests.items()}
    stats = {path: path.stat() for path in done}
    with _editing_manifest() as entries:
        for path, digest in done.items():
            entries[key(path)] = {"sha256": digest, "size": stats[path].st_size, "mtime_ns": stats[path].st_mtime_ns}
    return done


def record_tree(folder: Path) -> None:
    """Record every file under ``folder``."""
    record_files({path: None for path in sorted(Path(folder).rglob("*")) if path.is_file()})


def forget(path: Path) -> None:
    """Drop the records of ``path`` and of everything under it."""
    gone = key(path)
    with _editing_manifest() as entries:
        for k in [k for k in entries if k == gone or k.startswith(gone + "/")]:
            del entries[k]


def discard(path: Path) -> None:
    """Remove a cached file or folder and its records."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    forget(path)


def store(path: Path, data: str | bytes, recorded: bool = True) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically and, if ``recorded``, record its digest."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    write_atomic(path, raw)
    if recorded:
        record(path, hashlib.sha256(raw).hexdigest())


# --- checks ------------------------------------------------------------------------------------


def check(path: Path, expected: str | None = None) -> str:
    """How the cached file ``path`` compares with its recorded digest, or with ``expected`` (a pinned digest):
    ``"ok"``, ``"missing"``, ``"unrecorded"`` (no record and nothing expected: it can't be checked) or
    ``"damaged"``. Cheap when its size and mtime_ns equal the record's; otherwise it is hashed in full (and
    recorded again if it matches)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    entry = load_manifest().get(key(path)) or {}
    want = expected or entry.get("sha256")
    if want is None:
        return "unrecorded"
    if entry.get("sha256") == want:
        if (entry.get("size"), entry.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
            return "ok"
        if entry.get("size") != st.st_size:
            return "damaged"
    if sha256_file(path) != want:
        return "damaged"
    record(path, want)
    return "ok"


def usable(path: Path, redo: str, expected: str | None = None) -> bool:
    """:func:`check` ``path``; if it can't be used, log why (a warning if it is damaged) and what is done
    instead (``redo``, e.g. "extracting it again")."""
    status = check(path, expected)
    if status == "damaged":
        log.warning("%s in the benchsuite cache is damaged (its sha256 differs from the one recorded when it was "
                    "written); %s", path, redo)
    elif status == "unrecorded":
        log.info("%s has no recorded sha256 (cached by an older benchsuite); %s", path, redo)
    return status == "ok"


def external_digest(folder: Path, files: list[Path]) -> str:
    """The sha256 over ``files`` (symlinks followed), computed once and cached in the manifest under
    ``external/<folder>`` with each file's resolved path, size and mtime_ns: hashed again only when they change."""
    resolved = [Path(p).resolve() for p in files]
    stamps = [[str(p), st.st_size, st.st_mtime_ns] for p in resolved for st in [p.stat()]]
    name = EXTERNAL + str(Path(folder).resolve())
    entry = load_manifest().get(name) or {}
    if entry.get("files") == stamps and entry.get("sha256"):
        return entry["sha256"]
    digest = hash_files(resolved)
    with _editing_manifest() as entries:
        for gone in [k for k, e in entries.items()  # folders that no longer exist (a test's temp checkpoint)
                     if k.startswith(EXTERNAL) and not all(Path(f[0]).exists() for f in e.get("files", []))]:
            del entries[gone]
        entries[name] = {"sha256": digest, "files": stamps}
    return digest


def verify_all(fix: bool = False) -> tuple[list[tuple[Path, str, str | None]], int, int]:
    """Hash every recorded file of the cache in full. Returns the problems as ``(path, expected sha256,
    actual sha256 or None if missing)``, the number of files and of bytes checked. With ``fix``, damaged
    files are removed with their records (missing ones lose their records), so the next use fetches them
    again."""
    root = cache_dir()
    problems: list[tuple[Path, str, str | None]] = []
    files = size = 0
    for name, entry in sorted(load_manifest().items()):
        if name.startswith(EXTERNAL):
            continue
        path = root / name
        if not path.is_file():
            problems.append((path, entry.get("sha256", "?"), None))
            continue
        actual = sha256_file(path)
        files += 1
        size += path.stat().st_size
        if actual != entry.get("sha256"):
            problems.append((path, entry.get("sha256", "?"), actual))
    if fix:
        for path, _, _ in problems:
            discard(path)
    return problems, files, size
