"""Budgets: ``smoke`` (tests, seconds), ``quick`` (the CPU default), ``paper-llm-pruner`` and
``paper-loraprune`` (each paper's own recipe, for a GPU).

A profile is the budget every method in a comparison shares: evaluation, calibration, and the LoRA
fine-tuning (steps, micro-batch, length, gradient accumulation, learning-rate schedule, recovery
data). Methods choose only their LoRA hyper-parameters (r, alpha, dropout, lr).
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from benchsuite.api.errors import ConfigError
from benchsuite.util.names import did_you_mean

#: learning-rate schedules of the LoRA fine-tuning: ``constant`` after the warm-up, or ``linear`` decay to 0 at
#: the last step (HF Trainer's default, the papers' recipes)
LR_SCHEDULES = ("constant", "linear")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    #: perplexity: window length (papers' tables: 128) and windows per corpus (None = all)
    seq_len: int = 128
    eval_windows: int | None = 32
    eval_batch: int = 4
    corpora: tuple[str, ...] = ("wiki", "c4")
    #: calibration for data-driven criteria (LLM-Pruner: 10 samples of 64 tokens); with
    #: ``criterion_calibration`` a criterion's own recipe (``Criterion.calibration``) wins
    calib_corpus: str = "wiki"
    calib_samples: int = 10
    calib_len: int = 64
    calib_batch: int = 2
    criterion_calibration: bool = False
    #: forward latency on a fixed batch
    latency_batch: int = 1
    latency_len: int = 128
    latency_repeats: int = 5
    #: zero-shot tasks through lm-eval and examples per task (None = all)
    tasks: tuple[str, ...] = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
    task_limit: int | None = 20
    task_batch: int = 8
    #: LoRA fine-tuning budget (recovery and iterative schedules), the same for every method:
    #: optimizer steps (or ``train_epochs`` passes over the recovery data, which then set the steps),
    #: micro-batch x gradient accumulation sequences of ``train_len`` tokens per step
    train_steps: int = 20
    train_batch: int = 2
    train_len: int = 128
    grad_accum: int = 1
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    train_epochs: float | None = None
    #: text LoRA trains on: out of the evaluation domain by default (see ``benchsuite.data.instruct``)
    recovery_data: str = "instruct"

    def as_dict(self) -> dict:
        return asdict(self)

    def lora_budget(self) -> dict:
        """The LoRA settings that the profile fixes for every method."""
        return {"grad_accum": self.grad_accum, "warmup_steps": self.warmup_steps, "lr_schedule": self.lr_schedule}


#: evaluation as the papers' tables: every window, every zero-shot example, many latency repeats
_FULL_EVAL = {"eval_windows": None, "eval_batch": 8, "latency_repeats": 50, "task_limit": None, "task_batch": 32,
              "criterion_calibration": True}


PROFILES = {
    p.name: p
    for p in (
        Profile("smoke", "seconds on a tiny model; for tests", eval_windows=4, calib_samples=4,
                calib_len=32, latency_repeats=2, train_steps=4, train_len=64, task_limit=3),
        Profile("quick", "the CPU default: minutes on the default model", eval_windows=64,
                latency_repeats=5, train_steps=40),
        Profile("paper-llm-pruner", "LLM-Pruner's recipe, for a GPU: LoRA 2 epochs, batch 64 = 4 x 16 "
                "accumulation, 256 tokens, lr warm-up 100 steps then linear decay; each criterion's own calibration",
                train_batch=4, grad_accum=16, train_len=256, warmup_steps=100, lr_schedule="linear",
                train_epochs=2.0, **_FULL_EVAL),
        Profile("paper-loraprune", "LoRAPrune's recipe, for a GPU: LoRA 2 epochs, batch 128 = 2 x 64 "
                "accumulation, 512 tokens, linear decay without warm-up; each criterion's own calibration",
                train_batch=2, grad_accum=64, train_len=512, warmup_steps=0, lr_schedule="linear",
                train_epochs=2.0, **_FULL_EVAL),
    )
}


def with_train_steps(profile: Profile, steps: int | None) -> Profile:
    """The profile with another LoRA budget; its name says so (records of both can coexist)."""
    if steps is None or steps == profile.train_steps:
        return profile
    if steps < 1:
        raise ConfigError(f"--train-steps {steps}: give a positive number of optimizer steps")
    return replace(profile, name=f"{profile.name}-steps{steps}", train_steps=steps, train_epochs=None,
                   description=f"{profile.description}, {steps} LoRA steps")


def with_batching(profile: Profile, grad_accum: int | None = None, lr_schedule: str | None = None) -> Profile:
    """The profile with another gradient accumulation (micro-batches per optimizer step) or learning-rate
    schedule; its name says so (``quick-steps250-accum16``, ``quick-steps2000-lr-linear``). Every method of a
    comparison gets the same: these belong to the budget, not to a method."""
    changes: dict = {}
    suffix = ""
    if grad_accum is not None and grad_accum != profile.grad_accum:
        if grad_accum < 1:
            raise ConfigError(f"--grad-accum {grad_accum}: give a positive number of micro-batches per optimizer step")
        changes["grad_accum"] = grad_accum
        suffix += f"-accum{grad_accum}"
    if lr_schedule is not None and lr_schedule != profile.lr_schedule:
        if lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"--lr-schedule '{lr_schedule}' unknown{did_you_mean(lr_schedule, LR_SCHEDULES)}; "
                              f"choose one of {', '.join(LR_SCHEDULES)}")
        changes["lr_schedule"] = lr_schedule
        suffix += f"-lr-{lr_schedule}"
    if not changes:
        return profile
    said = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in changes.items())
    return replace(profile, name=profile.name + suffix, description=f"{profile.description}, {said}", **changes)


def with_recovery_data(profile: Profile, data: str | None) -> Profile:
    """The profile with other LoRA training text; its name says so."""
    if not data or data == profile.recovery_data:
        return profile
    return replace(profile, name=f"{profile.name}-rec-{corpus_label(data)}", recovery_data=data,
                   description=f"{profile.description}, LoRA on {data}")


def with_calibration_data(profile: Profile, data: str | None) -> Profile:
    """The profile with another calibration corpus (for every criterion, also in the paper profiles, whose
    criteria otherwise bring their own); its name says so."""
    if not data or (data == profile.calib_corpus and not profile.criterion_calibration):
        return profile
    return replace(profile, name=f"{profile.name}-cal-{corpus_label(data)}", calib_corpus=data,
                   criterion_calibration=False, description=f"{profile.description}, calibration on {data}")


def corpus_label(corpus: str) -> str:
    """Metric-friendly name of a corpus: its name, or a local file's stem."""
    return Path(corpus).stem if ("/" in corpus or corpus.endswith((".txt", ".jsonl"))) else corpus


def with_corpora(profile: Profile, corpora: list[str] | None) -> Profile:
    """The profile with other perplexity corpora; its name says so."""
    if not corpora or tuple(corpora) == profile.corpora:
        return profile
    suffix = "-".join(corpus_label(c) for c in corpora)
    return replace(profile, name=f"{profile.name}-{suffix}", corpora=tuple(corpora),
                   description=f"{profile.description}, perplexity on {', '.join(corpora)}")


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        close = difflib.get_close_matches(name, PROFILES, n=2, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown profile '{name}'{hint} (available: {', '.join(PROFILES)})")
    return PROFILES[name]
