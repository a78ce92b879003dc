"""LLM-Pruner (Ma et al., NeurIPS 2023): Taylor importance from full gradients of the pretrained
weights on a few calibration samples, one-shot structured pruning, LoRA recovery.

With ``g = dL/dW`` averaged over the calibration samples and ``H = mean of per-sample g^2``
(diagonal Fisher approximation of the Hessian):

- ``element1``: element score ``|W * g|``, summed over each unit's rows/columns
- ``element2``: element score ``|W * g - 1/2 * W * H * W|``
- ``vector``:  ``|sum of W * g over a row (or column)|``, summed over the unit's rows/columns per
  module (the reference's vector-wise salience, reduced over ``head_dim`` for a head)

Per-module unit scores are reduced across the coupled modules with ``reduction`` (sum, mean, max,
prod). Unlike LoRAPrune this holds a gradient for every pretrained weight: that is its memory cost,
and it is measured, not hidden.

Where the memory goes (what makes a 7B model fit one 80 GB GPU in bfloat16, as the reference does):
the gradients stay in the model's dtype (each module's is converted to float32 only while it is
scored); ``element2`` adds one float32 accumulator for the Fisher diagonal, filled by a per-sample
pass, and takes ``g`` from a second, batched pass (the gradient of the mean loss: the mean of the
per-sample gradients), as the reference does, instead of a second float32 accumulator. At 7B in
bfloat16: weights 13.5 GB + gradients 13.5 GB (+ 27 GB Fisher for ``element2``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from benchsuite import (
    PAPER_LORA,
    Criterion,
    GroupSet,
    Method,
    PruneContext,
    Reduction,
    base_linear,
    calibrate,
    combine,
    hookimpl,
    linear_modules,
    module_key,
    tensor_bytes,
)

BENCHSUITE_API = "2.0"


class Taylor(Criterion):
    """First/second-order Taylor importance with full weight gradients (LLM-Pruner)."""

    name = "taylor"
    description = "LLM-Pruner: Taylor importance from full weight gradients (element1, element2, vector)"
    needs = frozenset({"calibration", "weight_grad"})
    #: LLM-Pruner: 10 samples of 64 tokens (from bookcorpus, which can't be had offline: wiki's calibration part)
    calibration = ("wiki", 10, 64)

    order: Literal["element1", "element2", "vector"] = "element1"
    reduction: Reduction = "sum"

    def setup(self) -> None:
        self._grad: dict[str, torch.Tensor] = {}
        self._fisher: dict[str, torch.Tensor] = {}

    def prepare(self, model: nn.Module, ctx: PruneContext) -> None:
        """Backward over the calibration samples with every pretrained weight requiring grad."""
        self.release()
        targets = dict(linear_modules(model))
        samples = sum(len(b) for b in ctx.calibration_batches())

        def per_sample() -> None:  # this sample's squared gradient, for the Fisher diagonal (float32)
            for key, linear in targets.items():
                square = linear.weight.grad.detach().float().square().div_(samples)  # a new tensor
                if key in self._fisher:
                    self._fisher[key].add_(square)
                else:
                    self._fisher[key] = square

        def collect() -> None:
            # held in the model's dtype (a float32 copy of a bf16 model's gradients doubled them at 7B);
            # each module's is converted when it is scored
            self._grad = {key: linear.weight.grad.detach() for key, linear in targets.items()}
            ctx.notes["weight_grad_bytes"] = (tensor_bytes(p.grad for p in model.parameters())
                                              + tensor_bytes(self._fisher.values()))

        if self.order == "element2":  # per-sample gradients for the Fisher diagonal, then g as for element1
            calibrate(model, ctx, desc="Taylor: per-sample gradients (Fisher)", grad="weights", per_sample=True,
                      after_backward=per_sample)
        # the gradient of the mean loss, accumulated batch by batch
        calibrate(model, ctx, desc="Taylor: gradients", grad="weights", collect=collect)

    def _gradient(self, key: str) -> torch.Tensor:
        if key not in self._grad:
            raise RuntimeError("the taylor criterion scores only after prepare() computed gradients")
        return self._grad[key].float()

    def element_scores(self, key: str, module: nn.Module) -> torch.Tensor:
        if self.order == "vector":
            raise ValueError("vector-wise Taylor scores whole groups only: use order element1 or element2 "
                             "with N:M or unstructured granularities")
        weight = base_linear(module).weight.detach().float()
        first = weight * self._gradient(key)
        if self.order == "element2":
            return (first - 0.5 * weight * self._fisher[key] * weight).abs()
        return first.abs()

    def group_scores(self, group: GroupSet, layer: nn.Module) -> torch.Tensor:
        if self.order != "vector":
            return super().group_scores(group, layer)
        vectors = []
        for member in group.members:
            key = module_key(group.layer, member.module)
            product = base_linear(layer.get_submodule(member.module)).weight.detach().float() * self._gradient(key)
            product = product if member.dim == 0 else product.t()
            per_row = product.sum(1).abs()  # |sum W*g| of each row (or column) of the module, as the reference
            vectors.append(per_row[member.index.reshape(-1)].reshape(member.index.shape).sum(1))
        return combine(vectors, self.reduction, self.normalize)

    def release(self) -> None:
        self._grad.clear()
        self._fisher.clear()


LORA = PAPER_LORA  # the papers' LoRA recovery settings


@hookimpl
def benchsuite_register_criteria(register):
    register(Taylor)


@hookimpl
def benchsuite_register_methods(register):
    common = {"layers": "llm-pruner"}
    register(Method("llm-pruner", "taylor", criterion_params={"order": "element1"}, recovery=LORA, **common,
                    description="LLM-Pruner: Taylor element-wise first order, one-shot, LoRA recovery"))
    register(Method("llm-pruner-element2", "taylor", criterion_params={"order": "element2"}, recovery=LORA,
                    **common, description="LLM-Pruner element-wise second order (Fisher diagonal), LoRA recovery"))
    register(Method("llm-pruner-2:4", "taylor", criterion_params={"order": "element1"}, granularity="nm",
                    granularity_params={"n": 2, "m": 4}, layers="all", recovery=LORA,
                    description="Taylor element-wise first order at 2:4, one-shot, LoRA recovery through the mask"))
    register(Method("llm-pruner-vector", "taylor", criterion_params={"order": "vector"}, recovery=LORA,
                    **common, description="LLM-Pruner vector-wise |sum W*dW| per row, one-shot, LoRA recovery"))
    register(Method("llm-pruner-kv", "taylor", criterion_params={"order": "element1"}, recovery=LORA,
                    granularity_params={"attention": "kv-groups"}, **common,
                    description="LLM-Pruner as its Llama-3 code: under GQA whole key/value groups (with their "
                    "query heads) are the attention units"))
