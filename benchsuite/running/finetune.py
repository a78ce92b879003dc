"""The shared LoRA fine-tuning loop (peft), used for recovery and by training-time schedules.

Only LoRA parameters train: pretrained weights are frozen and never get a gradient tensor.
Methods compared at the same profile get the same token budget (steps x micro-batch x length x
gradient accumulation), the same learning-rate schedule and the same recovery data: the budget
belongs to the profile, the LoRA hyper-parameters (r, alpha, dropout, lr) to the method.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from benchsuite.api.architecture import Architecture, architecture_of
from benchsuite.api.corpora import Corpus
from benchsuite.api.model import input_device
from benchsuite.api.profiles import LR_SCHEDULES
from benchsuite.data.tokens import CorpusLike, training_windows
from benchsuite.util.progress import track

#: LoRA settings that belong to the profile's budget, not to a method
BUDGET_KEYS = ("grad_accum", "warmup_steps", "lr_schedule")

#: LoRAPrune's reference targets: all seven projections
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


#: The LoRA recovery both papers use (LoRAPrune and LLM-Pruner: r 8, alpha 16, dropout 0.05, lr 1e-4): a
#: method's ``recovery=PAPER_LORA``; also :class:`LoRAConfig`'s defaults.
PAPER_LORA: Mapping[str, Any] = MappingProxyType({"r": 8, "alpha": 16, "dropout": 0.05, "lr": 1e-4})


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA hyper-parameters (defaults: :data:`PAPER_LORA`) and the profile's budget shape."""

    r: int = PAPER_LORA["r"]
    alpha: int = PAPER_LORA["alpha"]
    dropout: float = PAPER_LORA["dropout"]
    lr: float = PAPER_LORA["lr"]
    targets: tuple[str, ...] = DEFAULT_TARGETS
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    #: the budget's shape, set by the profile for every method alike (see :data:`BUDGET_KEYS`)
    grad_accum: int = 1
    warmup_steps: int = 0
    #: ``constant`` after the warm-up, or ``linear`` decay to 0 at the last step (HF Trainer's default)
    lr_schedule: str = "constant"
    #: skip (and count) optimizer steps whose loss is NaN/inf instead of failing the run; off: a
    #: non-finite loss is an error that names the stage and step
    skip_nonfinite_steps: bool = False
    #: logit distillation from the dense model instead of the language-model loss: the temperature T of
    #: ``KL(softmax(teacher / T) || softmax(student / T)) * T^2`` per token (None: the LM loss alone)
    distill_temperature: float | None = None
    #: with distillation, ``alpha`` times the LM loss is added (0: logits alone, Minitron's best)
    distill_alpha: float = 0.0
    #: full fine-tuning instead of LoRA: every remaining weight trains (no adapters), and weights that pruning set to
    #: zero (N:M, unstructured) stay zero (the ``full`` recovery: ``benchsuite_plugins.recoveries.Full``)
    full: bool = False

    @classmethod
    def from_params(cls, params: dict[str, Any] | None, budget: dict[str, Any] | None = None) -> LoRAConfig:
        """A method's LoRA parameters, completed by the profile's ``budget`` (which a method may not set)."""
        from benchsuite.api.errors import ConfigError

        params = dict(params or {})
        if "targets" in params:
            params["targets"] = tuple(params["targets"])
        unknown = set(params) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown LoRA parameter(s) {sorted(unknown)}; accepted: "
                              f"{', '.join(k for k in cls.__dataclass_fields__ if k not in BUDGET_KEYS)}")
        owned = sorted(set(params) & set(BUDGET_KEYS))
        if owned:
            raise ConfigError(f"LoRA parameter(s) {owned} belong to the profile's budget, the same for every "
                              "method; a method sets only r, alpha, dropout, lr, targets, weight_decay, max_grad_norm")
        params.update(budget or {})
        if params.get("lr_schedule", "constant") not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}")
        return cls(**params)

    def lr_factor(self, step: int, total: int) -> float:
        """Multiplier of ``lr`` for optimizer step ``step`` (from 0) of ``total``: linear warm-up over
        ``warmup_steps``, then constant or linear decay to 0 at ``total`` (HF Trainer's ``linear``)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.lr_schedule == "linear":
            return max(0.0, (total - step) / max(1, total - self.warmup_steps))
        return 1.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wrapped_targets(config: LoRAConfig, family: Architecture) -> tuple[str, ...]:
    """The module names LoRA wraps: ``config.targets``, where they are the default (every projection) in the model
    family's names (Phi-3: ``qkv_proj``, ``gate_up_proj``; a mixture of experts: each expert's ``gate_linear``...)."""
    return family.lora_targets if config.targets == DEFAULT_TARGETS else tuple(config.targets)


def attach_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Wrap ``model`` with peft LoRA on ``config.targets``; everything else is frozen."""
    from peft import LoraConfig, get_peft_model

    targets = wrapped_targets(config, architecture_of(model))
    peft_config = LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                             target_modules=list(targets), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, peft_config)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold ``scaling * B @ A`` into the base weights and return the plain transformers model."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]


def pruned_zeros(model: nn.Module) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """``(weight, kept)`` of every 2-D weight with exact zeros (what N:M and unstructured pruning leave): full
    fine-tuning multiplies the weight by ``kept`` after each update, so the pruned weights stay zero."""
    out = []
    for p in model.parameters():
        if p.dim() == 2:
            kept = p.detach() != 0
            if not bool(kept.all()):
                out.append((p, kept))
    return out


def frozen_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if "lora_" not in n]


