"""The ``hf`` format of a saved model: what makes a benchsuite checkpoint a transformers checkpoint.

A model whose shapes a plain Llama config describes (N:M, unstructured, depth pruning, the dense model) is a
plain Llama checkpoint, no remote code. A structurally pruned model, whose layers have their own head counts and
MLP widths (and, after FLAP, biases), carries them in ``config.json`` (``benchsuite_layer_widths``,
``benchsuite_biases``, ``model_type: benchsuite_llama``) with the modeling code beside it through ``auto_map``
(``remote/modeling_benchsuite_llama.py``, which subclasses the installed transformers Llama classes and needs
nothing of benchsuite): ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``. benchsuite reads
such a folder back without running that code (:func:`read_config`). ``README.md`` is a model card.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from benchsuite.pruning.structure import BIASES_KEY, WIDTHS_KEY

REMOTE_CODE = Path(__file__).parent / "remote" / "modeling_benchsuite_llama.py"


MODEL_TYPE = "benchsuite_llama"


#: config.json keys of benchsuite's own saved models that an export does not carry
_OWN_KEYS = (WIDTHS_KEY, BIASES_KEY)


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
    sparsity = (config.get("quantization_config") or {}).get("sparsity_config") or {}
    fmt = "hf"
    if sparsity.get("format") == "sparse-24-bitmask":
        fmt = "compressed-tensors"
        lines += ["Stored in compressed-tensors' `sparse-24-bitmask` format: each 2:4 sparse projection as its kept "
                  "values and a bitmask (`quantization_config` in `config.json`), the format vLLM reads to run 2:4 "
                  "sparse kernels (`vllm serve DIR`). The export with `--format hf` holds the same weights "
                  "stored dense, for plain transformers.", ""]
    elif needs_remote_code(config):
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
    lines += ["## How it was made", "", "```bash", command, f"benchsuite export <the run's record> --format {fmt}",
              "```", ""]
    return "\n".join(lines)


def write_layout(folder: Path, record: dict[str, Any] | None = None) -> None:
    """Make a folder that ``save_pretrained`` wrote an ``hf`` export in place: its config.json, the modeling code
    where the shapes need it, and the model card (from ``record`` where given)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(hf_config(config), indent=2, sort_keys=True) + "\n")
    if needs_remote_code(config):
        shutil.copy2(REMOTE_CODE, folder / REMOTE_CODE.name)
    write_card(folder, record)


def write_card(folder: Path, record: dict[str, Any] | None) -> None:
    """The folder's README.md, from its config, its ``record`` and its ``benchsuite.json`` provenance."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "README.md").write_text(model_card(config, record, provenance(folder)))


def provenance(folder: Path) -> dict[str, Any]:
    file = Path(folder) / "benchsuite.json"
    try:
        return json.loads(file.read_text()) if file.is_file() else {}
    except (OSError, ValueError):
        return {}


def read_config(path: Path) -> Any:
    """The transformers config of a checkpoint folder; an ``hf`` export with per-layer widths is read as the Llama
    config it is (its remote code is for other tools: benchsuite rebuilds the layers itself)."""
    from transformers import AutoConfig, LlamaConfig

    data = json.loads((Path(path) / "config.json").read_text())
    if data.get("model_type") != MODEL_TYPE:
        return AutoConfig.from_pretrained(path)
    plain = {k: v for k, v in data.items() if k not in ("auto_map", "model_type")}
    return LlamaConfig.from_dict(plain | {"architectures": ["LlamaForCausalLM"]})
