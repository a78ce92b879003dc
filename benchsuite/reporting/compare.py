"""``benchsuite compare``: is a difference real? Paired differences between two methods (or two results
folders, e.g. two commits) with 95% intervals, marked significant only when the interval excludes zero.

- Perplexity: relative change ``ppl_b / ppl_a - 1``, paired bootstrap over the same evaluation windows
  (the records keep every window's NLL).
- A difference is marked significant only when its paired interval excludes zero and the two runs' own
  95% intervals do not overlap: two methods whose intervals overlap are never called different (pairing
  is more sensitive; where it alone sees a difference the note says so).
- Zero-shot accuracy: difference in points, paired bootstrap over the same examples (the records keep
  every example's correctness); the average resamples each task's examples.
- Parameters, FLOPs: exact differences (no interval: they are deterministic).
- Distance to the dense model: zero-shot flips in points, paired over the same examples (each run's flips against
  the dense model, read from the records); KL divergence and top-1 agreement (``--metrics default,fidelity``),
  paired over the same windows.
- Latency: the ratio of the medians with a bootstrap interval over the repeats of each; never marked
  significant when either measurement was flagged noisy.

Runs are paired when they share model, profile, granularity, ratio and seed, and (between folders) the
method variant. ``--fail-if METRIC:LIMIT`` turns a comparison into a gate (exit 1), e.g. ``ppl_wiki:+2%``:
fail where perplexity rose by more than 2% and the rise is significant; ``acc_avg:-0.01``: fail where the
average accuracy fell by more than 0.01 (one point) and the fall is significant.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchsuite.api.errors import ConfigError
from benchsuite.evaluation.stats import decode_bits, paired_mean, paired_perplexity, percentiles
from benchsuite.running.records import context_hash, slug
from benchsuite.util.names import did_you_mean

#: metrics where a higher value is worse
HIGHER_IS_WORSE = ("ppl_", "latency", "params", "flops", "peak_mem", "kl_", "flips_")


def pair_key(record: dict[str, Any], with_variant: bool, with_allocation: bool = True) -> tuple:
    """What two paired runs share: model, profile, granularity, ratio, seed, evaluation context, and (within one
    folder) how the ratio was spread over the layers; between folders, the method variant instead."""
    gran = (record.get("granularity") or {}).get("label", "-")
    key = (record["model"], record.get("weights_sha256"), record["profile"], gran, round(record["ratio"], 6),
           record["seed"], context_hash(record["config"]))
    if with_allocation:
        key += (((record.get("config") or {}).get("allocation") or {}).get("name", "uniform"),)
    return key + ((record.get("variant") or record["method"],) if with_variant else ())


def _variant(record: dict[str, Any]) -> str:
    return record.get("variant") or record["method"]


def pairs_within(records: list[dict[str, Any]], baseline: str, methods: list[str] | None
                 ) -> list[tuple[dict, dict]]:
    """(baseline run, other run) for every other method's run that has a baseline run to pair with."""
    base = {pair_key(r, False): r for r in records if _variant(r) == baseline and r["status"] == "ok"}
    if not base:
        found = sorted({_variant(r) for r in records if r["status"] == "ok" and r["method"] != "dense"})
        folder = [v for v in found if slug(v) == baseline]  # named as its results folder spells it
        hint = (f"; did you mean {folder[0]}? (results folders write {folder[0]} as {baseline})" if folder
                else did_you_mean(baseline, found))
        raise ConfigError(f"no finished run of '{baseline}' to compare against{hint} "
                          f"(finished: {', '.join(found) or 'none'})")
    out = []
    for r in records:
        if r["status"] != "ok" or _variant(r) == baseline or r["method"] == "dense":
            continue
        if methods and _variant(r) not in methods and r["method"] not in methods:
            continue
        if pair_key(r, False) in base:
            out.append((base[pair_key(r, False)], r))
    return out


def pairs_between(old: list[dict[str, Any]], new: list[dict[str, Any]], methods: list[str] | None
                  ) -> list[tuple[dict, dict]]:
    """(old run, new run) of the same method variant, model, profile, ratio and seed in two folders."""
    before = {pair_key(r, True, False): r for r in old if r["status"] == "ok"}
    return [(before[pair_key(r, True, False)], r) for r in new
            if r["status"] == "ok" and pair_key(r, True, False) in before
            and (not methods or _variant(r) in methods or r["method"] in methods)]


@dataclass
class Difference:
    metric: str
    a: float
    b: float
    diff: float  # relative for perplexity and latency (b / a - 1), absolute otherwise
    lo: float | None
    hi: float | None
    relative: bool
    significant: bool
    note: str = ""

    def worse_by(self) -> float:
        """How much worse ``b`` is than ``a`` (positive: worse), in the unit of ``diff``."""
        return self.diff if self.metric.startswith(HIGHER_IS_WORSE) else -self.diff


