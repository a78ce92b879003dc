"""Models in and out: names to local checkpoints (:mod:`~benchsuite.models.resolve`), and loading, saving
and placing (pruned) models (:mod:`~benchsuite.models.checkpoint`). ``from benchsuite.models import
load_model_dir`` reopens a model that ``benchsuite run --save-models`` wrote.

May import: :mod:`benchsuite.data`, :mod:`benchsuite.pruning`, :mod:`benchsuite.host`, :mod:`benchsuite.api`,
:mod:`benchsuite.util`; not :mod:`benchsuite.evaluation` (a sibling).
"""

from __future__ import annotations

from benchsuite.models.checkpoint import (
    DEVICE_MAPS,
    DeviceMap,
    device_map_of,
    dispatch,
    gpu_memory,
    load_model_dir,
    load_tokenizer,
    read_safetensors,
    resolve_device_map,
    save_pruned,
)
from benchsuite.models.resolve import ModelUnavailable, ResolvedModel, check_config, resolve_model

__all__ = ["DEVICE_MAPS", "DeviceMap", "ModelUnavailable", "ResolvedModel", "check_config", "device_map_of",
           "dispatch", "gpu_memory", "load_model_dir", "load_tokenizer", "read_safetensors", "resolve_device_map",
           "resolve_model", "save_pruned"]
