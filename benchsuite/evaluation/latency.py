"""Metrics of a (pruned) model: perplexity, parameters, FLOPs per token, latency.

Every function returns the value with a description of how it was measured.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import psutil
import torch
from torch import nn
from torch.utils import benchmark

from benchsuite.api.model import input_device

#: A timing is flagged when its interquartile range exceeds this fraction of its median;
#: torch.utils.benchmark.Measurement warns at the same 10% ("could indicate system fluctuation").
#: Measured on a quiet 2-core VM (20 repeats, benchmarks/latency_noise.py): SmolLM2-135M at 1 x 128
#: 1-5% (but 16-22% in 4 runs of 26, when the VM's speed stepped between ~210 and ~255 ms mid-run),
#: the tiny test model 3-9% (12% and 22% in 2 runs of 30); under two busy-loop processes 12-37% and
#: 115-215%.
MAX_REL_IQR = 0.10
#: ... or when other processes kept more than this share of all CPUs busy while it ran (measured:
#: 0.3-1.5% on the quiet VM, 50-65% with two busy-loop processes on its two CPUs)
MAX_BUSY_OTHER_PCT = 25.0
#: ... or when fewer repeats were taken than this: the spread of one or two numbers is not measured
MIN_REPEATS = 3
_BOOT_RESAMPLES, _BOOT_SEED = 2000, 20261125  # as benchsuite.evaluation.stats: percentile bootstrap, fixed seed

TIMER = ("time.perf_counter around each forward (torch.cuda.synchronize of its GPUs before and after on CUDA); "
         "median and IQR (25th to 75th percentile, linear interpolation) by torch.utils.benchmark.Measurement")


def _busy_cpu_s() -> float:
    """Non-idle CPU seconds of the whole machine since boot (all CPUs; steal time counts as busy)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - sum(getattr(t, f, 0.0) for f in ("iowait", "guest", "guest_nice"))


class MachineLoad:
    """Context manager: how busy the rest of the machine was while a block ran.

    ``busy_other_pct``: non-idle CPU time of the whole machine (psutil.cpu_times, i.e. /proc/stat)
    minus this process's own user + system time, over wall time x logical CPUs, in percent (0 on an
    idle machine, 100 when other processes kept every CPU busy). The counters tick every 10 ms per
    CPU, so a block shorter than MIN_WINDOW_S is followed by an idle wait until MIN_WINDOW_S have
    passed (a 10 ms window could only read 0%, 50% or 100% on two CPUs). ``loadavg_1m``:
    os.getloadavg() at the end; a one-minute moving average, so it lags and mostly shows work that
    ran before the block."""

    MIN_WINDOW_S = 0.5

    def __enter__(self) -> MachineLoad:
        self._proc = psutil.Process()
        self._start = (time.perf_counter(), _busy_cpu_s(), sum(self._proc.cpu_times()[:2]))
        return self

    def __exit__(self, *exc: Any) -> None:
        time.sleep(max(0.0, self._start[0] + self.MIN_WINDOW_S - time.perf_counter()))
        wall = time.perf_counter() - self._start[0]
        other = (_busy_cpu_s() - self._start[1]) - (sum(self._proc.cpu_times()[:2]) - self._start[2])
        cpus = psutil.cpu_count() or 1
        self.load = {"loadavg_1m": round(os.getloadavg()[0], 2), "cpu_count": cpus,
                     "busy_other_pct": round(max(0.0, 100 * other / (wall * cpus)) if wall > 0 else 0.0, 1)}

    def reasons(self, threads: int) -> list[str]:
        """Why the load makes a measurement untrustworthy (empty when the machine was quiet). A load
        average above this process's ``threads`` plus half the CPUs is more than this process explains."""
        load, out = self.load, []
        if load["busy_other_pct"] > MAX_BUSY_OTHER_PCT:
            out.append(f"machine load: other processes used {load['busy_other_pct']:.0f}% of the "
                       f"{load['cpu_count']} CPUs during the measurement (> {MAX_BUSY_OTHER_PCT:.0f}%)")
        if load["loadavg_1m"] > threads + load["cpu_count"] / 2:
            out.append(f"machine load: 1-minute load average {load['loadavg_1m']:.2f} on {load['cpu_count']} "
                       f"CPUs, more than this process's {threads} threads explain")
        return out


