"""SparseGPT (Frantar & Alistarh, 2023): prune each linear layer and update its remaining weights so
that the layer's output on calibration inputs changes as little as possible (Optimal Brain Surgeon
reconstruction, solved column by column with lazy batch updates).

Two components, because SparseGPT both *selects* and *updates*:

- the ``sparsegpt`` **schedule** runs the layer-wise reconstruction: the hidden states entering the
  first pruned decoder layer are cached once for the calibration batches, then every decoder layer is
  pruned in turn and the cached states are passed through the *pruned* layer to give the next layer's
  inputs (the reference's loop; passes of one layer, never the whole model again). Within a layer, as
  the reference's default (its ``llama.py``; ``--true-sequential`` is off unless given), every projection's
  Hessian ``H = 2/N X X^T`` (float32, N calibration tokens) comes from one pass of the layer while it is
  still dense; ``true_sequential=True`` prunes q/k/v, then o, then gate/up, then down, each stage on
  inputs through the stages already pruned. Each matrix is solved by :func:`obs_prune`.
- the ``sparsegpt`` **criterion** is the OBS saliency ``w^2 / [H^-1]_jj`` (``[H^-1]_jj`` the square of
  the diagonal of the upper Cholesky factor of the dampened inverse Hessian), which exists only inside
  the solver: the updates of earlier columns change it. The schedule recognises it and lets the solver
  choose the masks (adaptive mask selection); it declines every other schedule.

Mask patterns belong to the granularity: the solver asks ``granularity.select`` for the keep-mask of a
window of columns when it reaches them. N:M (a granularity with a fixed ratio and an integer ``m``)
is selected M columns at a time from the weights as updated so far (the reference's order); other
element-level granularities once per block of ``blocksize`` columns (unstructured: the lowest fraction
of that block over all rows, the reference's adaptive mask selection; the count is rounded, where the
reference's ``<=`` threshold keeps ties). The masks are returned like any element-level method's, so
the record's pruned units, N:M checks and sparsity through LoRA recovery cover the updated weights.

With any other criterion the schedule keeps its masks (chosen as the ``sequential`` schedule does,
the criterion preparing on the model whose earlier layers are pruned and updated) and reconstructs the
remaining weights with the same solver and a fixed mask: element-level masks update the kept weights
of each matrix; structured masks (heads, channels) update the consumer's remaining input columns
(o_proj, down_proj), whose removed columns are exactly what the pruned units fed.

Departures from the reference, documented: the Hessian is scaled per token rather than per sample (the
solver and the dampening, relative to the mean diagonal, are invariant to it); inputs dead on the
calibration data (``H_jj = 0``) are handled as there (``H_jj = 1``, their weights zeroed) and counted
in the log as ``dead_inputs``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from benchsuite import (
    ConfigError,
    Criterion,
    Granularity,
    GroupSet,
    LayerInputs,
    Method,
    PruneContext,
    PruneOutcome,
    Schedule,
    architecture_of,
    base_linear,
    checked_scores,
    decoder_layers,
    hookimpl,
)

BENCHSUITE_API = "2.0"

#: The reference's true-sequential order of the projections inside a decoder layer.
TRUE_SEQUENTIAL: tuple[tuple[str, ...], ...] = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)

#: ``select(scores, start)``: the keep-mask (bool, same shape) of the columns starting at ``start``.
Selector = Callable[[torch.Tensor, int], torch.Tensor]


def dampened_inverse_cholesky(hessian: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, dead)``: ``U`` the upper Cholesky factor of ``(H + percdamp * mean(diag H) * I)^-1`` after
    dead inputs (``H_jj == 0``) got ``H_jj = 1``; ``dead`` the boolean mask of those inputs."""
    h = hessian.detach().float().clone()  # float32, as the reference
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    damp = percdamp * torch.mean(torch.diag(h))
    h.diagonal().add_(damp)
    try:
        lower = torch.linalg.cholesky(h)
    except torch.linalg.LinAlgError as exc:
        raise ValueError(f"the dampened Hessian is not positive definite (percdamp {percdamp}): {exc}") from None
    inverse = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(inverse, upper=True), dead


