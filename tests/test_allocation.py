"""Allocations: OWL's formula on known scores, profiles, the target hit, refusals, the records, a run end to end, and a
third-party allocation from one file."""

from __future__ import annotations

import json

import pytest
import torch

from benchsuite.api import ConfigError
from benchsuite.api.allocation import check_ratios
from benchsuite.host import get_registry
from benchsuite.running.plan import parse_allocation
from benchsuite_plugins.allocations import OWL, Profile, Uniform
from tests.conftest import bench
from tests.test_cli import smoke


def test_owl_is_the_papers_formula():
    """D_l = fraction of scores above m * the layer's mean; min-max scaled into 2 * lam; densities shifted to average
    1 - target; sparsity 1 - density: the layer with most outliers is pruned least."""
    scores = {0: [torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 100.0])],  # one outlier in ten
              1: [torch.ones(10)],                                                        # none
              2: [torch.tensor([1.0] * 8 + [60.0, 60.0])]}                                  # two... of ten
    owl = OWL.create({"m": 5.0, "lam": 0.1})
    d = owl.outlier_ratios(scores)
    mean0, mean2 = (9 + 100) / 10, (8 + 120) / 10
    assert d == {0: pytest.approx(float(100 > 5 * mean0) / 10), 1: 0.0, 2: pytest.approx(float(60 > 5 * mean2) * 0.2)}
    sizes = {0: 10, 1: 10, 2: 10}
    ratios = owl.layer_ratios([0, 1, 2], 0.5, sizes, scores)
    low, high = min(d.values()), max(d.values())
    spread = {k: (v - low) / (high - low) * 0.2 for k, v in d.items()}
    shift = sum(spread.values()) / 3
    assert ratios == pytest.approx({k: 1 - (spread[k] - shift + 0.5) for k in d})
    assert check_ratios("owl", ratios, sizes, 0.5)  # the target, exactly
    assert max(ratios.values()) - min(ratios.values()) == pytest.approx(0.2)


def test_uniform_and_profile(tmp_path):
    sizes = {3: 100, 4: 300}
    assert Uniform.create().layer_ratios([3, 4], 0.4, sizes, None) == {3: 0.4, 4: 0.4}
    file = tmp_path / "p.json"
    file.write_text(json.dumps([0.0, 0.0, 0.0, 0.2, 0.6]))
    ratios = Profile.create({"file": str(file)}).layer_ratios([3, 4], 0.5, sizes, None)
    assert ratios[4] - ratios[3] == pytest.approx(0.4)  # the profile's shape, shifted to the target
    assert check_ratios("profile", ratios, sizes, 0.5)
    with pytest.raises(ValueError, match="no ratio for layers"):
        Profile.create({"file": str(file)}).layer_ratios([5], 0.5, {5: 1}, None)
    with pytest.raises(ValueError, match="average 0.6"):
        check_ratios("x", {3: 0.6, 4: 0.6}, sizes, 0.5)


def test_allocation_names_and_refusals():
    registry = get_registry()
    assert {"uniform", "owl", "profile"} <= set(registry.allocations)
    assert parse_allocation("uniform", registry) is None and parse_allocation(None, registry) is None
    assert parse_allocation("owl:lam=0.1", registry) == ("owl", {"lam": 0.1})
    with pytest.raises(ConfigError, match="unknown allocation 'owel'.*did you mean owl"):
        parse_allocation("owel", registry)
    with pytest.raises(ConfigError, match="accepts"):
        parse_allocation("owl:lamda=0.1", registry)