def compare_runs(a: dict[str, Any], b: dict[str, Any], metrics: list[str] | None = None) -> list[Difference]:
    """Every metric both runs have (or those asked for), ``b`` against ``a``."""
    ma, mb = a["metrics"], b["metrics"]
    names = metrics or [k for k in ma if k in mb and _comparable(k)]
    out = []
    for name in names:
        if name not in ma or name not in mb or ma[name] is None or mb[name] is None:
            continue
        out.append(_difference(name, a, b))
    return out


def _comparable(key: str) -> bool:
    return (key.startswith(("ppl_", "acc_", "params", "flops_per_token", "latency_ms", "kl_", "top1_", "flips_"))
            and not key.endswith(("_lo", "_hi", "_stderr", "_noisy", "_iqr_ms")))


def _difference(name: str, a: dict[str, Any], b: dict[str, Any]) -> Difference:
    """The paired difference; marked significant only where its paired interval excludes zero *and* the
    two runs' own intervals do not overlap (a difference that pairing alone finds is noted as such)."""
    d = _paired(name, a, b)
    bounds = [(r["metrics"].get(f"{name}_lo"), r["metrics"].get(f"{name}_hi")) for r in (a, b)]
    if d.significant and all(lo is not None and hi is not None for lo, hi in bounds):
        (lo_a, hi_a), (lo_b, hi_b) = bounds
        if lo_b <= hi_a and lo_a <= hi_b:
            d.significant = False
            d.note += "; paired interval excludes 0, but the runs' own intervals overlap: not marked"
    return d


def _paired(name: str, a: dict[str, Any], b: dict[str, Any]) -> Difference:
    va, vb = float(a["metrics"][name]), float(b["metrics"][name])
    how_a, how_b = a.get("measurement") or {}, b.get("measurement") or {}
    if name.startswith("ppl_"):
        wa, wb = (how_a.get(name) or {}).get("window_nll"), (how_b.get(name) or {}).get("window_nll")
        tokens = (how_a.get(name) or {}).get("window_tokens")
        if wa and wb and len(wa) == len(wb) and tokens == (how_b.get(name) or {}).get("window_tokens"):
            p = paired_perplexity(wa, wb, [tokens] * len(wa))
            return Difference(name, va, vb, vb / va - 1, p["lo"], p["hi"], True, p["significant"],
                              f"paired over {p['n']} windows")
        return Difference(name, va, vb, vb / va - 1, None, None, True, False, "no per-window data to pair")
    if name.startswith("acc_"):
        tasks_a = ((how_a.get("zeroshot") or {}).get("tasks")) or {}
        tasks_b = ((how_b.get("zeroshot") or {}).get("tasks")) or {}
        names = list(tasks_a) if name == "acc_avg" else [name[4:]]
        bits = []
        for task in names:
            ta, tb = tasks_a.get(task) or {}, tasks_b.get(task) or {}
            if not (ta.get("correct") and tb.get("correct")) or len(ta["correct"]) != len(tb["correct"]) \
                    or ta.get("doc_ids") != tb.get("doc_ids"):
                return Difference(name, va, vb, vb - va, None, None, False, False, "no per-example data to pair")
            bits.append((decode_bits(ta["correct"]), decode_bits(tb["correct"])))
        return _paired_examples(name, va, vb, bits)
    if name.startswith(("kl_", "top1_")):  # per window, on the same windows (the fidelity metric)
        key, field = "kl_" + name.partition("_")[2], "window_kl" if name.startswith("kl_") else "window_top1"
        wa, wb = (how_a.get(key) or {}).get(field), (how_b.get(key) or {}).get(field)
        if wa and wb and len(wa) == len(wb):
            p = paired_mean(wa, wb)
            return Difference(name, va, vb, vb - va, p["lo"], p["hi"], False, p["significant"],
                              f"paired over {p['n']} windows")
        return Difference(name, va, vb, vb - va, None, None, False, False, "no per-window data to pair")
    if name.startswith("flips_"):  # each example's flip against the dense model (benchsuite.reporting.flips)
        fa, fb = how_a.get("flips") or {}, how_b.get("flips") or {}
        names = [t for t in fa if t in fb] if name == "flips_avg" else [name[6:]]
        bits = []
        for task in names:
            ta, tb = fa.get(task) or {}, fb.get(task) or {}
            if not (ta.get("bits") and tb.get("bits")) or ta.get("documents") != tb.get("documents"):
                return Difference(name, va, vb, vb - va, None, None, False, False, "no per-example data to pair")
            bits.append((decode_bits(ta["bits"]), decode_bits(tb["bits"])))
        return _paired_examples(name, va, vb, bits)
    if name == "latency_ms":
        ta, tb = (how_a.get(name) or {}).get("times_ms"), (how_b.get(name) or {}).get("times_ms")
        noisy = bool(a["metrics"].get("latency_noisy") or b["metrics"].get("latency_noisy"))
        if ta and tb and len(ta) > 1 and len(tb) > 1:
            lo, hi = ratio_of_medians(ta, tb)
            return Difference(name, va, vb, vb / va - 1, lo - 1, hi - 1, True,
                              (lo > 1 or hi < 1) and not noisy, "noisy: not marked" if noisy else
                              f"medians of {len(ta)} and {len(tb)} repeats")
        return Difference(name, va, vb, vb / va - 1, None, None, True, False, "no repeats recorded")
    return Difference(name, va, vb, vb - va, None, None, False, va != vb, "exact")