def obs_prune(weight: torch.Tensor, hessian: torch.Tensor, *, select: Selector | None = None,
              keep: torch.Tensor | None = None, window: int | None = None, blocksize: int = 128,
              percdamp: float = 0.01, factor: tuple[torch.Tensor, torch.Tensor] | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """SparseGPT's solver for one matrix ``weight`` [rows, cols] with input Hessian ``hessian`` [cols, cols].

    Columns are processed left to right in blocks of ``blocksize``; pruning column ``i`` sets the pruned
    entries to zero and moves the error ``(w - q) / U_ii`` onto the columns to its right through row
    ``i`` of ``U`` (the OBS update), inside the block at once and to later blocks lazily, one matrix
    product per block. The mask is ``keep`` (fixed), or chosen by ``select`` from the saliency
    ``w^2 / U_jj^2`` of the weights as updated so far: per block of ``blocksize`` columns, or per
    ``window`` columns (N:M) when the solver reaches them.

    ``factor``: :func:`dampened_inverse_cholesky` of ``hessian`` if already computed (projections sharing
    their input share it). Returns ``(new weight, keep-mask, stats)`` with ``stats["obs_loss"]`` the reference's
    ``sum (w - q)^2 / U_ii^2 / 2`` and ``stats["dead_inputs"]`` the count of dead input columns.
    """
    if (select is None) == (keep is None):
        raise ValueError("give exactly one of select (adaptive mask) and keep (fixed mask)")
    if blocksize < 1:
        raise ValueError(f"blocksize must be positive, not {blocksize}")
    if window is not None and blocksize % window:
        raise ConfigError(f"blocksize {blocksize} must be a multiple of the N:M block size {window}")
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"Hessian of shape {tuple(hessian.shape)} for a weight with {cols} columns")
    w = weight.detach().float().clone()
    u, dead = factor if factor is not None else dampened_inverse_cholesky(hessian.to(w.device), percdamp)
    w[:, dead] = 0
    mask = torch.ones(rows, cols, dtype=torch.bool, device=w.device)
    loss = torch.zeros((), device=w.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        u1 = u[i1:i2, i1:i2]
        d1 = torch.diag(u1)
        err1 = torch.zeros_like(w1)
        if keep is not None:
            mask[:, i1:i2] = keep[:, i1:i2].to(w.device)
        elif window is None:
            mask[:, i1:i2] = select(w1.square() / d1.square()[None, :], i1)
        for i in range(i2 - i1):
            if select is not None and window is not None and i % window == 0:
                j = min(i + window, i2 - i1)
                mask[:, i1 + i:i1 + j] = select(w1[:, i:j].square() / d1[i:j].square()[None, :], i1 + i)
            col = w1[:, i]
            q = torch.where(mask[:, i1 + i], col, torch.zeros_like(col))
            e = (col - q) / d1[i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            w1[:, i] = q  # exact zeros where pruned, the updated weight where kept
            err1[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
        loss = loss + err1.square().sum() / 2  # (w - q)^2 / U_ii^2 / 2, summed
    return w, mask, {"obs_loss": float(loss), "dead_inputs": int(dead.sum())}


class SparseGPT(Criterion):
    """OBS saliency ``w^2 / [H^-1]_jj``, evaluated inside SparseGPT's solver on the weights as updated
    so far (adaptive mask selection). Usable only with the ``sparsegpt`` schedule."""

    name = "sparsegpt"
    description = "SparseGPT: OBS saliency w^2/[H^-1]_jj chosen inside the layer-wise OBS reconstruction"
    needs = frozenset({"calibration", "activations"})
    #: SparseGPT: 128 segments of 2,048 tokens from C4
    calibration = ("c4", 128, 2048)

    def element_scores(self, key: str, module: nn.Module) -> torch.Tensor:
        raise NotImplementedError("sparsegpt's saliency exists only inside its solver, on the weights it has "
                                  "updated so far: run it with the sparsegpt schedule at an element-level "
                                  "granularity (nm, unstructured)")

    def group_scores(self, group: GroupSet, layer: nn.Module) -> torch.Tensor:
        return self.element_scores(group.name, layer)


def _hessians(layer: nn.Module, paths: list[str], kept: LayerInputs) -> dict[str, torch.Tensor]:
    """``H = 2/N X X^T`` (float32) of the inputs of each projection in ``paths`` over the kept batches
    (N calibration tokens), with the layer's current weights. Projections that receive the same input tensor
    (q/k/v, gate/up) get the same Hessian object, computed once."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    alias: dict[str, str] = {}
    seen: dict[tuple, tuple[str, torch.Tensor]] = {}  # this batch's inputs -> the first projection reading them

    def new_batch(_module, _args):
        seen.clear()

    def make(path: str):
        def hook(_module, args):
            x = args[0]
            # the tensor is held until the next batch, so no other input can take its address meanwhile
            key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype)
            owner = alias.setdefault(path, seen.setdefault(key, (path, x))[0])
            if owner != path:
                return
            x = x.detach().reshape(-1, x.shape[-1]).float()
            sums[path] = sums.get(path, 0) + x.t() @ x
            counts[path] = counts.get(path, 0) + x.shape[0]
        return hook

    handles = [layer.register_forward_pre_hook(new_batch)]
    for path in dict.fromkeys(paths):
        # the module itself, not its base Linear: a masked LoRA wrapper computes the base product directly
        handles.append(layer.get_submodule(path).register_forward_pre_hook(make(path)))
    try:
        kept.run(layer)
    finally:
        for handle in handles:
            handle.remove()
    hessians = {p: 2.0 * sums[p] / max(counts[p], 1) for p in sums}
    return {p: hessians[alias[p]] for p in dict.fromkeys(paths) if alias.get(p) in hessians}


def _element_level(model: nn.Module, groups: list[GroupSet]) -> bool:
    """Whether every group is one weight matrix whose elements are the units (nm, unstructured)."""
    layers = decoder_layers(model)
    for group in groups:
        if len(group.members) != 1:
            return False
        weight = base_linear(layers[group.layer].get_submodule(group.members[0].module)).weight
        if group.size != weight.numel():
            return False
    return True


def _window(granularity: Granularity) -> int | None:
    """N:M granularities are selected M columns at a time; others per block."""
    m = getattr(granularity, "m", None)
    return m if granularity.fixed_ratio is not None and isinstance(m, int) and not isinstance(m, bool) else None


def _selector(granularity: Granularity, group: GroupSet, ratio: float) -> Selector:
    def select(scores: torch.Tensor, start: int) -> torch.Tensor:
        part = dataclasses.replace(group, size=scores.numel())
        keep = granularity.select([part], [scores], ratio)[0]
        if keep.shape != scores.shape or keep.dtype != torch.bool:
            raise ValueError(f"granularity '{granularity.name}' returned a {keep.dtype} mask of shape "
                             f"{tuple(keep.shape)} for scores of shape {tuple(scores.shape)}")
        return keep.to(scores.device)
    return select


def _column_keep(member, keep: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A structured unit keep-mask as an element keep-mask of the consumer (its input columns)."""
    cols = torch.ones(weight.shape[1], dtype=torch.bool, device=weight.device)
    index = member.index.to(weight.device)
    cols[index[~keep.to(weight.device)].reshape(-1)] = False
    return cols[None, :].expand_as(weight)


class SparseGPTSchedule(Schedule):
    """Layer-wise OBS reconstruction on cached calibration inputs (see the module docstring)."""

    name = "sparsegpt"
    description = ("SparseGPT's loop: layer by layer on cached inputs through the pruned layers, the remaining "
                   "weights updated by OBS (masks by the sparsegpt criterion, or any criterion's)")

    #: columns per lazy batch update
    blocksize: int = 128
    #: dampening: this fraction of the Hessian's mean diagonal is added to its diagonal
    percdamp: float = 0.01
    #: True: prune a layer's projections in stages (q/k/v, o, gate/up, down), each on inputs through the stages
    #: before it (the reference's --true-sequential); False (the reference's default): every projection on
    #: inputs from one pass of the still dense layer
    true_sequential: bool = False

    def validate(self) -> None:
        if self.blocksize < 1:
            raise ValueError(f"blocksize must be a positive number of columns, not {self.blocksize}")
        if not 0 <= self.percdamp < 1:
            raise ValueError(f"percdamp is a fraction of the mean Hessian diagonal in [0, 1), not {self.percdamp}")

    def _stages(self, paths: list[str], order: tuple[tuple[str, ...], ...] = TRUE_SEQUENTIAL) -> list[list[str]]:
        """The projections of a layer in true-sequential stages (``order``: the model family's projections that
        read the same input, in the order the layer computes them)."""
        if not self.true_sequential:
            return [paths]
        stages = [[p for p in stage if p in paths] for stage in order]
        rest = [p for p in paths if not any(p in stage for stage in order)]
        return [s for s in stages + [rest] if s]

    def run(self, model: nn.Module, criterion: Criterion, granularity: Granularity,
            ratio: float, layers: list[int], ctx: PruneContext) -> PruneOutcome:
        groups = granularity.units(model, layers)
        element = _element_level(model, groups)
        adaptive = isinstance(criterion, SparseGPT)
        if adaptive and not element:
            criterion.group_scores(groups[0], decoder_layers(model)[groups[0].layer])  # declines with the reason
        window = _window(granularity) if adaptive else None
        if window is not None and self.blocksize % window:
            raise ConfigError(f"sparsegpt: blocksize {self.blocksize} must be a multiple of M={window}")
        all_layers = decoder_layers(model)
        order = sorted(set(layers))
        masks: list[torch.Tensor] = [torch.ones(g.size, dtype=torch.bool) if not element else
                                     torch.ones_like(base_linear(all_layers[g.layer].get_submodule(
                                         g.members[0].module)).weight, dtype=torch.bool) for g in groups]
        scores: list[torch.Tensor] = []
        log = {"dead_inputs": 0, "obs_loss": {}, "layer_passes": 0}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                kept = LayerInputs(model, ctx.calibration_batches(), ctx.device, start=order[0])
                if not len(kept):
                    raise ValueError("sparsegpt needs calibration batches (the context gave none)")
                for index in range(order[0], order[-1] + 1):
                    layer = all_layers[index]
                    current = [i for i, g in enumerate(groups) if g.layer == index]
                    if current:
                        if not adaptive:
                            scores = self._fixed_masks(model, criterion, granularity, groups, masks, scores,
                                                       current, ratio, ctx)
                        losses = self._prune_layer(model, layer, index, groups, masks, current, granularity,
                                                   ratio, adaptive, element, window, kept, log)
                        log["obs_loss"][str(index)] = round(losses, 6)
                        if not (adaptive and element):  # else the solver's zeros are the masks (finalize applies them)
                            granularity.apply_masks(model, groups, masks)
                    if index < order[-1]:
                        kept.advance()
                        log["layer_passes"] += 1
                del kept
        finally:
            model.train(was_training)
        criterion.release()
        model = granularity.finalize(model, groups, masks)
        pruned = sum(int((~m).sum()) for m in masks)
        return PruneOutcome(model, groups, masks, {"units_pruned": pruned, "units_total": sum(m.numel() for m in masks),
                                                   "blocksize": self.blocksize, "percdamp": self.percdamp,
                                                   "true_sequential": self.true_sequential,
                                                   "mask_selection": "obs-adaptive" if adaptive else "criterion",
                                                   **log})

    def _fixed_masks(self, model, criterion, granularity, groups, masks, scores, current, ratio, ctx):
        """Masks of the current layer's groups from another criterion, as the sequential schedule chooses them."""
        with torch.enable_grad():
            criterion.prepare(model, ctx)
        if not scores:
            scores = checked_scores(criterion, granularity, model, groups)
        else:
            fresh = checked_scores(criterion, granularity, model, [groups[i] for i in current])
            for i, value in zip(current, fresh):
                scores[i] = value
        criterion.release()
        index = groups[current[0]].layer
        previous = [m if g.layer < index else torch.ones_like(m) for g, m in zip(groups, masks)]
        chosen = granularity.select(groups, scores, ratio, previous=previous)
        for i, (group, keep) in enumerate(zip(groups, chosen)):
            if group.layer <= index:  # as the sequential schedule: a global selection may add to earlier layers
                masks[i] = keep
        return scores

    def _prune_layer(self, model, layer, index, groups, masks, current, granularity, ratio, adaptive, element,
                     window, kept, log) -> float:
        """Solve every matrix of one decoder layer, stage by stage; returns the layer's OBS loss."""
        total = 0.0
        if element:
            by_path = {groups[i].members[0].module: i for i in current}
            order = architecture_of(model).layer_input_groups(layer)
            jobs = [[(by_path[p], p, None) for p in stage] for stage in self._stages(list(by_path), order)]
        else:  # structured: each group reconstructs its consumers' remaining input columns, in order
            jobs = [[(i, m.module, m) for m in groups[i].members if m.dim == 1] for i in current]
        for number, stage in enumerate(jobs):
            if stage:
                hessians = _hessians(layer, [path for _, path, _ in stage], kept)
                factors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # inputs shared by q/k/v, gate/up
            for i, path, member in stage:
                weight = base_linear(layer.get_submodule(path)).weight
                shared = id(hessians[path])
                if shared not in factors:
                    factors[shared] = dampened_inverse_cholesky(hessians[path].to(weight.device), self.percdamp)
                if adaptive:
                    new, keep, stats = obs_prune(weight, hessians[path], blocksize=self.blocksize,
                                                 percdamp=self.percdamp, window=window, factor=factors[shared],
                                                 select=_selector(granularity, groups[i], ratio))
                    masks[i] = keep
                else:
                    fixed = masks[i] if member is None else _column_keep(member, masks[i], weight)
                    new, _, stats = obs_prune(weight, hessians[path], keep=fixed.to(weight.device),
                                              blocksize=self.blocksize, percdamp=self.percdamp,
                                              factor=factors[shared])
                weight.copy_(new.to(weight.dtype))
                total += stats["obs_loss"]
                log["dead_inputs"] += stats["dead_inputs"]
            if not element:  # the next group's Hessian is taken with this group's units removed
                pruned_now = set(current[:number + 1])
                granularity.apply_masks(model, groups, [m if groups[j].layer < index or j in pruned_now
                                                        else torch.ones_like(m) for j, m in enumerate(masks)])
        return total


NM24 = {"n": 2, "m": 4}


@hookimpl
def benchsuite_register_criteria(register):
    register(SparseGPT)


@hookimpl
def benchsuite_register_schedules(register):
    register(SparseGPTSchedule)


@hookimpl
def benchsuite_register_methods(register):
    register(Method("sparsegpt", "sparsegpt", granularity="unstructured", schedule="sparsegpt", layers="all",
                    description="SparseGPT, unstructured (adaptive mask per 128-column block), OBS weight update"))
    register(Method("sparsegpt-2:4", "sparsegpt", granularity="nm", granularity_params=NM24, schedule="sparsegpt",
                    layers="all", description="SparseGPT at 2:4 semi-structured sparsity, OBS weight update"))
