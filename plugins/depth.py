"""Built-in plugin: depth pruning. The granularity ``layers`` removes whole decoder blocks; the criteria
``block-influence`` (ShortGPT) and ``depth-order`` (drop the last blocks) score them, and the usual
``magnitude`` / ``random`` criteria work on blocks too. Methods: ``shortgpt``, ``shortgpt-angular``,
``depth-magnitude``, ``depth-random``, ``depth-last``.

What a unit is. One ``GroupSet`` per decoder layer (``kind="layer"``, one unit) whose couplings are every
row of the block's seven projections, so any criterion with element scores (magnitude, Wanda, Taylor,
LoRA) scores a block as the sum over its projections with the criterion's own ``reduction``, and group-only
criteria (random) draw one score per block. A block holds all its parameters (projections and the two
RMSNorms), which is what ``unit_params`` reports for ``--ratio-basis params``.

How many blocks go. ``select`` removes ``floor(unit_ratio * blocks + 0.5)`` of the candidate blocks (whole
blocks only, halves rounded up), at least one candidate stays. With ``--ratio-basis params`` the unit ratio is
``ratio * projection weights / parameters of the candidate blocks``; blocks of one model all hold the same
parameters, so the rounded count is the one whose removed parameters come closest to the target (at
0.2 of SmolLM2-135M's 30 blocks: 6). What was achieved is recorded: ``checks.params_removed`` (to set against
``ratio_basis.projection_params``), ``checks.layers_removed`` and the parameter count (``params``).

Candidates. Any block may go, as in ShortGPT (which found the last few blocks before the final one the least
influential on Llama-2); a method's ``layers`` restricts the candidates (``depth-last`` keeps the final
block, as the usual "drop the last layers" baseline does).

Masking and removal. While pruning (``sequential``, ``iterative``), a masked block is skipped: a forward hook
returns the block's input as its output, which is what removing it does. ``finalize`` deletes the blocks
from the decoder's ``nn.ModuleList``, sets ``config.num_hidden_layers``, subsets per-layer config lists
(``layer_types``, ``no_rope_layers``), renumbers every ``layer_idx`` of the remaining blocks (the KV cache
is indexed by it) and records the original indices of the removed blocks in the config
(``benchsuite_removed_layers``), so a saved checkpoint reloads with fewer layers as an ordinary
transformers model. Head counts and widths inside the blocks are untouched (GQA intact).

Left out: Gromov et al.'s contiguous variant (remove the n consecutive blocks ``l..l+n-1`` that minimise the
angular distance between the states entering block ``l`` and leaving block ``l+n-1``). Its score belongs to a
window whose length is the number of blocks removed, known only in ``select``; the contract scores units
before the ratio is applied, one score per unit. ``distance="angular", tokens="last"`` gives its per-block
distance (n = 1) at the last token, as its paper measures it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from benchsuite import (
    ConfigError,
    Coupling,
    Criterion,
    Granularity,
    GroupSet,
    Method,
    PruneContext,
    base_linear,
    calibrate,
    decoder_layers,
    hookimpl,
    layer_paths,
)

BENCHSUITE_API = "2.0"

#: Config attributes that hold one entry per decoder layer (subset when blocks are removed).
PER_LAYER_CONFIG = ("layer_types", "no_rope_layers")
#: Config attribute: original indices of the removed blocks (cumulative over repeated depth pruning).
REMOVED_KEY = "benchsuite_removed_layers"


def _decoder(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The module that owns the decoder layers (it holds the config the forward reads) and the layers."""
    layers = decoder_layers(model)
    for module in model.modules():
        if getattr(module, "layers", None) is layers:
            return module, layers
    raise ConfigError(f"{type(model).__name__}: no module holds the decoder layers as `.layers`")


def _config(model: nn.Module) -> Any:
    owner, _ = _decoder(model)
    config = getattr(owner, "config", None) or getattr(model, "config", None)
    if config is None:
        raise ConfigError(f"{type(model).__name__} has no config: depth pruning must update num_hidden_layers")
    return config


