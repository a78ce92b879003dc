"""The fidelity metric (KL divergence to the dense model's next-token distributions, top-1 agreement) against a
direct computation, and in a run: recorded with intervals, shown as columns, nothing for the dense model."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from benchsuite.evaluation.fidelity import distance_to_dense
from benchsuite.testing import tiny_model
from tests.conftest import bench
from tests.test_cli import smoke


def test_kl_and_top1_agreement_are_what_a_direct_computation_gives():
    dense, pruned = tiny_model("llama", 6, 2, 2, seed=0), tiny_model("llama", 6, 2, 2, seed=1)
    windows = torch.randint(0, 256, (5, 17), generator=torch.Generator().manual_seed(0))
    got = distance_to_dense(pruned, dense, windows, batch_size=2)
    with torch.no_grad():
        p = F.log_softmax(dense(windows).logits[:, :-1].double(), -1)
        q = F.log_softmax(pruned(windows).logits[:, :-1].double(), -1)
    kl = F.kl_div(q, p, log_target=True, reduction="none").sum(-1)  # KL(P || Q) per token
    assert got["kl"] == pytest.approx(kl.mean().item(), rel=1e-5)
    assert got["window_kl"] == pytest.approx(kl.mean(1).tolist(), rel=1e-4)
    assert got["top1"] == pytest.approx((p.argmax(-1) == q.argmax(-1)).double().mean().item())
    assert got["kl_lo"] <= got["kl"] <= got["kl_hi"] and got["top1_lo"] <= got["top1"] <= got["top1_hi"]
    same = distance_to_dense(dense, dense, windows)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["top1"] == 1.0


def test_gemma_style_bos_is_context_only():
    dense, pruned = tiny_model("gemma3", 6, 2, 2, seed=0), tiny_model("gemma3", 6, 2, 2, seed=1)
    windows = torch.randint(0, 256, (3, 9), generator=torch.Generator().manual_seed(0))
    got = distance_to_dense(pruned, dense, windows, bos=257)
    with torch.no_grad():
        inputs = torch.cat([torch.full((3, 1), 257), windows], 1)
        p = F.log_softmax(dense(inputs).logits[:, 1:-1].double(), -1)
        q = F.log_softmax(pruned(inputs).logits[:, 1:-1].double(), -1)
    assert got["tokens_per_window"] == 8
    assert got["kl"] == pytest.approx(F.kl_div(q, p, log_target=True, reduction="none").sum(-1).mean().item(),
                                      rel=1e-5)


def test_a_run_with_fidelity_records_and_shows_it(tmp_path, tiny_model_dir, offline):
    results = tmp_path / "results"
    result = bench("run", "--model", str(tiny_model_dir), "--methods", "magnitude-l2,random", "--ratios", "0.5",
                   "--results", str(results), "--metrics", "perplexity,fidelity", "--view", "full", *smoke(offline))
    assert result.returncode == 0, result.stderr
    records = {r.get("variant", "dense"): r for r in (json.loads(p.read_text()) for p in results.rglob("*.json"))}
    label = next(k for k in records["random"]["metrics"] if k.startswith("kl_") and k.count("_") == 1)[3:]
    assert f"kl_{label}" not in records["dense"]["metrics"]  # nothing measured for the dense model itself
    for name in ("magnitude-l2", "random"):
        m = records[name]["metrics"]
        assert m[f"kl_{label}"] > 0 and 0 <= m[f"top1_{label}"] < 1
        assert m[f"kl_{label}_lo"] <= m[f"kl_{label}"] <= m[f"kl_{label}_hi"]
        assert len(records[name]["measurement"][f"kl_{label}"]["window_kl"]) <= 32
    assert f"KL {label}" in result.stdout and f"top-1 {label} %" in result.stdout
    from benchsuite.cli import stored_records
    from benchsuite.reporting.figures import figures

    paired = bench("compare", "--results", str(results), "--baseline", "magnitude-l2", "--methods", "random",
                   "--metrics", f"kl_{label},top1_{label}")
    assert paired.returncode == 0, paired.stderr
    assert paired.stdout.count("paired over") == 2 and f"kl_{label}" in paired.stdout
    kl_row = next(line for line in paired.stdout.splitlines() if f"| kl_{label}" in line)
    assert "| [" in kl_row  # the paired interval of the KL difference, in nats
    figs = figures(stored_records(results))
    try:  # drawn against the ratio beside perplexity
        labels = [ax.get_ylabel() for ax in figs[0].figure.axes if ax.get_ylabel()]
        assert f"KL to dense, {label} (log)" in labels and f"top-1 agreement with dense, {label} (%)" in labels
    finally:
        for f in figs:
            f.close()


def test_fidelity_shares_the_perplexity_pass_and_equals_its_own_computation(tmp_path, tiny_model_dir, offline):
    """By default fidelity reads the dense model's log-probabilities and each pruned model's logits from the
    perplexity passes; alone (no perplexity pass) or resumed (the dense record written earlier), it runs its own
    passes. All give the same numbers, to the last bit."""

    def run(results, methods, metrics):
        result = bench("run", "--model", str(tiny_model_dir), "--methods", methods, "--ratios", "0.5",
                       "--results", str(results), *(("--metrics", metrics) if metrics else ()), "--tasks", "none",
                       *smoke(offline))
        assert result.returncode == 0, result.stderr
        return {r.get("variant", "dense"): r for r in (json.loads(p.read_text()) for p in results.rglob("*.json"))}

    shared = run(tmp_path / "a", "magnitude-l2", None)  # the default metrics
    label = next(k for k in shared["magnitude-l2"]["metrics"] if k.startswith("kl_") and k.count("_") == 1)[3:]
    assert "fidelity" in shared["magnitude-l2"]["config"]["metrics"]
    assert shared["magnitude-l2"]["measurement"][f"kl_{label}"]["pass"] == "shared with perplexity"
    kept = shared["dense"]["measurement"][f"kl_{label}"]  # what the dense run holds for them, and says so
    assert kept["kept_mb"] > 0 and "peak_mem_eval_mb" in kept["memory"] and f"kl_{label}" not in shared["dense"][
        "metrics"]
    alone = run(tmp_path / "b", "magnitude-l2", "fidelity")
    assert alone["magnitude-l2"]["measurement"][f"kl_{label}"]["pass"] == "its own"
    resumed = run(tmp_path / "a", "magnitude-l2,random", None)  # the dense record is kept: no dense pass to share
    assert resumed["random"]["measurement"][f"kl_{label}"]["pass"] == "its own"
    again = run(tmp_path / "c", "random", None)
    for key in (f"kl_{label}", f"kl_{label}_lo", f"kl_{label}_hi", f"top1_{label}", f"top1_{label}_lo"):
        assert alone["magnitude-l2"]["metrics"][key] == shared["magnitude-l2"]["metrics"][key], key
        assert resumed["random"]["metrics"][key] == again["random"]["metrics"][key], key


def _record(method: str, bits_by_task: dict[str, list[int]], doc_ids: dict[str, list[list[int]]] | None = None):
    from benchsuite.evaluation.stats import encode_bits

    tasks = {task: {"n": len(bits), "value": sum(bits) / len(bits), "correct": encode_bits(bits)}
             | ({"doc_ids": doc_ids[task]} if doc_ids and task in doc_ids else {})
             for task, bits in bits_by_task.items()}
    return {"method": method, "status": "ok", "model": "m", "weights_sha256": "w", "profile": "p",
            "metrics": {}, "measurement": {"zeroshot": {"tasks": tasks}}}


def test_flips_pair_each_document_with_the_dense_models_answer():
    from benchsuite.reporting.flips import flips, with_flips

    dense = _record("dense", {"piqa": [1, 1, 0, 0, 1], "boolq": [1, 0, 1, 0]})
    pruned = _record("random", {"piqa": [1, 0, 1, 0, 1], "boolq": [1, 0, 1, 0]})
    values, counts = flips(dense, pruned)
    assert values["flips_piqa"] == 2 / 5 and values["flips_boolq"] == 0.0  # same accuracy 3/5, two answers changed
    assert values["flips_avg"] == (2 / 5 + 0) / 2
    assert counts["piqa"] == {"examples": 5, "flips": 2, "to_wrong": 1, "to_right": 1, "bits": "01100",
                              "documents": [0, 1, 2, 3, 4]}
    assert values["flips_piqa_lo"] <= values["flips_piqa"] <= values["flips_piqa_hi"]
    # the same accuracy hides them: the accuracy difference is 0, the flips are not
    other = _record("random", {"piqa": [0, 1, 1, 0, 1, 1]}, doc_ids={"piqa": [[0, 6]]})
    assert flips(dense, other) == ({}, {})  # other documents (another --limit): nothing paired
    shown = with_flips([dense, pruned])
    assert shown[1]["metrics"]["flips_avg"] == values["flips_avg"] and "flips_avg" not in dense["metrics"]
    assert {c["key"] for c in shown[1]["metric_columns"]} == {"flips_piqa", "flips_boolq", "flips_avg"}


def test_documents_are_paired_by_id_not_by_position():
    from benchsuite.reporting.flips import flips

    dense = _record("dense", {"piqa": [1, 0, 1]}, doc_ids={"piqa": [[0, 3]]})
    pruned = _record("random", {"piqa": [1, 0, 1]}, doc_ids={"piqa": [[2, 3], [0, 2]]})  # docs 2, 0, 1
    values, _ = flips(dense, pruned)
    # doc 0: dense 1, pruned 0; doc 1: dense 0, pruned 1; doc 2: dense 1, pruned 1
    assert values["flips_piqa"] == 2 / 3


def test_compare_pairs_flips_over_the_same_examples():
    from benchsuite.reporting.compare import compare_runs
    from benchsuite.reporting.flips import with_flips

    dense = _record("dense", {"piqa": [1, 1, 0, 0, 1, 1, 0, 1]})
    one = _record("random", {"piqa": [1, 0, 0, 0, 1, 1, 0, 1]}) | {"seed": 0, "ratio": 0.5}
    two = _record("magnitude", {"piqa": [0, 0, 1, 1, 0, 1, 0, 1]}) | {"seed": 0, "ratio": 0.5}
    _, a, b = with_flips([dense, one, two])
    (d,) = compare_runs(a, b, ["flips_piqa"])
    assert (d.a, d.b) == (1 / 8, 5 / 8) and d.diff == pytest.approx(0.5) and d.lo <= 0.5 <= d.hi
    assert d.note.startswith("paired over 8 examples")
