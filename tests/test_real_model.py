"""Behaviour on the real default model (SmolLM2-135M): perplexity is sane and pruning hurts in order."""

from __future__ import annotations

import pytest

from benchsuite.running.runner import Runner, RunRequest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def records(tmp_path_factory, default_model_dir):
    request = RunRequest(methods=["magnitude-l2"], model="smollm2-135m", ratios=[0.2, 0.5], profile="smoke",
                         results=tmp_path_factory.mktemp("results"), tasks=[])
    return {r["ratio"]: r for r in Runner(request, log=lambda _: None).run()}


def test_dense_perplexity_is_sane(records):
    dense = records[0.0]["metrics"]
    for corpus in ("wiki", "c4"):
        assert 5 < dense[f"ppl_{corpus}"] < 100, dense  # vocabulary is 49,152; random weights give ~55,000
    assert dense["params"] == 134_515_008


def test_more_pruning_is_worse(records):
    for corpus in ("wiki", "c4"):
        ppl = [records[r]["metrics"][f"ppl_{corpus}"] for r in (0.0, 0.2, 0.5)]
        assert ppl[0] < ppl[1] < ppl[2], (corpus, ppl)
    params = [records[r]["metrics"]["params"] for r in (0.0, 0.2, 0.5)]
    assert params[0] > params[1] > params[2]
