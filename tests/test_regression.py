"""The regression check holds the real model's results to the committed baselines, and a deliberately
broken criterion makes it fail."""

from __future__ import annotations

import json

import pytest

from benchsuite.running import regression

pytestmark = pytest.mark.slow


def test_baselines_cover_the_matrix_with_seed_spread():
    data = json.loads(regression.BASELINES.read_text())
    assert set(data["entries"]) == {method for method, _ in regression.MATRIX}
    assert data["seeds"] == [0, 1, 2]
    for entry in data["entries"].values():
        assert set(entry["exact"]) == {"params", "flops_per_token", "units", "mask_sha256"}
        assert len(entry["mask_sample"]) == 1024  # 4,096 decisions, in hex
        for quality in entry["quality"].values():
            assert len(quality["values"]) == 3 and quality["sd"] >= 0


def test_a_negated_criterion_fails_the_regression_check(monkeypatch, tmp_path):
    from benchsuite_plugins.baselines import Magnitude

    baselines = json.loads(regression.BASELINES.read_text())
    original = Magnitude.element_scores
    monkeypatch.setattr(Magnitude, "element_scores", lambda self, key, module: -original(self, key, module))
    runs = regression.run_matrix([0], tmp_path, ["magnitude-l2"], log=lambda _: None)
    rows, failures, warnings = regression.check(runs, baselines)
    assert failures, "a negated criterion passed the regression check"
    # the other half of every layer went: a failure on any stack, not a near-tie warning
    assert any("mask" in f for f in failures) and not warnings
    assert [row[-1] for row in rows if row[1] == "mask_sha256"][0].startswith("CHANGED")


def test_the_unbroken_criterion_passes(tmp_path):
    baselines = json.loads(regression.BASELINES.read_text())
    runs = regression.run_matrix([0], tmp_path, ["magnitude-l2"], log=lambda _: None)
    rows, failures, _ = regression.check(runs, baselines)
    assert not failures and {row[1] for row in rows} >= {"params", "mask_sha256", "ppl_wiki"}
