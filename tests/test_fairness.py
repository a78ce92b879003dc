"""Fair, reproducible comparisons: seeding, equal recovery, out-of-domain recovery data, matched
parameter counts, the papers' recipes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from benchsuite.api import ConfigError
from benchsuite.api.profiles import get_profile
from benchsuite.running.finetune import LoRAConfig, attach_lora
from benchsuite.running.runner import Runner, RunRequest, seed_everything
from tests.conftest import tiny_llama

#: metrics that are measurements of the machine, not of the pruned model
VOLATILE = ("latency", "speedup", "peak_mem", "time_s")


def _request(model_dir, results, methods, **kw):
    return RunRequest(methods=list(methods), model=str(model_dir), ratios=kw.pop("ratios", [0.5]),
                      profile=kw.pop("profile", "smoke"), results=results,
                      ratio_basis=kw.pop("ratio_basis", "units"), **kw)


def _stable(record):
    return {k: v for k, v in record["metrics"].items() if not any(t in k for t in VOLATILE)}


def _lora_a(seed):
    model = tiny_llama()  # (seeds the global RNG itself)
    seed_everything(seed)
    model = attach_lora(model, LoRAConfig())
    return torch.cat([p.detach().reshape(-1) for n, p in model.named_parameters() if "lora_A" in n])


def test_lora_initialisation_follows_the_run_seed():
    first = _lora_a(0)
    torch.rand(1000)  # whatever ran before in the process (lm-eval reseeds the global RNG, for one)
    assert torch.equal(_lora_a(0), first)
    assert not torch.equal(_lora_a(1), first)


@pytest.mark.slow  # a second interpreter (also the suite's `python -m benchsuite run` smoke test)
def test_same_seed_same_result_in_one_process_and_in_another(tiny_model_dir, offline, tmp_path):
    """peft draws lora_A from the global RNG: without seeding, the second run differed. The other process is
    `python -m benchsuite run` as a user starts it (the suite's one smoke test of the installed command)."""
    methods = ["loraprune", "random+lora"]
    first = Runner(_request(tiny_model_dir, tmp_path / "a", methods, **offline), log=lambda _: None).run()[1:]
    torch.rand(1000)
    second = Runner(_request(tiny_model_dir, tmp_path / "b", methods, **offline), log=lambda _: None).run()[1:]
    data = [f"--{key.replace('_', '-')}={','.join(v) if isinstance(v, list) else v}" for key, v in offline.items()
            if key != "tasks"]
    result = subprocess.run([sys.executable, "-m", "benchsuite", "run", "--model", str(tiny_model_dir), "--methods",
                             ",".join(methods), "--ratios", "0.5", "--ratio-basis", "units", "--profile", "smoke",
                             "--results", str(tmp_path / "c"), "--tasks", "none", *data],
                            capture_output=True, text=True, timeout=600, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "| loraprune" in result.stdout and "records and table" in result.stderr
    third = [json.loads(p.read_text()) for p in sorted((tmp_path / "c").rglob("ratio-*.json"))]
    third.sort(key=lambda r: [m.split("+")[0] for m in methods].index(r["method"]))
    for a, b, c in zip(first, second, third):
        assert a["status"] == b["status"] == c["status"] == "ok"
        assert a["pruned_units"]["mask_sha256"] == b["pruned_units"]["mask_sha256"] == c["pruned_units"]["mask_sha256"]
        assert _stable(a) == _stable(b) == _stable(c), a["method"]
        assert a["recovery_setup"]["tokens"] == c["recovery_setup"]["tokens"] > 0


def test_equal_recovery_for_every_criterion(tiny_model_dir, offline, tmp_path):
    methods = ["loraprune", "llm-pruner", "magnitude-l2+lora", "random+lora", "random"]
    records = Runner(_request(tiny_model_dir, tmp_path, methods, **offline), log=lambda _: None).run()[1:]
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    setups = [r["recovery_setup"] for r in records]
    assert [s["label"] for s in setups] == ["LoRA, during", "LoRA", "LoRA", "LoRA", "none"]
    budget = {(s["steps"], s["tokens"], s["micro_batch"], s["length"], s["lr"], s["data"]["sha256"])
              for s in setups[:4]}
    assert len(budget) == 1, budget  # same steps, tokens, data and LoRA settings for the four criteria
    assert setups[0]["data"]["name"] == offline["recovery_data"] and setups[0]["tokens"] == 4 * 2 * 64
    assert [r["variant"] for r in records] == ["loraprune", "llm-pruner", "magnitude-l2+lora", "random+lora",
                                               "random"]
    assert records[3]["lora"] == records[1]["lora"]
    from benchsuite.reporting.tables import render

    table = render(records)
    assert "| LoRA, during" in table and "| none" in table


def test_recovery_none_and_unknown(tiny_model_dir, offline, tmp_path):
    with pytest.raises(ConfigError, match="can't run with --recovery none"):
        Runner(_request(tiny_model_dir, tmp_path, ["loraprune+none"], **offline))
    with pytest.raises(ConfigError, match="--recovery: unknown recovery 'sometimes' .*available: distill, full, lora, "
                       "none"):
        Runner(_request(tiny_model_dir, tmp_path, ["random"], recovery="sometimes", **offline))
    runner = Runner(_request(tiny_model_dir, tmp_path, ["llm-pruner", "random"], recovery="none", **offline))
    assert [p.key for p in runner.plans] == ["llm-pruner+none", "random"]
    assert runner.plans[0].lora() == (None, None)


def test_recovery_data_is_not_evaluation_text(tiny_model_dir, offline, tmp_path):
    from benchsuite.data.corpora import corpus_split

    with pytest.raises(ValueError, match="no evaluation part"):
        corpus_split("instruct", "evaluation")
    with pytest.raises(ConfigError, match="recovery data"):
        missing = offline | {"recovery_data": str(tmp_path / "no.txt")}
        Runner(_request(tiny_model_dir, tmp_path, ["llm-pruner"], **missing)).run()
    assert not (tmp_path / "smoke").exists()


def test_matched_parameter_counts_across_layer_ranges(tiny_model_dir, offline, tmp_path):
    """LoRAPrune prunes other layers than LLM-Pruner (0..6 and 1..7 of 8 here); at the same params ratio both end
    at the same size, each removing the share of its own layers' units that this takes."""
    request = _request(tiny_model_dir, tmp_path, ["loraprune", "llm-pruner", "random"], ratios=[0.3],
                       ratio_basis="params", **offline)
    records = Runner(request, log=lambda _: None).run()
    dense = records[0]["metrics"]["params"]
    projections = records[1]["ratio_basis"]["projection_params"]
    assert records[1]["layers_pruned"] != records[2]["layers_pruned"]
    for record in records[1:]:
        assert record["status"] == "ok", record.get("traceback")
        removed = dense - record["metrics"]["params"]
        # within the rounding of a few heads (each holds 2 x 16 x 96 weights here)
        assert abs(removed - 0.3 * projections) < 4 * 2 * 16 * 96, (record["method"], removed)
        mlp = record["pruned_units"]["total"]["mlp"]
        assert mlp["pruned"] == round(record["ratio_basis"]["unit_ratio"] * mlp["of"])
        basis = record["ratio_basis"]
        assert math.isclose(basis["unit_ratio"] * basis["prunable_params"], 0.3 * projections), record["method"]
        assert basis["unit_ratio"] > 0.3  # a share of the pruned layers' units: they are 7 of the 8 layers
    with pytest.raises(ConfigError, match="more than the 66.7% that can go"):
        Runner(_request(tiny_model_dir, tmp_path / "x", ["loraprune"], ratios=[0.6], ratio_basis="params",
                        **offline)).run()
    assert not (tmp_path / "x").exists()


def test_paper_profiles_are_the_papers_recipes():
    llm, lora = get_profile("paper-llm-pruner"), get_profile("paper-loraprune")
    assert (llm.train_batch * llm.grad_accum, llm.train_len, llm.warmup_steps, llm.lr_schedule) == (64, 256, 100,
                                                                                                   "linear")
    assert (lora.train_batch * lora.grad_accum, lora.train_len, lora.warmup_steps) == (128, 512, 0)
    assert llm.train_epochs == lora.train_epochs == 2 and llm.criterion_calibration
    config = LoRAConfig.from_params({"r": 8}, llm.lora_budget())
    factors = [config.lr_factor(s, 1000) for s in (0, 49, 99, 100, 550, 999)]
    assert factors[:3] == [0.01, 0.5, 1.0] and math.isclose(factors[3], 1.0)
    assert math.isclose(factors[4], 0.5) and math.isclose(factors[5], 1 / 900)
    with pytest.raises(ConfigError, match="belong to the profile"):
        LoRAConfig.from_params({"grad_accum": 4}, llm.lora_budget())
    with pytest.raises(ConfigError, match="did you mean"):
        get_profile("paper")


@pytest.mark.network
def test_paper_recipe_reaches_the_training_loop(tiny_model_dir, offline, tmp_path, monkeypatch):
    """Gradient accumulation, warm-up, epochs and each criterion's own calibration size are used and recorded."""
    from dataclasses import replace

    from benchsuite.api import profiles

    small = replace(profiles.PROFILES["paper-llm-pruner"], eval_windows=2, task_limit=1, latency_repeats=1,
                    train_batch=2, grad_accum=3, train_len=32, warmup_steps=2, train_epochs=0.002)
    monkeypatch.setitem(profiles.PROFILES, "paper-llm-pruner", small)
    own = {k: v for k, v in offline.items() if k != "calibration_data"}  # the criterion's own calibration: wiki
    record = Runner(_request(tiny_model_dir, tmp_path, ["llm-pruner"], profile="paper-llm-pruner", **own),
                    log=lambda _: None).run()[1]
    assert record["status"] == "ok", record.get("traceback")
    setup = record["recovery_setup"]
    windows = setup["data"]["windows"]
    assert setup["steps"] == math.ceil(0.002 * windows / 6) and setup["grad_accum"] == 3
    assert setup["tokens"] == setup["steps"] * 6 * 32
    assert setup["lr_schedule"] == "linear" and setup["warmup_steps"] == 2
    assert record["calibration"] == {"corpus": "wiki", "samples": 10, "length": 64, "from": "criterion",
                                     "used": True}


def test_instruction_files_are_rendered_in_the_alpaca_template(tmp_path):
    from benchsuite.data.corpora import load_documents

    path = tmp_path / "alpaca.jsonl"
    rows = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Name a colour.", "response": "Blue."}, {"text": "plain text"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    first, second, third = load_documents(path)
    assert first.endswith("### Input:\n2 and 3\n\n### Response:\n5") and "paired with an input" in first
    assert second.endswith("### Instruction:\nName a colour.\n\n### Response:\nBlue.") and third == "plain text"
    (tmp_path / "bad.jsonl").write_text(json.dumps({"instruction": "no answer"}))
    with pytest.raises(ValueError, match="bad.jsonl:1: no field 'response'"):
        load_documents(tmp_path / "bad.jsonl")
