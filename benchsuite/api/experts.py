"""Mixtures of experts as the suite prunes them: each expert's MLP as three Linears.

transformers stores a layer's experts as two fused 3-D parameters (``gate_up_proj`` ``[experts, 2 * width, hidden]``,
gate rows then up rows, and ``down_proj`` ``[experts, hidden, width]``; Mixtral, Qwen3-MoE). Criteria, calibration
hooks, peft LoRA, masks and removal all work on Linears, so the suite holds a layer's experts as an
:class:`ExpertList` of :class:`Expert` modules (``<experts>.<e>.gate_linear``/``up_linear``/``down_linear``) that
computes what the fused module computes (the same routing, the same order of operations per expert), and writes
them back fused when it saves (:func:`fused`), so that a saved model is a checkpoint of its own family. A whole
expert is masked by routing around it (:func:`mask_router`), which is what removing the expert and its router row
computes (:func:`remove_experts`). The names of an expert's Linears are the suite's own (:data:`EXPERT_LINEARS`).

May import: :mod:`benchsuite.util` and the other modules of :mod:`benchsuite.api`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from benchsuite.api.architecture import Architecture

#: the names of an expert's gate, up and down Linears in the suite's per-expert layout: not the families' own names
#: (``gate_proj``, ``w1``), which peft maps to the fused 3-D parameters of transformers' layout (``target_parameters``)
EXPERT_LINEARS = ("gate_linear", "up_linear", "down_linear")


class Expert(nn.Module):
    """One expert's MLP: ``down_linear(act(gate_linear(x)) * up_linear(x))``."""

    def __init__(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, act_fn: Any,
                 requires_grad: bool = True) -> None:
        super().__init__()
        width, hidden = gate.shape
        for name, weight in zip(EXPERT_LINEARS, (gate, up, down)):
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
            linear.weight = nn.Parameter(weight, requires_grad=requires_grad)
            setattr(self, name, linear)
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_linear(self.act_fn(self.gate_linear(x)) * self.up_linear(x))


