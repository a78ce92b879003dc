"""Element-level sparsity: N:M (semi-structured) and unstructured masks, kept exact through LoRA.

While a LoRA-wrapped model fine-tunes, a masked projection computes
``x @ (W0 * M)^T + dropout(x) @ ((s * B @ A) * M)^T``: pruned elements stay zero through the base
weight and the LoRA path. After merging ``s * B @ A`` into ``W``, the mask is applied again.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from benchsuite.api.components import Coupling, GroupSet
from benchsuite.api.model import PROJECTIONS, base_linear, decoder_layers, layer_paths

MASK_ATTR = "_benchsuite_mask"


def weight_groups(model: nn.Module, layers: list[int],
                  modules: tuple[str, ...] | None = PROJECTIONS) -> list[GroupSet]:
    """One 'group' per sparsified weight matrix: its elements are the units. ``modules`` None: every projection of
    each layer (:func:`~benchsuite.api.model.layer_paths`)."""
    all_layers = decoder_layers(model)
    groups = []
    for i in layers:
        for path in modules if modules is not None else layer_paths(model, all_layers[i]):
            weight = base_linear(all_layers[i].get_submodule(path)).weight
            groups.append(GroupSet(f"layers.{i}.{path}", i, "weights", weight.numel(),
                                   [Coupling(path, 0, torch.empty(0, 1, dtype=torch.long))]))
    return groups


def _protect(scores: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    scores = scores.detach().float().clone()
    if previous is not None:
        scores[~previous.to(scores.device)] = float("-inf")  # pruned elements stay pruned
    return scores


def nm_mask(scores: torch.Tensor, n_prune: int, m: int, previous: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask removing the ``n_prune`` lowest scores of every block of ``m`` consecutive inputs
    of every row (2:4 = ``n_prune`` 2 of ``m`` 4)."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"input width {cols} is not a multiple of M={m}")
    keep = torch.ones(rows, cols // m, m, dtype=torch.bool, device=scores.device)
    if previous is not None:
        already = int((~previous).reshape(rows, cols // m, m).sum(-1).max())
        n_prune = max(n_prune, already)
    if n_prune > 0:
        blocks = _protect(scores, previous).reshape(rows, cols // m, m)
        lowest = torch.topk(blocks, n_prune, dim=-1, largest=False).indices
        keep.scatter_(-1, lowest, False)
    return keep.reshape(rows, cols)


def unstructured_mask(scores: torch.Tensor, ratio: float, per_row: bool,
                      previous: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask removing the lowest ``ratio`` of the scores, per matrix or per output row."""
    scores = _protect(scores, previous)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if per_row:
        k = int(ratio * scores.shape[1] + 0.5)
        if k > 0:
            keep.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, False)
    else:
        k = int(ratio * scores.numel() + 0.5)
        if k > 0:
            flat = keep.view(-1)
            flat[torch.topk(scores.view(-1), k, largest=False).indices] = False
    if previous is not None:
        keep &= previous.to(keep.device)
    return keep


class MaskedDelta(torch.autograd.Function):
    """``x @ ((s * B @ A) * M)^T`` without keeping the dense masked delta for backward: only x, A,
    B and the boolean mask are saved; the delta and its gradient are rebuilt per module."""

    @staticmethod
    def forward(ctx, x, a, b, mask, scaling):
        delta = (b @ a).mul_(mask).mul_(scaling)
        ctx.save_for_backward(x, a, b, mask)
        ctx.scaling = scaling
        return F.linear(x, delta)

    @staticmethod
    def backward(ctx, grad_out):
        x, a, b, mask = ctx.saved_tensors
        s = ctx.scaling
        grad_x = grad_out @ (b @ a).mul_(mask).mul_(s) if ctx.needs_input_grad[0] else None
        grad_delta = (grad_out.reshape(-1, grad_out.shape[-1]).t() @ x.reshape(-1, x.shape[-1])).mul_(mask).mul_(s)
        return grad_x, b.t() @ grad_delta, grad_delta @ a.t(), None, None


def _masked_lora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    base = self.get_base_layer()
    mask = getattr(self, MASK_ATTR)
    out = F.linear(x, base.weight, base.bias)  # W0 is already zero where masked
    for adapter in self.active_adapters:
        if adapter not in self.lora_A:
            continue
        a, b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        delta = MaskedDelta.apply(self.lora_dropout[adapter](x).to(a.dtype), a, b, mask, self.scaling[adapter])
        out = out + delta.to(out.dtype)  # peft keeps adapters in float32 on a bf16/fp16 model: back to its dtype
    return out


def apply_element_masks(model: nn.Module, groups: list[GroupSet], masks: list[torch.Tensor]) -> None:
    """Zero masked weights in place (cumulative masks make this safe) and route LoRA through the mask."""
    layers = decoder_layers(model)
    for group, keep in zip(groups, masks):
        module = layers[group.layer].get_submodule(group.members[0].module)
        weight = base_linear(module).weight
        keep = keep.to(weight.device)
        with torch.no_grad():
            weight.mul_(keep.to(weight.dtype))
        if getattr(module, "lora_A", None):
            setattr(module, MASK_ATTR, keep)
            module.forward = types.MethodType(_masked_lora_forward, module)


def remove_lora_masking(model: nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, MASK_ATTR):
            delattr(module, MASK_ATTR)
            module.__dict__.pop("forward", None)


def reapply_masks(model: nn.Module, groups: list[GroupSet], masks: list[torch.Tensor]) -> None:
    """After a LoRA merge: zero the masked elements of the merged weights again."""
    layers = decoder_layers(model)
    with torch.no_grad():
        for group, keep in zip(groups, masks):
            weight = base_linear(layers[group.layer].get_submodule(group.members[0].module)).weight
            weight.mul_(keep.to(device=weight.device, dtype=weight.dtype))


def check_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every block of ``m`` consecutive inputs of every row has at most ``n`` non-zeros."""
    rows, cols = weight.shape
    return bool(((weight.reshape(rows, cols // m, m) != 0).sum(-1) <= n).all())


def sparsity(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel()