def test_owl_with_wanda_runs_hits_the_target_and_is_recorded(tmp_path, tiny_model_dir, offline):
    results = tmp_path / "results"
    common = ["run", "--model", str(tiny_model_dir), "--ratios", "0.5", "--results", str(results), *smoke(offline),
              "--metrics", "perplexity,params"]
    result = bench(*common, "--methods", "wanda,magnitude", "--allocation", "owl:lam=0.08")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in results.rglob("*.json")]
    for record in (r for r in records if r.get("variant")):
        allocation = record["allocation"]
        assert record["config"]["allocation"] == {"name": "owl", "lam": 0.08}
        ratios = {int(k): v for k, v in allocation["layer_ratios"].items()}
        assert len(set(round(v, 6) for v in ratios.values())) > 1  # not uniform
        assert max(ratios.values()) - min(ratios.values()) == pytest.approx(0.16, abs=1e-6)
        assert sum(ratios.values()) / len(ratios) == pytest.approx(0.5)  # equal layers: the plain mean
        pruned = {e["layer"]: e["pruned"] / e["of"] for e in record["pruned_units"]["per_layer"]}
        for layer, ratio in ratios.items():  # each layer pruned at its ratio (within a weight per row)
            assert pruned[layer] == pytest.approx(ratio, abs=0.02)
        total = record["pruned_units"]["total"]["weights"]
        assert total["pruned"] / total["of"] == pytest.approx(0.5, abs=0.005)
    uniform = bench(*common, "--methods", "wanda")  # without --allocation: uniform, settings not naming it
    assert uniform.returncode == 0
    plain = [json.loads(p.read_text()) for p in results.rglob("wanda/*.json")]
    assert sum("allocation" in r["config"] for r in plain) == 1 and len(plain) == 2
    only = bench("report", "--results", str(results), "--methods", "wanda", "--allocation", "owl", "--format", "json")
    assert [r["config"]["allocation"]["name"] for r in json.loads(only.stdout) if r.get("variant")] == ["owl"]
    plain = bench("report", "--results", str(results), "--methods", "wanda", "--allocation", "uniform",
                  "--recovery", "lora,none", "--format", "json")
    assert [("allocation" in r["config"]) for r in json.loads(plain.stdout) if r.get("variant")] == [False]
    from benchsuite.reporting.compare import pairs_within

    runs = [json.loads(p.read_text()) for p in results.rglob("wanda/*.json")]
    owl_run = next(r for r in runs if "allocation" in r["config"])
    other = owl_run | {"variant": "other", "method": "other"}
    for order in (runs, runs[::-1]):  # a run pairs with the baseline's run of its own allocation, in any order
        (pair,) = pairs_within([*order, other], "wanda", ["other"])
        assert pair[0] is owl_run
    refused = bench(*common, "--methods", "wanda-2:4", "--allocation", "owl")
    assert refused.returncode == 2 and "N:M fixes every row's density" in refused.stderr
    from benchsuite.cli import stored_records
    from benchsuite.reporting.figures import figures

    figs = figures(stored_records(results))
    try:
        drawn = next(f for f in figs if f.name == "layer-ratios").figure.axes[0]
        labels = sorted(line.get_label() for line in drawn.get_lines() if not line.get_label().startswith("_"))
        assert labels == ["magnitude · owl · 0.5 · seed 0", "wanda · owl · 0.5 · seed 0"]
    finally:
        for f in figs:
            f.close()


ONE_FILE = '''
from benchsuite import hookimpl
from benchsuite.api.allocation import Allocation

BENCHSUITE_API = "2.3"


class LastHeavier(Allocation):
    """More pruning in later layers: a linear ramp of width spread around the target."""

    name = "ramp"
    spread: float = 0.2

    def layer_ratios(self, layers, ratio, sizes, scores):
        n = len(layers)
        raw = {layer: ratio + self.spread * (i / max(n - 1, 1) - 0.5) for i, layer in enumerate(layers)}
        mean = sum(raw[l] * sizes[l] for l in layers) / sum(sizes[l] for l in layers)
        return {layer: r - mean + ratio for layer, r in raw.items()}


@hookimpl
def benchsuite_register_allocations(register):
    register(LastHeavier)
'''


