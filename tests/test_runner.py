"""The runner on a tiny model: records, resume after interruption, failure isolation, report."""

from __future__ import annotations

import json

import pytest
import torch

from benchsuite.api import ConfigError
from benchsuite.reporting.tables import render
from benchsuite.running.records import load_records
from benchsuite.running.runner import Runner, RunRequest


def _request(model_dir, results, methods=("magnitude-l2", "random"), **kw):
    return RunRequest(methods=list(methods), model=str(model_dir), ratios=kw.pop("ratios", [0.5]),
                      profile=kw.pop("profile", "smoke"), results=results, tasks=kw.pop("tasks", []),
                      ratio_basis=kw.pop("ratio_basis", "units"), **kw)


def _files(results):
    return {p.relative_to(results).as_posix(): p.stat().st_mtime_ns for p in results.rglob("*.json")}


def test_run_writes_complete_records(tiny_model_dir, offline, tmp_path):
    records = Runner(_request(tiny_model_dir, tmp_path, **offline), log=lambda _: None).run()
    assert [r["method"] for r in records] == ["dense", "magnitude-l2", "random"]
    assert all(r["status"] == "ok" for r in records)
    pruned = records[1]
    for key in ("ppl_text", "params", "latency_ms", "peak_mem_mb", "flops_per_token"):
        assert key in pruned["metrics"]
    assert pruned["metrics"]["params"] < records[0]["metrics"]["params"]
    assert pruned["metrics"]["flops_per_token"] < records[0]["metrics"]["flops_per_token"]
    for key in ("criterion", "granularity", "schedule", "weights_sha256", "versions", "hardware", "git",
                "timings", "config_hash", "layers_pruned", "measurement"):
        assert key in pruned, key
    assert pruned["criterion"] == {"name": "magnitude", "params": {"p": 2},
                                   "effective_params": {"p": 2, "reduction": "sum"}}
    assert pruned["config"]["criterion"] == {"name": "magnitude", "params": {"p": 2}}  # hashed input untouched
    assert pruned["granularity"]["effective_params"] == {"attention": "heads", "mlp": True}
    assert pruned["layers_pruned"] == [1, 2, 3, 4, 5, 6, 7]  # LLM-Pruner's 4..30 of 32, scaled to 8 layers
    assert not list(tmp_path.rglob("*.tmp"))


def test_rerun_skips_and_interrupted_run_resumes(tiny_model_dir, offline, tmp_path, monkeypatch):
    calls = []
    original = Runner.run_one

    def interrupt_second(self, plan, ratio, seed):
        calls.append(plan.method.name)
        if plan.method.name == "random":
            raise KeyboardInterrupt
        return original(self, plan, ratio, seed)

    monkeypatch.setattr(Runner, "run_one", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        Runner(_request(tiny_model_dir, tmp_path, **offline), log=lambda _: None).run()
    finished = _files(tmp_path)
    assert len(finished) == 2  # dense and magnitude-l2 kept, random not written
    monkeypatch.setattr(Runner, "run_one", original)
    lines = []
    Runner(_request(tiny_model_dir, tmp_path, **offline), log=lines.append).run()
    after = _files(tmp_path)
    assert len(after) == 3
    assert all(after[k] == v for k, v in finished.items()), "finished records were recomputed"
    assert sum("done before" in line for line in lines) == 2
    Runner(_request(tiny_model_dir, tmp_path, rerun=True, **offline), log=lambda _: None).run()
    again = _files(tmp_path)
    assert all(again[k] == v for k, v in after.items()), "--rerun overwrote a record"
    assert len(again) == 6  # each run again, into a new file
    latest = load_records(tmp_path)
    assert len(latest) == 3 and all(r["_path"].endswith(".2.json") for r in latest)


def test_failing_run_is_recorded_and_others_continue(tiny_model_dir, offline, tmp_path, monkeypatch):
    from benchsuite.pruning import structure

    original = structure.remove_units

    def explode(model, groups, masks):
        if len(groups) and model.config.hidden_size == 96 and explode.first:
            explode.first = False
            raise RuntimeError("boom")
        return original(model, groups, masks)

    explode.first = True
    monkeypatch.setattr("benchsuite_plugins.granularities.remove_units", explode)
    records = Runner(_request(tiny_model_dir, tmp_path, **offline), log=lambda _: None).run()
    assert [r["status"] for r in records] == ["ok", "error", "ok"]
    assert "boom" in records[1]["error"] and "Traceback" in records[1]["traceback"]
    table = render(load_records(tmp_path))
    assert "1/1 failed" in table
    # the failed run is retried on the next invocation, the finished ones are not
    lines = []
    records = Runner(_request(tiny_model_dir, tmp_path, **offline), log=lines.append).run()
    assert [r["status"] for r in records] == ["ok", "ok", "ok"]


def test_changed_settings_are_not_mistaken_for_finished(tiny_model_dir, offline, tmp_path):
    Runner(_request(tiny_model_dir, tmp_path, methods=["magnitude-l2"], **offline), log=lambda _: None).run()
    record_file = next(tmp_path.rglob("ratio-0.5_seed-0.*.json"))
    data = json.loads(record_file.read_text())
    data["config_hash"] = "stale"
    record_file.write_text(json.dumps(data))
    lines = []
    Runner(_request(tiny_model_dir, tmp_path, methods=["magnitude-l2"], **offline), log=lines.append).run()
    assert any("recorded with other settings" in line for line in lines)
    assert json.loads(record_file.read_text())["config_hash"] == "stale", "the old record was overwritten"
    assert len(list(record_file.parent.glob("ratio-0.5_seed-0.*.json"))) == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"methods": ["magnitude-l3"]}, "did you mean magnitude-l2"),
    ({"ratios": [1.5]}, "outside (0, 1)"),
    ({"ratios": [0.0]}, "outside (0, 1)"),
    ({"profile": "quik"}, "did you mean quick"),
])
def test_bad_requests_fail_before_writing(tiny_model_dir, offline, tmp_path, kwargs, message):
    methods = kwargs.pop("methods", ["random"])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Runner(_request(tiny_model_dir, tmp_path / "r", methods=methods, **kwargs, **offline),
               log=lambda _: None).run()
    assert not (tmp_path / "r").exists()


