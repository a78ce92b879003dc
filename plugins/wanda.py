"""Wanda (Sun et al., 2023): |W| times the L2 norm of each input feature over calibration tokens,
compared within each output row. Plus the N:M and unstructured presets of the baselines.

As in the reference code, layers are pruned in order and each layer's activations come from inputs
that went through the already-pruned layers before it (the ``sequential`` schedule); ``wanda-dense``
and ``wanda-2:4-dense`` take every layer's activations from one pass of the unpruned model instead.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from benchsuite import Criterion, Method, PruneContext, hookimpl
from benchsuite.structure import PROJECTIONS, base_linear, decoder_layers


class Wanda(Criterion):
    """Element score ``|W_ij| * ||X_j||_2`` with X the inputs of the layer over calibration tokens."""

    name = "wanda"
    description = "Wanda: |W| x input-activation L2 norm per input column (calibration forward passes)"
    needs = frozenset({"calibration", "activations"})
    #: Wanda: 128 samples of 2,048 tokens from C4
    calibration = ("c4", 128, 2048)

    def __init__(self, reduction: str = "sum") -> None:
        self.reduction = reduction
        self._sq_norms: dict[str, torch.Tensor] = {}
        self.tokens = 0

    def prepare(self, model: nn.Module, ctx: PruneContext) -> None:
        self._sq_norms.clear()
        self.tokens = 0
        handles = []
        for i, layer in enumerate(decoder_layers(model)):
            for path in PROJECTIONS:
                handles.append(base_linear(layer.get_submodule(path)).register_forward_pre_hook(
                    self._hook(f"layers.{i}.{path}")))
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for batch in tqdm(list(ctx.calibration_batches()), desc="Wanda: activations", leave=False):
                    model(batch.to(device))
                    self.tokens += batch.numel()
        finally:
            for handle in handles:
                handle.remove()
            model.train(was_training)

    def _hook(self, key: str):
        def hook(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            self._sq_norms[key] = self._sq_norms.get(key, 0) + x.square().sum(0)
        return hook

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
