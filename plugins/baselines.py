"""Built-in plugin: magnitude (L1/L2) and random criteria, and their methods."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from benchsuite import Criterion, GroupSet, Method, PruneContext, Reduction, base_linear, hookimpl

BENCHSUITE_API = "2.0"


class Magnitude(Criterion):
    """Weight magnitude: element score ``|w|^p``; a unit scores ``||w_unit||_p^p`` per module,
    reduced across coupled modules (``sum`` by default)."""

    name = "magnitude"
    description = "weight magnitude |w|^p (p=1: L1, p=2: L2), no data needed"

    p: Literal[1, 2] = 2
    reduction: Reduction = "sum"

    def element_scores(self, key: str, module: nn.Module) -> torch.Tensor:
        weight = base_linear(module).weight.detach()
        return weight.abs() if self.p == 1 else weight.float().square()


class Random(Criterion):
    """Uniform random scores, reproducible from the run's seed."""

    name = "random"
    description = "uniform random scores (seeded): the floor any criterion must beat"

    def setup(self) -> None:
        self._generator = torch.Generator().manual_seed(0)

    def prepare(self, model: nn.Module, ctx: PruneContext) -> None:
        self._generator = torch.Generator().manual_seed(ctx.seed)

    def element_scores(self, key: str, module: nn.Module) -> torch.Tensor:
        shape = base_linear(module).weight.shape
        return torch.rand(shape, generator=self._generator)

    def group_scores(self, group: GroupSet, layer: nn.Module) -> torch.Tensor:
        return torch.rand(group.size, generator=self._generator)


@hookimpl
def benchsuite_register_criteria(register):
    register(Magnitude)
    register(Random)


@hookimpl
def benchsuite_register_methods(register):
    register(Method("magnitude-l1", "magnitude", criterion_params={"p": 1},
                    description="structured L1 magnitude of each head/channel group, one-shot"))
    register(Method("magnitude-l2", "magnitude", criterion_params={"p": 2},
                    description="structured L2 magnitude of each head/channel group, one-shot"))
    register(Method("random", "random", description="structured random pruning, one-shot (seeded)"))
    register(Method("magnitude", "magnitude", criterion_params={"p": 1}, granularity="unstructured", layers="all",
                    description="unstructured |W| per weight matrix, one-shot"))
    register(Method("magnitude-2:4", "magnitude", criterion_params={"p": 1}, granularity="nm",
                    granularity_params={"n": 2, "m": 4}, layers="all",
                    description="|W| at 2:4 semi-structured sparsity, one-shot"))
