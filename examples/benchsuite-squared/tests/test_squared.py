"""The example plugin's own tests, as a plugin author writes them with ``benchsuite.testing``: no network, no
real model. Run them after installing the plugin (``pip install -e examples/benchsuite-squared``):

    pytest examples/benchsuite-squared/tests
"""

from __future__ import annotations

import pytest
from benchsuite_squared import SquaredWeight

from benchsuite.host import load_registry
from benchsuite.running.runner import Runner, RunRequest
from benchsuite.testing import assert_conforms, save_tiny_model, write_corpus


def test_the_installed_plugin_registers_its_criterion_and_method():
    registry = load_registry()
    assert registry.criteria["squared-weight"] is SquaredWeight
    assert registry.methods["squared-weight"].criterion == "squared-weight"
    plugin = next(p for p in registry.plugins if p.name == "squared")
    assert plugin.error is None and plugin.distribution == "benchsuite-squared"


@pytest.mark.parametrize("reduction", ["sum", "max"])
def test_squared_weight_conforms(reduction):
    """Every registered granularity and schedule, on tiny MHA and GQA models: scores, ratio, masks, parameters,
    determinism (see docs/plugins.md, "Testing your plugin")."""
    report = assert_conforms(SquaredWeight, {"reduction": reduction})
    assert not report.skipped, report.summary()  # element scores: every granularity works


def test_squared_weight_runs_end_to_end(tmp_path):
    """The plugin's method in a full smoke run of the runner, on a tiny checkpoint folder and offline text."""
    text = write_corpus(tmp_path / "text.txt")
    request = RunRequest(methods=["squared-weight", "magnitude-l2"], model=str(save_tiny_model(tmp_path / "model")),
                         ratios=[0.5], profile="smoke", results=tmp_path / "results", tasks=[],
                         corpora=[str(text)], recovery_data=str(text), calibration_data=str(text))
    dense, squared, magnitude = Runner(request, log=lambda _: None).run()
    assert squared["status"] == "ok", squared.get("traceback")
    assert squared["criterion"]["name"] == "squared-weight"
    assert squared["criterion"]["effective_params"] == {"reduction": "sum"}
    assert squared["metrics"]["params"] == magnitude["metrics"]["params"] < dense["metrics"]["params"]
    # w^2 summed over a unit is magnitude-l2's score: the same units go
    assert squared["pruned_units"]["mask_sha256"] == magnitude["pruned_units"]["mask_sha256"]