def _skip_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    """Forward hook that makes a decoder block the identity: its output is its input hidden states."""
    hidden = args[0] if args else kwargs["hidden_states"]
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def remove_layers(model: nn.Module, removed: list[int]) -> nn.Module:
    """Delete the decoder blocks at ``removed`` (current indices) and make the model consistent: config
    ``num_hidden_layers`` and per-layer lists, ``layer_idx`` of the remaining blocks, and the original indices
    of everything removed so far in ``config.benchsuite_removed_layers``."""
    _, layers = _decoder(model)
    config = _config(model)
    count = len(layers)
    removed = sorted(set(removed))
    if any(not 0 <= i < count for i in removed):
        raise ValueError(f"layers {removed} out of range for {count} decoder layers")
    if len(removed) >= count:
        raise ValueError(f"removing {len(removed)} of {count} decoder layers leaves none")
    if not removed:
        return model
    before = list(getattr(config, REMOVED_KEY, None) or [])
    original = [i for i in range(count + len(before)) if i not in set(before)]  # current index -> original
    for i in reversed(removed):
        del layers[i]
    kept = [i for i in range(count) if i not in set(removed)]
    for name in PER_LAYER_CONFIG:
        values = getattr(config, name, None)
        if isinstance(values, (list, tuple)) and len(values) == count:
            setattr(config, name, type(values)(values[i] for i in kept))
    config.num_hidden_layers = len(layers)
    for index, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index
    setattr(config, REMOVED_KEY, sorted(before + [original[i] for i in removed]))
    return model