def _spread(times_ms: list[float]) -> tuple[float, float]:
    """Median and interquartile range, as torch.utils.benchmark computes them."""
    m = benchmark.Measurement(1, list(times_ms), benchmark.TaskSpec("model(ids)", ""))
    return round(m.median, 3), round(m.iqr, 3)


def _spread_reasons(name: str, times_ms: list[float]) -> list[str]:
    if len(times_ms) < MIN_REPEATS:
        return [f"{name}: only {len(times_ms)} repeat(s), too few to measure the spread (need {MIN_REPEATS})"]
    median, iqr = _spread(times_ms)
    if median > 0 and iqr / median > MAX_REL_IQR:
        return [f"{name}: spread IQR/median {iqr / median:.0%} > {MAX_REL_IQR:.0%}"]
    return []


def speedup_interval(model_ms: list[float], reference_ms: list[float]) -> tuple[float, float]:
    """95% percentile-bootstrap interval of median(reference) / median(model), resampling the
    interleaved pairs (repeat i of both) together, 2,000 resamples, fixed seed."""
    a, b = np.asarray(model_ms, dtype=float), np.asarray(reference_ms, dtype=float)
    idx = np.random.default_rng(_BOOT_SEED).integers(0, len(a), size=(_BOOT_RESAMPLES, len(a)))
    lo, hi = np.percentile(np.median(b[idx], axis=1) / np.median(a[idx], axis=1), [2.5, 97.5])
    return round(float(lo), 4), round(float(hi), 4)