@dataclass
class TrainLog:
    steps: int = 0
    tokens: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    skipped_nan: int = 0
    #: full fine-tuning: the weights whose pruned zeros were kept
    masked: int | None = None

    def summary(self) -> dict[str, Any]:
        tail = self.losses[-max(1, len(self.losses) // 10):] if self.losses else []
        return {"steps": self.steps, "tokens": self.tokens, "seconds": round(self.seconds, 2),
                "first_loss": self.losses[0] if self.losses else None,
                "final_loss": sum(tail) / len(tail) if tail else None, "skipped_nan": self.skipped_nan} | (
                    {"weights_with_kept_zeros": self.masked} if self.masked is not None else {})


#: Called after each optimizer step's backward, before the step: (step index from 0, model)
StepCallback = Callable[[int, nn.Module], None]


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over tokens of ``KL(softmax(teacher / T) || softmax(student / T)) * T^2`` (logits ``[..., vocab]``)."""
    t = torch.log_softmax(teacher.float() / temperature, dim=-1)
    s = torch.log_softmax(student.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean() * temperature**2


def train_lora(model: nn.Module, batches: Iterator[torch.Tensor], steps: int, config: LoRAConfig,
               seed: int = 0, before_step: StepCallback | None = None,
               after_step: StepCallback | None = None, desc: str = "LoRA fine-tuning",
               teacher: nn.Module | None = None) -> TrainLog:
    """Train the LoRA parameters of ``model`` for ``steps`` optimizer steps (with ``config.full``: every parameter
    of the plain model, weights pruned to zero kept at zero, :func:`pruned_zeros`).

    ``before_step`` sees the accumulated LoRA gradients (LoRAPrune scores them there);
    ``after_step`` runs after the update (schedules prune there). With ``config.distill_temperature`` the loss is
    the distillation from ``teacher`` (the dense model, run on the same micro-batch without gradients; see
    :func:`distill_loss`), plus ``config.distill_alpha`` times the LM loss.
    """
    if config.distill_temperature is not None and teacher is None:
        raise ValueError("distillation needs the dense model as the teacher")
    masks: list[tuple[nn.Parameter, torch.Tensor]] = []
    if config.full:
        if lora_parameters(model):
            raise ValueError("full fine-tuning trains the plain model: merge its LoRA adapters first")
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
        masks = pruned_zeros(model)
    else:
        params = lora_parameters(model)
    if not params:
        raise ValueError("the model has no trainable LoRA parameters (call attach_lora first)")
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: config.lr_factor(s, steps))
    device = input_device(model)  # the first device of a model spread over several (device_map)
    log = TrainLog()
    model.zero_grad(set_to_none=True)  # e.g. gradients left by a criterion's calibration
    model.train()
    start = time.perf_counter()
    for step in track(range(steps), desc):
        total = 0.0
        for _ in range(config.grad_accum):
            batch = next(batches).to(device)
            if config.distill_temperature is None:
                loss = model(input_ids=batch, labels=batch, use_cache=False).loss / config.grad_accum
            else:
                with torch.no_grad():
                    target = teacher(input_ids=batch.to(input_device(teacher)), use_cache=False).logits
                out = model(input_ids=batch, labels=batch if config.distill_alpha else None, use_cache=False)
                loss = distill_loss(out.logits, target.to(out.logits.device), config.distill_temperature)
                if config.distill_alpha:
                    loss = loss + config.distill_alpha * out.loss
                loss = loss / config.grad_accum
                del target, out
            loss.backward()
            total += float(loss.detach())
            log.tokens += batch.numel()
        if not math.isfinite(total):
            if not config.skip_nonfinite_steps:
                raise FloatingPointError(f"{desc}: the training loss is {total} at optimizer step {step + 1} of "
                                         f"{steps}")
            log.skipped_nan += 1
            optimizer.zero_grad(set_to_none=True)
            continue
        if before_step is not None:
            before_step(step, model)
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for weight, kept in masks:
                weight.mul_(kept)
        log.losses.append(total)
        log.steps += 1
        if after_step is not None:
            after_step(step, model)
    log.seconds = time.perf_counter() - start
    model.eval()
    if config.full:
        for p in params:
            p.requires_grad_(False)
        log.masked = len(masks)
    return log


@contextmanager
def checkpointing(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Gradient checkpointing of the decoder layers while inside (``enabled``): a layer's activations
    are recomputed in the backward pass instead of kept. Non-reentrant checkpointing, which needs no
    input that requires grad (the frozen embeddings of a LoRA model have none) and replays dropout
    with the same random state, so the gradients are those of the plain backward."""
    if not enabled:
        yield
        return
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(base).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    hooked = bool(getattr(base, "_require_grads_hooks", None))  # enabling adds embedding-output hooks: undone after
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.24's name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    try:
        yield
    finally:
        (base.activation_checkpointing_disable if hasattr(base, "activation_checkpointing_disable")
         else base.gradient_checkpointing_disable)()
        if not hooked:  # an embedding output made to require grad breaks no-grad passes that track modules
            base.disable_input_require_grads()


def cycle_batches(tokenizer, corpus: CorpusLike | Sequence[Corpus], length: int, batch_size: int,
                  seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled micro-batches of ``length`` tokens from the training windows of ``corpus`` (names,
    paths or :class:`~benchsuite.api.corpora.Corpus` objects, see :func:`~benchsuite.data.tokens.training_windows`)."""
    windows = training_windows(tokenizer, corpus, length)
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(windows), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield windows[order[start:start + batch_size]]
