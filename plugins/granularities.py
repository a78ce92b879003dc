"""Built-in plugin: the granularities ``structured`` (whole attention heads and MLP channels; in a mixture of
experts, each expert's channels), ``experts`` (whole experts of a mixture of experts, with their router rows),
``nm`` (semi-structured N:M, e.g. 2:4) and ``unstructured`` (single weights, per matrix or per row)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from benchsuite import hookimpl
from benchsuite.api import ConfigError, Coupling, Criterion, Granularity, GroupSet, architecture_of
from benchsuite.api.experts import mask_router, remove_experts
from benchsuite.api.model import PROJECTIONS, base_linear, decoder_layers, layer_paths
from benchsuite.pruning.sparsity import (
    apply_element_masks,
    check_nm,
    nm_mask,
    reapply_masks,
    remove_lora_masking,
    sparsity,
    unstructured_mask,
    weight_groups,
)
from benchsuite.pruning.structure import (
    Masker,
    attention_group,
    mlp_groups,
    prune_counts,
    pruned_per_block,
    record_widths,
    remove_units,
    select_units,
    tied_counts,
)

BENCHSUITE_API = "2.3"


class Structured(Granularity):
    """Coupled attention heads (GQA-aware) and MLP channels; physically removed at the end. In a mixture of experts
    each expert's channels are a group, and every expert of a layer loses the same number."""

    name = "structured"
    description = "attention heads (GQA-aware) and MLP channels, removed physically"

    #: query heads (kv heads stay whole under GQA), key/value groups with their query heads, or none
    attention: Literal["heads", "kv-groups", "none"] = "heads"
    mlp: bool = True

    def validate(self) -> None:
        if self.attention == "none" and not self.mlp:
            raise ValueError("nothing to prune: attention='none' and mlp=False")

    def setup(self) -> None:
        self._masker = Masker()

    def check_model(self, model: nn.Module) -> None:
        decoder_layers(model)  # raises ConfigError with the reason

    def label(self) -> str:
        if self.attention == "heads" and self.mlp:
            return "structured"
        return f"structured({self.attention}, mlp={self.mlp})"

    def units(self, model: nn.Module, layers: list[int]) -> list[GroupSet]:
        all_layers = decoder_layers(model)
        arch = architecture_of(model)
        groups: list[GroupSet] = []
        for i in layers:
            group = attention_group(all_layers[i], i, self.attention, arch)
            if group is not None:
                groups.append(group)
            if self.mlp:
                groups.extend(mlp_groups(all_layers[i], i, arch))
        return groups

    def score(self, criterion: Criterion, model: nn.Module, groups: list[GroupSet]) -> list[torch.Tensor]:
        layers = decoder_layers(model)
        scores = []
        for group in groups:
            s = criterion.group_scores(group, layers[group.layer])
            if s.shape != (group.size,):
                raise ConfigError(f"criterion '{criterion.name}' returned shape {tuple(s.shape)} "
                                  f"for {group.name} with {group.size} units")
            scores.append(s)
        return scores

    supports_allocation = True

    def select(self, groups, scores, ratio, previous=None):
        previous = previous or [None] * len(groups)
        ratios = [self.group_ratio(g, ratio) for g in groups] if getattr(self, "_allocation", None) else None
        counts = tied_counts(groups, ratio, [pruned_per_block(g, p) for g, p in zip(groups, previous)], ratios)
        return [select_units(g, s, n, p) for g, s, n, p in zip(groups, scores, counts, previous)]

    def apply_masks(self, model, groups, masks) -> None:
        self._masker.apply(model, groups, masks)

    def max_ratio(self, groups):
        # one unit per block stays (a head per kv group, a channel per MLP)
        return min(((g.size // g.blocks) - 1) / (g.size // g.blocks) for g in groups) if groups else 1.0

    def finalize(self, model, groups, masks):
        self._masker.remove()
        return remove_units(model, groups, masks)


class Experts(Granularity):
    """Whole experts of a mixture of experts, each with its router row: masked by routing around them (their router
    logits ``-inf``), removed at the end. An expert's score is the sum of its projections' element scores."""

    name = "experts"
    description = "whole experts of a mixture of experts, with their router rows (MoE families only)"

    def setup(self) -> None:
        self._handles: list = []

    def check_model(self, model: nn.Module) -> None:
        family = architecture_of(model)
        if not family.experts:
            raise ConfigError(f"granularity 'experts' prunes mixtures of experts; {family.name} models have none")
        decoder_layers(model)

    def units(self, model, layers):
        self.check_model(model)  # schedules may ask for units without checking the model first
        arch = architecture_of(model)
        all_layers = decoder_layers(model)
        groups = []
        for i in layers:
            count = len(all_layers[i].get_submodule(arch.experts))
            members = [Coupling(arch.expert_path(e, part), 0, torch.empty(0, 1, dtype=torch.long))
                       for e in range(count) for part in range(3)]
            groups.append(GroupSet(f"layers.{i}.{arch.experts}", i, "experts", count, members))
        # the router picks top_k experts for every token: at least that many stay in every layer
        self._caps = [g.size - self._top_k(model, g) for g in groups]
        return groups

    def score(self, criterion, model, groups):
        if type(criterion).element_scores is Criterion.element_scores:
            raise ConfigError(f"criterion '{criterion.name}' scores whole groups only; granularity 'experts' sums "
                              "element scores over each expert")
        layers = decoder_layers(model)
        scores = []
        for group in groups:
            layer = layers[group.layer]
            per_expert = torch.zeros(group.size)
            for e, member in zip(range(group.size * 3), group.members):
                module = layer.get_submodule(member.module)
                s = criterion.element_scores(f"layers.{group.layer}.{member.module}", module)
                per_expert[e // 3] += s.float().sum().cpu()
            scores.append(per_expert)
        return scores

    def _top_k(self, model, group) -> int:
        return decoder_layers(model)[group.layer].get_submodule(architecture_of(model).router).top_k

    def unit_params(self, model, groups):
        layers = decoder_layers(model)
        arch = architecture_of(model)
        out = []
        for group in groups:
            layer = layers[group.layer]
            expert = sum(base_linear(layer.get_submodule(arch.expert_path(0, part))).weight.numel()
                         for part in range(3))
            out.append(expert + layer.get_submodule(arch.router).weight.shape[1])
        return out

    def select(self, groups, scores, ratio, previous=None):
        previous = previous or [None] * len(groups)
        counts = prune_counts(groups, ratio, [pruned_per_block(g, p) for g, p in zip(groups, previous)])
        caps = getattr(self, "_caps", None) or [g.size - 1 for g in groups]
        return [select_units(g, s, min(n, cap), p) for g, s, n, cap, p in zip(groups, scores, counts, caps, previous)]

    def max_ratio(self, groups):
        caps = getattr(self, "_caps", None)
        if not groups or not caps:
            return 1.0
        return min(cap / g.size for g, cap in zip(groups, caps))

    def apply_masks(self, model, groups, masks) -> None:
        self._remove_hooks()
        layers = decoder_layers(model)
        router = architecture_of(model).router
        for group, keep in zip(groups, masks):
            if not bool(keep.all()):
                self._handles.append(mask_router(layers[group.layer].get_submodule(router), keep.cpu()))

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def finalize(self, model, groups, masks):
        self._remove_hooks()
        layers = decoder_layers(model)
        arch = architecture_of(model)
        for group, keep in zip(groups, masks):
            if not bool(keep.all()):
                remove_experts(layers[group.layer], arch, keep.cpu())
        record_widths(model)
        return model


class _ElementLevel(Granularity):
    """Shared parts of the element-level granularities: masks on the weights, exact through LoRA."""

    #: each matrix's mask from its own scores (and previous mask) alone
    local_selection = True

    #: the projections to sparsify (paths inside a decoder layer); the default, the Llama layout's seven, stands for
    #: every projection of the model's family (Phi-3's fused qkv_proj and gate_up_proj too)
    modules: tuple[str, ...] = PROJECTIONS

    def validate(self) -> None:
        self.modules = tuple(self.modules)
        if not self.modules:
            raise ValueError("modules is empty: name at least one projection")

    def _modules(self, model) -> tuple[str, ...] | None:
        """The projections named (None: every projection of each layer, each expert's in a mixture of experts)."""
        if self.modules == PROJECTIONS:
            return None
        family = layer_paths(model, decoder_layers(model)[0])
        unknown = [m for m in self.modules if m not in family]
        if unknown:
            raise ConfigError(f"modules {list(unknown)} unknown in this model; choose from {', '.join(family)}")
        return self.modules

    def check_model(self, model):
        decoder_layers(model)
        self._modules(model)

    def units(self, model, layers):
        return weight_groups(model, layers, self._modules(model))

    def unit_params(self, model, groups):
        return [1] * len(groups)  # a unit is one weight

    def score(self, criterion, model, groups):
        layers = decoder_layers(model)
        scores = []
        for group in groups:
            module = layers[group.layer].get_submodule(group.members[0].module)
            s = criterion.element_scores(group.name, module)
            if s.shape != base_linear(module).weight.shape:
                raise ConfigError(f"criterion '{criterion.name}' gave element scores of shape {tuple(s.shape)} "
                                  f"for {group.name}")
            scores.append(s)
        return scores

    def apply_masks(self, model, groups, masks):
        apply_element_masks(model, groups, masks)

    def finalize(self, model, groups, masks):
        apply_element_masks(model, groups, masks)  # stays in force through a LoRA recovery
        return model

    def after_merge(self, model, groups, masks):
        remove_lora_masking(model)
        reapply_masks(model, groups, masks)
        layers = decoder_layers(model)
        weights = [base_linear(layers[g.layer].get_submodule(g.members[0].module)).weight for g in groups]
        zeros = sum(int((w == 0).sum()) for w in weights)
        total = sum(w.numel() for w in weights)
        return {"sparsity": zeros / max(total, 1), "sparsified_weights": len(weights),
                "min_sparsity": min((sparsity(w) for w in weights), default=0.0)}


class NM(_ElementLevel):
    """Semi-structured N:M: in every row, each block of M consecutive input weights keeps N."""

    name = "nm"
    description = "semi-structured N:M (default 2:4): keep N of every M consecutive weights per row"

    n: int = 2
    m: int = 4

    def validate(self) -> None:
        if not 0 < self.n < self.m:
            raise ValueError(f"N:M needs integers 0 < N < M, not {self.n}:{self.m}")
        super().validate()

    @property
    def fixed_ratio(self) -> float:
        return 1.0 - self.n / self.m

    def label(self) -> str:
        return f"{self.n}:{self.m}"

    def select(self, groups, scores, ratio, previous=None):
        # intermediate ratios of an iterative schedule prune fewer per block; never more than M-N
        n_prune = min(int(ratio * self.m + 0.5), self.m - self.n)
        previous = previous or [None] * len(groups)
        return [nm_mask(s, n_prune, self.m, p) for s, p in zip(scores, previous)]

    def after_merge(self, model, groups, masks):
        checks = super().after_merge(model, groups, masks)
        layers = decoder_layers(model)
        bad = [g.name for g in groups
               if not check_nm(base_linear(layers[g.layer].get_submodule(g.members[0].module)).weight, self.n, self.m)]
        if bad:
            raise RuntimeError(f"weights not {self.label()} after merging: {bad[:3]}")
        checks["nm_verified"] = (f"every block of {self.m} in every row of {len(groups)} weights has "
                                 f"<= {self.n} non-zeros")
        return checks


class Unstructured(_ElementLevel):
    """Single weights: the lowest-scoring fraction of each matrix (or of each output row)."""

    name = "unstructured"
    description = "single weights, lowest fraction per matrix (per_row: per output row, as Wanda)"

    #: compare weights within each output row (Wanda) instead of within the whole matrix
    per_row: bool = False

    def label(self) -> str:
        return "unstructured" + ("/row" if self.per_row else "")

    supports_allocation = True

    def select(self, groups, scores, ratio, previous=None):
        previous = previous or [None] * len(groups)
        return [unstructured_mask(s, self.group_ratio(g, ratio), self.per_row, p)
                for g, s, p in zip(groups, scores, previous)]


@hookimpl
def benchsuite_register_granularities(register):
    register(Structured)
    register(NM)
    register(Unstructured)
    register(Experts)