def _input_ids(model: nn.Module, batch_size: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """Random token ids from a fixed generator, below min(1000, vocabulary size)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = min(1000, getattr(embeddings, "num_embeddings", 1000))
    return torch.randint(0, vocab, (batch_size, seq_len), generator=torch.Generator().manual_seed(0)).to(device)


@torch.inference_mode()
def latency(model: nn.Module, batch_size: int, seq_len: int, repeats: int, warmup: int = 1,
            reference: nn.Module | None = None) -> dict[str, Any]:
    """Wall time of a full forward pass on a fixed batch, in eval mode, after ``warmup`` passes.

    Each of the ``repeats`` forwards is timed on its own (``timer``); the record keeps every time
    (``times_ms``), the median (``latency_ms``), the interquartile range (``iqr_ms``) and the minimum.
    With a ``reference`` model (the dense one, say), the two are run interleaved in pairs, model and
    reference, so that a change of machine load hits both alike; the order within a pair alternates
    (model, reference, reference, model, ...), so that a drift (the latency of the same model moves
    by 20% in steps on a quiet shared machine) does not favour whichever runs second. ``speedup``
    is median(reference) / median(model), with a 95% bootstrap interval over the pairs
    (``speedup_lo``, ``speedup_hi``). ``load`` is the machine's load during the measurement
    (MachineLoad). ``noisy`` is set, with ``noise_reasons``, when a relative spread IQR/median is above
    MAX_REL_IQR, when there are fewer than MIN_REPEATS repeats, or when other work was running."""
    if repeats < 1:
        raise ValueError(f"latency needs at least one repeat, got {repeats}")
    device = input_device(model)
    ids = _input_ids(model, batch_size, seq_len, device)
    models = [model] if reference is None else [model, reference]
    gpus = sorted({p.device for m in models for p in m.parameters() if p.device.type == "cuda"}, key=str)

    def sync() -> None:  # every GPU the models live on (a model spread with --device-map ends on another)
        for gpu in gpus:
            torch.cuda.synchronize(gpu)

    modes = [m.training for m in models]
    times: list[list[float]] = [[] for _ in models]
    pairs = list(zip(models, times))
    try:
        for m in models:
            m.eval()
        with MachineLoad() as load:
            for i in range(warmup + repeats):
                for m, out in pairs if (i - warmup) % 2 == 0 else pairs[::-1]:
                    sync()
                    start = time.perf_counter()
                    m(ids)
                    sync()
                    if i >= warmup:
                        out.append(round((time.perf_counter() - start) * 1000, 2))
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    median, iqr = _spread(times[0])
    threads = torch.get_num_threads()
    reasons = _spread_reasons("model", times[0])
    result = {"latency_ms": median, "iqr_ms": iqr, "min_ms": min(times[0]), "repeats": repeats,
              "times_ms": times[0], "batch_size": batch_size, "seq_len": seq_len, "warmup": warmup,
              "device": str(device), "threads": threads, "kernels": "dense", "timer": TIMER, "load": load.load}
    if reference is not None:
        ref_median, ref_iqr = _spread(times[1])
        lo, hi = speedup_interval(times[0], times[1])
        reasons += _spread_reasons("reference", times[1])
        result |= {"reference_ms": ref_median, "reference_iqr_ms": ref_iqr, "reference_times_ms": times[1],
                   "speedup": round(ref_median / median, 4) if median > 0 else None,
                   "speedup_lo": lo, "speedup_hi": hi,
                   "timer": TIMER + "; interleaved pairs: model, reference, reference, model, ..."}
    reasons += load.reasons(threads)
    return result | {"noisy": bool(reasons), "noise_reasons": reasons}


def semi_structured_linears(model: nn.Module) -> list[nn.Linear]:
    """Linear layers whose weights are exactly 2:4 sparse (candidates for sparse kernels)."""
    from benchsuite.pruning.sparsity import check_nm

    out = []
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.in_features % 4 == 0 and module is not getattr(
                model, "lm_head", None):
            weight = module.weight.detach()
            if float((weight == 0).float().mean()) >= 0.5 and check_nm(weight, 2, 4):
                out.append(module)
    return out


@torch.inference_mode()
def sparse_latency(model: nn.Module, batch_size: int, seq_len: int, repeats: int, warmup: int = 1,
                   reference: nn.Module | None = None) -> dict[str, Any]:
    """Latency with 2:4 weights converted to torch's semi-structured sparse tensors (CUDA only).

    Timed as ``latency`` (median, IQR, machine load, ``noisy``; interleaved with ``reference`` when
    one is given, e.g. the dense model; not ``model`` itself, whose weights are converted). Returns
    ``{"latency_ms": None, "reason": ...}`` where that can't run (CPU, no eligible weights,
    unsupported GPU or dtype); the weights are restored afterwards either way."""
    device = next(model.parameters()).device
    linears = semi_structured_linears(model)
    if not linears:
        return {"latency_ms": None, "reason": "no 2:4-sparse weights"}
    if device.type != "cuda":
        return {"latency_ms": None, "eligible_linears": len(linears),
                "reason": "CPU: no N:M kernels, the 2:4 model runs as a masked dense model"}
    from torch.sparse import to_sparse_semi_structured

    originals = []
    try:
        for module in linears:
            sparse = to_sparse_semi_structured(module.weight.detach())
            originals.append((module, module.weight))
            module.weight = nn.Parameter(sparse, requires_grad=False)
        result = latency(model, batch_size, seq_len, repeats, warmup, reference)
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        return {"latency_ms": None, "eligible_linears": len(linears),
                "reason": f"semi-structured kernels unavailable: {type(exc).__name__}: {exc}"}
    finally:
        for module, weight in originals:
            module.weight = weight
    result["kernels"] = "torch semi-structured sparse (to_sparse_semi_structured)"
    result["converted_linears"] = len(originals)
    return result
