"""Allocations: how a method's pruning ratio is spread over the layers it prunes.

Every method spreads its ratio uniformly over its layers unless an :class:`Allocation` says otherwise. An allocation
gets the units the granularity made (one group per weight matrix at the element granularities), their parameter
counts and, where it asks for them (``needs_scores``), the criterion's scores of the unpruned model, and returns one
ratio per layer whose parameter-weighted mean is the target: OWL gives layers with more outlier scores a lower
ratio, a profile gives each layer its own. Plugins register allocations with ``benchsuite_register_allocations``
(the built-ins are in ``benchsuite_plugins.allocations``); ``--allocation NAME[:k=v,...]`` picks one for a run.
The unstructured and structured granularities apply them; N:M fixes each row's density, so it refuses any but
``uniform``.

May import: :mod:`benchsuite.util` and the other modules of :mod:`benchsuite.api`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from benchsuite.api.components import GroupSet, Parametrized

#: the allocation every method uses unless told otherwise (its runs' settings do not name it)
UNIFORM = "uniform"


class Allocation(Parametrized, ABC):
    """A rule spreading a target ratio over layers (parameters declared like a criterion's)."""

    #: the criterion's scores of the unpruned model are computed for :meth:`layer_ratios` (one scoring pass,
    #: with the criterion's calibration, before the schedule runs)
    needs_scores: ClassVar[bool] = False

    @classmethod
    def kind(cls) -> str:
        return "allocation"

    @abstractmethod
    def layer_ratios(self, layers: list[int], ratio: float, sizes: dict[int, int],
                     scores: dict[int, list[torch.Tensor]] | None) -> dict[int, float]:
        """The ratio of each layer of ``layers`` (pruned fraction of its prunable parameters): ``sizes`` are the
        layers' prunable parameters, ``scores`` each layer's element scores (every matrix of it) where
        ``needs_scores``. The size-weighted mean must be ``ratio`` (:func:`check_ratios` checks it)."""


def check_ratios(name: str, ratios: dict[int, float], sizes: dict[int, int], ratio: float,
                 tolerance: float = 1e-6) -> dict[int, float]:
    """``ratios`` if every layer has one in [0, 1) and their size-weighted mean is ``ratio``; else ValueError."""
    missing = sorted(set(sizes) - set(ratios))
    if missing:
        raise ValueError(f"allocation '{name}' gave no ratio for layers {missing}")
    bad = {layer: r for layer, r in ratios.items() if not 0.0 <= r < 1.0}
    if bad:
        raise ValueError(f"allocation '{name}' gave ratios outside [0, 1): {bad}")
    total = sum(sizes.values())
    mean = sum(ratios[layer] * size for layer, size in sizes.items()) / total
    if abs(mean - ratio) > tolerance:
        raise ValueError(f"allocation '{name}': the layers' ratios average {mean:.6f}, not the target {ratio:.6f}")
    return {layer: float(ratios[layer]) for layer in sizes}


def layer_sizes(groups: list[GroupSet], sizes: list[int]) -> dict[int, int]:
    """Prunable parameters per layer from the groups and each group's parameters."""
    out: dict[int, int] = {}
    for group, size in zip(groups, sizes):
        out[group.layer] = out.get(group.layer, 0) + size
    return out