def _paired_examples(name: str, va: float, vb: float, bits: list[tuple[list[int], list[int]]]) -> Difference:
    """The difference of 0/1 per-example values paired over the same examples: one task's mean, or the unweighted
    average over tasks (each task's examples resampled)."""
    if not bits:
        return Difference(name, va, vb, vb - va, None, None, False, False, "no per-example data to pair")
    if len(bits) == 1:
        p = paired_mean(*bits[0])
        return Difference(name, va, vb, vb - va, p["lo"], p["hi"], False, p["significant"],
                          f"paired over {p['n']} examples")
    lo, hi = paired_average(bits)
    return Difference(name, va, vb, vb - va, lo, hi, False, lo > 0 or hi < 0,
                      f"paired over {sum(len(x) for x, _ in bits)} examples of {len(bits)} tasks")


def paired_average(bits: list[tuple[list[int], list[int]]], resamples: int = 2000,
                   seed: int = 20261125) -> tuple[float, float]:
    """95% interval of the difference of unweighted task averages, resampling each task's examples (paired)."""
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for a, b in bits:
        d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
        idx = rng.integers(0, len(d), size=(resamples, len(d)))
        total += d[idx].mean(axis=1)
    return percentiles(total / len(bits), 0.95)


def ratio_of_medians(times_a: list[float], times_b: list[float], resamples: int = 2000,
                     seed: int = 20261125) -> tuple[float, float]:
    """95% bootstrap interval of ``median(b) / median(a)`` (each resampled on its own)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(times_a, dtype=float), np.asarray(times_b, dtype=float)
    ma = np.median(a[rng.integers(0, len(a), size=(resamples, len(a)))], axis=1)
    mb = np.median(b[rng.integers(0, len(b), size=(resamples, len(b)))], axis=1)
    return percentiles(mb / ma, 0.95)


_GATE = re.compile(r"(?P<metric>[A-Za-z0-9_]+):(?P<sign>[+-])(?P<value>[0-9.]+)(?P<pct>%?)")


@dataclass(frozen=True)
class Gate:
    """``METRIC:+X%`` or ``METRIC:-X``: the largest change in the bad direction that may pass."""

    metric: str
    limit: float
    relative: bool
    text: str

    @classmethod
    def parse(cls, text: str) -> Gate:
        match = _GATE.fullmatch(text.strip())
        if not match:
            raise ConfigError(f"--fail-if '{text}': expected METRIC:+LIMIT or METRIC:-LIMIT, e.g. ppl_wiki:+2% "
                              "or acc_avg:-0.01")
        worse_up = match["metric"].startswith(HIGHER_IS_WORSE)
        if (match["sign"] == "+") != worse_up:
            direction = "rises" if worse_up else "falls"
            raise ConfigError(f"--fail-if '{text}': {match['metric']} gets worse when it {direction}; "
                              f"write {match['metric']}:{'+' if worse_up else '-'}{match['value']}{match['pct']}")
        limit = float(match["value"]) / (100 if match["pct"] else 1)
        return cls(match["metric"], limit, bool(match["pct"]), text.strip())

    def fails(self, d: Difference) -> bool:
        """Worse by more than the limit, and significantly so."""
        if d.metric != self.metric or not d.significant:
            return False
        if self.relative:
            worse = d.worse_by() if d.relative else d.worse_by() / abs(d.a) if d.a else math.inf
        else:
            worse = d.worse_by() * abs(d.a) if d.relative else d.worse_by()
        return worse > self.limit


def format_difference(d: Difference) -> tuple[str, str]:
    """The difference and its interval as text (perplexity/latency in %, accuracy in points)."""
    if d.relative:
        text = f"{100 * d.diff:+.1f}%"
        ci = f"[{100 * d.lo:+.1f}%, {100 * d.hi:+.1f}%]" if d.lo is not None else "-"
    elif d.metric.startswith(("acc_", "flips_", "top1_")):
        text = f"{100 * d.diff:+.1f} pt"
        ci = f"[{100 * d.lo:+.1f}, {100 * d.hi:+.1f}]" if d.lo is not None else "-"
    else:  # absolute differences (KL in nats, parameters, FLOPs): the interval in the same unit where there is one
        text = f"{d.diff:+,.0f}" if abs(d.diff) >= 100 else f"{d.diff:+.4g}"
        ci = f"[{d.lo:+.4g}, {d.hi:+.4g}]" if d.lo is not None and d.hi is not None else "-"
    return text, ci