class Layers(Granularity):
    """Whole decoder blocks: one unit per layer, physically removed at the end (depth pruning)."""

    name = "layers"
    description = "whole decoder blocks (depth pruning), removed physically; one unit per layer"

    def setup(self) -> None:
        self._handles: list[Any] = []
        self._removed_params = 0

    def check_model(self, model: nn.Module) -> None:
        _decoder(model)
        config = _config(model)
        if getattr(config, "is_heterogeneous", False):
            raise ConfigError("depth pruning can't renumber a heterogeneous config's per_layer_config yet")
        if len(decoder_layers(model)) < 2:
            raise ConfigError("depth pruning needs at least two decoder layers")

    def units(self, model: nn.Module, layers: list[int]) -> list[GroupSet]:
        blocks = decoder_layers(model)
        groups = []
        for i in layers:
            members = []
            for path in layer_paths(model, blocks[i]):
                rows = base_linear(blocks[i].get_submodule(path)).out_features
                members.append(Coupling(path, 0, torch.arange(rows).reshape(1, rows)))
            groups.append(GroupSet(f"layers.{i}", i, "layer", 1, members))
        return groups

    def unit_params(self, model: nn.Module, groups: list[GroupSet]) -> list[int]:
        blocks = decoder_layers(model)
        return [sum(p.numel() for name, p in blocks[g.layer].named_parameters() if "lora_" not in name)
                for g in groups]

    def score(self, criterion: Criterion, model: nn.Module, groups: list[GroupSet]) -> list[torch.Tensor]:
        blocks = decoder_layers(model)
        scores = []
        for group in groups:
            s = criterion.group_scores(group, blocks[group.layer]).float().reshape(-1)
            if s.shape != (1,):
                raise ConfigError(f"criterion '{criterion.name}' returned {s.numel()} scores for block {group.name}")
            scores.append(s)
        return scores

    def blocks_to_remove(self, ratio: float, candidates: int) -> int:
        """Blocks removed for a unit ratio: the nearest whole number (halves up), one candidate kept."""
        return max(0, min(math.floor(ratio * candidates + 0.5), candidates - 1))

    def select(self, groups, scores, ratio, previous=None):
        if not groups:
            return []
        gone = [bool(p is not None and not bool(p.all())) for p in (previous or [None] * len(groups))]
        n = max(self.blocks_to_remove(ratio, len(groups)), sum(gone))
        values = torch.stack([s.reshape(-1)[0].float().cpu() for s in scores])
        order = torch.argsort(values, stable=True).tolist()  # ties: the earlier block goes first
        for i in order:
            if sum(gone) >= n:
                break
            gone[i] = True
        return [torch.tensor([not g]) for g in gone]

    def max_ratio(self, groups):
        return (len(groups) - 1) / len(groups) if groups else 1.0

    def apply_masks(self, model, groups, masks) -> None:
        self._unhook()
        blocks = decoder_layers(model)
        for group, keep in zip(groups, masks):
            if not bool(keep.all()):
                self._handles.append(blocks[group.layer].register_forward_hook(_skip_hook, with_kwargs=True))

    def _unhook(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def finalize(self, model, groups, masks):
        self._unhook()
        gone = [g for g, keep in zip(groups, masks) if not bool(keep.all())]
        self._removed_params = sum(self.unit_params(model, gone))
        return remove_layers(model, [g.layer for g in gone])

    def after_merge(self, model, groups, masks):
        config = _config(model)
        layers = decoder_layers(model)
        if config.num_hidden_layers != len(layers):
            raise RuntimeError(f"config says {config.num_hidden_layers} layers, the model has {len(layers)}")
        bad = [i for i, layer in enumerate(layers) if getattr(layer.self_attn, "layer_idx", i) != i]
        if bad:
            raise RuntimeError(f"decoder layers {bad[:3]} have a stale layer_idx")
        return {"num_hidden_layers": len(layers), "layers_removed": list(getattr(config, REMOVED_KEY, None) or []),
                "params_removed": self._removed_params}


def _only_blocks(criterion: Criterion, group: GroupSet) -> None:
    if group.kind != "layer":
        raise ConfigError(f"criterion '{criterion.name}' scores whole decoder blocks: use granularity 'layers', "
                          f"not {group.kind} units")


class BlockInfluence(Criterion):
    """ShortGPT's Block Influence: ``BI_i = 1 - E[cos(x_i, x_{i+1})]`` over calibration tokens, ``x_i`` the
    hidden state entering block ``i`` and ``x_{i+1}`` the one leaving it (before the final norm, also for
    the last block). A block that barely turns the hidden state scores low and goes first.
    ``distance="angular"`` scores ``E[arccos(cos) / pi]`` (Gromov et al.'s angular distance, one block);
    ``tokens="last"`` averages over the last position of each sequence only (as Gromov et al.)."""

    name = "block-influence"
    description = "ShortGPT block influence 1 - E[cos(x_in, x_out)] per decoder block (calibration data)"
    needs = frozenset({"calibration", "activations"})

    distance: Literal["cosine", "angular"] = "cosine"
    tokens: Literal["all", "last"] = "all"

    def setup(self) -> None:
        self._sums: dict[int, float] = {}
        self._count = 0

    def _distance(self, x_in: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
        if self.tokens == "last":
            x_in, x_out = x_in[:, -1], x_out[:, -1]
        cos = torch.nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1, eps=1e-8)
        cos = cos.reshape(-1)
        if self.distance == "angular":
            return torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi
        return 1.0 - cos

    def prepare(self, model: nn.Module, ctx: PruneContext) -> None:
        self.setup()
        count = [0]

        def hook(index: int):
            def fn(module, args, kwargs, output):
                x_in = args[0] if args else kwargs["hidden_states"]
                x_out = output[0] if isinstance(output, tuple) else output
                d = self._distance(x_in, x_out)
                self._sums[index] = self._sums.get(index, 0.0) + float(d.double().sum())
                if index == 0:
                    count[0] += d.numel()
            return fn

        handles = [layer.register_forward_hook(hook(i), with_kwargs=True)
                   for i, layer in enumerate(decoder_layers(model))]
        try:
            calibrate(model, ctx, desc="block influence")
        finally:
            for handle in handles:
                handle.remove()
        self._count = count[0]
        if not self._count:
            raise ValueError("block influence: the calibration passes gave no tokens")

    def group_scores(self, group: GroupSet, layer: nn.Module) -> torch.Tensor:
        _only_blocks(self, group)
        if group.layer not in self._sums:
            raise RuntimeError(f"block influence of {group.name} was not measured (prepare first)")
        return torch.tensor([self._sums[group.layer] / self._count])

    def element_scores(self, key: str, module: nn.Module) -> torch.Tensor:
        raise NotImplementedError(f"criterion '{self.name}' scores whole decoder blocks (granularity 'layers')")

    def release(self) -> None:
        self._sums = {}

    def stats(self) -> dict[str, Any]:
        return {"tokens_per_block": self._count}


class DepthOrder(Criterion):
    """The position of a block: later blocks score lower, so the last candidates go first (the common
    "drop the last layers" baseline; with ``layers="0:-1"`` the final block stays)."""

    name = "depth-order"
    description = "block position: the last candidate blocks are removed first (no data)"

    def group_scores(self, group: GroupSet, layer: nn.Module) -> torch.Tensor:
        _only_blocks(self, group)
        return torch.tensor([-float(group.layer)])

    def element_scores(self, key: str, module: nn.Module) -> torch.Tensor:
        raise NotImplementedError(f"criterion '{self.name}' orders whole decoder blocks (granularity 'layers')")


@hookimpl
def benchsuite_register_granularities(register):
    register(Layers)


@hookimpl
def benchsuite_register_criteria(register):
    register(BlockInfluence)
    register(DepthOrder)


@hookimpl
def benchsuite_register_methods(register):
    common = {"granularity": "layers", "layers": "all"}
    register(Method("shortgpt", "block-influence", **common,
                    description="ShortGPT: remove the decoder blocks of lowest block influence, one-shot"))
    register(Method("shortgpt-angular", "block-influence", criterion_params={"distance": "angular", "tokens": "last"},
                    **common, description="blocks of lowest angular distance arccos(cos)/pi at the last token "
                                          "(Gromov et al.'s distance, per block), one-shot"))
    register(Method("depth-magnitude", "magnitude", criterion_params={"p": 1}, **common,
                    description="remove the decoder blocks of lowest sum |W| over their projections, one-shot"))
    register(Method("depth-random", "random", **common, description="remove random decoder blocks (seeded)"))
    register(Method("depth-last", "depth-order", granularity="layers", layers="0:-1",
                    description="remove the last decoder blocks before the final one"))