class ExpertList(nn.ModuleList):
    """A layer's experts as :class:`Expert` modules, called as transformers calls its fused experts module:
    ``(hidden_states [tokens, hidden], top_k_index [tokens, k], top_k_weights [tokens, k]) -> [tokens, hidden]``.
    The family's own module is kept, without its weights, to be filled again by :func:`fused`."""

    def __init__(self, experts: list[Expert], fused_module: nn.Module) -> None:
        super().__init__(experts)
        self.__dict__["_fused"] = fused_module  # not a submodule: no parameters, not in the state dict

    @property
    def num_experts(self) -> int:
        return len(self)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        with torch.no_grad():
            hit = torch.unique(top_k_index).tolist()
        for e in hit:
            if not 0 <= e < len(self):
                continue
            token, position = torch.where(top_k_index == e)
            y = self[e](hidden_states[token]) * top_k_weights[token, position, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out


def _set(layer: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(layer.get_submodule(parent) if parent else layer, name, module)


def unfuse_experts(model: nn.Module, arch: Architecture, layers: nn.ModuleList) -> None:
    """Replace every layer's fused experts module by an :class:`ExpertList` holding the same weights (copied, so
    that the fused tensors are freed; on the meta device, shapes only). Layers already unfused are left alone."""
    for layer in layers:
        fused = layer.get_submodule(arch.experts)
        if isinstance(fused, ExpertList):
            continue
        gate_up, down = fused.gate_up_proj, fused.down_proj
        width = gate_up.shape[1] // 2
        grad = gate_up.requires_grad
        experts = [Expert(gate_up[e, :width].detach().clone(), gate_up[e, width:].detach().clone(),
                          down[e].detach().clone(), fused.act_fn, grad) for e in range(gate_up.shape[0])]
        meta = torch.empty(0, device="meta", dtype=gate_up.dtype)
        fused.gate_up_proj = nn.Parameter(meta, requires_grad=False)
        fused.down_proj = nn.Parameter(meta.clone(), requires_grad=False)
        _set(layer, arch.experts, ExpertList(experts, fused))


def _weight(linear: nn.Module) -> torch.Tensor:
    base = linear.get_base_layer() if hasattr(linear, "get_base_layer") else linear
    if getattr(linear, "merged_adapters", None) or hasattr(linear, "lora_A"):
        raise RuntimeError("merge LoRA into the experts before writing them fused")
    return base.weight


@contextlib.contextmanager
def fused(model: nn.Module, arch: Architecture, layers: nn.ModuleList) -> Iterator[nn.Module]:
    """The model with each layer's experts written back into its family's fused module (for ``save_pretrained``),
    then the same :class:`ExpertList` objects put back (their masks and hooks untouched). Every expert of a layer
    must have the same width (the structured granularity prunes the same number of channels from each)."""
    swapped: list[tuple[nn.Module, ExpertList]] = []
    try:
        for i, layer in enumerate(layers):
            experts = layer.get_submodule(arch.experts)
            if not isinstance(experts, ExpertList):
                continue
            widths = {_weight(e.gate_linear).shape[0] for e in experts}
            if len(widths) != 1:
                raise RuntimeError(f"layer {i}: experts of different widths {sorted(widths)} can't be stored fused")
            module = experts._fused
            with torch.no_grad():
                gate_up = torch.stack([torch.cat([_weight(e.gate_linear), _weight(e.up_linear)]) for e in experts])
                down = torch.stack([_weight(e.down_linear) for e in experts])
            module.gate_up_proj = nn.Parameter(gate_up, requires_grad=False)
            module.down_proj = nn.Parameter(down, requires_grad=False)
            module.num_experts = len(experts)
            if hasattr(module, "intermediate_dim"):
                module.intermediate_dim = widths.pop()
            _set(layer, arch.experts, module)
            swapped.append((layer, experts))
        yield model
    finally:
        for layer, experts in swapped:
            module = experts._fused
            meta = torch.empty(0, device="meta", dtype=module.gate_up_proj.dtype)
            module.gate_up_proj = nn.Parameter(meta, requires_grad=False)
            module.down_proj = nn.Parameter(meta.clone(), requires_grad=False)
            _set(layer, arch.experts, experts)


def route(router: nn.Module, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What transformers' top-k routers (Mixtral, Qwen3-MoE) return for these logits: ``(logits, top-k weights,
    top-k experts)``: a softmax over the experts, the ``top_k`` largest, renormalised to sum 1 unless the router's
    ``norm_topk_prob`` is False."""
    probs = torch.softmax(logits.float(), dim=-1)
    top, index = torch.topk(probs, router.top_k, dim=-1)
    if getattr(router, "norm_topk_prob", True):
        top = top / top.sum(dim=-1, keepdim=True)
    return logits, top.to(logits.dtype), index


def mask_router(router: nn.Module, keep: torch.Tensor) -> torch.utils.hooks.RemovableHandle:
    """Route around the experts ``~keep``: the router's rule (:func:`route`) applied to the logits of the kept rows
    alone (their own product), their numbers mapped back, is what the router computes once the others and their rows
    are removed, bit for bit; the returned logits are ``-inf`` for the removed experts. For routers without a bias
    (Mixtral's, Qwen3-MoE's)."""
    cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(module, args, output):
        logits = output[0]
        if logits.device not in cache:
            cache[logits.device] = (keep.nonzero().reshape(-1).to(logits.device), ~keep.to(logits.device))
        kept, dropped = cache[logits.device]
        hidden = args[0].reshape(-1, module.weight.shape[1])  # the kept rows' own product, as the pruned router's
        _, top, index = route(module, nn.functional.linear(hidden, module.weight.index_select(0, kept)))
        return logits.masked_fill(dropped, float("-inf")), top, kept[index]

    return router.register_forward_hook(hook)


def remove_experts(layer: nn.Module, arch: Architecture, keep: torch.Tensor) -> None:
    """Remove the experts ``~keep`` of one layer and their router rows."""
    index = keep.nonzero().reshape(-1)
    router = layer.get_submodule(arch.router)
    with torch.no_grad():
        router.weight = nn.Parameter(router.weight.index_select(0, index.to(router.weight.device)).contiguous(),
                                     requires_grad=router.weight.requires_grad)
        bias = getattr(router, "bias", None)
        if isinstance(bias, torch.Tensor):
            router.bias = nn.Parameter(bias.index_select(0, index.to(bias.device)).contiguous(),
                                       requires_grad=bias.requires_grad)
    router.num_experts = index.numel()
    experts = layer.get_submodule(arch.experts)
    kept = [experts[int(e)] for e in index]
    for e in range(len(experts) - 1, -1, -1):
        del experts[e]
    for expert in kept:
        experts.append(expert)
    experts._fused.num_experts = index.numel()
