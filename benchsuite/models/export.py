"""``benchsuite export``: a saved (pruned) model as a folder or file that other tools open.

``hf`` (:mod:`benchsuite.models.hf`): a transformers checkpoint of the model's family with its tokenizer and a
model card; a plain checkpoint of that family where its config describes the model, else with its per-layer
widths in ``config.json`` and its modeling code beside it (``trust_remote_code=True``). ``benchsuite run
--save-models`` writes this format already; exporting such a folder copies it and writes its card from the run's
record. ``gguf`` (:mod:`benchsuite.models.gguf_file`): one float32 file for llama.cpp, per-layer widths as GGUF
arrays (the Llama family; other families are refused with the reason). ``compressed-tensors``
(:mod:`benchsuite.models.sparse24`): a 2:4 sparse model in the ``sparse-24-bitmask`` format.

The weights are the saved safetensors as they are (no reload, no rounding). An export is written into a
temporary folder beside its destination and renamed into place: an interrupted export leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchsuite.api.errors import ConfigError
from benchsuite.models.hf import family_of, hf_config, needs_remote_code, remote_code_name, write_card, write_layout

FORMATS = ("hf", "gguf", "compressed-tensors")
#: the default export folder's suffix per folder format (``-o`` names it otherwise)
_SUFFIX = {"hf": "hf", "compressed-tensors": "ct24"}
#: files of a saved model that the export writes anew
_REPLACED = {"README.md"}
#: the weights (and their index), which the compressed-tensors export writes anew, with its config
_WEIGHT_FILES = (".safetensors", ".safetensors.index.json", "config.json")


def model_dir_of(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """The saved model folder ``path`` names, and its record where there is one: ``path`` is a model folder
    (``--save-models`` writes ``<run folder>/models/<record stem>/``) or a record (``<record stem>.json``)."""
    path = Path(path)
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is not a record (JSON): {exc}") from None
        if not isinstance(record, dict) or "schema" not in record:
            raise ConfigError(f"{path} is not a benchsuite record")
        folder = path.parent / "models" / path.stem
        if not (folder / "config.json").is_file():
            raise ConfigError(f"record {path} has no saved model (no {folder}): run it again with --save-models")
        return folder, record
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} is neither a saved model folder (with config.json) nor a record")
    record_file = path.parent.parent / f"{path.name}.json"
    record = json.loads(record_file.read_text()) if path.parent.name == "models" and record_file.is_file() else None
    return path, record


def export(path: Path, fmt: str = "hf", out: Path | None = None) -> Path:
    """Export the saved model that ``path`` names (see :func:`model_dir_of`) in ``fmt``; return the folder (the
    file, for ``gguf``)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: unknown; choose one of {', '.join(FORMATS)}")
    source, record = model_dir_of(Path(path))
    if fmt == "gguf":
        return _export_gguf(source, Path(out) if out is not None else source.with_name(f"{source.name}.f32.gguf"))
    out = Path(out) if out is not None else source.with_name(f"{source.name}.{_SUFFIX[fmt]}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"-o {out} exists and is not an empty folder: give a new one")
    config = json.loads((source / "config.json").read_text())
    family = family_of(config)  # a model_type no plugin describes: one clear error, before anything is written
    if fmt == "compressed-tensors" and family.name != "llama":  # the only family its read-back is tested on
        raise ConfigError(f"{source}: a {family.name} model; the compressed-tensors export is tested on Llama-family "
                          "models only: use --format hf (a plain checkpoint of its family)")
    if fmt == "compressed-tensors" and needs_remote_code(config):
        granularity = ((record or {}).get("granularity") or {}).get("label", "structured")
        raise ConfigError(f"{source}: compressed-tensors holds 2:4 sparse models with their family's plain shapes; "
                          f"this one is {granularity} (per-layer widths): use --format hf or gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for file in sorted(source.iterdir()):
            if file.is_file() and file.name not in _REPLACED | {remote_code_name(family)} and \
                    not (fmt == "compressed-tensors" and file.name.endswith(_WEIGHT_FILES)):
                shutil.copy2(file, tmp / file.name)
        if fmt == "compressed-tensors":
            from benchsuite.models.sparse24 import write_sparse24

            write_sparse24(source, tmp, hf_config(config))
            write_card(tmp, record)
        else:
            write_layout(tmp, record)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _export_gguf(source: Path, out: Path) -> Path:
    from benchsuite.models.gguf_file import write_gguf

    if out.exists():
        raise ConfigError(f"-o {out} exists: give a new file name")
    if out.suffix != ".gguf":
        raise ConfigError(f"-o {out}: a GGUF file's name ends in .gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write_gguf(source, tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
