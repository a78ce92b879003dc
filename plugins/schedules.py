"""Built-in plugin: the schedules. ``one-shot``: score once, prune once. ``sequential``: layer by layer, each
layer scored on inputs that went through the already-pruned layers before it (Wanda's and
SparseGPT's loop). ``iterative``: prune a little more every few steps while LoRA fine-tunes."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from benchsuite import LayerInputs, hookimpl
from benchsuite.api import Criterion, Granularity, GroupSet, PruneContext, PruneOutcome, Schedule
from benchsuite.pruning.scoring import RunningScores, checked_scores

BENCHSUITE_API = "2.0"


def finalized(model: nn.Module, granularity: Granularity, groups: list[GroupSet], masks: list[torch.Tensor],
              **log) -> PruneOutcome:
    """Let the granularity finalize the pruned model; the outcome with the units pruned."""
    model = granularity.finalize(model, groups, masks)
    pruned = sum(int((~m).sum()) for m in masks)
    return PruneOutcome(model, groups, masks, {"units_pruned": pruned, "units_total": sum(m.numel() for m in masks),
                                               **log})


class OneShot(Schedule):
    """Prepare the criterion (calibration if it needs it), score, select, remove."""

    name = "one-shot"
    description = "score once on the unpruned model, prune to the target ratio, finalize"

    def run(self, model: nn.Module, criterion: Criterion, granularity: Granularity,
            ratio: float, layers: list[int], ctx: PruneContext) -> PruneOutcome:
        criterion.prepare(model, ctx)
        groups = granularity.units(model, layers)
        scores = checked_scores(criterion, granularity, model, groups)
        criterion.release()
        return finalized(model, granularity, groups, granularity.select(groups, scores, ratio))


class Sequential(Schedule):
    """Prune one layer at a time, in order: before each layer the criterion prepares again (e.g.
    gathers activations) on the model whose earlier layers are already pruned, as Wanda's reference
    code does. Only the current layer is scored again (earlier layers keep their masks whatever their
    scores, later ones are reset). The per-layer counts are those of a one-shot prune at the same ratio
    (the allocation does not depend on scores).

    Costs one calibration pass per pruned layer: of the whole model, or, for a ``layer_local`` criterion
    (Wanda), of that layer alone on its inputs kept from the layer before (``LayerInputs``; the same
    inputs bit for bit, a pass of one layer instead of all). With a ``local_selection`` granularity
    (N:M, unstructured) only the current layer's masks are selected."""

    name = "sequential"
    description = "layer by layer: each layer scored on calibration inputs through the already-pruned layers"

    def run(self, model: nn.Module, criterion: Criterion, granularity: Granularity,
            ratio: float, layers: list[int], ctx: PruneContext) -> PruneOutcome:
        groups = granularity.units(model, layers)
        order = sorted(set(layers))
        local = granularity.local_selection
        kept: LayerInputs | None = None
        masks: list[torch.Tensor | None] = [None] * len(groups)
        scores: list[torch.Tensor | None] = [None] * len(groups)
        full_passes = 0
        for layer in order:
            current = [i for i, g in enumerate(groups) if g.layer == layer]
            if criterion.layer_local and (local or full_passes):
                if kept is None:
                    kept = LayerInputs(model, ctx.calibration_batches(), ctx.device, start=order[0])
                kept.advance(to=layer)  # through the finished (pruned) layers before this one
                with kept.active():
                    criterion.prepare(model, ctx)
            else:
                criterion.prepare(model, ctx)
                full_passes += 1
            # select needs a score per group it is given: all of them once, unless selection is local
            todo = current if local or all(s is not None for s in scores) else range(len(groups))
            fresh = checked_scores(criterion, granularity, model, [groups[i] for i in todo])
            for i, value in zip(todo, fresh):
                scores[i] = value
            criterion.release()
            if local:
                chosen = granularity.select([groups[i] for i in current], [scores[i] for i in current], ratio,
                                            previous=None)
                for i, keep in zip(current, chosen):
                    masks[i] = keep
                granularity.apply_masks(model, [groups[i] for i in current], [masks[i] for i in current])
            else:
                previous = None if masks[0] is None else masks
                chosen = granularity.select(groups, scores, ratio, previous=previous)
                masks = [keep if g.layer <= layer else torch.ones_like(keep) for g, keep in zip(groups, chosen)]
                del chosen
                granularity.apply_masks(model, groups, masks)
        return finalized(model, granularity, groups, masks, calibration_passes=len(order),
                         whole_model_passes=full_passes)


