"""Honest latency and memory: spread, interleaved comparison, machine load, flags (tiny models, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import torch

from benchsuite.evaluation.latency import MAX_BUSY_OTHER_PCT, latency, sparse_latency
from benchsuite.evaluation.memory import PeakMemory
from tests.conftest import tiny_llama

KEYS = {"latency_ms", "iqr_ms", "min_ms", "repeats", "times_ms", "batch_size", "seq_len", "warmup", "timer",
        "load", "noisy", "noise_reasons", "device", "threads", "kernels"}
REFERENCE_KEYS = {"reference_ms", "reference_iqr_ms", "reference_times_ms", "speedup", "speedup_lo", "speedup_hi"}


@contextmanager
def busy_processes(n: int = 2):
    """``n`` busy-loop subprocesses for the duration of the block (killed, by their handles, afterwards)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.3)  # let them start spinning
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_latency_record_keys_and_json():
    result = latency(tiny_llama(), 1, 16, 3, warmup=2)
    assert set(result) == KEYS
    assert len(result["times_ms"]) == 3 and result["repeats"] == 3 and result["warmup"] == 2
    assert result["min_ms"] <= result["latency_ms"] and result["iqr_ms"] >= 0
    assert set(result["load"]) == {"loadavg_1m", "cpu_count", "busy_other_pct"}
    assert isinstance(result["noisy"], bool) and isinstance(result["noise_reasons"], list)
    json.dumps(result)
    with_ref = latency(tiny_llama(), 1, 16, 3, reference=tiny_llama(seed=1))
    assert set(with_ref) == KEYS | REFERENCE_KEYS and len(with_ref["reference_times_ms"]) == 3
    assert with_ref["speedup_lo"] <= with_ref["speedup"] <= with_ref["speedup_hi"]
    json.dumps(with_ref)


def test_too_few_repeats_are_flagged():
    result = latency(tiny_llama(), 1, 16, 2)
    assert result["noisy"] and any("too few" in r for r in result["noise_reasons"])


def test_interleaved_model_and_reference_alternate():
    model, reference = tiny_llama(), tiny_llama(seed=1).train()
    calls: list[tuple[str, bool]] = []
    model.register_forward_pre_hook(lambda module, _: calls.append(("model", module.training)))
    reference.register_forward_pre_hook(lambda module, _: calls.append(("reference", module.training)))
    latency(model, 1, 16, 4, warmup=1, reference=reference)
    # pairs whose order alternates (ABBA), so that neither always runs second; warm-up pair first
    assert [name for name, _ in calls] == ["reference", "model"] + ["model", "reference", "reference", "model"] * 2
    assert not any(training for _, training in calls) and reference.training  # eval mode, then restored


@pytest.fixture
def one_thread():
    """One torch thread: two threads on a 2-core machine shared with other work stall at every barrier."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def settled(measure, ok, attempts: int = 3) -> dict:
    """``measure()`` until ``ok(result)``, at most ``attempts`` times. Other work on a shared machine
    comes and goes: when the last try still fails and its load sample shows other work, skip."""
    for _ in range(attempts):
        result = measure()
        if ok(result):
            return result
    if result["load"]["busy_other_pct"] > 5 or any(r.startswith("machine load") for r in result["noise_reasons"]):
        pytest.skip(f"the machine is busy with other work, not quiet: load {result['load']}; "
                    f"flagged: {result['noise_reasons']}")
    return result


def test_model_against_itself_is_speedup_one(one_thread):
    model = tiny_llama()
    result = settled(lambda: latency(model, 1, 32, 15, reference=model),
                     lambda r: 0.8 < r["speedup"] < 1.25 and r["speedup_lo"] <= 1.0 <= r["speedup_hi"])
    assert 0.8 < result["speedup"] < 1.25
    assert result["speedup_lo"] <= 1.0 <= result["speedup_hi"]


def test_slowed_reference_gives_speedup(one_thread):
    fast, slow = tiny_llama(), tiny_llama()
    slow.register_forward_pre_hook(lambda *_: time.sleep(0.03))
    result = settled(lambda: latency(fast, 1, 32, 5, reference=slow), lambda r: r["speedup_lo"] > 1.5)
    assert result["reference_ms"] >= 30
    assert result["speedup_lo"] > 1.5 and result["speedup"] >= result["speedup_lo"]


def test_concurrent_cpu_load_is_flagged():
    model = tiny_llama()
    with busy_processes(2):
        result = latency(model, 1, 32, 10)
    assert result["noisy"] is True
    assert any("machine load" in r for r in result["noise_reasons"]), result
    assert result["load"]["busy_other_pct"] > MAX_BUSY_OTHER_PCT


def test_quiet_machine_is_not_flagged(one_thread):
    # one thread: with two on a 2-core CI machine, each barrier waits on whatever else the OS runs, and the
    # spread alone (IQR/median 10.4% there, three tries in a row) flagged a machine with no other work
    model = tiny_llama()
    result = settled(lambda: latency(model, 1, 32, 30), lambda r: not r["noisy"])
    assert not result["noisy"], result


def test_high_load_average_is_flagged(monkeypatch):
    monkeypatch.setattr("benchsuite.evaluation.latency.os.getloadavg", lambda: (50.0, 50.0, 50.0))
    result = latency(tiny_llama(), 1, 16, 3)
    assert result["noisy"] and any("load average" in r for r in result["noise_reasons"])


def test_sparse_latency_without_kernels_keeps_its_answer():
    result = sparse_latency(tiny_llama(), 1, 16, 3)
    assert result == {"latency_ms": None, "reason": "no 2:4-sparse weights"}


def test_sampled_peak_memory_records_samples_and_flags_a_short_phase():
    with PeakMemory("cpu") as mem:
        x = torch.ones(32 * 2**20 // 4)
        time.sleep(0.1)
        del x
    result = mem.result()
    assert {"peak_mb", "baseline_mb", "method", "exact", "samples", "interval_s", "noisy",
            "noise_reasons"} <= set(result)
    assert result["peak_mb"] >= 30 and result["exact"] is False and result["interval_s"] == 0.005
    assert result["samples"] >= 5 and not any("only" in r for r in result["noise_reasons"])
    json.dumps(result)
    with PeakMemory("cpu") as short:
        pass
    assert short.result()["noisy"] and "coarse" in short.result()["noise_reasons"][0]


def test_memory_pressure_is_flagged(monkeypatch):
    import psutil

    swapped = iter([0, 64 * 2**20])
    real = psutil.swap_memory
    monkeypatch.setattr(psutil, "swap_memory", lambda: real()._replace(sout=next(swapped)))
    with PeakMemory("cpu") as mem:
        time.sleep(0.05)
    assert mem.result()["noisy"] and any("swapped out 64 MB" in r for r in mem.result()["noise_reasons"])
