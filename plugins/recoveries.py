"""Built-in plugin: the recoveries ``lora`` (LoRA on the language-model loss), ``distill`` (the same LoRA trained on
the dense model's logits), ``full`` (every remaining weight, pruned zeros kept) and ``none``, registered as a
third-party plugin registers its own."""

from __future__ import annotations

from benchsuite import Recovery, hookimpl

BENCHSUITE_API = "2.4"


def _lora(recovery, own):
    """The method's own LoRA (LoRAConfig's defaults where it has none), with what the recovery's parameters set."""
    return dict(own or {}) | {k: getattr(recovery, k) for k in ("r", "alpha", "dropout", "lr")
                              if getattr(recovery, k) is not None}


class LoRA(Recovery):
    """LoRA adapters on every projection, trained on the language-model loss and merged after (the papers' recovery:
    r 8, alpha 16, dropout 0.05, lr 1e-4, unless the method or these parameters say otherwise)."""

    name = "lora"
    description = "LoRA on the language-model loss, merged after (r, alpha, dropout, lr: the method's own by default)"
    trains = "lora"

    r: int | None = None
    alpha: int | None = None
    dropout: float | None = None
    lr: float | None = None

    def training(self, own):
        return _lora(self, own)


class Distill(Recovery):
    """The same LoRA trained on the dense model's logits: ``KL(softmax(dense / T) || softmax(pruned / T)) * T^2``
    per token, plus ``lm_weight`` times the LM loss (Minitron's best: the logits alone at T = 1); the dense model is a
    second copy in memory, run on every micro-batch."""

    name = "distill"
    description = "LoRA trained on the dense model's logits (KL at a temperature, optionally plus the LM loss)"
    trains = "lora"

    temperature: float = 1.0
    lm_weight: float = 0.0
    r: int | None = None
    alpha: int | None = None
    dropout: float | None = None
    lr: float | None = None

    def validate(self):
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        if self.lm_weight < 0:
            raise ValueError("lm_weight must be 0 or more")

    def training(self, own):
        return _lora(self, own) | {"distill_temperature": self.temperature, "distill_alpha": self.lm_weight}


class Full(Recovery):
    """Every remaining weight trains (no adapters) at ``lr``, with AdamW; weights that pruning set to zero (N:M,
    unstructured) stay zero. Its optimizer states take twice the model's size."""

    name = "full"
    description = "every remaining weight trains (pruned zeros kept at zero), lr 1e-5"
    trains = "weights"

    lr: float = 1e-5
    weight_decay: float | None = None
    max_grad_norm: float | None = None

    def training(self, own):
        kept = {k: v for k, v in (own or {}).items() if k in ("weight_decay", "max_grad_norm")}
        return kept | {"full": True, "lr": self.lr} | {k: getattr(self, k) for k in ("weight_decay", "max_grad_norm")
                                                        if getattr(self, k) is not None}


class NoRecovery(Recovery):
    """No recovery: the pruned model is measured as pruning left it."""

    name = "none"
    description = "no recovery"
    trains = "nothing"

    def training(self, own):
        return None


@hookimpl
def benchsuite_register_recoveries(register):
    for recovery in (LoRA, Distill, Full, NoRecovery):
        register(recovery)
