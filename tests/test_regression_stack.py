"""Mask digests are held exactly only on the software/hardware stack the baselines were made on (fast:
no model runs)."""

from __future__ import annotations

import pytest

from benchsuite.running import regression


def _run(digest: str) -> dict:
    return {"metrics": {"params": 1, "flops_per_token": 2, "ppl_wiki": 10.0, "ppl_c4": 20.0},
            "pruned_units": {"total": {"mlp": {"pruned": 3}}, "mask_sha256": digest}}


@pytest.mark.parametrize("key", regression.STACK)
def test_a_changed_digest_fails_on_the_same_stack_and_warns_on_another(key):
    here = regression.environment()
    assert regression.stack_differences(dict(here), here) == []
    other = dict(here, **{key: "something else"})
    assert regression.stack_differences(other, here) == [f"{key} something else -> {here[key]}"]
    older = {k: v for k, v in here.items() if k != key}  # baselines made before the key was recorded
    assert regression.stack_differences(older, here) == [f"{key} unrecorded -> {here[key]}"]

    entry = {"exact": {"params": 1, "flops_per_token": 2, "units": {"mlp": 3}, "mask_sha256": "a"}, "quality": {}}
    for environment, same in ((here, True), (other, False), (older, False)):
        baselines = {"environment": environment, "entries": {"m": entry}}
        _, failures, warnings = regression.check({"m": {0: _run("b")}}, baselines)
        assert bool(failures) is same and bool(warnings) is not same, (environment, failures, warnings)
        if not same:
            assert key in warnings[0]
        _, failures, warnings = regression.check({"m": {0: _run("a")}}, baselines)
        assert not failures and not warnings


def test_the_environment_names_the_kernels_torch_dispatches_to():
    import torch

    assert regression.environment()["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def _sampled(digest: str, sample: str) -> dict:
    run = _run(digest)
    run["pruned_units"]["mask_sample"] = sample
    return run


def _flip(sample: str, bits: int) -> str:
    """``sample`` with its first ``bits`` bits flipped."""
    raw = bytearray(bytes.fromhex(sample))
    for i in range(bits):
        raw[i // 8] ^= 0x80 >> (i % 8)
    return raw.hex()


def test_on_another_stack_near_ties_warn_and_a_wholesale_change_fails():
    here = regression.environment()
    other = dict(here, torch="another torch")
    base_sample = "0f" * 512  # 4096 bits
    entry = {"exact": {"params": 1, "flops_per_token": 2, "units": {"mlp": 3}, "mask_sha256": "a"},
             "quality": {}, "mask_sample": base_sample}
    for environment in (other, here):
        baselines = {"environment": environment, "entries": {"m": entry}}
        few = _sampled("b", _flip(base_sample, 430))  # 10.5%, as SparseGPT 2:4 across AVX2 / AVX512
        _, failures, warnings = regression.check({"m": {0: few}}, baselines)
        if environment is other:
            assert not failures and "89.5% of sampled decisions agree" in warnings[0]
        else:  # on the baselines' own stack every changed digest fails
            assert failures and not warnings
        many = _sampled("b", _flip(base_sample, 1229))  # 30%: more than a float order flips
        rows, failures, warnings = regression.check({"m": {0: many}}, baselines)
        assert failures and not warnings and "30.0%" in failures[0]
        assert [row[-1] for row in rows if row[1] == "mask_sha256"] == ["CHANGED (70.0% agree)"]
    # baselines made before samples were kept: a changed digest on another stack stays a warning
    old = {"environment": other, "entries": {"m": {k: v for k, v in entry.items() if k != "mask_sample"}}}
    _, failures, warnings = regression.check({"m": {0: _sampled("b", _flip(base_sample, 4096))}}, old)
    assert not failures and warnings


def test_the_mask_sample_tracks_how_many_decisions_changed():
    import torch

    from benchsuite.running.pipeline import MASK_SAMPLE, mask_sample, sample_agreement

    generator = torch.Generator().manual_seed(1)
    masks = [torch.rand(64, 96, generator=generator) > 0.5, torch.rand(50, generator=generator) > 0.5,
             torch.rand(3, 700, generator=generator) > 0.3]
    sample = mask_sample(masks)
    assert len(sample) == MASK_SAMPLE // 4 and mask_sample([m.clone() for m in masks]) == sample
    assert sample_agreement(sample, sample) == 1.0
    assert sample_agreement(sample, mask_sample([~m for m in masks])) == 0.0  # the other half went
    # the sampled bits are the masks' own: they keep the masks' share of kept entries, and each mask is reached
    kept = sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
    bits = bin(int(sample, 16)).count("1") / MASK_SAMPLE
    assert abs(bits - kept) < 0.03
    flipped = [m.clone() for m in masks]
    flipped[2] = ~flipped[2]  # the last mask alone: about its share of the positions changes
    share = masks[2].numel() / sum(m.numel() for m in masks)
    assert abs((1 - sample_agreement(sample, mask_sample(flipped))) - share) < 0.03
    assert mask_sample([]) == "" and sample_agreement("", "") == 0.0


def test_a_check_on_other_kernels_runs_pinned_to_the_baselines(monkeypatch):
    import subprocess
    import sys

    import torch

    here = torch.backends.cpu.get_cpu_capability()
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert regression._with_baseline_kernels({"cpu_capability": here}, []) is None
    assert regression._with_baseline_kernels({}, []) is None  # baselines that never recorded it
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, env: calls.append((cmd, env)) or
                        subprocess.CompletedProcess(cmd, 3))
    assert regression._with_baseline_kernels({"cpu_capability": "DEFAULT"}, ["--methods", "random"]) == 3
    (cmd, env), = calls
    assert cmd == [sys.executable, "-m", "benchsuite.running.regression", "--methods", "random"]
    assert env["ATEN_CPU_CAPABILITY"] == "default" and "MKL_ENABLE_INSTRUCTIONS" not in env
    assert regression._with_baseline_kernels({"cpu_capability": "AVX2" if here != "AVX2" else "AVX512"}, []) == 3
    wanted = calls[-1][1]["ATEN_CPU_CAPABILITY"].upper()  # MKL and oneDNN held to the same instruction set
    assert {k: calls[-1][1][k] for k in regression.LIBRARY_ISA[wanted]} == regression.LIBRARY_ISA[wanted]
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")  # already pinned: the child does not pin again
    assert regression._with_baseline_kernels({"cpu_capability": "AVX2"}, []) is None and len(calls) == 2


def test_torch_honours_the_pinned_kernels():
    import os
    import subprocess
    import sys

    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, ATEN_CPU_CAPABILITY="default"),
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "DEFAULT"
