"""Structure of decoders: coupled head/channel groups, masks and physical removal.

Where a layer keeps its projections, and what a family adds, comes from its description
(:mod:`benchsuite.api.architecture`): Phi-3's fused ``qkv_proj``/``gate_up_proj`` hold a unit as rows in each
part (cut in one go per module, the attention given its own query head count); OLMo 2's
``q_norm``/``k_norm`` over the whole projection are cut with the heads (and, while units are only masked, computed
over the kept rows, so that masking equals removal). Tested on tiny checkpoints of every built-in family
(``tests/test_families.py``), with or without GQA, and through peft LoRA wrappers. Head counts and ``head_dim``
are read from each module, never assumed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from benchsuite.api.architecture import Architecture, architecture_of
from benchsuite.api.components import Coupling, GroupSet
from benchsuite.api.errors import ConfigError
from benchsuite.api.model import (  # noqa: F401 - benchsuite.structure (its old path) still has them
    ATTN,
    MLP,
    PROJECTIONS,
    base_linear,
    decoder_layers,
    input_device,
    linear_modules,
)

ATTENTION_MODES = ("heads", "kv-groups", "none")

#: the layout assumed where no family is given (transformers' Llama names, separate projections)
LLAMA_LAYOUT = Architecture("llama", ("llama",))


def _layout(arch: Architecture | None) -> Architecture:
    return arch if arch is not None else LLAMA_LAYOUT


def fused_qkv(arch: Architecture) -> bool:
    """Whether q, k and v are rows of one fused projection (Phi-3's ``qkv_proj``: q heads, then k, then v)."""
    return arch.attention[0] == arch.attention[1] == arch.attention[2]


def fused_gate_up(arch: Architecture) -> bool:
    """Whether gate and up are rows of one fused projection (Phi-3's ``gate_up_proj``: gate, then up)."""
    return arch.mlp[0] == arch.mlp[1]


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


@dataclass(frozen=True)
class LayerWidths:
    num_heads: int
    num_kv_heads: int
    head_dim: int
    #: the MLP's width (a mixture of experts: each expert's, the same for all of a layer's experts)
    intermediate_size: int
    #: a mixture of experts: how many experts the layer has (0: not one)
    experts: int = 0


def layer_widths(layer: nn.Module, arch: Architecture | None = None) -> LayerWidths:
    """Current widths of one decoder layer of family ``arch`` (the Llama layout where None), read from its modules'
    shapes (and, for a fused qkv projection, the attention's ``num_key_value_heads``)."""
    a = _layout(arch)
    attn = layer.get_submodule(_parent(a.attention[0]))
    head_dim = attn.head_dim
    if fused_qkv(a):
        kv = attn.num_key_value_heads
        q_out = base_linear(layer.get_submodule(a.attention[0])).out_features - 2 * kv * head_dim
        k_out = kv * head_dim
    else:
        q_out = base_linear(layer.get_submodule(a.attention[0])).out_features
        k_out = base_linear(layer.get_submodule(a.attention[1])).out_features
    if a.experts:
        experts = layer.get_submodule(a.experts)  # (each expert's width is the first's once a layer is pruned)
        width = base_linear(layer.get_submodule(a.expert_path(0, 0))).out_features
        return LayerWidths(q_out // head_dim, k_out // head_dim, head_dim, width, len(experts))
    inter = base_linear(layer.get_submodule(a.mlp[0])).out_features
    if fused_gate_up(a):
        inter //= 2
    return LayerWidths(q_out // head_dim, k_out // head_dim, head_dim, inter)


def model_widths(model: nn.Module) -> list[LayerWidths]:
    arch = architecture_of(model)
    return [layer_widths(layer, arch) for layer in decoder_layers(model)]


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """Which decoder layers to prune.

    ``default`` or ``llm-pruner``: LLM-Pruner's block range 4..30 of 32 layers scaled to the depth
    (end exclusive); ``loraprune``: all but the first ``int(0.1 * layers)`` (floored, as its reference
    code) and the last layer; ``all``;
    ``start:end``; or comma-separated indices. Negative indices count from the end.
    """
    spec = spec.strip()
    if spec in ("default", "llm-pruner"):
        start, end = round(4 / 32 * num_layers), round(30 / 32 * num_layers)
        return list(range(start, max(end, start + 1)))
    if spec == "loraprune":
        start = int(0.1 * num_layers)
        return list(range(start, max(num_layers - 1, start + 1)))
    if spec == "all":
        return list(range(num_layers))
    try:
        if ":" in spec:
            a, b = spec.split(":")
            return list(range(num_layers))[slice(int(a) if a else None, int(b) if b else None)]
        out = sorted({int(x) % num_layers for x in spec.split(",") if x.strip()})
    except ValueError as exc:
        raise ConfigError(f"layers '{spec}' is not 'default', 'llm-pruner', 'loraprune', 'all', 'start:end' "
                          "or a list of indices") from exc
    if any(i >= num_layers for i in out):
        raise ConfigError(f"layers '{spec}' out of range for a model with {num_layers} layers")
    return out


def _arange_units(units: int, width: int) -> torch.Tensor:
    return torch.arange(units * width).reshape(units, width)


def attention_group(layer: nn.Module, index: int, mode: str, arch: Architecture | None = None) -> GroupSet | None:
    """Head groups of one attention block of family ``arch`` (the Llama layout where None).

    ``heads``: units are query heads (with their k/v heads when there is no GQA); under GQA the same
    number is removed from every key/value group so the q/kv head ratio stays whole.
    ``kv-groups``: units are key/value heads together with all query heads that share them.
    A fused qkv projection holds q, k and v as consecutive row ranges: a unit's rows there are offset into them.
    """
    if mode == "none":
        return None
    a = _layout(arch)
    q_path, k_path, v_path, o_path = a.attention
    w = layer_widths(layer, a)
    hd, rep = w.head_dim, w.num_heads // w.num_kv_heads
    k_at, v_at = (w.num_heads * hd, (w.num_heads + w.num_kv_heads) * hd) if fused_qkv(a) else (0, 0)
    if mode == "heads" or rep == 1:
        q = _arange_units(w.num_heads, hd)
        members = [Coupling(q_path, 0, q)]
        if rep == 1:
            members += [Coupling(k_path, 0, q + k_at), Coupling(v_path, 0, q + v_at)]
        members.append(Coupling(o_path, 1, q))
        return GroupSet(f"layers.{index}.attention", index, "attention", w.num_heads, members,
                        blocks=w.num_kv_heads if rep > 1 else 1)
    if mode == "kv-groups":
        kv = _arange_units(w.num_kv_heads, hd)
        q = _arange_units(w.num_kv_heads, rep * hd)
        members = [Coupling(q_path, 0, q), Coupling(k_path, 0, kv + k_at),
                   Coupling(v_path, 0, kv + v_at), Coupling(o_path, 1, q)]
        return GroupSet(f"layers.{index}.attention", index, "attention", w.num_kv_heads, members)
    raise ConfigError(f"attention mode '{mode}' unknown; choose one of {', '.join(ATTENTION_MODES)}")


def mlp_group(layer: nn.Module, index: int, arch: Architecture | None = None) -> GroupSet:
    """Intermediate channels: gate/up rows and down columns (in a fused gate_up projection, the up rows follow the
    gate rows)."""
    a = _layout(arch)
    inter = layer_widths(layer, a).intermediate_size
    channels = torch.arange(inter).reshape(-1, 1)
    up_at = inter if fused_gate_up(a) else 0
    members = [Coupling(a.mlp[0], 0, channels), Coupling(a.mlp[1], 0, channels + up_at),
               Coupling(a.mlp[2], 1, channels)]
    return GroupSet(f"layers.{index}.mlp", index, "mlp", channels.shape[0], members)


def mlp_groups(layer: nn.Module, index: int, arch: Architecture | None = None) -> list[GroupSet]:
    """The MLP's channel groups: one (:func:`mlp_group`), or, in a mixture of experts, one per expert, tied so
    that every expert of the layer loses the same number of channels (``tie``; its experts stay storable as
    transformers' fused ``[experts, width, hidden]`` parameters)."""
    a = _layout(arch)
    if not a.experts:
        return [mlp_group(layer, index, a)]
    count = len(layer.get_submodule(a.experts))
    inter = layer_widths(layer, a).intermediate_size
    channels = torch.arange(inter).reshape(-1, 1)
    return [GroupSet(f"layers.{index}.{a.experts}.{e}", index, "mlp", inter,
                     [Coupling(a.expert_path(e, 0), 0, channels), Coupling(a.expert_path(e, 1), 0, channels),
                      Coupling(a.expert_path(e, 2), 1, channels)], tie=f"layers.{index}.{a.experts}")
            for e in range(count)]


def tied_counts(groups: list[GroupSet], ratio: float, floors: list[int] | None = None,
                ratios: list[float] | None = None) -> list[int]:
    """:func:`prune_counts` where groups sharing a ``tie`` (the experts of one layer) count as one group of that
    many blocks: each of them loses the same number of units (``ratios``: per group, the same within a tie)."""
    floors = list(floors) if floors is not None else [0] * len(groups)
    merged_ratios: list[float] = []
    merged: list[GroupSet] = []
    merged_floors: list[int] = []
    where: list[int] = []
    ties: dict[str, int] = {}
    for group, floor in zip(groups, floors):
        if group.tie is None:
            where.append(len(merged))
            merged.append(group)
            merged_floors.append(floor)
            merged_ratios.append(ratios[len(where) - 1] if ratios is not None else ratio)
            continue
        if group.tie not in ties:
            ties[group.tie] = len(merged)
            merged.append(GroupSet(group.tie, group.layer, group.kind, 0, [], 0))
            merged_floors.append(0)
            merged_ratios.append(ratios[len(where)] if ratios is not None else ratio)
        j = ties[group.tie]
        tied = merged[j]
        if tied.blocks and tied.size // tied.blocks != group.size // group.blocks:
            raise ValueError(f"{group.name}: tied groups must have the same units per block")
        tied.size += group.size
        tied.blocks += group.blocks
        merged_floors[j] = max(merged_floors[j], floor)
        where.append(j)
    counts = prune_counts(merged, ratio, merged_floors, merged_ratios if ratios is not None else None)
    return [counts[j] for j in where]


def pruned_per_block(group: GroupSet, keep: torch.Tensor | None) -> int:
    """Units already pruned in each block of ``group`` (the largest block's count)."""
    if keep is None:
        return 0
    return int((~keep.cpu()).reshape(group.blocks, group.size // group.blocks).sum(1).max())


def prune_counts(groups: list[GroupSet], ratio: float, floors: list[int] | None = None,
                 ratios: list[float] | None = None) -> list[int]:
    """Units to prune per block of each group, so that each kind (attention, mlp) loses ``ratio`` of
    its units over all the groups, and every layer is within one unit (per block) of ``ratio``.

    The rounding error of one layer is carried to the next (error diffusion): with 3 q heads per kv
    group and ratio 0.5, layers alternate 2 and 1 heads instead of all losing 2 (67%). ``floors``
    are units already pruned per block (an iterative schedule's earlier events): a layer never gets
    a unit back, and the excess it carries is taken from the layers after it, so the total still
    equals the target and the rounding stays spread over the layers (units pruned earlier at a
    lower ratio never exceed the rounded-up count). At least one unit per block stays.

    ``ratios``: each group's own ratio instead of ``ratio`` (an allocation's per-layer ratios); each kind then loses
    the sum of its groups' ideal counts, rounded the same way."""
    floors = list(floors) if floors is not None else [0] * len(groups)
    counts = [0] * len(groups)
    own = ratios if ratios is not None else [ratio] * len(groups)
    for kind in dict.fromkeys(g.kind for g in groups):
        idx = [i for i, g in enumerate(groups) if g.kind == kind]
        per = {i: groups[i].size // groups[i].blocks for i in idx}
        carry = 0.0
        for i in idx:
            ideal = own[i] * per[i]
            low = min(max(floors[i], math.floor(ideal + 1e-9)), per[i] - 1)  # never give a unit back
            high = max(low, min(math.ceil(ideal - 1e-9), per[i] - 1))
            wanted = ideal + carry
            counts[i] = min(max(int(wanted + 0.5), low), high)  # round half up, within one of the ideal
            carry = wanted - counts[i]  # a layer held up by its floor makes the next ones round down
        if ratios is None:  # (the uniform case computed as it always was: the same rounding, bit for bit)
            target = ratio * sum(per[i] * groups[i].blocks for i in idx)
        else:
            target = sum(own[i] * per[i] * groups[i].blocks for i in idx)
        total = sum(counts[i] * groups[i].blocks for i in idx)

        while total > target:  # floors pushed some layers up: take back where rounded up the most
            options = [i for i in idx if counts[i] > floors[i] and counts[i] - 1 >= math.floor(own[i] * per[i])
                       and _closer(total - groups[i].blocks, total, target)]
            if not options:
                break
            i = max(reversed(options), key=lambda j: counts[j] - own[j] * per[j])
            counts[i] -= 1
            total -= groups[i].blocks
        while total < target:  # (caps or floors elsewhere) give to the layers furthest below the ratio
            options = [i for i in idx if counts[i] + 1 <= min(math.ceil(own[i] * per[i] - 1e-9), per[i] - 1)
                       and _closer(total + groups[i].blocks, total, target)]
            if not options:
                break
            i = max(options, key=lambda j: own[j] * per[j] - counts[j])
            counts[i] += 1
            total += groups[i].blocks
    return counts


def _closer(new: float, old: float, target: float) -> bool:
    return abs(new - target) < abs(old - target) - 1e-9


def select_units(group: GroupSet, scores: torch.Tensor, n_prune: int,
                 previous: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask pruning the ``n_prune`` lowest-scoring units of every block of ``group``.

    Units already pruned in ``previous`` are pruned first and stay pruned (cumulative masks);
    ``n_prune`` must not be smaller than what a block already lost (see :func:`prune_counts`).
    """
    scores = scores.detach().float().cpu().clone()
    if previous is not None:
        scores[~previous.cpu()] = float("-inf")
        already = pruned_per_block(group, previous)
        if n_prune < already:
            raise ValueError(f"{group.name}: asked to prune {n_prune} units per block, but {already} "
                             "are pruned already (units are never given back)")
    per_block = group.size // group.blocks
    keep = torch.ones(group.size, dtype=torch.bool)
    for b in range(group.blocks):
        block = scores[b * per_block:(b + 1) * per_block]
        order = torch.sort(block, stable=True).indices
        keep[b * per_block + order[:n_prune]] = False
    return keep


def _consumer(layer: nn.Module, group: GroupSet) -> tuple[nn.Module, Coupling]:
    """The module whose input columns a group's units feed (o_proj, down_proj: the group's column member)."""
    member = next(m for m in group.members if m.dim == 1)
    return layer.get_submodule(member.module), member


def column_mask(member: Coupling, keep: torch.Tensor, width: int) -> torch.Tensor:
    """Per-element mask over ``width`` input columns (or output rows) from a unit keep-mask."""
    mask = torch.ones(width)
    mask[member.index[~keep.cpu()].reshape(-1)] = 0.0
    return mask


class Masker:
    """Masks pruned units by zeroing their consumer's input columns with forward pre-hooks.

    A removed head/channel contributes only through o_proj/down_proj columns, so this is exactly
    what physical removal computes, for the base weight and any LoRA path alike.
    """

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def apply(self, model: nn.Module, groups: list[GroupSet], masks: list[torch.Tensor]) -> None:
        self.remove()
        layers = decoder_layers(model)
        arch = architecture_of(model)
        for group, keep in zip(groups, masks):
            if bool(keep.all()):
                continue
            module, member = _consumer(layers[group.layer], group)
            width = base_linear(module).in_features
            col = column_mask(member, keep, width)
            self._handles.append(module.register_forward_pre_hook(_make_hook(col)))
            for path, rows in _norm_rows(group, keep, arch):
                norm = layers[group.layer].get_submodule(path)
                self._handles.append(norm.register_forward_hook(_kept_rows_norm(rows)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _make_hook(col: torch.Tensor):
    cache: dict[tuple, torch.Tensor] = {}

    def hook(_module, args):
        x = args[0]
        key = (x.device, x.dtype)
        if key not in cache:
            cache[key] = col.to(device=x.device, dtype=x.dtype)
        return (x * cache[key],) + tuple(args[1:])

    return hook


def _norm_rows(group: GroupSet, keep: torch.Tensor, arch: Architecture) -> list[tuple[str, torch.Tensor]]:
    """``(path, kept rows)`` of each parameter the family cuts with the heads (``cut_with_heads``) whose rows this
    group's keep-mask shortens: a query-side one follows the group's q_proj rows, a key/value-side one its k_proj
    rows (absent when only query heads are units)."""
    if group.kind != "attention" or not arch.cut_with_heads:
        return []
    out = []
    for path, side in arch.cut_with_heads.items():
        source = arch.attention[0] if side == "q" else arch.attention[1]
        member = next((m for m in group.members if m.module == source), None)
        if member is not None:
            out.append((path, _keep_index(member, keep)))
    return out


def _kept_rows_norm(rows: torch.Tensor):
    """A forward hook making an RMSNorm over the whole projection normalise over ``rows`` alone (what it computes
    once the other rows are removed); the other rows come out zero."""
    cache: dict[torch.device, torch.Tensor] = {}

    def hook(module, args, output):
        x = args[0]
        index = cache.get(x.device)
        if index is None:
            index = cache[x.device] = rows.to(x.device)
        kept = x.index_select(-1, index).to(torch.float32)
        kept = kept * torch.rsqrt(kept.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)
        out = torch.zeros_like(output)
        return out.index_copy(-1, index, (module.weight.index_select(0, index) * kept).to(output.dtype))

    return hook


def _keep_index(member: Coupling, keep: torch.Tensor) -> torch.Tensor:
    return member.index[keep.cpu()].reshape(-1)


def slice_linear(module: nn.Module, dim: int, index: torch.Tensor) -> None:
    """Keep only rows (dim 0) or columns (dim 1) ``index`` of a Linear, or of a peft LoRA Linear
    (base weight, and lora_B rows / lora_A columns)."""
    base = base_linear(module)
    index = index.to(base.weight.device)
    with torch.no_grad():
        base.weight = nn.Parameter(base.weight.index_select(dim, index).contiguous(),
                                   requires_grad=base.weight.requires_grad)
        if dim == 0 and base.bias is not None:
            base.bias = nn.Parameter(base.bias.index_select(0, index).contiguous(),
                                     requires_grad=base.bias.requires_grad)
    if dim == 0:
        base.out_features = index.numel()
    else:
        base.in_features = index.numel()
    lora_side = getattr(module, "lora_B" if dim == 0 else "lora_A", None)
    if lora_side is not None:
        for adapter in lora_side.values():
            with torch.no_grad():
                adapter.weight = nn.Parameter(adapter.weight.index_select(dim, index).contiguous(),
                                              requires_grad=adapter.weight.requires_grad)
            if dim == 0:
                adapter.out_features = index.numel()
            else:
                adapter.in_features = index.numel()
    if hasattr(module, "in_features") and module is not base:
        module.in_features, module.out_features = base.in_features, base.out_features


def slice_norm(module: nn.Module, index: torch.Tensor) -> None:
    """Keep only entries ``index`` of a norm's weight (a norm over the whole projection, cut with the heads)."""
    with torch.no_grad():
        module.weight = nn.Parameter(module.weight.index_select(0, index.to(module.weight.device)).contiguous(),
                                     requires_grad=module.weight.requires_grad)


def remove_units(model: nn.Module, groups: list[GroupSet], masks: list[torch.Tensor]) -> nn.Module:
    """Physically remove pruned units; updates the attributes attention's forward reads."""
    layers = decoder_layers(model)
    arch = architecture_of(model)
    for group, keep in zip(groups, masks):
        if bool(keep.all()):
            continue
        layer = layers[group.layer]
        dropped: dict[tuple[str, int], list[torch.Tensor]] = {}
        for member in group.members:  # a fused projection holds several members: its rows go in one cut
            dropped.setdefault((member.module, member.dim), []).append(member.index[~keep.cpu()].reshape(-1))
        kv_heads = None
        if group.kind == "attention" and fused_qkv(arch):  # its key/value heads are not readable from its shape
            w = layer_widths(layer, arch)
            rows = torch.cat(dropped.get((arch.attention[0], 0), [torch.empty(0, dtype=torch.long)]))
            k_at = w.num_heads * w.head_dim
            kv_heads = w.num_kv_heads - int(((rows >= k_at) & (rows < k_at + w.num_kv_heads * w.head_dim)).sum()
                                            ) // w.head_dim
        for (path, dim), parts in dropped.items():
            module = layer.get_submodule(path)
            width = base_linear(module).weight.shape[dim]
            kept = torch.ones(width, dtype=torch.bool)
            kept[torch.cat(parts)] = False
            slice_linear(module, dim, kept.nonzero().reshape(-1))
        for path, rows in _norm_rows(group, keep, arch):
            slice_norm(layer.get_submodule(path), rows)
        if kv_heads is not None:
            layer.get_submodule(_parent(arch.attention[0])).num_key_value_heads = kv_heads
        sync_attributes(layer, arch)
    record_widths(model)
    return model


def sync_attributes(layer: nn.Module, arch: Architecture | None = None) -> None:
    """Make module attributes agree with the (possibly pruned) weight shapes. Attention that reads its query head
    count from the config (Phi-3's fused qkv split) gets a config of its own with the layer's count."""
    a = _layout(arch)
    w = layer_widths(layer, a)
    attn = layer.get_submodule(_parent(a.attention[0]))
    if w.num_heads % max(w.num_kv_heads, 1) != 0:
        raise RuntimeError(f"inconsistent heads after pruning: {w.num_heads} q / {w.num_kv_heads} kv")
    attn.num_key_value_groups = w.num_heads // w.num_kv_heads
    for name, value in (("num_heads", w.num_heads), ("num_key_value_heads", w.num_kv_heads)):
        if hasattr(attn, name):
            setattr(attn, name, value)
    config = getattr(attn, "config", None)
    if fused_qkv(a) and config is not None and config.num_attention_heads != w.num_heads:
        if not getattr(attn, "_benchsuite_own_config", False):
            attn.config = config = copy.copy(config)
            attn._benchsuite_own_config = True
        config.num_attention_heads = w.num_heads
    if a.experts:
        layer.get_submodule(a.router).num_experts = w.experts
        layer.get_submodule(a.experts)._fused.intermediate_dim = w.intermediate_size
        return
    mlp = layer.get_submodule(_parent(a.mlp[0]))
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = w.intermediate_size


WIDTHS_KEY = "benchsuite_layer_widths"


def record_widths(model: nn.Module) -> None:
    """Store per-layer widths in the config (only when they differ from the uniform config)."""
    config = model.config
    arch = architecture_of(model)
    widths = model_widths(model)
    inter = getattr(config, arch.experts_width) if arch.experts else config.intermediate_size
    experts = getattr(config, arch.experts_count) if arch.experts else 0
    uniform = all(
        (w.num_heads, w.num_kv_heads, w.intermediate_size, w.experts)
        == (config.num_attention_heads, config.num_key_value_heads, inter, experts)
        for w in widths
    )
    if not getattr(config, "head_dim", None):
        config.head_dim = widths[0].head_dim  # RoPE must not re-derive head_dim from head counts
    setattr(config, WIDTHS_KEY, None if uniform else [
        {"num_heads": w.num_heads, "num_kv_heads": w.num_kv_heads, "intermediate_size": w.intermediate_size}
        | ({"num_experts": w.experts} if arch.experts else {})
        for w in widths
    ])
    record_biases(model)


#: per layer, the projections that have a bias (None: none has): pruning may add biases that the
#: architecture's config does not switch on (FLAP's compensation: o_proj/down_proj only, whereas Llama's
#: ``attention_bias`` / ``mlp_bias`` would give every projection one)
BIASES_KEY = "benchsuite_biases"


def record_biases(model: nn.Module) -> None:
    """Store which projections of each layer have a bias that the family's config does not give them in the config
    (see :data:`BIASES_KEY`; Qwen2's own q/k/v biases are not recorded, FLAP's added ones are)."""
    native = native_biases(model.config)
    paths = _bias_paths(architecture_of(model))
    found = [[path for path in paths if base_linear(layer.get_submodule(path)).bias is not None
              and path not in own] for layer, own in zip(decoder_layers(model), native)]
    setattr(model.config, BIASES_KEY, found if any(found) else None)


def native_biases(config) -> list[set[str]]:
    """Per decoder layer, the projections that a model built from ``config`` has biases on (read from a skeleton on
    the meta device: no memory, no initialisation)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    plain = copy.deepcopy(config)
    for key in (WIDTHS_KEY, BIASES_KEY):
        if hasattr(plain, key):
            setattr(plain, key, None)
    with init_empty_weights(include_buffers=True):
        skeleton = AutoModelForCausalLM.from_config(plain)
    paths = _bias_paths(architecture_of(config))
    return [{path for path in paths if base_linear(layer.get_submodule(path)).bias is not None}
            for layer in decoder_layers(skeleton, unfuse=False)]


def _bias_paths(arch: Architecture) -> tuple[str, ...]:
    """The projections that may have a bias (a mixture of experts' experts have none, and get none)."""
    return tuple(dict.fromkeys(arch.attention)) if arch.experts else arch.projections


def add_biases(model: nn.Module, biases: list[list[str]]) -> None:
    """Give the recorded projections of each layer a bias where they have none (zeros, on the weight's
    device and in its dtype: on the meta device in a skeleton), before loading a state dict."""
    layers = decoder_layers(model)
    if len(biases) != len(layers):
        raise ValueError(f"{len(biases)} layers of recorded biases for a model with {len(layers)} layers")
    for layer, paths in zip(layers, biases):
        for path in paths:
            linear = base_linear(layer.get_submodule(path))
            if linear.bias is None:
                weight = linear.weight
                linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=weight.dtype, device=weight.device),
                                           requires_grad=weight.requires_grad)


def reshape_to_widths(model: nn.Module, widths: list[dict]) -> None:
    """Rebuild each layer's projections with the recorded widths (before loading a state dict); a mixture of
    experts' fused experts and router too (the checkpoint holds them fused)."""
    arch = architecture_of(model)
    for layer, w in zip(decoder_layers(model, unfuse=False), widths):
        if arch.experts:
            _reshape_attention(layer, arch, w)
            _reshape_experts(layer, arch, w)
            continue
        attn = layer.get_submodule(_parent(arch.attention[0]))
        hd = attn.head_dim
        q, kv, inter = w["num_heads"] * hd, w["num_kv_heads"] * hd, w["intermediate_size"]
        sizes: dict[tuple[str, int], int] = {}  # (path, dim) -> width; the parts of a fused projection add up
        parts = zip(arch.attention + arch.mlp, (0, 0, 0, 1, 0, 0, 1), (q, kv, kv, q, inter, inter, inter))
        for path, dim, size in parts:
            sizes[(path, dim)] = sizes.get((path, dim), 0) + size
        for (path, dim), size in sizes.items():
            slice_linear(layer.get_submodule(path), dim, torch.arange(size))  # a skeleton: any rows of that count
        for path, side in arch.cut_with_heads.items():
            slice_norm(layer.get_submodule(path), torch.arange(q if side == "q" else kv))
        if fused_qkv(arch):
            attn.num_key_value_heads = w["num_kv_heads"]
        sync_attributes(layer, arch)


def _reshape_attention(layer: nn.Module, arch: Architecture, w: dict) -> None:
    attn = layer.get_submodule(_parent(arch.attention[0]))
    hd = attn.head_dim
    q, kv = w["num_heads"] * hd, w["num_kv_heads"] * hd
    for path, dim, size in zip(arch.attention, (0, 0, 0, 1), (q, kv, kv, q)):
        slice_linear(layer.get_submodule(path), dim, torch.arange(size))
    for path, side in arch.cut_with_heads.items():
        slice_norm(layer.get_submodule(path), torch.arange(q if side == "q" else kv))
    attn.num_key_value_groups = w["num_heads"] // w["num_kv_heads"]
    for name, value in (("num_heads", w["num_heads"]), ("num_key_value_heads", w["num_kv_heads"])):
        if hasattr(attn, name):
            setattr(attn, name, value)


def _reshape_experts(layer: nn.Module, arch: Architecture, w: dict) -> None:
    """A skeleton's fused experts and router at ``num_experts`` experts of width ``intermediate_size``."""
    experts, router = layer.get_submodule(arch.experts), layer.get_submodule(arch.router)
    count, inter = w.get("num_experts", experts.gate_up_proj.shape[0]), w["intermediate_size"]
    hidden = experts.gate_up_proj.shape[2]
    for owner, name, shape in ((experts, "gate_up_proj", (count, 2 * inter, hidden)),
                               (experts, "down_proj", (count, hidden, inter)),
                               (router, "weight", (count, hidden))):
        old = getattr(owner, name)
        setattr(owner, name, nn.Parameter(torch.empty(shape, dtype=old.dtype, device=old.device),
                                          requires_grad=old.requires_grad))
    experts.num_experts = router.num_experts = count
    if hasattr(experts, "intermediate_dim"):
        experts.intermediate_dim = inter
