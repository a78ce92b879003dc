"""The results store: one JSON record per run attempt, written atomically, never overwritten.

Layout: ``<results>/<model>/<profile>/<variant>/ratio-R_seed-S.<settings>.json`` (``dense.<settings>.json``
for the dense model), where ``<settings>`` is the start of the record's ``config_hash``: the hash of
everything that defines the result, the model's weights digest included. A run with other settings (or
a model of the same folder name with other weights) is written beside the earlier records, never over
them. A run whose earlier attempt failed or whose file is damaged goes to a new file
(``ratio-R_seed-S.<settings>.2.json``, ...); the old file is kept. Every attempt is serialised by a lock
file (in ``<results>/.locks/``), so two processes never run or write the same record.

:func:`scan` reads a results directory and returns the usable records and, by path, every file that is
not one (damaged, partial, foreign or unreadable), so that one bad file never hides the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from benchsuite.util import atomic
from benchsuite.util.atomic import clean_stale_temps  # noqa: F401 - part of the store's interface

SCHEMA = 1
PACKAGES = ("benchsuite", "torch", "transformers", "peft", "lm_eval", "datasets", "pluggy", "gguf",
            "pandas", "tabulate", "safetensors")
#: the config keys that are the same for every record one ``benchsuite run`` invocation writes
CONTEXT_KEYS = ("profile", "weights", "dtype", "tasks", "limit")
_HASH_CHARS = 8
#: a file that marks a folder as a store of its own (the committed reference results): scanning a folder
#: above it leaves it out, so a user's ``results/`` never mixes with, or resumes from, ``results/reference/``
REFERENCE_MARKER = "REFERENCE.md"


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` that can't name a parent or hidden directory."""
    out = "".join(c if c.isalnum() or c in "-._" else "_" for c in str(text))
    return out if out and not out.startswith(".") else "_" + out


def config_hash(config: Any) -> str:
    """Fingerprint of everything that determines a result (method, budgets, model weights)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def settings_hash(config: dict[str, Any]) -> str:
    """Fingerprint of a record's settings apart from its seed: the records that average into one row."""
    return config_hash({k: v for k, v in config.items() if k != "seed"})


def context_hash(config: dict[str, Any]) -> str:
    """Fingerprint of the settings every record of one invocation shares (profile, weights, dtype, tasks)."""
    return config_hash({k: config.get(k) for k in CONTEXT_KEYS})


