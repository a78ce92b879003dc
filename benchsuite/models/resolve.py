"""Model names -> local checkpoints: a registered name or alias, a local folder, or a hub id."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchsuite.api.components import ModelSpec
from benchsuite.api.errors import ConfigError
from benchsuite.host import Registry


class ModelUnavailable(ConfigError):
    """The model is known but can't be had on this machine (no hub access, gated, missing)."""


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user asked for, or the registered name
    source: str  # hub id, local path or pypi:... description
    path: Path  # local directory with config.json and weights

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "path": str(self.path)}


def _available(registry: Registry) -> str:
    local = [n for n, s in registry.models.items() if s.fetch is not None]
    return (f"models that work without the hub: {', '.join(sorted(local))}; or pass a local directory "
            "holding a transformers checkpoint (see `benchsuite models`)")


def resolve_model(name: str, registry: Registry) -> ResolvedModel:
    """Find a model by registered name/alias, local directory or hub id; download if needed."""
    path = Path(name).expanduser()
    if path.is_file():
        raise ConfigError(f"--model {name} is a file; give a checkpoint folder (with config.json), a registered "
                          "name (see `benchsuite models`) or a hub id")
    if path.is_dir():
        path = path.resolve()
        check_config(path)
        return ResolvedModel(path.name or "model", str(path), path)
    spec: ModelSpec | None = None
    try:
        spec = registry.lookup("models", name)
    except ConfigError as exc:
        if "/" not in name:  # not a hub id either
            raise ConfigError(f"{exc}; a hub id (org/name) or a local directory also works") from None
    if spec is not None and spec.fetch is not None:
        return ResolvedModel(spec.name, spec.source, Path(spec.fetch()))
    hub_id = spec.source if spec is not None else name
    return ResolvedModel(spec.name if spec else name, hub_id, _download(hub_id, name, registry))


def check_config(path: Path) -> None:
    """A checkpoint directory's ``config.json`` must be a JSON object naming a model type."""
    config = path / "config.json"
    if not config.is_file():
        raise ConfigError(f"model directory '{path}' has no config.json")
    try:
        data = json.loads(config.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{config} can't be read as JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ConfigError(f"{config} is not a transformers model config (no 'model_type')")


def _download(hub_id: str, asked: str, registry: Registry) -> Path:
    """Download a hub checkpoint's config, tokenizer and weights (safetensors if the repo has them)."""
    from huggingface_hub import HfApi, snapshot_download

    common = ["*.json", "*.model", "tokenizer*", "*.txt"]
    try:
        try:
            files = HfApi().list_repo_files(hub_id)
        except Exception:  # noqa: BLE001 - offline: a cached snapshot may still be there
            return Path(snapshot_download(hub_id, allow_patterns=[*common, "*.safetensors", "*.bin"]))
        weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["*.bin"]
        return Path(snapshot_download(hub_id, allow_patterns=[*common, *weights]))
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one clear message
        alias = f" ('{asked}')" if asked != hub_id else ""
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailable(
            f"cannot get {hub_id}{alias} from the Hugging Face hub: {reason}. It needs hub access "
            f"(and, for gated models, an accepted licence and HF_TOKEN). Here, {_available(registry)}"
        ) from None
