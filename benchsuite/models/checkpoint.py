"""Model names -> local checkpoints -> transformers models; saving and reloading pruned models.

A pruned model is saved as safetensors plus a config that records per-layer widths
(``benchsuite_layer_widths``) and the projections that have a bias (``benchsuite_biases``: FLAP's
compensation adds some); :func:`load_model_dir` rebuilds those layers and returns an ordinary
transformers model, building it on the meta device first so that a reload never holds the full-size
model. Any model can be spread over several GPUs (``device_map``, accelerate's hooks): see
:func:`load_model_dir` and :func:`resolve_device_map`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchsuite.api.architecture import architecture_of
from benchsuite.api.errors import ConfigError
from benchsuite.api.experts import fused
from benchsuite.api.model import decoder_layers
from benchsuite.models.hf import read_config, write_layout
from benchsuite.pruning.structure import BIASES_KEY, WIDTHS_KEY, add_biases, record_widths, reshape_to_widths

#: ``--device-map`` choices: how accelerate spreads a model's layers over the visible GPUs (as transformers'
#: ``from_pretrained(device_map=...)``): ``auto`` and ``balanced`` even out the memory, ``balanced_low_0`` leaves
#: the first GPU lighter, ``sequential`` fills each GPU before the next
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
#: a device-map name (:data:`DEVICE_MAPS`) or an explicit ``{module name: device}`` mapping
DeviceMap = str | Mapping[str, "int | str | torch.device"]


def load_model_dir(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu", device_map: DeviceMap | None = None) -> nn.Module:
    """Load a checkpoint directory (dense, or pruned by benchsuite) as a transformers model.

    ``device_map`` None: the whole model on ``device``. Otherwise its layers are spread over several
    devices with accelerate's hooks (the model is *dispatched*): a name from :data:`DEVICE_MAPS` splits
    it over the visible GPUs (only GPUs: a model that does not fit them is a :class:`ConfigError`, it is
    never offloaded to the CPU or the disk, whose weights could not be pruned in place), or an explicit
    mapping ``{module name: device}`` runs each module on its device (``"cpu"`` included: executed
    there, not offloaded). The map used is the model's ``hf_device_map``.

    A pruned checkpoint is rebuilt without allocating the full-size model: the skeleton is made on the
    meta device (no memory), reshaped to the recorded widths, and each saved tensor is put straight onto
    its device, so the peak is about the pruned model's size. A dense checkpoint on the CPU is copied
    out of the memory-mapped file into ordinary memory (see :func:`_materialize`); on a GPU it is loaded
    straight there.
    """
    path = Path(path)
    config = read_config(path)
    widths = getattr(config, WIDTHS_KEY, None)
    placement = None
    if device_map is not None:
        placement = resolve_device_map(_skeleton(config, dtype, widths), device_map, dtype)
    rebuilt = widths or getattr(config, BIASES_KEY, None)  # per-layer widths, or biases the config lacks
    model = _load_dense(path, dtype, device, placement) if not rebuilt else _load_pruned(
        path, config, widths, dtype, device, placement)
    if _family(config) is not None and _family(config).experts:
        decoder_layers(model)  # a mixture of experts: held as per-expert Linears from here on (benchsuite.api.experts)
    return model.eval()


def _family(config: Any):
    try:
        return architecture_of(config, prunable=False)
    except ConfigError:
        return None


def _skeleton(config: Any, dtype: torch.dtype, widths: list[dict] | None = None) -> nn.Module:
    """The model of ``config`` with its parameters on the meta device (no memory, no initialisation),
    reshaped to ``widths`` when given; buffers (rotary frequencies) are real, on the CPU."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if widths:
        reshape_to_widths(model, widths)
    if getattr(config, BIASES_KEY, None):
        add_biases(model, getattr(config, BIASES_KEY))
    return model


def _load_dense(path: Path, dtype: torch.dtype, device: str | torch.device,
                placement: dict[str, str] | None) -> nn.Module:
    from transformers import AutoModelForCausalLM

    if placement is None and torch.device(device).type == "cpu":
        return _materialize(AutoModelForCausalLM.from_pretrained(path, dtype=dtype))
    if placement is None:  # one accelerator: each tensor goes straight there (no CPU copy of the model first)
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map={"": _normalize_device(device)})
    if "cpu" not in placement.values():  # GPUs only: transformers loads each shard onto its GPU
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=placement)
        return dispatch(model, placement) if not hasattr(model, "_hf_hook") else _with_map(model, placement)
    # a map with CPU modules: transformers would offload them; load on the CPU, then place and hook
    return dispatch(_materialize(AutoModelForCausalLM.from_pretrained(path, dtype=dtype)), placement)


