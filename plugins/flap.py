"""FLAP (An et al., AAAI 2024, "Fluctuation-based adaptive structured pruning for large language models")
and Wanda-sp (Wanda's score on whole heads and channels, the baseline of FLAP's and LLM-Pruner's tables).

**FLAP** (reference: CASIA-IVA-Lab/FLAP, ``lib/prune.py``, its defaults ``--metrics WIFV --structure AL-AM``):

- criterion ``fluctuation``: for every input column ``j`` of ``o_proj`` and ``down_proj`` (a head's
  ``head_dim`` columns, an MLP channel's one), ``F_j = Var(x_j) * ||W[:, j]||^2`` with ``x_j`` the column's
  input over the calibration tokens (``WIFV``; ``IFV`` is the variance alone, ``WIFN`` the mean over rows of
  ``|W| * sqrt(mean x^2)``). As the reference, the attention metric is squared. Standardised within each
  layer's module, ``(F - mean) / std`` over its columns, then averaged over a unit's columns, so that one
  threshold compares units of different layers and modules. Variance: the unbiased sample variance over all
  calibration tokens (the reference's running update counts samples, not tokens, and drops the first
  sample's spread: a scale and a small difference that the standardisation absorbs).
- granularity ``structured-global``: the structured units (heads GQA-aware, MLP channels), with FLAP's
  adaptive allocation: units of every layer and both modules are ranked by score and removed from the
  lowest until the removed parameters are closest to the target (the reference's ``AL-AM`` threshold,
  whose weights are the units' parameter counts), so the parameter budget of the suite's ``--ratio-basis``
  is met within one unit; ``allocation="per-kind"`` meets it for attention and MLP separately (``AL-MM``).
  Under GQA the ``k``-th lowest query head of every key/value group go together (their mean score), so
  every group loses as many heads. One unit per block always stays. With ``compensate`` (FLAP's bias
  compensation) a removed unit's output is replaced by its calibration mean: ``W[:, removed] @
  mean(x_removed)`` is added to the bias of ``o_proj`` / ``down_proj`` (the mask does the same, so the
  masked model equals the finalized one); the added bias parameters count against the budget. The means
  come from the criterion (:meth:`~benchsuite.Criterion.input_means`).
- methods ``flap`` (one-shot, every layer, no fine-tuning, as the paper), ``flap-lora`` and ``flap-nobias``.

**Wanda-sp** (reference: the same repository's ``prune_wanda_sp``): a unit scores the sum of Wanda's
element scores ``|W_ij| * ||X_j||_2`` over its columns of ``o_proj`` / ``down_proj`` (the reference averages
over the rows: the same order, the row count being the hidden size everywhere); every layer loses the same
fraction, layer by layer on inputs through the already-pruned layers (``sequential``). Methods ``wanda-sp``
and ``wanda-sp-lora``.
"""

from __future__ import annotations

import bisect
from typing import Literal

import torch
from torch import nn

from benchsuite import (
    PAPER_LORA,
    ConfigError,
    Coupling,
    Criterion,
    GroupSet,
    Method,
    PruneContext,
    architecture_of,
    base_linear,
    calibrate,
    decoder_layers,
    hookimpl,
    layer_paths,
    module_key,
    unit_sums,
)
from benchsuite_plugins.granularities import Structured

BENCHSUITE_API = "2.2"


def output_keys(model: nn.Module) -> list[str]:
    """The keys of the projections that read a unit's output (the family's o_proj and down_proj, each expert's in a
    mixture of experts): removing a head or channel removes their input columns."""
    arch = architecture_of(model)
    keys = []
    for i, layer in enumerate(decoder_layers(model)):
        outputs = {arch.attention[3]} | {arch.mlp[2].format(e=e) for e in range(
            len(layer.get_submodule(arch.experts)) if arch.experts else 1)}
        keys += [module_key(i, path) for path in layer_paths(model, layer) if path in outputs]
    return keys


def output_member(group: GroupSet) -> Coupling:
    """The coupling of ``group`` on its output projection (``o_proj`` / ``down_proj`` columns)."""
    for member in group.members:
        if member.dim == 1:
            return member
    raise ValueError(f"{group.name} has no output projection columns: FLAP and Wanda-sp score heads and MLP "
                     "channels through their output projection")


