"""Scoring for schedules: a criterion's scores checked for NaN/inf, and the running score that
training-time schedules keep for criteria that learn from training steps."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from benchsuite.api.components import Criterion, Granularity, GroupSet


def checked_scores(criterion: Criterion, granularity: Granularity, model: nn.Module,
                   groups: list[GroupSet]) -> list[torch.Tensor]:
    """The criterion's scores for ``groups``; a NaN or infinite score is an error naming the group
    (pruning by such scores would pick arbitrary units and still look like a normal run)."""
    scores = granularity.score(criterion, model, groups)
    for group, value in zip(groups, scores):
        if not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise FloatingPointError(f"scoring: criterion '{criterion.name}' gave {bad} non-finite score(s) "
                                     f"for {group.name}")
    return scores


class RunningScores:
    """The running score of every group, for a criterion with ``observes_training``.

    Call :meth:`observe` after each backward of fine-tuning (the gradients present): unless the
    criterion rejects the step (:meth:`Criterion.usable_step`), each group is scored alone (the
    transient memory is one group's worth) and folded in with :meth:`Criterion.accumulate`; a group
    whose scores are not finite keeps its running score. :meth:`scores` gives what to prune by.
    """

    def __init__(self, criterion: Criterion, granularity: Granularity, groups: list[GroupSet]) -> None:
        self.criterion, self.granularity, self.groups = criterion, granularity, groups
        self.running: dict[str, torch.Tensor] = {}
        self.observed_steps = 0
        self.skipped_steps = 0
        self.skipped_groups = 0

    def observe(self, model: nn.Module) -> None:
        if not self.criterion.usable_step(model):
            self.skipped_steps += 1
            return
        for group in self.groups:
            value = self.granularity.score(self.criterion, model, [group])[0]
            if not bool(torch.isfinite(value).all()):  # e.g. overflow in a product: keeps its running score
                self.skipped_groups += 1
                continue
            self.running[group.name] = self.criterion.accumulate(self.running.get(group.name), value)
        self.observed_steps += 1

    def scores(self, model: nn.Module) -> list[torch.Tensor]:
        """The running score of each group; a group never observed is scored on ``model`` now."""
        missing = [g for g in self.groups if g.name not in self.running]
        fresh = dict(zip((g.name for g in missing), checked_scores(self.criterion, self.granularity, model, missing)))
        return [self.running[g.name] if g.name in self.running else fresh[g.name] for g in self.groups]

    def stats(self) -> dict[str, Any]:
        """Steps that entered the running score, and the steps and group updates skipped as non-finite."""
        return {"observed_steps": self.observed_steps, "skipped_nonfinite_steps": self.skipped_steps,
                "skipped_nonfinite_group_updates": self.skipped_groups}