def _load_pruned(path: Path, config: Any, widths: list[dict], dtype: torch.dtype, device: str | torch.device,
                 placement: dict[str, str] | None) -> nn.Module:
    """Meta skeleton at the recorded widths, then every saved tensor assigned on its own device."""
    from accelerate.utils import set_module_tensor_to_device

    model = _skeleton(config, dtype, widths)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"pruned checkpoint {path} has no .safetensors weights")
    expected = {name for name, _ in model.named_parameters(remove_duplicate=False)} | {
        name for name, _ in model.named_buffers()}
    unexpected: list[str] = []
    for file in files:
        for name, tensor in read_safetensors(file):
            if name not in expected:
                unexpected.append(name)
                continue
            target = _device_for(name, placement) if placement is not None else torch.device(device)
            try:
                set_module_tensor_to_device(model, name, target, value=tensor, dtype=dtype, clear_cache=False)
            except ValueError as exc:  # a shape that does not match the recorded widths
                raise RuntimeError(f"checkpoint {path} does not match its recorded widths: {exc}") from None
            del tensor
    model.tie_weights()
    missing = sorted(name for name, param in model.named_parameters() if param.device.type == "meta")
    if unexpected or missing:
        raise RuntimeError(f"checkpoint {path} does not match its recorded widths: "
                           f"missing {missing[:5]}, unexpected {sorted(unexpected)[:5]}")
    if placement is not None:
        return dispatch(model, placement)
    return model.to(device)  # the buffers (rotary frequencies); the parameters are there already


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for each tensor of a ``.safetensors`` file, read one at a time into ordinary
    CPU memory (``readinto``, no memory map): holding the file mapped would count its pages in the
    process's memory next to the copies, and a view of the mapping would page in on first use."""
    import json as _json
    import struct

    with open(file, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = _json.loads(fh.read(size))
        header.pop("__metadata__", None)
        base = 8 + size
        for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            try:
                dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
            except KeyError:
                raise ValueError(f"{file}: tensor {name} has dtype {entry['dtype']}, which benchsuite can't "
                                 "read") from None
            start, end = entry["data_offsets"]
            tensor = torch.empty(entry["shape"], dtype=dtype)
            raw = tensor.view(-1).view(torch.uint8) if tensor.numel() else torch.empty(0, dtype=torch.uint8)
            if raw.numel() != end - start:
                raise ValueError(f"{file}: tensor {name} has {end - start} bytes for shape {entry['shape']}")
            fh.seek(base + start)
            if fh.readinto(memoryview(raw.numpy())) != end - start:
                raise ValueError(f"{file}: truncated at tensor {name}")
            yield name, tensor


def _device_for(name: str, placement: Mapping[str, str]) -> str:
    """The device of tensor ``name`` under a device map: that of the longest module prefix that holds it."""
    best, found = -1, None
    for prefix, dev in placement.items():
        if (prefix == "" or name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
            best, found = len(prefix), dev
    if found is None:
        raise ConfigError(f"the device map places no module that holds {name}")
    return found


def _normalize_device(value: int | str | torch.device) -> str:
    if isinstance(value, int):
        return f"cuda:{value}"
    dev = torch.device(value)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", 0)
    return str(dev)


def gpu_memory() -> dict[int, int]:
    """Free bytes on each visible GPU (``torch.cuda.mem_get_info``)."""
    return {i: torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())}


def resolve_device_map(model: nn.Module, device_map: DeviceMap, dtype: torch.dtype) -> dict[str, str]:
    """``{module name: device}`` for ``model`` (may be on the meta device): a name from :data:`DEVICE_MAPS`
    is worked out by accelerate over the free memory of the visible GPUs, keeping every decoder layer whole
    (``_no_split_modules``); an explicit mapping is checked (no ``disk``/``meta`` offload) and normalised."""
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAPS:
            raise ConfigError(f"device map '{device_map}' unknown; choose one of {', '.join(DEVICE_MAPS)}")
        if not torch.cuda.is_available():
            raise ConfigError(f"device map '{device_map}' spreads a model over GPUs, and torch sees no CUDA GPU "
                              "here; leave the device map out")
        from accelerate.utils import get_balanced_memory, infer_auto_device_map

        max_memory: dict[Any, Any] = gpu_memory()
        no_split = sorted(getattr(model, "_no_split_modules", None) or [])
        if device_map != "sequential":
            max_memory = get_balanced_memory(model, max_memory, no_split, dtype,
                                             low_zero=device_map == "balanced_low_0")
        found = infer_auto_device_map(model, max_memory, no_split, dtype)
        spilled = sorted(name for name, dev in found.items() if dev in ("cpu", "disk"))
        if spilled:
            free = ", ".join(f"cuda:{i} {b / 2**30:.1f} GiB" for i, b in gpu_memory().items())
            raise ConfigError(f"the model does not fit the visible GPUs (free: {free}): {spilled[0]} and "
                              f"{len(spilled) - 1} more modules would be offloaded, which pruning can't work on")
        return {name: _normalize_device(dev) for name, dev in found.items()}
    out = {}
    for name, dev in device_map.items():
        if str(dev) in ("disk", "meta"):
            raise ConfigError(f"device map: {name} -> {dev}: offloading is not supported (pruning edits the "
                              "weights in place); give each module a device that runs it")
        try:
            out[name] = _normalize_device(dev)
        except (RuntimeError, TypeError):
            raise ConfigError(f"device map: {name} -> {dev!r} is not a device") from None
    names = {name for name, _ in model.named_parameters()}
    unplaced = sorted(n for n in names if not any(p == "" or n == p or n.startswith(p + ".") for p in out))
    if unplaced:
        raise ConfigError(f"the device map places no module holding {unplaced[0]} ({len(unplaced)} parameters)")
    return out


def dispatch(model: nn.Module, placement: Mapping[str, str]) -> nn.Module:
    """Put each module of ``model`` on its device of ``placement`` and attach accelerate's hooks, which
    move the activations from device to device. Every module runs where the map says (a ``cpu`` module
    on the CPU, not offloaded); the map is kept as ``model.hf_device_map``."""
    import logging

    from accelerate import dispatch_model

    devices = set(placement.values())
    main = "cpu" if "cpu" in devices else next(iter(placement.values()))
    log = logging.getLogger("accelerate.big_modeling")
    level = log.level
    log.setLevel(logging.ERROR)  # "offloaded to the cpu" is accelerate's guess; with main_device cpu nothing is
    try:
        model = dispatch_model(model, dict(placement), main_device=main, force_hooks=True)
    finally:
        log.setLevel(level)
    return _with_map(model, placement)


def _with_map(model: nn.Module, placement: Mapping[str, str]) -> nn.Module:
    model.hf_device_map = dict(placement)
    return model


def device_map_of(model: nn.Module) -> dict[str, str] | None:
    """The device map of a dispatched model (``hf_device_map``, also through a peft wrapper), else None."""
    found = getattr(model, "hf_device_map", None)
    if found is None and hasattr(model, "get_base_model"):
        found = getattr(model.get_base_model(), "hf_device_map", None)
    return {name: _normalize_device(dev) for name, dev in found.items()} if found else None


def _materialize(model: nn.Module) -> nn.Module:
    """Copy memory-mapped weights into ordinary memory, so that the first pass over the weights
    (pruning, say) is not charged the page-ins of loading them. Kept on purpose on the CPU (timings
    of every method start from weights in RAM). The cost is a transient second copy: while the copies
    are made the mapped file's pages count too, until the mapping is dropped (a 345 MB float32 model
    peaked at 694 MB above the level before, then held 345 MB; ``benchmarks/reload_memory.py``). On a
    GPU there is no such copy: the weights are loaded straight onto it."""
    with torch.no_grad():
        for param in model.parameters():
            if param.device.type == "cpu":
                param.data = param.data.clone()
    return model


def load_tokenizer(path: str | os.PathLike):
    """The folder's tokenizer; an ``hf`` export with per-layer widths is read through its plain Llama config, so
    that transformers never asks to run the modeling code beside it (benchsuite does not need it)."""
    from transformers import AutoTokenizer

    path = Path(path)
    config = read_config(path) if (path / "config.json").is_file() else None
    return AutoTokenizer.from_pretrained(path, **({"config": config} if config is not None else {}))


def save_pruned(model: nn.Module, path: str | os.PathLike, tokenizer=None,
                provenance: dict[str, Any] | None = None) -> Path:
    """Save a (pruned) model so that :func:`load_model_dir` rebuilds it exactly, in the ``hf`` format that plain
    transformers opens (:mod:`benchsuite.models.hf`; its model card is written again once the run's record is)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    record_widths(model)
    family = architecture_of(model, prunable=False)
    if family.experts:  # written as the family keeps them (fused 3-D experts), in transformers' in-memory names
        with fused(model, family, decoder_layers(model)):
            model.save_pretrained(path, safe_serialization=True, save_original_format=False)
    else:
        model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    if provenance is not None:
        (path / "benchsuite.json").write_text(json.dumps(provenance, indent=2, default=str))
    write_layout(path)
    return path
