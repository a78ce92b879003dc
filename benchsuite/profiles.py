"""Budgets: ``smoke`` (tests, seconds), ``quick`` (the CPU default), ``paper`` (the papers' settings)."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .api import ConfigError


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    #: perplexity: window length (papers' tables: 128) and windows per corpus (None = all)
    seq_len: int = 128
    eval_windows: int | None = 32
    eval_batch: int = 4
    corpora: tuple[str, ...] = ("wiki", "c4")
    #: calibration for data-driven criteria (LLM-Pruner: 10 samples of 64 tokens)
    calib_corpus: str = "wiki"
    calib_samples: int = 10
    calib_len: int = 64
    calib_batch: int = 2
    #: forward latency on a fixed batch
    latency_batch: int = 1
    latency_len: int = 128
    latency_repeats: int = 5
    #: zero-shot tasks through lm-eval and examples per task (None = all)
    tasks: tuple[str, ...] = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
    task_limit: int | None = 20
    task_batch: int = 8
    #: LoRA fine-tuning budget (recovery and iterative schedules)
    train_steps: int = 20
    train_batch: int = 2
    train_len: int = 128

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    p.name: p
    for p in (
        Profile("smoke", "seconds on a tiny model; for tests", eval_windows=4, calib_samples=4,
                calib_len=32, latency_repeats=2, train_steps=4, train_len=64, task_limit=3),
        Profile("quick", "the CPU default: minutes on the default model", eval_windows=64,
                latency_repeats=5, train_steps=40),
        Profile("paper", "the papers' settings, for a GPU", eval_windows=None, eval_batch=8,
                latency_repeats=50, train_steps=2000, train_len=512, task_limit=None, task_batch=32),
    )
}


def with_train_steps(profile: Profile, steps: int | None) -> Profile:
    """The profile with another LoRA budget; its name says so (records of both can coexist)."""
    if steps is None or steps == profile.train_steps:
        return profile
    if steps < 1:
        raise ConfigError(f"--train-steps {steps}: give a positive number of optimizer steps")
    return replace(profile, name=f"{profile.name}-steps{steps}", train_steps=steps,
                   description=f"{profile.description}, {steps} LoRA steps")


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
