"""LoRAPrune (Zhang et al., ACL Findings 2024), the reference plugin.

The LoRA-guided criterion estimates the gradient of each pretrained weight from the LoRA factors
and their gradients only, so no gradient of a pretrained weight is ever computed:

    W = W0 + s * B @ A          G ~= dB @ A + B @ dA - dB @ dA
    I = | G * (W0 + s * B @ A) |        (first-order Taylor with the estimated gradient)

``G`` is minus the change of ``B @ A`` after one SGD step of size 1 on A and B:
``-( (B - dB)(A - dA) - B A )``. Element importance is summed over each unit's rows/columns,
each module's vector is divided by its L2 norm (so the constant ``s`` cancels), and q/k/v/o
(gate/up/down) vectors are added. Scores are averaged over optimizer steps:
``I_bar = beta * I_bar + (1 - beta) * I_now``, skipping steps with NaN.

Differences from the reference code (docs/loraprune-audit.md has all of them): head count and head_dim come
from the model (not 32/128), GQA groups are handled by the structured granularity, ``init_ratio == ratio``
prunes, the target is reached exactly (the reference stops just short of it: 15 of 32 heads on LLaMA-7B at
0.5), and the scores are taken from the accumulated gradients before clipping (the reference clips first;
the per-module normalisation cancels a common scale, so only the second-order ``dB @ dA`` term's weight moves).
"""

from __future__ import annotations

import torch
from torch import nn

from benchsuite import (
    PAPER_LORA,
    Criterion,
    Method,
    PruneContext,
    Reduction,
    base_linear,
    calibrate,
    decoder_layers,
    hookimpl,
    layer_paths,
    module_key,
)

BENCHSUITE_API = "2.0"


def lora_factors(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, float, str]:
    """(A, B, scaling, adapter) of a peft LoRA Linear's active adapter."""
    if not hasattr(module, "lora_A") or not module.lora_A:
        raise ValueError(f"{type(module).__name__} has no LoRA adapter: the 'lora' criterion needs "
                         "a LoRA-wrapped model (a method with LoRA)")
    adapter = module.active_adapters[0] if hasattr(module, "active_adapters") else next(iter(module.lora_A))
    return module.lora_A[adapter].weight, module.lora_B[adapter].weight, module.scaling[adapter], adapter


def estimated_gradient(a: torch.Tensor, b: torch.Tensor, da: torch.Tensor | None,
                       db: torch.Tensor | None) -> torch.Tensor:
    """LoRAPrune's estimate of dL/dW from A [r, in], B [out, r] and their gradients."""
    a, b = a.detach().float(), b.detach().float()
    da = torch.zeros_like(a) if da is None else da.detach().float()
    db = torch.zeros_like(b) if db is None else db.detach().float()
    return db @ (a - da) + b @ da  # = dB A + B dA - dB dA, two matmuls instead of three


class LoRAGuided(Criterion):
    """LoRA-guided first-order importance with a moving average over training steps."""

    name = "lora"
    description = "LoRAPrune: |G_est * (W0 + sBA)| from LoRA gradients only, L2-normalised, EMA over steps"
    needs = frozenset({"lora_grad"})
    observes_training = True

    beta: float = 0.9
    normalize: bool = True
    reduction: Reduction = "sum"

    def validate(self) -> None:
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), not {self.beta}")

    def setup(self) -> None:
        #: one-shot use: the LoRA gradients (dA, dB) accumulated over calibration batches, by module key
        self._grads: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}

    # -- element scores from LoRA gradients ------------------------------------------------------
    def element_scores(self, key: str, module: nn.Module) -> torch.Tensor:
        a, b, scaling, _ = lora_factors(module)
        da, db = self._grads.get(key, (a.grad, b.grad))  # calibration's, or the live training step's
        importance = estimated_gradient(a, b, da, db)
        weight = torch.addmm(base_linear(module).weight.detach().float(), b.detach().float(), a.detach().float(),
                             alpha=scaling)  # W0 + s B A
        return importance.mul_(weight).abs_()

    # -- training-time use: moving average over optimizer steps (kept by the schedule) -----------
    def usable_step(self, model: nn.Module) -> bool:
        """A step whose LoRA gradients hold a NaN/inf is skipped, as in the reference."""
        return all(bool(torch.isfinite(p.grad).all())
                   for n, p in model.named_parameters() if "lora_" in n and p.grad is not None)

    def accumulate(self, previous: torch.Tensor | None, current: torch.Tensor) -> torch.Tensor:
        """``I_bar = beta * I_bar + (1 - beta) * I_now`` (the first step: ``(1 - beta) * I_now``)."""
        if previous is None:
            return current.mul_(1.0 - self.beta)
        return previous.mul_(self.beta).add_(current, alpha=1.0 - self.beta)

    # -- one-shot use: gradients accumulated over calibration batches ----------------------------
    def prepare(self, model: nn.Module, ctx: PruneContext) -> None:
        """Accumulate LoRA gradients over the calibration batches (pretrained weights stay frozen)."""
        self._grads.clear()
        wrappers = {module_key(i, path): layer.get_submodule(path)
                    for i, layer in enumerate(decoder_layers(model)) for path in layer_paths(model, layer)}

        def collect() -> None:
            for key, module in wrappers.items():
                a, b, _, _ = lora_factors(module)
                self._grads[key] = (a.grad, b.grad)

        calibrate(model, ctx, desc="LoRA gradients", grad="lora", train_mode=True, collect=collect)

    def release(self) -> None:
        self._grads.clear()


LORA = PAPER_LORA  # the papers' LoRA recovery settings


@hookimpl
def benchsuite_register_criteria(register):
    register(LoRAGuided)


@hookimpl
def benchsuite_register_methods(register):
    register(Method(
        "loraprune", "lora", schedule="iterative",
        schedule_params={"init_ratio": 0.0, "prune_freq": "auto", "warmup": 0.1, "cooldown": 0.1},
        layers="loraprune", recovery=LORA,
        description="LoRAPrune: LoRA-guided importance, pruned iteratively while LoRA fine-tunes"))
    register(Method(
        "loraprune-2:4", "lora", granularity="nm", granularity_params={"n": 2, "m": 4}, schedule="iterative",
        schedule_params={"init_ratio": 0.0, "prune_freq": "auto", "warmup": 0.1, "cooldown": 0.1},
        layers="all", recovery=LORA,
        description="LoRAPrune at 2:4: LoRA-guided element importance, N:M masks tightened while LoRA trains"))
    register(Method(
        "loraprune-oneshot", "lora", layers="loraprune", recovery=LORA,
        description="LoRA-guided importance from calibration batches, pruned once, then LoRA fine-tuning"))
