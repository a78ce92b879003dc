"""``benchsuite run --dry-run`` and :mod:`benchsuite.running.estimate`: estimates from the config alone (no weights),
parameters and FLOPs that a real pruning gives, activation bytes that the real forward holds, refusal of runs
that can't fit."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import bench

from benchsuite import testing
from benchsuite.api import ConfigError
from benchsuite.host import get_registry
from benchsuite.running import estimate
from benchsuite.running.plan import RunRequest, plan_request
from benchsuite.running.runner import Runner


@pytest.fixture(scope="module")
def config_only(tmp_path_factory):
    """A checkpoint folder holding config.json only: no weights, no tokenizer."""
    path = tmp_path_factory.mktemp("config-only")
    testing.tiny_llama(6, 2, 8).config.save_pretrained(path)
    assert sorted(p.name for p in path.iterdir()) == ["config.json"]
    return path


def _plan(model, tmp_path, **fields):
    fields = {"methods": ["magnitude-l2", "llm-pruner"], "ratios": [0.5], "profile": "smoke", "device": "cpu",
              "dtype": "float32", "tasks": [], "results": tmp_path / "r", "corpora": ["wiki"]} | fields
    return plan_request(RunRequest(model=str(model), **fields), get_registry())


def test_dry_run_reads_the_config_only(config_only, tmp_path):
    plan = _plan(config_only, tmp_path, seeds=[0, 1])
    dry = estimate.estimate_request(plan, throughput=1e9)
    assert [r.label for r in dry.runs] == ["dense"] + [f"{m} ratio=0.5 seed={s}" for m in ("magnitude-l2",
                                                                                         "llm-pruner") for s in (0, 1)]
    assert dry.shape.layers == 8 and dry.shape.heads == 6 and dry.shape.kv_heads == 2
    dense = dry.runs[0]
    assert dense.params == sum(p.numel() for p in testing.tiny_llama(6, 2, 8).parameters())
    llm = dry.runs[3]
    assert llm.params_after < llm.params
    phases = {p.name: p for p in llm.phases}
    assert set(phases) == {"prune", "recover", "eval"}
    # LLM-Pruner holds a gradient for every parameter (and the LoRA adapters attached before pruning)
    lora = sum(p.numel() * 4 for n, p in estimate.with_lora(estimate.meta_model(testing.tiny_llama(6, 2, 8).config,
                                                                                 torch.float32),
                                                              plan.methods[1].lora()[0]).named_parameters()
               if "lora_" in n)
    assert phases["prune"].terms["weight grads"] == dense.params * 4 + lora
    assert phases["recover"].terms["optimizer"] == 2 * phases["recover"].terms["LoRA grads"]
    assert all(p.seconds is not None and p.seconds > 0 for p in llm.phases)


def test_params_and_flops_after_pruning_match_a_real_run(tiny_model_dir, offline, tmp_path):
    """The estimate's parameters and FLOPs after structured pruning are what a real run records."""
    fields = offline | {"methods": ["magnitude-l2"], "ratios": [0.3], "profile": "smoke", "device": "cpu",
                        "dtype": "float32", "results": tmp_path / "r", "metrics": ["params", "flops"]}
    request = RunRequest(model=str(tiny_model_dir), **fields)
    records = Runner(request, log=lambda _: None).run()
    dry = estimate.estimate_request(plan_request(request, get_registry()), throughput=1e9)
    for record, run in zip(records, dry.runs):
        assert record["metrics"]["params"] == run.params_after
        assert record["metrics"]["flops_per_token"] == pytest.approx(run.flops_per_token_after, rel=1e-9)
    assert dry.runs[1].params_after < dry.runs[1].params


def test_meta_activations_equal_the_real_forward():
    """The tracker counts the same bytes on the meta model as on the real one (weights allocated), and at least
    what autograd saves for the backward."""
    model = testing.tiny_llama(4, 2, 4)
    meta = estimate.meta_model(model.config, torch.float32)
    real = estimate.training_activations(model, 2, 32, train=False)
    assert estimate.training_activations(meta, 2, 32, train=False) == real
    real_peak = real.peak
    assert estimate.eval_activations(meta, 3, 40) == estimate.eval_activations(model, 3, 40)
    saved: dict[int, int] = {}
    params = {p.untyped_storage()._cdata for p in model.parameters()}

    def pack(t):
        if t.untyped_storage()._cdata not in params:
            saved[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, 200, (2, 32))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    logits = 2 * 32 * model.config.vocab_size * 4
    assert sum(saved.values()) <= real_peak <= sum(saved.values()) + 4 * logits
    loss.backward()


def test_refused_when_it_cannot_fit(config_only, tmp_path, monkeypatch):
    plan = _plan(config_only, tmp_path)
    dry = estimate.estimate_request(plan, throughput=1e9, memory=(1 << 20, "a 1 MB test device"))
    assert all(run.refused for run in dry.runs)
    assert "llm-pruner ratio=0.5 seed=0: estimated peak" in dry.runs[2].refused
    assert "prune" in dry.runs[2].refused and "a 1 MB test device" in dry.runs[2].refused
    assert estimate.refusal(dry.runs[2], dry.runs[2].peak, "just enough") is None


def test_runner_refuses_before_loading(tiny_model_dir, offline, tmp_path, monkeypatch):
    import benchsuite.running.plan as plan_module

    monkeypatch.setattr(estimate, "device_memory", lambda device, spread=False: (1 << 20, "a 1 MB test device"))
    monkeypatch.setattr(plan_module, "load_dense", lambda *a: pytest.fail("the model was loaded"))
    fields = offline | {"methods": ["magnitude-l2"], "ratios": [0.3], "profile": "smoke", "device": "cpu",
                        "results": tmp_path / "r"}
    with pytest.raises(ConfigError, match="exceeds the 1 MB of the device.*nothing was run"):
        Runner(RunRequest(model=str(tiny_model_dir), **fields), log=lambda _: None).run()
    assert not list((tmp_path / "r").rglob("*.json"))


def test_cli_dry_run_writes_no_records(config_only, tmp_path, monkeypatch):
    args = ["run", "--model", config_only, "--methods", "magnitude-l2", "--ratios", "0.2,0.5", "--seeds", "0,1",
            "--profile", "smoke", "--tasks", "none", "--device", "cpu", "--corpora", "wiki",
            "--results", tmp_path / "r", "--dry-run"]
    result = bench(*args)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "ratio=" in line]
    assert len(rows) == 4 and all(line.rstrip().endswith("ok     |") for line in rows)
    assert "| dense" in result.stdout and "per phase" in result.stdout
    assert not list((tmp_path / "r").rglob("*.json"))
    monkeypatch.setattr(estimate, "device_memory", lambda device, spread=False: (1 << 20, "a 1 MB test device"))
    refused = bench(*args, "--format", "json")
    assert refused.returncode == 3
    data = json.loads(refused.stdout)
    assert len(data["runs"]) == 5 and all("exceeds" in run["refused"] for run in data["runs"])
    assert not list((tmp_path / "r").rglob("*.json"))
    without = bench(*args[:-1], "--format", "json")  # the dry run's option: an error without it, nothing run
    assert without.returncode == 2 and "--dry-run" in without.stderr
    old = bench(*args, "--json")  # the older spelling still works, and says so
    assert old.returncode == 3 and json.loads(old.stdout)["runs"]
    assert "--json is deprecated; write --format json" in old.stderr
    assert not list((tmp_path / "r").rglob("*.json"))
