"""Walking a decoder: its layers and projections, through peft LoRA wrappers too.

The projections are those of the model's family (:func:`~benchsuite.api.architecture.architecture_of`): the Llama
layout's ``self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj`` (Llama, Mistral, Qwen2, Qwen3, Gemma 2,
Gemma 3, Granite, OLMo 2; :data:`PROJECTIONS`), or a family's own (Phi-3's fused ``qkv_proj`` and
``gate_up_proj``); every built-in family is tested in ``tests/test_families.py``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import torch
from torch import nn

from benchsuite.api.architecture import Architecture, architecture_of
from benchsuite.api.errors import ConfigError
from benchsuite.api.experts import unfuse_experts

ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")


MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


PROJECTIONS = ATTN + MLP


_LAYER_PATHS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def decoder_layers(model: nn.Module, *, unfuse: bool = True) -> nn.ModuleList:
    """The decoder layers of a causal LM, also through peft wrappers (the path is cached per model). A mixture of
    experts' fused experts are turned into per-expert Linears (:mod:`benchsuite.api.experts`) unless ``unfuse`` is
    False (a skeleton being shaped for a fused checkpoint)."""
    layers = _find_layers(model)
    if unfuse:
        family = _family(model)
        if family is not None and family.experts:
            unfuse_experts(model, family, layers)
    return layers


def _find_layers(model: nn.Module) -> nn.ModuleList:
    path = _LAYER_PATHS.get(model)
    if path is not None:
        try:
            layers = model.get_submodule(path)
            if isinstance(layers, nn.ModuleList) and len(layers) > 0:
                return layers
        except AttributeError:
            pass
    paths = _projections(model)
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList) and len(module) > 0:
            if all(_has_projections(layer, paths) for layer in module):
                _LAYER_PATHS[model] = name
                return module
    family = _family(model)
    if family is not None and family.experts:
        raise ConfigError(f"{type(model).__name__}: the {family.name} description needs every decoder layer to hold "
                          f"{', '.join(paths)}; this checkpoint has layers without them (dense MLP layers, e.g. "
                          "Qwen3-MoE's mlp_only_layers or decoder_sparse_step > 1), which this version can't prune")
    raise ConfigError(
        f"{type(model).__name__} does not have the LLaMA-family layout that pruning needs "
        "(decoder layers with self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj)"
    )


def _family(model: nn.Module) -> Architecture | None:
    try:
        return architecture_of(model, prunable=False)
    except ConfigError:
        return None


def _projections(model: nn.Module) -> tuple[str, ...]:
    """The paths that make a module list the decoder layers: the family's projections (the Llama layout's for a
    model no family describes); for a mixture of experts, its attention, experts and router."""
    family = _family(model)
    if family is None:
        return PROJECTIONS
    if family.experts:
        return tuple(dict.fromkeys(family.attention)) + (family.experts, family.router)
    return family.projections


def layer_paths(model: nn.Module, layer: nn.Module) -> tuple[str, ...]:
    """Every projection of one decoder layer of ``model`` (each expert's named, for a mixture of experts)."""
    family = _family(model)
    return family.layer_paths(layer) if family is not None else PROJECTIONS


def _has_projections(layer: nn.Module, paths: tuple[str, ...] = PROJECTIONS) -> bool:
    try:
        for path in paths:
            layer.get_submodule(path)
    except AttributeError:
        return False
    return True


def input_device(model: nn.Module) -> torch.device:
    """Where a model's input ids go: its input embedding's device. A model spread over several devices
    (accelerate's ``device_map``) starts there; its other modules move the activations themselves, so
    nothing else may assume one device for the whole model (``next(model.parameters()).device``)."""
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
        return weight.device
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def base_linear(module: nn.Module) -> nn.Linear:
    """The plain Linear inside a (possibly peft-wrapped) projection."""
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def linear_modules(model: nn.Module, paths: tuple[str, ...] | list[str] | None = None,
                   ) -> Iterator[tuple[str, nn.Linear]]:
    """``(key, pretrained Linear)`` for every projection (``paths``; default: every projection of the model's family)
    of every decoder layer, in order; ``key`` is ``layers.<i>.<path>`` as criteria receive it (LoRA wrappers are
    looked through)."""
    for i, layer in enumerate(decoder_layers(model)):
        for path in paths if paths is not None else layer_paths(model, layer):
            yield f"layers.{i}.{path}", base_linear(layer.get_submodule(path))
