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

Differences from the reference code: head count and head_dim come from the model (not 32/128),
GQA groups are handled by the structured granularity, and ``init_ratio == ratio`` prunes.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from benchsuite import Criterion, Granularity, GroupSet, Method, PruneContext, hookimpl
from benchsuite.structure import base_linear


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
    normalize = True
    reduction = "sum"

    def __init__(self, beta: float = 0.9, normalize: bool = True, reduction: str = "sum") -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), not {beta}")
        self.beta = beta
        self.normalize = normalize
        self.reduction = reduction
        self._average: dict[str, torch.Tensor] = {}
        self._instant = False
        self.observed_steps = 0
        self.skipped_steps = 0
        self.skipped_groups = 0

    # -- element scores from the current LoRA gradients ------------------------------------------
    def element_scores(self, key: str, module: nn.Module) -> torch.Tensor:
        if not self._instant and key in self._average:  # element-level granularities: the average
            return self._average[key]
        a, b, scaling, _ = lora_factors(module)
        importance = estimated_gradient(a, b, a.grad, b.grad)
        weight = torch.addmm(base_linear(module).weight.detach().float(), b.detach().float(), a.detach().float(),
                             alpha=scaling)  # W0 + s B A
        return importance.mul_(weight).abs_()

    def group_scores(self, group: GroupSet, layer: nn.Module) -> torch.Tensor:
        if not self._instant and group.name in self._average:
            return self._average[group.name]
        return super().group_scores(group, layer)

    # -- one-shot use: gradients accumulated over calibration batches ----------------------------
    def prepare(self, model: nn.Module, ctx: PruneContext) -> None:
        """Accumulate LoRA gradients over the calibration batches (pretrained weights stay frozen)."""
        self._average.clear()
        model.zero_grad(set_to_none=True)
        device = next(model.parameters()).device
        batches = list(ctx.calibration_batches())
        total = sum(len(b) for b in batches)
        was_training = model.training
        model.train()
        for batch in tqdm(batches, desc="LoRA gradients", leave=False):
            batch = batch.to(device)
            loss = model(input_ids=batch, labels=batch).loss * (len(batch) / total)
            loss.backward()
        model.train(was_training)

    # -- training-time use: moving average at every optimizer step --------------------------------
    def observe(self, model: nn.Module, granularity: Granularity, groups: list[GroupSet]) -> None:
        """Update the moving average from the current LoRA gradients: a step with a NaN/inf gradient is
        skipped, a group whose importance overflows keeps its average; both are counted (:meth:`stats`).

        Scores are computed one group at a time, so the transient memory is one module's worth."""
        grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.grad is not None]
        if any(not torch.isfinite(g).all() for g in grads):
            self.skipped_steps += 1
            return
        self._instant = True
        try:
            for group in groups:  # one group at a time: the transient memory is one module's worth
                value = granularity.score(self, model, [group])[0]
                if not torch.isfinite(value).all():  # overflow in the product: this group keeps its average
                    self.skipped_groups += 1
                    continue
                previous = self._average.get(group.name)
                self._average[group.name] = (value.mul_(1.0 - self.beta) if previous is None
                                             else previous.mul_(self.beta).add_(value, alpha=1.0 - self.beta))
        finally:
            self._instant = False
        self.observed_steps += 1

    def stats(self) -> dict[str, int]:
        """Optimizer steps whose importance entered the moving average, and those skipped as non-finite."""
        return {"observed_steps": self.observed_steps, "skipped_nonfinite_steps": self.skipped_steps,
                "skipped_nonfinite_group_updates": self.skipped_groups}


LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "lr": 1e-4}


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
