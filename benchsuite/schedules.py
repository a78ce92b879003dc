"""Built-in schedules. ``one-shot``: score once, prune once."""

from __future__ import annotations

from torch import nn

from .api import Criterion, Granularity, PruneContext, PruneOutcome, Schedule


class OneShot(Schedule):
    """Prepare the criterion (calibration if it needs it), score, select, remove."""

    name = "one-shot"
    description = "score once on the unpruned model, prune to the target ratio, finalize"

    def __init__(self) -> None:
        pass

    def run(self, model: nn.Module, criterion: Criterion, granularity: Granularity,
            ratio: float, layers: list[int], ctx: PruneContext) -> PruneOutcome:
        criterion.prepare(model, ctx)
        groups = granularity.units(model, layers)
        scores = granularity.score(criterion, model, groups)
        masks = granularity.select(groups, scores, ratio)
        model = granularity.finalize(model, groups, masks)
        pruned = sum(int((~m).sum()) for m in masks)
        total = sum(m.numel() for m in masks)
        return PruneOutcome(model, groups, masks, {"units_pruned": pruned, "units_total": total})