class _Moments:
    """Running count, mean and sum of squared deviations (Chan et al.) of each column, in float64."""

    def __init__(self, width: int, device: torch.device) -> None:
        self.count = 0
        self.mean = torch.zeros(width, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(width, dtype=torch.float64, device=device)
        self.sq = torch.zeros(width, dtype=torch.float64, device=device)  # sum of x^2 (WIFN)

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        n = x.shape[0]
        if n == 0:
            return
        mean = x.mean(0)
        m2 = (x - mean).square().sum(0)
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += m2 + delta.square() * (self.count * n / total)
        self.sq += x.square().sum(0)
        self.count = total

    def variance(self) -> torch.Tensor:
        return self.m2 / (self.count - 1)


class Fluctuation(Criterion):
    """FLAP's fluctuation metric of every head / MLP channel, standardised per layer and module."""

    name = "fluctuation"
    description = ("FLAP: variance of each head's/channel's output over calibration tokens x its o_proj/down_proj "
                   "column norm^2 (WIFV), standardised per layer")
    needs = frozenset({"calibration", "activations"})
    #: FLAP: 1,024 samples of 128 tokens of WikiText-2 (which needs the hub: wiki's calibration part)
    calibration = ("wiki", 1024, 128)

    #: WIFV: Var(x) * ||W_col||^2 (the paper's); IFV: Var(x); WIFN: mean over rows of |W| * sqrt(mean x^2)
    metric: Literal["WIFV", "IFV", "WIFN"] = "WIFV"
    #: (score - mean) / std within each layer's module, so that layers and modules compare (FLAP's AL-AM)
    standardize: bool = True

    def setup(self) -> None:
        self._moments: dict[str, _Moments] = {}

    def prepare(self, model: nn.Module, ctx: PruneContext) -> None:
        self._moments.clear()
        keys = output_keys(model)
        calibrate(model, ctx, desc="FLAP: fluctuation", inputs=dict.fromkeys(keys, self._add))
        few = [key for key in keys if self._moments.get(key) is None or self._moments[key].count < 2]
        if few:
            raise ValueError(f"the fluctuation criterion needs at least 2 calibration tokens ({few[0]} saw fewer)")

    def _add(self, key: str, x: torch.Tensor) -> None:
        if key not in self._moments:
            self._moments[key] = _Moments(x.shape[-1], x.device)
        self._moments[key].add(x)

    def _stats(self, key: str) -> _Moments:
        if key not in self._moments:
            raise RuntimeError("the fluctuation criterion scores only after prepare() saw calibration inputs")
        return self._moments[key]

    def column_metric(self, key: str, module: nn.Module, attention: bool | None = None) -> torch.Tensor:
        """The raw (unstandardised) metric of every input column of the output projection ``key``
        (``[in_features]``; squared for the attention's (``attention``; None: a key ending in ``self_attn.o_proj``),
        as the reference)."""
        stats = self._stats(key)
        weight = base_linear(module).weight.detach().float()
        if self.metric == "WIFN":
            rms = (stats.sq / stats.count).sqrt().float().to(weight.device)
            value = (weight.abs() * rms[None, :]).mean(0)
        else:
            value = stats.variance().float().to(weight.device)
            if self.metric == "WIFV":
                value = value * weight.square().sum(0)
        if attention is None:
            attention = key.endswith("self_attn.o_proj")
        return value.square() if attention else value

    def element_scores(self, key: str, module: nn.Module) -> torch.Tensor:
        raise NotImplementedError("the fluctuation criterion (FLAP) scores whole heads and MLP channels through "
                                  "their output projection: use a structured granularity")

    def group_scores(self, group: GroupSet, layer: nn.Module) -> torch.Tensor:
        member = output_member(group)
        value = self.column_metric(module_key(group.layer, member.module), layer.get_submodule(member.module),
                                   group.kind == "attention")
        if self.standardize:
            std = value.std() if value.numel() > 1 else value.new_tensor(0.0)
            value = (value - value.mean()) / (std if float(std) > 0 else 1.0)
        return value.cpu()[member.index].mean(1)

    def input_means(self, key: str) -> torch.Tensor | None:
        stats = self._moments.get(key)
        return None if stats is None else stats.mean.float()

    def release(self) -> None:
        self._moments.clear()


class WandaSP(Criterion):
    """Wanda-sp: a unit's score is the sum of ``|W_ij| * ||X_j||_2`` over its o_proj/down_proj columns."""

    name = "wanda-sp"
    description = "Wanda-sp: Wanda's |W| x input-norm summed over each head's/channel's o_proj/down_proj columns"
    needs = frozenset({"calibration", "activations"})
    #: a layer's scores come from that layer's input norms alone
    layer_local = True
    #: the FLAP repository's Wanda-sp: 128 samples of 128 tokens from C4
    calibration = ("c4", 128, 128)

    def setup(self) -> None:
        self._sq_norms: dict[str, torch.Tensor] = {}

    def prepare(self, model: nn.Module, ctx: PruneContext) -> None:
        self._sq_norms.clear()
        keys = output_keys(model)
        calibrate(model, ctx, desc="Wanda-sp: activations", inputs=dict.fromkeys(keys, self._add))

    def _add(self, key: str, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self._sq_norms[key] = self._sq_norms.get(key, 0) + x.square().sum(0)

    def element_scores(self, key: str, module: nn.Module) -> torch.Tensor:
        raise NotImplementedError("wanda-sp scores whole heads and MLP channels (a structured granularity); the "
                                  "wanda criterion scores single weights")

    def group_scores(self, group: GroupSet, layer: nn.Module) -> torch.Tensor:
        member = output_member(group)
        key = module_key(group.layer, member.module)
        if key not in self._sq_norms:
            raise RuntimeError("the wanda-sp criterion scores only after prepare() saw calibration inputs")
        weight = base_linear(layer.get_submodule(member.module)).weight.detach().float()
        scores = weight.abs() * self._sq_norms[key].to(weight.device).sqrt()[None, :]
        return unit_sums(scores, member).cpu()

    def release(self) -> None:
        self._sq_norms.clear()


class GlobalStructured(Structured):
    """Structured units allocated across layers (and modules) by one score threshold at a parameter budget,
    optionally with FLAP's bias compensation of the removed units."""

    name = "structured-global"
    description = ("heads (GQA-aware) and MLP channels, lowest scores across all layers removed up to the "
                   "parameter budget (FLAP's adaptive structure); compensate: removed outputs' mean as a bias")
    adaptive = True
    supports_allocation = False  # one threshold across layers allocates by itself

    #: one threshold over attention and MLP units together (FLAP's AL-AM), or one per kind (AL-MM)
    allocation: Literal["global", "per-kind"] = "global"
    #: add the removed units' mean contribution to the output projection's bias (needs input_means)
    compensate: bool = False

    def setup(self) -> None:
        super().setup()
        self._unit_params: dict[str, int] = {}
        self._bias_params: dict[str, int] = {}
        self._means: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def label(self) -> str:
        parts = [] if self.attention == "heads" and self.mlp else [f"{self.attention}, mlp={self.mlp}"]
        parts += [] if self.allocation == "global" else [self.allocation]
        return "structured-global" + (f"({', '.join(parts)})" if parts else "") + ("+bias" if self.compensate else "")

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        family = architecture_of(model)
        if family.experts:
            raise ConfigError(f"granularity '{self.name}' can't prune {family.name} models: one threshold across "
                              "layers gives each expert of a layer its own width, and transformers keeps a layer's "
                              "experts as one fused tensor of one width; use 'structured' (every expert of a layer "
                              "loses the same number of channels) or 'experts'")

    def units(self, model: nn.Module, layers: list[int]) -> list[GroupSet]:
        groups = super().units(model, layers)
        all_layers = decoder_layers(model)
        for group, params in zip(groups, self.unit_params(model, groups)):
            self._unit_params[group.name] = params
            out = base_linear(all_layers[group.layer].get_submodule(output_member(group).module))
            self._bias_params[group.name] = out.out_features if out.bias is None else 0
        return groups

    def score(self, criterion: Criterion, model: nn.Module, groups: list[GroupSet]) -> list[torch.Tensor]:
        scores = super().score(criterion, model, groups)
        if self.compensate:
            for group in groups:
                key = module_key(group.layer, output_member(group).module)
                mean = criterion.input_means(key)
                if mean is None:
                    raise ConfigError(f"granularity {self.name} with compensate needs a criterion that records the "
                                      f"calibration mean of each output projection's input (input_means, e.g. "
                                      f"fluctuation); '{criterion.name}' does not")
                self._means[group.name] = mean.detach().float().cpu().clone()
        return scores

    # -- allocation -----------------------------------------------------------------------------------
    def select(self, groups, scores, ratio, previous=None):
        previous = previous or [None] * len(groups)
        missing = [g.name for g in groups if g.name not in self._unit_params]
        if missing:
            raise RuntimeError(f"{self.name}: select() for groups that units() did not make ({missing[0]})")
        counts = [0] * len(groups)
        orders = [self._block_orders(g, s, p) for g, s, p in zip(groups, scores, previous)]
        kinds = [None] if self.allocation == "global" else list(dict.fromkeys(g.kind for g in groups))
        for kind in kinds:
            idx = [i for i, g in enumerate(groups) if kind is None or g.kind == kind]
            for i, n in zip(idx, self._allocate([groups[i] for i in idx], [orders[i] for i in idx], ratio)):
                counts[i] = n
        masks = []
        for group, (order, _, _), n in zip(groups, orders, counts):
            keep = torch.ones(group.size, dtype=torch.bool)
            per = group.size // group.blocks
            for b in range(group.blocks):
                keep[b * per + order[b, :n]] = False
            masks.append(keep)
        return masks

    @staticmethod
    def _block_orders(group: GroupSet, scores: torch.Tensor, keep: torch.Tensor | None):
        """Units of each block from the lowest score (pruned ones first), the score of each rank (the mean
        over the blocks: the k-th lowest query heads of all kv groups go together), and the ranks pruned."""
        per = group.size // group.blocks
        values = scores.detach().float().cpu().clone().reshape(group.blocks, per)
        done = 0
        if keep is not None:
            pruned = ~keep.cpu().reshape(group.blocks, per)
            done = int(pruned.sum(1).max())
            values[pruned] = float("-inf")
        order = torch.sort(values, dim=1, stable=True).indices
        rank_scores = torch.gather(values, 1, order).mean(0)  # pruned ranks (-inf) are forced anyway
        return order, rank_scores, done

    def _allocate(self, groups: list[GroupSet], orders: list, ratio: float) -> list[int]:
        """Ranks to prune per block of each group: the lowest-scoring ranks over all the groups, as many as
        bring the removed parameters (bias added by compensation included) closest to ``ratio`` of the
        units' parameters. Ranks already pruned go first; one unit per block stays."""
        candidates = []  # (forced first, score, group, rank): a stable sort keeps each group's ranks in order
        for gi, (group, (_, rank_scores, done)) in enumerate(zip(groups, orders)):
            per = group.size // group.blocks
            for rank in range(per - 1):
                candidates.append((0 if rank < done else 1, float(rank_scores[rank]), gi, rank))
        candidates.sort(key=lambda c: (c[0], c[1]))
        weights = [groups[gi].blocks * self._unit_params[groups[gi].name] for _, _, gi, _ in candidates]
        target = ratio * sum(g.size * self._unit_params[g.name] for g in groups)
        forced = sum(1 for c in candidates if c[0] == 0)
        cumulative = [0.0]
        for w in weights:
            cumulative.append(cumulative[-1] + w)

        def take(budget: float) -> int:  # the count whose cumulative parameters are closest (the fewer on a tie)
            low = max(forced, bisect.bisect_left(cumulative, budget) - 1)
            options = range(low, min(low + 2, len(cumulative)))
            return min(options, key=lambda m: (abs(cumulative[m] - budget), m))

        def bias_cost(n: int) -> int:
            touched = {candidates[k][2] for k in range(n)}
            return sum(self._bias_params[groups[gi].name] for gi in touched) if self.compensate else 0

        n = take(target)
        for _ in range(20):  # the bias a pruned group gains counts against the budget: a fixed point
            again = take(target + bias_cost(n))
            if again == n:
                break
            n = again
        counts = [0] * len(groups)
        for _, _, gi, rank in candidates[:n]:
            counts[gi] = max(counts[gi], rank + 1)
        return counts

    # -- compensation ---------------------------------------------------------------------------------
    def _output_columns(self, model: nn.Module, group: GroupSet, keep: torch.Tensor):
        member = output_member(group)
        module = decoder_layers(model)[group.layer].get_submodule(member.module)
        removed = member.index[~keep.cpu()].reshape(-1)
        return module, removed

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def apply_masks(self, model, groups, masks) -> None:
        if not self.compensate:
            return super().apply_masks(model, groups, masks)
        self._remove_hooks()
        for group, keep in zip(groups, masks):
            if bool(keep.all()):
                continue
            module, removed = self._output_columns(model, group, keep)
            drop = torch.zeros(base_linear(module).in_features, dtype=torch.bool)
            drop[removed] = True
            self._handles.append(module.register_forward_pre_hook(_mean_hook(drop, self._mean(group))))

    def _mean(self, group: GroupSet) -> torch.Tensor:
        if group.name not in self._means:
            raise RuntimeError(f"{self.name}: no calibration means for {group.name} (compensate needs score() first)")
        return self._means[group.name]

    def finalize(self, model, groups, masks):
        if not self.compensate:
            return super().finalize(model, groups, masks)
        self._remove_hooks()
        biases = []
        for group, keep in zip(groups, masks):
            if bool(keep.all()):
                continue
            module, removed = self._output_columns(model, group, keep)
            biases.append((base_linear(module), removed_contribution(module, removed, self._mean(group))))
        model = super().finalize(model, groups, masks)
        with torch.no_grad():
            for linear, delta in biases:
                delta = delta.to(device=linear.weight.device, dtype=linear.weight.dtype)
                if linear.bias is None:
                    linear.bias = nn.Parameter(delta, requires_grad=linear.weight.requires_grad)
                else:
                    linear.bias += delta
        self._means.clear()
        return model


def removed_contribution(module: nn.Module, removed: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``W[:, removed] @ mean[removed]`` for the projection ``module`` (LoRA adapters' paths included,
    ``scaling * B @ A[:, removed] @ mean``): what the removed input columns add on average (float32)."""
    linear = base_linear(module)
    mu = mean[removed].to(linear.weight.device)
    cols = removed.to(linear.weight.device)
    delta = linear.weight.detach().float().index_select(1, cols) @ mu
    lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
    if lora_a is not None and lora_b is not None and not getattr(module, "merged", False):
        for name in getattr(module, "active_adapters", list(lora_a.keys())):
            if name in lora_a and name in lora_b:
                a = lora_a[name].weight.detach().float().index_select(1, cols)
                delta = delta + module.scaling[name] * (lora_b[name].weight.detach().float() @ (a @ mu))
    return delta


def _mean_hook(drop: torch.Tensor, mean: torch.Tensor):
    """Forward pre-hook: the dropped input columns read their calibration mean (what the bias adds back)."""
    cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(_module, args):
        x = args[0]
        key = (x.device, x.dtype)
        if key not in cache:
            keep = (~drop).to(device=x.device, dtype=x.dtype)
            cache[key] = (keep, (mean * drop).to(device=x.device, dtype=x.dtype))
        keep, fill = cache[key]
        return (x * keep + fill,) + tuple(args[1:])

    return hook


@hookimpl
def benchsuite_register_criteria(register):
    register(Fluctuation)
    register(WandaSP)


@hookimpl
def benchsuite_register_granularities(register):
    register(GlobalStructured)


@hookimpl
def benchsuite_register_methods(register):
    flap = {"criterion": "fluctuation", "granularity": "structured-global", "layers": "all",
            "granularity_params": {"compensate": True}}
    register(Method("flap", **flap, description="FLAP: fluctuation (WIFV), standardised, one global threshold at "
                    "the parameter budget, bias compensation, every layer, one-shot, no fine-tuning"))
    register(Method("flap-lora", **flap, recovery=PAPER_LORA, description="FLAP, then LoRA recovery"))
    register(Method("flap-nobias", **(flap | {"granularity_params": {"compensate": False}}),
                    description="FLAP without the bias compensation (the paper's ablation)"))
    sp = {"criterion": "wanda-sp", "schedule": "sequential", "layers": "all"}
    register(Method("wanda-sp", **sp, description="Wanda-sp: Wanda's score over each head's/channel's output "
                    "columns, the same fraction in every layer, layer by layer, no fine-tuning"))
    register(Method("wanda-sp-lora", **sp, recovery=PAPER_LORA, description="Wanda-sp, then LoRA recovery"))
