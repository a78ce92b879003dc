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