@dataclass(frozen=True)
class RecordSlot:
    """Where the records of one (model, profile, variant, ratio, seed, settings) live."""

    folder: Path
    stem: str  # dense, or ratio-R_seed-S
    config_hash: str
    #: the results folder: locks live in its ``.locks/``
    root: Path = Path(".")

    @property
    def name(self) -> str:
        return f"{self.stem}.{self.config_hash[:_HASH_CHARS]}"

    def attempts(self) -> list[Path]:
        """Existing files of this slot (a record from before settings were in the name included)."""
        pattern = re.compile(rf"{re.escape(self.name)}(\.\d+)?\.json")
        found = [p for p in self.folder.glob(f"{self.name}*.json") if pattern.fullmatch(p.name)]
        legacy = self.folder / f"{self.stem}.json"
        return sorted(found, key=_attempt_number) + ([legacy] if legacy.is_file() else [])

    def next_path(self) -> Path:
        """The first free file name: ``<name>.json``, then ``<name>.2.json``, ``<name>.3.json``..."""
        n = 1
        while (self.folder / _attempt_name(self.name, n)).exists():
            n += 1
        return self.folder / _attempt_name(self.name, n)

    @contextlib.contextmanager
    def lock(self, log=None) -> Iterator[None]:
        """Hold this slot's lock (waiting, with one log line, while another process holds it)."""
        from filelock import FileLock, Timeout

        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        where = self.folder.relative_to(self.root).as_posix().replace("/", "~")
        lock = FileLock(locks / f"{where}~{self.name}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if log is not None:
                log(f"  {self.folder / self.name}: another benchsuite process is running it; waiting")
            lock.acquire()
        try:
            yield
        finally:
            lock.release()


def _attempt_name(name: str, n: int) -> str:
    return f"{name}.json" if n == 1 else f"{name}.{n}.json"


def _attempt_number(path: Path) -> int:
    parts = path.name.split(".")
    return int(parts[-2]) if len(parts) >= 4 and parts[-2].isdigit() else 1


def record_slot(results: Path, model: str, profile: str, method: str, ratio: float, seed: int,
                config: dict[str, Any]) -> RecordSlot:
    """The slot of a record; ``model`` and ``method`` are user input, so the folder is checked to stay
    inside ``results``."""
    base = Path(results) / slug(model) / slug(profile)
    folder, stem = (base, "dense") if method == "dense" else (base / slug(method), f"ratio-{ratio:.4g}_seed-{seed}")
    if not folder.resolve().is_relative_to(Path(results).resolve()):
        raise ValueError(f"record folder {folder} is outside {results}")
    return RecordSlot(folder, stem, config_hash(config), Path(results))


def record_path(results: Path, model: str, profile: str, method: str, ratio: float, seed: int,
                config: dict[str, Any]) -> Path:
    """The file the first attempt of a record is written to."""
    slot = record_slot(results, model, profile, method, ratio, seed, config)
    return slot.folder / _attempt_name(slot.name, 1)


# -- writing ------------------------------------------------------------------------------------

def write_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write one JSON record atomically."""
    atomic.write_atomic(path, json.dumps(data, indent=2, default=str))


def write_new(path: Path, data: dict[str, Any]) -> None:
    """Write a record to ``path``, which must not exist yet: records are never overwritten."""
    if Path(path).exists():
        raise FileExistsError(f"{path} exists; records are never overwritten")
    write_atomic(path, data)


# -- reading ------------------------------------------------------------------------------------

class RecordProblem(ValueError):
    """A file under the results directory that is not a usable record."""


_STR_FIELDS = ("method", "model", "profile", "status", "config_hash")


def check_record(data: Any) -> None:
    """Raise :class:`RecordProblem` saying what is wrong if ``data`` is not a complete record."""
    if not isinstance(data, dict) or "schema" not in data:
        raise RecordProblem("not a benchsuite record (no 'schema' field)")
    if data["schema"] != SCHEMA:
        raise RecordProblem(f"record schema {data['schema']!r}; this benchsuite reads schema {SCHEMA}")
    for key in _STR_FIELDS:
        if not isinstance(data.get(key), str) or not data.get(key):
            raise RecordProblem(f"'{key}' is missing or not a string")
    if data["status"] not in ("ok", "error"):
        raise RecordProblem(f"status {data['status']!r} is neither 'ok' nor 'error'")
    if not _number(data.get("ratio")) or isinstance(data.get("ratio"), bool):
        raise RecordProblem(f"'ratio' is {data.get('ratio')!r}, not a number")
    if not isinstance(data.get("seed"), int) or isinstance(data.get("seed"), bool):
        raise RecordProblem(f"'seed' is {data.get('seed')!r}, not an integer")
    if not isinstance(data.get("config"), dict):
        raise RecordProblem("'config' is missing or not a mapping")
    metrics = data.get("metrics")
    if not isinstance(metrics, dict):
        raise RecordProblem("'metrics' is missing or not a mapping: an incomplete record")
    if data["status"] == "ok":
        if not metrics:
            raise RecordProblem("status ok but no metrics: an incomplete record")
        for key, value in metrics.items():
            if value is not None and (not _number(value) or isinstance(value, bool)):
                raise RecordProblem(f"metric '{key}' is {value!r}, not a number")
            if value is not None and not math.isfinite(value):
                raise RecordProblem(f"metric '{key}' is {value}: a non-finite value recorded as ok")
    for key in ("granularity", "criterion", "schedule", "recovery_setup"):
        if key in data and data[key] is not None and not isinstance(data[key], dict):
            raise RecordProblem(f"'{key}' is {type(data[key]).__name__}, not a mapping")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float))


def load_record(path: Path) -> dict[str, Any]:
    """One record, checked; raises :class:`RecordProblem` naming what is wrong (never another error)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise RecordProblem(f"unreadable: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordProblem(f"not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordProblem(f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise RecordProblem("not valid JSON (nested too deeply)") from None
    check_record(data)
    return data


def read_record(path: Path) -> dict[str, Any] | None:
    """One record, or None if the file is missing or not a usable record."""
    try:
        return load_record(path)
    except RecordProblem:
        return None


def scan(results: Path) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """Every usable record under ``results`` (each with ``_path``) and every other ``*.json`` file with
    what is wrong with it. Saved models (``models/`` folders) are not records and are not looked at."""
    records, problems = [], []
    results = Path(results)
    others = [m.parent for m in results.rglob(REFERENCE_MARKER) if m.parent != results]
    for path in sorted(results.rglob("*.json")):
        parts = path.relative_to(results).parts
        if "models" in parts[:-1] or any(part.startswith(".") for part in parts):
            continue
        if any(path.is_relative_to(folder) for folder in others):  # e.g. results/reference: not this store's
            continue
        try:
            record = load_record(path)
        except RecordProblem as exc:
            problems.append((path, str(exc)))
            continue
        record["_path"] = str(path)
        records.append(record)
    return records, problems


def latest_attempts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per run: of the attempts with the same folder, seed and ratio and the same settings,
    the latest that succeeded, else the latest (earlier attempts stay on disk)."""
    best: dict[tuple, dict[str, Any]] = {}
    order: list[tuple] = []
    for record in records:
        path = Path(record.get("_path", ""))
        key = (str(path.parent), record.get("method"), record.get("ratio"), record.get("seed"),
               record.get("config_hash"))
        old = best.get(key)
        if old is None:
            order.append(key)
            best[key] = record
        elif _rank(record) > _rank(old):
            best[key] = record
    return [best[key] for key in order]


def _rank(record: dict[str, Any]) -> tuple:
    return (record.get("status") == "ok", str(record.get("finished_at") or ""), _attempt_number(
        Path(record.get("_path", "x.json"))))


def load_records(results: Path) -> list[dict[str, Any]]:
    """The usable records under ``results``, the latest attempt of each run (see :func:`scan`)."""
    return latest_attempts(scan(results)[0])


def problems_message(problems: list[tuple[Path, str]], results: Path) -> str:
    """Warning lines for the files :func:`scan` could not use."""
    lines = [f"{len(problems)} file(s) under {results} are not usable records; they are skipped and kept as they are:"]
    lines += [f"  {path}: {reason}" for path, reason in problems]
    return "\n".join(lines)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> dict[str, Any] | None:
    """The commit of the benchsuite checkout (when run from one) and whether its code had changes
    (records and tables under ``results/`` don't count: a run writes them itself)."""
    here = Path(__file__).resolve().parents[2]  # the checkout (benchsuite/running/records.py)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                               cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def hardware(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "device": device}
    # the CPU kernels torch chose (AVX2, AVX512 ...): floats are bit-identical only on the same ones
    with contextlib.suppress(AttributeError, RuntimeError):
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    info["argv"] = sys.argv
    return info


def check_writable(results: Path) -> None:
    """Raise OSError (with the reason) unless records can be written under ``results``. Leaves nothing
    behind: folders it had to create for the test are removed again."""
    results = Path(results)
    created = []
    folder = results
    while not folder.exists() and folder != folder.parent:
        created.append(folder)
        folder = folder.parent
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a directory")
    try:
        for new in reversed(created):
            new.mkdir()
        probe = results / f".write-test.{os.getpid()}.{secrets.token_hex(4)}"
        probe.write_bytes(b"")
        probe.unlink()
    finally:
        for new in created:
            with contextlib.suppress(OSError):
                new.rmdir()
