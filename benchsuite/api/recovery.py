"""Recoveries: how a pruned model recovers, registered by plugins through ``benchsuite_register_recoveries`` (the
built-ins ``lora``, ``distill``, ``full`` and ``none`` are in ``plugins/recoveries.py``). Since plugin API 2.4.

Every method of a comparison recovers at the profile's budget: the same optimizer steps, micro-batch, length,
gradient accumulation, learning-rate schedule and data. A recovery chooses what trains and on what loss within the
suite's training loop (:mod:`benchsuite.running.finetune`): LoRA adapters (merged after) or every remaining weight
(pruned zeros kept), the language-model loss or logit distillation from the dense model, and its hyper-parameters.
``--recovery NAME[:k=v,...]`` (or ``METHOD+NAME:k=v``) picks one; its parameters are declared like a criterion's.

May import: :mod:`benchsuite.util` and the other modules of :mod:`benchsuite.api`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from benchsuite.api.components import Parametrized

#: the settings of the suite's training loop a recovery may give (``LoRAConfig`` fields; budget keys belong to the
#: profile): LoRA's shape and optimizer, distillation, and full fine-tuning
TRAINING_KEYS = ("r", "alpha", "dropout", "lr", "targets", "weight_decay", "max_grad_norm", "distill_temperature",
                 "distill_alpha", "full")


class Recovery(Parametrized):
    """How a pruned model recovers at the profile's budget.

    ``trains`` says what the loop trains: ``"lora"`` (adapters: also what a method that prunes with LoRA uses),
    ``"weights"`` (every remaining weight; refused for methods that prune with LoRA) or ``"nothing"`` (no
    recovery; refused for them too). :meth:`training` gives the loop's settings for one method."""

    trains: ClassVar[Literal["lora", "weights", "nothing"]] = "lora"

    @classmethod
    def kind(cls) -> str:
        return "recovery"

    def training(self, own: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The training-loop settings (keys of :data:`TRAINING_KEYS`) for a method whose own recovery settings are
        ``own`` (its LoRA, None where it has none): the settings to record and train with, or None for no
        recovery. Default: the method's own LoRA (LoRAConfig's defaults where it has none)."""
        return dict(own or {})
