"""Wanda (Sun et al., 2023): |W| times the L2 norm of each input feature over calibration tokens,
compared within each output row. Plus the N:M and unstructured presets of the baselines.

As in the reference code, layers are pruned in order and each layer's activations come from inputs
that went through the already-pruned layers before it (the ``sequential`` schedule); ``wanda-dense``
and ``wanda-2:4-dense`` take every layer's activations from one pass of the unpruned model instead.
"""

from __future__ import annotations

import torch
from torch import nn

from benchsuite import Criterion, Method, PruneContext, Reduction, base_linear, calibrate, hookimpl, linear_modules

BENCHSUITE_API = "2.0"


class Wanda(Criterion):
    """Element score ``|W_ij| * ||X_j||_2`` with X the inputs of the layer over calibration tokens."""

    name = "wanda"
    description = "Wanda: |W| x input-activation L2 norm per input column (calibration forward passes)"
    needs = frozenset({"calibration", "activations"})
    #: its statistics of a layer are that layer's input norms: a pass of that layer is enough
    layer_local = True
    #: Wanda: 128 samples of 2,048 tokens from C4
    calibration = ("c4", 128, 2048)

    reduction: Reduction = "sum"

    def setup(self) -> None:
        self._sq_norms: dict[str, torch.Tensor] = {}

    def prepare(self, model: nn.Module, ctx: PruneContext) -> None:
        self._sq_norms.clear()
        calibrate(model, ctx, desc="Wanda: activations", inputs={key: self._add for key, _ in linear_modules(model)})

    def _add(self, key: str, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self._sq_norms[key] = self._sq_norms.get(key, 0) + x.square().sum(0)

    def element_scores(self, key: str, module: nn.Module) -> torch.Tensor:
        if key not in self._sq_norms:
            raise RuntimeError("the wanda criterion scores only after prepare() saw calibration inputs")
        weight = base_linear(module).weight.detach().float()
        return weight.abs() * self._sq_norms[key].sqrt()[None, :]

    def release(self) -> None:
        self._sq_norms.clear()


NM24 = {"n": 2, "m": 4}


@hookimpl
def benchsuite_register_criteria(register):
    register(Wanda)


@hookimpl
def benchsuite_register_methods(register):
    row = {"per_row": True}
    register(Method("wanda", "wanda", granularity="unstructured", granularity_params=row, layers="all",
                    schedule="sequential", description="Wanda, unstructured per output row, layer by layer"))
    register(Method("wanda-2:4", "wanda", granularity="nm", granularity_params=NM24, layers="all",
                    schedule="sequential", description="Wanda at 2:4 semi-structured sparsity, layer by layer"))
    register(Method("wanda-dense", "wanda", granularity="unstructured", granularity_params=row, layers="all",
                    description="Wanda, unstructured per row, activations from one pass of the unpruned model"))
    register(Method("wanda-2:4-dense", "wanda", granularity="nm", granularity_params=NM24, layers="all",
                    description="Wanda at 2:4, activations from one pass of the unpruned model"))
