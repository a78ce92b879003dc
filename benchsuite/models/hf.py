"""The ``hf`` format of a saved model: what makes a benchsuite checkpoint a transformers checkpoint of its family.

A model whose shapes its family's config describes (N:M, unstructured, depth pruning, the dense model) is a plain
checkpoint of that family (Llama, Qwen3, Gemma 3, ...), no remote code. A structurally pruned model, whose layers
have their own head counts and MLP widths (and, after FLAP, biases), carries them in ``config.json``
(``benchsuite_layer_widths``, ``benchsuite_biases``, ``model_type: benchsuite_<family>``) with the modeling code
beside it through ``auto_map``: ``modeling_benchsuite_<family>.py``, written from
``remote/modeling_benchsuite_llama.py`` with the family's transformers classes in place of Llama's, so it
subclasses the installed classes of *that* family and needs nothing of benchsuite:
``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``. benchsuite reads such a folder back without
running that code (:func:`read_config`). ``README.md`` is a model card.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from benchsuite.api.architecture import Architecture, architecture_of, known_families
from benchsuite.api.errors import ConfigError
from benchsuite.pruning.structure import BIASES_KEY, WIDTHS_KEY

#: the modeling code of a structurally pruned Llama; other families' is this file with their classes
REMOTE_CODE = Path(__file__).parent / "remote" / "modeling_benchsuite_llama.py"

#: ``model_type`` of an export with per-layer widths: this prefix and the family's name
MODEL_TYPE_PREFIX = "benchsuite_"


def _stem(family: Architecture) -> str:
    return family.name.replace("-", "_")


def export_model_type(family: Architecture) -> str:
    """``model_type`` of an export of ``family`` with per-layer widths (``benchsuite_llama``, ``benchsuite_qwen3``)."""
    return MODEL_TYPE_PREFIX + _stem(family)


def remote_code_name(family: Architecture) -> str:
    """The file name of the modeling code beside such an export (``modeling_benchsuite_qwen3.py``)."""
    return f"modeling_benchsuite_{_stem(family)}.py"


def remote_code(family: Architecture) -> str:
    """The modeling code of a structurally pruned model of ``family``: the Llama file with the family's transformers
    classes (and names derived from them) in place of Llama's."""
    text = REMOTE_CODE.read_text()
    for old, new in (("BenchsuiteLlamaConfig", f"Benchsuite{family.config_class}"),
                     ("BenchsuiteLlamaForCausalLM", f"Benchsuite{family.model_class}"),
                     ("LlamaConfig", family.config_class), ("LlamaForCausalLM", family.model_class),
                     ("benchsuite_llama", export_model_type(family))):
        text = re.sub(rf"\b{old}\b", new, text)
    return text


def family_of(config: dict[str, Any]) -> Architecture:
    """The family of a saved model's config.json, also of an export with per-layer widths."""
    model_type = config.get("model_type") or ""
    if model_type.startswith(MODEL_TYPE_PREFIX):
        for family in known_families().values():
            if export_model_type(family) == model_type:
                return family
    return architecture_of(config, prunable=False)


#: config.json keys of benchsuite's own saved models that an export does not carry (the family's cut norms are
#: carried so that the modeling code reshapes them)
_OWN_KEYS = (WIDTHS_KEY, BIASES_KEY)
CUT_KEY = "benchsuite_cut_with_heads"
PATHS_KEY = "benchsuite_projections"


def needs_remote_code(config: dict[str, Any]) -> bool:
    """True where the family's plain config can't describe the shapes: per-layer widths, or added biases."""
    return bool(config.get(WIDTHS_KEY)) or bool(config.get(BIASES_KEY))


def hf_config(config: dict[str, Any]) -> dict[str, Any]:
    """config.json of the export: a plain config of the model's family, or one that points at the modeling code
    beside it."""
    out = {k: v for k, v in config.items() if k not in _OWN_KEYS}
    if not needs_remote_code(config):
        return out
    family = family_of(config)
    module = remote_code_name(family).removesuffix(".py")
    return out | {
        "model_type": export_model_type(family), "architectures": [f"Benchsuite{family.model_class}"],
        "auto_map": {"AutoConfig": f"{module}.Benchsuite{family.config_class}",
                     "AutoModelForCausalLM": f"{module}.Benchsuite{family.model_class}"},
        WIDTHS_KEY: config.get(WIDTHS_KEY) or None, BIASES_KEY: config.get(BIASES_KEY) or None,
        CUT_KEY: dict(family.cut_with_heads) or None,
        PATHS_KEY: {"attention": list(family.attention), "mlp": list(family.mlp)}
        | ({"experts": family.experts, "router": family.router} if family.experts else {}),
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
                  "values and a bitmask (`quantization_config` in `config.json`), which the compressed-tensors "
                  "package (0.14) reads back. The export with `--format hf` holds the same weights "
                  "stored dense, for plain transformers.", ""]
    elif needs_remote_code(config):
        lines += ["Each decoder layer keeps its own head counts and MLP width (`benchsuite_layer_widths` in "
                  "`config.json`), so the folder carries its modeling code: open it with",
                  "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  'model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)',
                  "tokenizer = AutoTokenizer.from_pretrained(DIR, trust_remote_code=True)", "```", ""]
    else:
        family = family_of(config).model_class.removesuffix("ForCausalLM")
        lines += [f"A plain {family} checkpoint: `AutoModelForCausalLM.from_pretrained(DIR)`.", ""]
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
        family = family_of(config)
        (folder / remote_code_name(family)).write_text(remote_code(family))
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
    """The transformers config of a checkpoint folder; an ``hf`` export with per-layer widths is read as the config
    of its family (its remote code is for other tools: benchsuite rebuilds the layers itself)."""
    import transformers

    data = json.loads((Path(path) / "config.json").read_text())
    if not str(data.get("model_type", "")).startswith(MODEL_TYPE_PREFIX):
        return transformers.AutoConfig.from_pretrained(path)
    family = family_of(data)
    config_class = getattr(transformers, family.config_class, None)
    if config_class is None:
        raise ConfigError(f"{path}: a {family.name} export, and this transformers ({transformers.__version__}) has no "
                          f"{family.config_class}")
    plain = {k: v for k, v in data.items() if k not in ("auto_map", "model_type", CUT_KEY, PATHS_KEY)}
    return config_class.from_dict(plain | {"architectures": [family.model_class]})