def test_a_third_party_allocation_in_one_file_runs(tmp_path, tiny_model_dir, offline):
    plugin = tmp_path / "ramp.py"
    plugin.write_text(ONE_FILE)
    results = tmp_path / "results"
    result = bench("run", "--plugin", str(plugin), "--model", str(tiny_model_dir), "--methods", "magnitude",
                   "--ratios", "0.4", "--allocation", "ramp:spread=0.3", "--results", str(results), *smoke(offline),
                   "--metrics", "params")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(next(results.rglob("magnitude/*.json")).read_text())
    ratios = [record["allocation"]["layer_ratios"][k] for k in sorted(record["allocation"]["layer_ratios"], key=int)]
    assert ratios == sorted(ratios) and ratios[-1] - ratios[0] == pytest.approx(0.3)


def test_global_ranking_is_one_threshold_across_layers():
    from benchsuite_plugins.allocations import Global

    scores = {0: [torch.arange(1.0, 11.0)], 1: [torch.arange(11.0, 21.0)]}  # layer 1's scores all higher
    sizes = {0: 10, 1: 10}
    raw = Global.create({"normalize": "none"}).layer_ratios([0, 1], 0.4, sizes, scores)
    assert raw == pytest.approx({0: 0.8, 1: 0.0})  # the 8 lowest weights of all are layer 0's
    assert check_ratios("global", raw, sizes, 0.4)
    capped = Global.create({"normalize": "none", "cap": 0.6}).layer_ratios([0, 1], 0.4, sizes, scores)
    assert capped == pytest.approx({0: 0.6, 1: 0.2})
    same = Global.create({"normalize": "mean"}).layer_ratios([0, 1], 0.4, sizes, {0: [torch.arange(1.0, 11.0)],
                                                                                  1: [torch.arange(1.0, 11.0) * 7]})
    assert same == pytest.approx({0: 0.4, 1: 0.4})  # per-layer scale removed by the normalisation


def test_structured_pruning_takes_each_layers_ratio():
    """Structured units at per-layer ratios: each layer's heads and channels at its ratio (within the rounding of a
    unit), the kind's total the sum of the layers' ideal counts; without an allocation, the counts are unchanged."""
    from benchsuite.pruning.structure import prune_counts
    from benchsuite.testing import tiny_llama
    from benchsuite_plugins.granularities import Structured

    model = tiny_llama(6, 2, 4)
    gran = Structured()
    groups = gran.units(model, [0, 1, 2, 3])
    scores = [torch.rand(g.size, generator=torch.Generator().manual_seed(i)) for i, g in enumerate(groups)]
    uniform = [int((~m).sum()) for m in gran.select(groups, scores, 0.5)]
    assert prune_counts(groups, 0.5) == prune_counts(groups, 0.5, ratios=[0.5] * len(groups))
    gran.allocate({0: 0.2, 1: 0.4, 2: 0.6, 3: 0.8}, 0.5)
    masks = gran.select(groups, scores, 0.5)
    mlp = {g.layer: int((~m).sum()) for g, m in zip(groups, masks) if g.kind == "mlp"}
    width = next(g.size for g in groups if g.kind == "mlp")
    assert [mlp[layer] for layer in range(4)] == [round(r * width) for r in (0.2, 0.4, 0.6, 0.8)]
    assert sum(mlp.values()) == sum(n for g, n in zip(groups, uniform) if g.kind == "mlp")


def test_owl_with_a_structured_method_scores_elements_and_hits_the_target(tmp_path, tiny_model_dir, offline):
    results = tmp_path / "results"
    result = bench("run", "--model", str(tiny_model_dir), "--methods", "llm-pruner+none", "--ratios", "0.5",
                   "--ratio-basis", "units", "--allocation", "owl", "--results", str(results), *smoke(offline),
                   "--metrics", "params")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(next(results.rglob("llm-pruner_none/*.json")).read_text())
    ratios = {int(k): v for k, v in record["allocation"]["layer_ratios"].items()}
    assert len(record["allocation"]["outlier_ratios"]) == len(ratios) == len(record["layers_pruned"])
    units = record["pruned_units"]["total"]
    assert units["mlp"]["pruned"] / units["mlp"]["of"] == pytest.approx(0.5, abs=1 / units["mlp"]["of"] + 1e-9)
