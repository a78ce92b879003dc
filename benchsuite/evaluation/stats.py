"""Uncertainty: bootstrap intervals for perplexity and accuracy, and paired comparisons.

Perplexity is ``exp(sum of token NLLs / tokens)`` over evaluation windows; its interval resamples the
windows (a window is the unit of independent-ish text). Accuracy resamples examples. A paired
comparison resamples the *same* windows or examples for both models, so what they share (hard text,
easy questions) cancels out; two models whose intervals overlap can still differ significantly when
paired, and vice versa a difference smaller than its paired interval is not marked.

All intervals are percentile bootstrap intervals (95% by default) with a fixed seed, so the same
records always give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
SEED = 20261125
_CHUNK_CELLS = 4_000_000  # resample indices are drawn in chunks of at most this many cells


def _resample_sums(columns: list[np.ndarray], resamples: int, seed: int) -> list[np.ndarray]:
    """For ``resamples`` bootstrap draws of the rows, the sum of each column over the drawn rows."""
    n = len(columns[0])
    rng = np.random.default_rng(seed)
    out = [np.empty(resamples) for _ in columns]
    step = max(1, _CHUNK_CELLS // max(1, n))
    for start in range(0, resamples, step):
        stop = min(resamples, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))
        for col, dest in zip(columns, out):
            dest[start:stop] = col[idx].sum(axis=1)
    return out


def percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def perplexity_interval(nll: Sequence[float], tokens: Sequence[int], level: float = LEVEL,
                        resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """Bootstrap interval of ``exp(sum nll / sum tokens)`` over windows (``nll``: summed NLL per window)."""
    nll_a, tok_a = np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)
    if len(nll_a) < 2:
        value = float(np.exp(nll_a.sum() / tok_a.sum()))
        return value, value
    s_nll, s_tok = _resample_sums([nll_a, tok_a], resamples, seed)
    return percentiles(np.exp(s_nll / s_tok), level)


def mean_interval(values: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES,
                  seed: int = SEED) -> tuple[float, float]:
    """Bootstrap interval of the mean (e.g. accuracy from per-example 0/1 correctness)."""
    arr = np.asarray(values, dtype=float)
    if len(arr) < 2:
        return float(arr.mean()), float(arr.mean())
    (sums,) = _resample_sums([arr], resamples, seed)
    return percentiles(sums / len(arr), level)


def paired_perplexity(nll_a: Sequence[float], nll_b: Sequence[float], tokens: Sequence[int],
                      level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, Any]:
    """``b`` against ``a`` on the same windows: the relative change of perplexity ``ppl_b / ppl_a - 1``
    with its paired bootstrap interval; significant when the interval excludes 0."""
    a, b, tok = (np.asarray(x, dtype=float) for x in (nll_a, nll_b, tokens))
    if not (len(a) == len(b) == len(tok)):
        raise ValueError(f"paired windows differ in number: {len(a)}, {len(b)}, {len(tok)}")
    point = float(np.exp((b.sum() - a.sum()) / tok.sum()) - 1.0)
    if len(a) < 2:
        return {"diff": point, "lo": point, "hi": point, "n": len(a), "significant": False, "relative": True}
    s_a, s_b, s_tok = _resample_sums([a, b, tok], resamples, seed)
    lo, hi = percentiles(np.exp((s_b - s_a) / s_tok) - 1.0, level)
    return {"diff": point, "lo": lo, "hi": hi, "n": len(a), "significant": bool(lo > 0 or hi < 0),
            "relative": True}


def paired_mean(values_a: Sequence[float], values_b: Sequence[float], level: float = LEVEL,
                resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, Any]:
    """``mean(b) - mean(a)`` on the same examples, with its paired bootstrap interval."""
    a, b = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    if len(a) != len(b):
        raise ValueError(f"paired examples differ in number: {len(a)} and {len(b)}")
    point = float(b.mean() - a.mean()) if len(a) else float("nan")
    if len(a) < 2:
        return {"diff": point, "lo": point, "hi": point, "n": len(a), "significant": False, "relative": False}
    (sums,) = _resample_sums([b - a], resamples, seed)
    lo, hi = percentiles(sums / len(a), level)
    return {"diff": point, "lo": lo, "hi": hi, "n": len(a), "significant": bool(lo > 0 or hi < 0),
            "relative": False}


def seed_spread(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, sample standard deviation and n over seeds (std 0 when n is 1)."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if not len(arr):
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": int(len(arr))}


def encode_bits(bits: Sequence[int | bool]) -> str:
    """Per-example correctness as a compact string of ``0``/``1`` (one character per example)."""
    return "".join("1" if b else "0" for b in bits)


def decode_bits(text: str) -> list[int]:
    if set(text) - {"0", "1"}:
        raise ValueError("per-example correctness must be a string of 0 and 1")
    return [1 if c == "1" else 0 for c in text]
