"""``benchsuite export``: a saved (pruned) model as a folder that other tools open.

``hf``: a transformers checkpoint. A model whose shapes a plain Llama config describes (N:M, unstructured, depth
pruning, the dense model) is saved as exactly that, with no remote code. A structurally pruned model, whose
layers have their own head counts and MLP widths (and, after FLAP, biases), carries them in ``config.json``
(``benchsuite_layer_widths``, ``benchsuite_biases``) with the modeling code beside it through ``auto_map``
(:mod:`benchsuite.models.remote`'s ``modeling_benchsuite_llama.py``, which subclasses the installed
transformers Llama classes and needs nothing of benchsuite): ``AutoModelForCausalLM.from_pretrained(DIR,
trust_remote_code=True)``. Either way the folder holds the tokenizer and a model card (``README.md``, the hub's
conventions) naming the base model, method, granularity, ratio, recovery, parameters, the record's metrics with
their intervals, and the command that made it.

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
from benchsuite.pruning.structure import BIASES_KEY, WIDTHS_KEY

FORMATS = ("hf",)
REMOTE_CODE = Path(__file__).parent / "remote" / "modeling_benchsuite_llama.py"
MODEL_TYPE = "benchsuite_llama"
#: config.json keys of benchsuite's own saved models that an export does not carry
_OWN_KEYS = (WIDTHS_KEY, BIASES_KEY)
#: files of a saved model that are replaced or left out
_REPLACED = {"config.json", "README.md", REMOTE_CODE.name}


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


def needs_remote_code(config: dict[str, Any]) -> bool:
    """True where a plain Llama config can't describe the shapes: per-layer widths, or added biases."""
    return bool(config.get(WIDTHS_KEY)) or bool(config.get(BIASES_KEY))


def hf_config(config: dict[str, Any]) -> dict[str, Any]:
    """config.json of the export: a plain Llama config, or one that points at the modeling code beside it."""
    out = {k: v for k, v in config.items() if k not in _OWN_KEYS}
    if not needs_remote_code(config):
        return out
    module = REMOTE_CODE.stem
    return out | {
        "model_type": MODEL_TYPE, "architectures": ["BenchsuiteLlamaForCausalLM"],
        "auto_map": {"AutoConfig": f"{module}.BenchsuiteLlamaConfig",
                     "AutoModelForCausalLM": f"{module}.BenchsuiteLlamaForCausalLM"},
        WIDTHS_KEY: config.get(WIDTHS_KEY) or None, BIASES_KEY: config.get(BIASES_KEY) or None,
    }


def export(path: Path, fmt: str = "hf", out: Path | None = None) -> Path:
    """Export the saved model that ``path`` names (see :func:`model_dir_of`) in ``fmt``; return the folder."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: unknown; choose one of {', '.join(FORMATS)}")
    source, record = model_dir_of(Path(path))
    out = Path(out) if out is not None else source.with_name(f"{source.name}.{fmt}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"-o {out} exists and is not an empty folder: give a new one")
    config = json.loads((source / "config.json").read_text())
    if config.get("model_type") not in ("llama", MODEL_TYPE):
        raise ConfigError(f"{source}: model_type {config.get('model_type')!r}; the hf export writes Llama-family "
                          "checkpoints")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for file in sorted(source.iterdir()):
            if file.is_file() and file.name not in _REPLACED:
                shutil.copy2(file, tmp / file.name)
        (tmp / "config.json").write_text(json.dumps(hf_config(config), indent=2, sort_keys=True) + "\n")
        if needs_remote_code(config):
            shutil.copy2(REMOTE_CODE, tmp / REMOTE_CODE.name)
        (tmp / "README.md").write_text(model_card(config, record, _provenance(source)))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _provenance(source: Path) -> dict[str, Any]:
    file = source / "benchsuite.json"
    try:
        return json.loads(file.read_text()) if file.is_file() else {}
    except (OSError, ValueError):
        return {}


def _yaml(value: Any) -> str:
    return json.dumps(value)  # JSON scalars and lists are YAML


def _metric_rows(metrics: dict[str, Any]) -> list[str]:
    rows = []
    for key in sorted(metrics):
        if key.endswith(("_lo", "_hi")) or not isinstance(metrics[key], (int, float)) or isinstance(metrics[key], bool):
            continue
        value = metrics[key]
        lo, hi = metrics.get(f"{key}_lo"), metrics.get(f"{key}_hi")
        interval = f"{lo:.4g} to {hi:.4g}" if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) else ""
        rows.append(f"| {key} | {value:.6g} | {interval} |")
    return rows


def model_card(config: dict[str, Any], record: dict[str, Any] | None, provenance: dict[str, Any]) -> str:
    """The folder's README.md: YAML metadata (the hub's model-card fields), then what was done and measured."""
    record = record or {}
    method = record.get("variant") or record.get("method") or provenance.get("method") or "unknown"
    base = record.get("model_source") or record.get("model") or provenance.get("model") or "unknown"
    ratio = record.get("ratio", provenance.get("ratio"))
    seed = record.get("seed", provenance.get("seed"))
    granularity = (record.get("granularity") or {}).get("label") or \
        ((provenance.get("config") or {}).get("granularity") or {}).get("name", "unknown")
    recovery = (record.get("recovery_setup") or {}).get("label") or ("LoRA" if record.get("recovery") else "none")
    metrics = record.get("metrics") or {}
    params = metrics.get("params")
    profile = record.get("profile", "quick")
    command = (f"benchsuite run --methods {method} --model {record.get('model', base)} --ratios {ratio} "
               f"--seeds {seed} --profile {profile} --save-models")
    front = {
        "library_name": "transformers", "pipeline_tag": "text-generation", "base_model": base,
        "tags": ["benchsuite", "pruning", f"pruning-{granularity}", method],
    }
    lines = ["---", *(f"{k}: {_yaml(v)}" for k, v in front.items()), "---", "",
             f"# {record.get('model', base)} pruned with {method} ({granularity}, ratio {ratio})", "",
             "Pruned and measured with [benchsuite](https://pypi.org/project/benchsuite/).", "",
             "| | |", "| --- | --- |",
             f"| base model | {base} |", f"| method | {method} |", f"| granularity | {granularity} |",
             f"| ratio | {ratio} (fraction of the decoder layers' weights removed) |", f"| recovery | {recovery} |",
             f"| seed | {seed} |", f"| profile | {profile} |",
             f"| parameters | {params:,} |" if isinstance(params, int) else "| parameters | see the record |",
             f"| weights sha256 of the base | {record.get('weights_sha256', provenance.get('weights_sha256', '-'))} |",
             ""]
    if needs_remote_code(config):
        lines += ["Each decoder layer keeps its own head counts and MLP width (`benchsuite_layer_widths` in "
                  "`config.json`), so the folder carries its modeling code: open it with",
                  "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  'model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)',
                  "tokenizer = AutoTokenizer.from_pretrained(DIR)", "```", ""]
    else:
        lines += ["A plain Llama checkpoint: `AutoModelForCausalLM.from_pretrained(DIR)`.", ""]
    rows = _metric_rows(metrics)
    if rows:
        lines += ["## Measured", "", "As recorded by the run (intervals: 95% bootstrap).", "",
                  "| metric | value | 95% interval |", "| --- | --- | --- |", *rows, ""]
    lines += ["## How it was made", "", "```bash", command, "benchsuite export <the run's record> --format hf",
              "```", ""]
    return "\n".join(lines)