def test_report_json_is_flat(tiny_model_dir, offline, tmp_path):
    Runner(_request(tiny_model_dir, tmp_path, methods=["random"], **offline), log=lambda _: None).run()
    rows = json.loads(render(load_records(tmp_path), "json"))
    assert {r["method"] for r in rows} == {"dense", "random"}
    for row in rows:
        for key in ("method", "model", "ratio", "seed", "status", "metrics"):
            assert key in row
        assert all(not isinstance(v, dict) for v in row["metrics"].values())


def test_loraprune_gqa_model_saves_and_reloads(tiny_model_dir, offline, tmp_path):
    import torch

    from benchsuite.models.checkpoint import load_model_dir
    from benchsuite.pruning.structure import model_widths

    request = _request(tiny_model_dir, tmp_path, methods=["loraprune"], save_models=True, **offline)
    record = Runner(request, log=lambda _: None).run()[1]
    assert record["status"] == "ok", record.get("traceback")
    assert record["metrics"]["weight_grad_mb"] == 0  # no pretrained-weight gradient, ever
    assert record["prune_log"]["prune_events"][-1]["ratio"] == 0.5
    model = load_model_dir(record["model_path"])
    assert sum(p.numel() for p in model.parameters()) == record["metrics"]["params"]
    widths = model_widths(model)
    assert all(w.num_heads % w.num_kv_heads == 0 and w.num_kv_heads == 2 for w in widths)
    assert any(w.num_heads < 6 for w in widths)
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3, 4]])).logits).all()


@pytest.mark.network
def test_zero_shot_metrics_are_recorded(tiny_model_dir, offline, tmp_path):
    request = _request(tiny_model_dir, tmp_path, methods=["random"], limit=2,
                       **offline | {"tasks": ["piqa", "arc_easy"]})
    dense, pruned = Runner(request, log=lambda _: None).run()
    for record in (dense, pruned):
        assert record["status"] == "ok", record.get("traceback")
        assert {"acc_piqa", "acc_arc_easy", "acc_avg"} <= set(record["metrics"])
        details = record["measurement"]["zeroshot"]["tasks"]["arc_easy"]
        assert details["limit"] == 2 and details["split"] == "test" and details["metric"] == "acc"
    assert "PIQA" in render(load_records(tmp_path)) and "avg acc" in render(load_records(tmp_path))


@pytest.mark.parametrize("capability, expected", [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16),
                                                   ((7, 5), torch.float16), ((6, 0), torch.float16)])
def test_auto_dtype_is_bf16_where_the_gpu_has_it(monkeypatch, capability, expected):
    from benchsuite.running.plan import auto_dtype

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert auto_dtype(torch.device("cuda:0")) is expected
    assert auto_dtype(torch.device("cpu")) is torch.float32


def test_accumulation_and_lr_schedule_are_the_budget_of_every_method(tiny_model_dir, offline, tmp_path):
    records = Runner(_request(tiny_model_dir, tmp_path, methods=["random+lora", "loraprune"], train_steps=3,
                              grad_accum=2, lr_schedule="linear", **offline), log=lambda _: None).run()
    # (the offline fixture's corpora add their own suffixes)
    assert {r["profile"].split("-text")[0] for r in records} == {"smoke-steps3-accum2-lr-linear"}
    for r in records[1:]:
        recovery = r["recovery_setup"]
        assert (recovery["steps"], recovery["grad_accum"], recovery["lr_schedule"]) == (3, 2, "linear"), r["method"]
        # 3 steps x 2 micro-batches x the smoke profile's 2 sequences of 64 tokens
        assert recovery["tokens"] == 3 * 2 * 2 * 64
    with pytest.raises(ConfigError, match="positive number of micro-batches"):
        Runner(_request(tiny_model_dir, tmp_path / "r", grad_accum=0, **offline), log=lambda _: None).run()
    with pytest.raises(ConfigError, match="did you mean linear"):
        Runner(_request(tiny_model_dir, tmp_path / "r", lr_schedule="linaer", **offline), log=lambda _: None).run()


def test_a_method_parameter_set_by_name_is_recorded_apart_from_the_defaults(tiny_model_dir, offline, tmp_path):
    records = Runner(_request(tiny_model_dir, tmp_path, methods=["magnitude-l2", "magnitude-l2:p=1"], **offline),
                     log=lambda _: None).run()
    default, l1 = records[1:]
    assert (default["variant"], l1["variant"]) == ("magnitude-l2", "magnitude-l2:p=1")
    assert default["criterion"]["params"] == {"p": 2} and l1["criterion"]["params"] == {"p": 1}
    assert default["config_hash"] != l1["config_hash"]
    assert len({r["_path"].rsplit("/", 2)[-2] for r in records[1:]}) == 2  # a folder each
    for bad, message in (("magnitude-l2:q=1", "has no parameter 'q'"), ("magnitude-l2:p=3", "p"),
                         ("magnitude-l2:p=", "'p=' is not PARAM=VALUE"), ("magnitude-l2:stage.p=1", "say criterion.")):
        with pytest.raises(ConfigError, match=message):
            Runner(_request(tiny_model_dir, tmp_path / "bad", methods=[bad], **offline), log=lambda _: None).run()