def cubic_ratio(step: int, total: int, init: float, final: float, warmup: float = 0.1,
                cooldown: float = 0.1) -> float:
    """LoRAPrune's schedule: ``init`` during the warm-up fraction of steps, ``final`` during the
    cool-down fraction, in between ``final + (init - final) * (1 - progress)^3``."""
    start = round(warmup * total)
    end = total - round(cooldown * total)
    if step < start:
        return init
    if step >= end or end <= start:
        return final
    progress = (step - start) / (end - start)
    return final + (init - final) * (1.0 - progress) ** 3


class Iterative(Schedule):
    """Prune while fine-tuning with LoRA: every ``prune_freq`` optimizer steps the ratio follows the
    cubic curve towards the target and the lowest-scoring units are masked (cumulatively); LoRA
    keeps training on the masked model, which is the recovery. The target is reached at the start of
    the cool-down (also where that step is not a multiple of ``prune_freq``), so the last removals
    always get the cool-down's steps to recover. At the end the masks become physical removal.
    ``init_ratio == ratio`` gives a one-shot prune followed by fine-tuning."""

    name = "iterative"
    description = "cubic ratio schedule, pruning every prune_freq steps while LoRA fine-tunes"
    trains = True

    init_ratio: float = 0.0
    prune_freq: int | Literal["auto"] = "auto"
    warmup: float = 0.1
    cooldown: float = 0.1

    def validate(self) -> None:
        if self.prune_freq != "auto" and self.prune_freq < 1:
            raise ValueError(f"prune_freq must be a positive integer or 'auto', not {self.prune_freq!r}")
        if not (0 <= self.warmup < 1 and 0 <= self.cooldown < 1 and self.warmup + self.cooldown < 1):
            raise ValueError("warmup and cooldown are fractions of the steps and must leave room between them")

    def frequency(self, total: int) -> int:
        """``auto``: the reference's 10 steps, fewer on short budgets (about 20 pruning events)."""
        return self.prune_freq if isinstance(self.prune_freq, int) else max(1, min(10, total // 20))

    def ratio_at(self, step: int, total: int, target: float) -> float:
        return cubic_ratio(step, total, min(self.init_ratio, target), target, self.warmup, self.cooldown)

    def run(self, model: nn.Module, criterion: Criterion, granularity: Granularity,
            ratio: float, layers: list[int], ctx: PruneContext) -> PruneOutcome:
        if ctx.finetune is None or ctx.train_steps < 1:
            raise ValueError("the iterative schedule needs LoRA fine-tuning steps (a method with LoRA)")
        total, freq = ctx.train_steps, self.frequency(ctx.train_steps)
        groups = granularity.units(model, layers)
        masks: list[torch.Tensor] | None = None  # nothing pruned yet
        history: list[dict] = []
        legacy = type(criterion).observe is not Criterion.observe  # API 1: the criterion averages itself
        running = RunningScores(criterion, granularity, groups) if criterion.observes_training and not legacy else None
        if not criterion.observes_training:
            criterion.prepare(model, ctx)

        def prune_to(target: float, step: int) -> None:
            nonlocal masks
            scores = running.scores(model) if running else checked_scores(criterion, granularity, model, groups)
            masks = granularity.select(groups, scores, target, previous=masks)
            granularity.apply_masks(model, groups, masks)
            pruned = sum(int((~m).sum()) for m in masks)
            history.append({"step": step, "ratio": round(target, 4), "units_pruned": pruned})

        def before_step(step: int, model: nn.Module) -> None:
            if running is not None:
                running.observe(model)
            elif legacy:
                criterion.observe(model, granularity, groups)

        cooldown_start = total - round(self.cooldown * total)

        def after_step(step: int, model: nn.Module) -> None:
            done = step + 1
            if (done % freq == 0 or done == cooldown_start) and done < total:
                target = self.ratio_at(done, total, ratio)
                if target > 0:
                    prune_to(target, done)

        train = ctx.finetune(model, total, before_step=before_step, after_step=after_step,
                             desc="LoRAPrune: fine-tune + prune")
        before = history[-1]["units_pruned"] if history else 0
        prune_to(ratio, total)  # the target exactly; a no-op unless the cool-down has no steps (tiny budgets)
        at_target = next(e["step"] for e in history if e["units_pruned"] == history[-1]["units_pruned"])
        criterion.release()
        model = granularity.finalize(model, groups, masks)
        log = {"units_pruned": history[-1]["units_pruned"], "units_total": sum(g.size for g in groups),
               "prune_freq": freq, "prune_events": history, "train": train,
               "steps_on_final_masks": total - at_target,
               "units_pruned_after_training": history[-1]["units_pruned"] - before}
        if running is not None:
            log["training_scores"] = running.stats()
        return PruneOutcome(model, groups, masks, log)


@hookimpl
def benchsuite_register_schedules(register):
    register(OneShot)
    register(Sequential)
    register(Iterative)
