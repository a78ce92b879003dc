"""The results store: one JSON record per run, written atomically, with its provenance."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA = 1
PACKAGES = ("benchsuite", "torch", "transformers", "peft", "lm_eval", "datasets", "pluggy", "gguf",
            "pandas", "tabulate", "safetensors")


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in text)


def record_path(results: Path, model: str, profile: str, method: str, ratio: float, seed: int) -> Path:
    base = Path(results) / slug(model) / slug(profile)
    if method == "dense":
        return base / "dense.json"
    return base / slug(method) / f"ratio-{ratio:.4g}_seed-{seed}.json"


def config_hash(config: Any) -> str:
    """Fingerprint of everything that determines a result (method, budgets, model weights)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_text_atomic(path: Path, text: str) -> None:
    """Write so that a reader sees the old file or the complete new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write one JSON record atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def load_records(results: Path) -> list[dict[str, Any]]:
    """Every record under ``results`` (unreadable or foreign JSON files are skipped)."""
    records = []
    for path in sorted(Path(results).rglob("*.json")):
        if "models" in path.relative_to(results).parts:
            continue
        record = read_record(path)
        if record is not None:
            record["_path"] = str(path)
            records.append(record)
    return records


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
    here = Path(__file__).resolve().parent.parent
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
