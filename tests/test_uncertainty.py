"""Uncertainty on every number: perplexity intervals from per-window NLL, paired comparisons, seeds,
`benchsuite compare` and its gates, and a reference store that never shadows a user's run."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchsuite.api.errors import ConfigError
from benchsuite.cli import main as cli_main
from benchsuite.evaluation.perplexity import perplexity
from benchsuite.evaluation.stats import mean_interval, paired_mean, paired_perplexity, perplexity_interval
from benchsuite.reporting.compare import Gate, compare_runs, pairs_within
from benchsuite.reporting.tables import render
from benchsuite.running.records import REFERENCE_MARKER, load_records, scan
from benchsuite.running.runner import Runner, RunRequest
from tests.conftest import tiny_llama


def test_perplexity_keeps_every_window_and_its_interval():
    model = tiny_llama()
    windows = torch.randint(0, 128, (12, 16), generator=torch.Generator().manual_seed(0))
    result = perplexity(model, windows)
    assert len(result["window_nll"]) == 12 and result["window_tokens"] == 15
    assert math.isclose(math.exp(sum(result["window_nll"]) / result["tokens"]), result["ppl"], rel_tol=1e-6)
    assert result["ci_lo"] < result["ppl"] < result["ci_hi"]
    # the windows one at a time give the same numbers (each window is scored on its own)
    single = [perplexity(model, windows[i:i + 1])["window_nll"][0] for i in range(3)]
    assert np.allclose(single, result["window_nll"][:3], rtol=1e-5)


def test_bootstrap_intervals_cover_and_shrink():
    rng = np.random.default_rng(0)
    nll = rng.normal(3.0, 0.3, 400) * 100
    lo, hi = perplexity_interval(nll, [100] * 400)
    assert lo < math.exp(nll.sum() / 40000) < hi
    lo_small, hi_small = perplexity_interval(nll[:25], [100] * 25)
    assert hi_small - lo_small > hi - lo  # fewer windows, wider interval
    bits = rng.integers(0, 2, 1000)
    lo, hi = mean_interval(bits)
    half = 1.96 * math.sqrt(bits.mean() * (1 - bits.mean()) / 1000)  # the normal approximation
    assert abs((hi - lo) / 2 - half) < 0.005


def test_paired_tests_see_consistent_small_differences_and_not_noise():
    rng = np.random.default_rng(1)
    a = rng.normal(3.0, 0.5, 64) * 255  # windows differ a lot from one another
    b = a * 1.01  # every window 1% worse in NLL
    marginal_a, marginal_b = perplexity_interval(a, [255] * 64), perplexity_interval(b, [255] * 64)
    assert marginal_b[0] < marginal_a[1], "the marginal intervals overlap"
    paired = paired_perplexity(a, b, [255] * 64)
    assert paired["significant"] and paired["lo"] > 0  # pairing removes what the windows share
    noise = a + rng.normal(0, 1.0, 64)
    assert not paired_perplexity(a, noise, [255] * 64)["significant"]
    same = paired_mean([1, 0, 1, 1, 0] * 20, [1, 0, 1, 1, 0] * 20)
    assert same["diff"] == 0 and not same["significant"]


def _fake_run(method, nll, bits=None, seed=0, params=100):
    """A minimal finished record with per-window and per-example data."""
    ppl = math.exp(sum(nll) / (len(nll) * 10))
    lo, hi = perplexity_interval(nll, [10] * len(nll))
    record = {"schema": 1, "method": method, "variant": method, "model": "m", "weights_sha256": "w",
              "profile": "p", "ratio": 0.5, "seed": seed, "status": "ok", "config_hash": method,
              "config": {"method": method, "profile": {}, "weights": "w", "dtype": "f", "tasks": [], "limit": None},
              "granularity": {"label": "structured"},
              "metrics": {"ppl_wiki": ppl, "ppl_wiki_lo": lo, "ppl_wiki_hi": hi, "params": params},
              "measurement": {"ppl_wiki": {"window_nll": list(nll), "window_tokens": 10}}}
    if bits is not None:
        record["metrics"]["acc_avg"] = record["metrics"]["acc_piqa"] = sum(bits) / len(bits)
        record["measurement"]["zeroshot"] = {"tasks": {"piqa": {"correct": "".join(map(str, bits)), "n": len(bits)}}}
    return record


def test_overlapping_intervals_are_never_marked_different():
    rng = np.random.default_rng(3)
    nll = list(rng.normal(30, 8, 64))
    base, slightly = _fake_run("base", nll), _fake_run("slightly", [x * 1.01 for x in nll])
    d = next(d for d in compare_runs(base, slightly) if d.metric == "ppl_wiki")
    assert d.lo > 0  # every window is worse: the paired interval excludes zero ...
    assert slightly["metrics"]["ppl_wiki_lo"] < base["metrics"]["ppl_wiki_hi"]  # ... the runs' intervals overlap
    assert not d.significant and "overlap" in d.note
    assert not Gate.parse("ppl_wiki:+0%").fails(d)


def test_compare_runs_and_gates():
    rng = np.random.default_rng(2)
    nll = list(rng.normal(30, 2, 64))
    base = _fake_run("base", nll, [1, 1, 0, 1] * 25)
    worse = _fake_run("worse", [x * 1.05 for x in nll], [1, 0, 0, 0] * 25, params=90)
    diffs = {d.metric: d for d in compare_runs(base, worse)}
    assert diffs["ppl_wiki"].significant and diffs["ppl_wiki"].diff > 0.05
    assert diffs["acc_piqa"].significant and diffs["acc_piqa"].diff == pytest.approx(-0.5)
    assert diffs["params"].diff == -10 and diffs["params"].lo is None
    assert Gate.parse("ppl_wiki:+2%").fails(diffs["ppl_wiki"])
    assert not Gate.parse("ppl_wiki:+90%").fails(diffs["ppl_wiki"])
    assert Gate.parse("acc_avg:-0.1").fails(diffs["acc_avg"])
    with pytest.raises(Exception, match="gets worse when it rises"):
        Gate.parse("ppl_wiki:-2%")
    with pytest.raises(Exception, match="expected METRIC"):
        Gate.parse("ppl_wiki>2")
    # a run compared with itself: nothing is marked, no gate fails
    for d in compare_runs(base, copy.deepcopy(base)):
        assert not d.significant and not Gate.parse("ppl_wiki:+0%").fails(d)


def test_unknown_baseline_names_the_finished_variants():
    records = [{"status": "ok", "method": "random", "variant": "random+lora"},
               {"status": "ok", "method": "llm-pruner", "variant": None},
               {"status": "ok", "method": "dense", "variant": None}]
    with pytest.raises(ConfigError, match=r"did you mean random\+lora\? \(results folders write random\+lora as "
                       r"random_lora\) \(finished: llm-pruner, random\+lora\)"):
        pairs_within(records, "random_lora", None)
    with pytest.raises(ConfigError, match="'llm-prune' to compare against; did you mean llm-pruner"):
        pairs_within(records, "llm-prune", None)


def _request(model_dir, results, **kw):
    return RunRequest(methods=kw.pop("methods", ["magnitude-l2", "random"]), model=str(model_dir), ratios=[0.5],
                      profile="smoke", results=results, ratio_basis="units", **kw)


def test_seeds_show_n_and_spread_and_compare_pairs_them(tiny_model_dir, offline, tmp_path, capsys):
    Runner(_request(tiny_model_dir, tmp_path, seeds=[0, 1], **offline), log=lambda _: None).run()
    table = render(load_records(tmp_path))
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    assert "| n " in header
    random_row = next(line for line in table.splitlines() if line.startswith("| random"))
    assert "| 0,1 " in random_row and "| 2 " in random_row and "(sd " in random_row and "±" in random_row
    csv = render(load_records(tmp_path), "csv")
    assert "ppl_text_lo" in csv and "ppl_text_sd" in csv
    assert cli_main(["compare", "--results", str(tmp_path), "--baseline", "magnitude-l2", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["method"], r["seed"]) for r in rows} == {("random", 0), ("random", 1)}
    ppl = [r for r in rows if r["metric"] == "ppl_text"]
    assert ppl and all(r["lo"] <= r["diff"] <= r["hi"] for r in ppl)
    # two folders: a copy compared with itself has no significant difference and passes any gate
    shutil.copytree(tmp_path, tmp_path.parent / "copy")
    assert cli_main(["compare", "--results", str(tmp_path), "--against", str(tmp_path.parent / "copy"),
                     "--fail-if", "ppl_text:+0%"]) == 0
    out = capsys.readouterr().out
    assert "paired run(s)" in out and " * " not in out.replace("* = ", "")
    assert cli_main(["compare", "--results", str(tmp_path), "--baseline", "magnitude-l2", "--fail-if",
                     "ppl_text:-1%"]) == 2  # a gate pointing the wrong way is a usage error


def test_reference_results_never_shadow_a_users_run(tiny_model_dir, offline, tmp_path):
    reference = tmp_path / "reference"
    Runner(_request(tiny_model_dir, reference, methods=["random"], **offline), log=lambda _: None).run()
    (reference / REFERENCE_MARKER).write_text("reference results\n")
    assert len(load_records(reference)) == 2  # read as a store of its own
    assert scan(tmp_path) == ([], [])  # left out of the folder above it
    lines = []
    records = Runner(_request(tiny_model_dir, tmp_path, methods=["random"], **offline), log=lines.append).run()
    assert not any("done before" in line for line in lines), "a reference record was taken as this run's"
    assert all(Path(r["_path"]).parents[3] == tmp_path for r in records[1:])


def test_committed_reference_is_separate_from_results():
    root = Path(__file__).resolve().parent.parent
    assert (root / "results" / "reference" / REFERENCE_MARKER).is_file()
    assert not [p for p in (root / "results").iterdir() if p.name != "reference" and p.suffix == ".json"]
