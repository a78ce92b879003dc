"""The runner's pipeline (plan -> prune -> recover -> merge -> measure -> record): the record fields each stage
feeds, one writer per field, and what a run that fails half-way records."""

from __future__ import annotations

import pytest

from benchsuite import testing
from benchsuite.running import pipeline
from benchsuite.running.pipeline import Measurement, MergedModel, PruneResult, RecoveryResult
from benchsuite.running.runner import Runner, RunRequest

#: the fields report.py, compare.py, records.check_record and regression.py read, in the order they are written
PRUNED_KEYS = ["schema", "method", "ratio", "seed", "profile", "profile_settings", "model", "model_source",
               "architecture", "weights_sha256", "config", "config_hash", "versions", "git", "hardware", "dtype",
               "criterion", "granularity", "schedule", "recovery", "variant", "components", "started_at",
               "layers_pruned", "ratio_basis", "lora", "calibration", "pruned_units", "recovery_log",
               "recovery_setup", "checks", "status", "error", "metrics", "measurement", "metric_columns", "prune_log",
               "timings", "finished_at"]
METRIC_KEYS = ["ppl_text", "ppl_text_lo", "ppl_text_hi", "peak_mem_eval_mb", "params", "params_ratio",
               "flops_per_token", "latency_ms", "latency_iqr_ms", "latency_noisy", "speedup", "speedup_lo",
               "speedup_hi", "peak_mem_prune_mb", "peak_mem_recover_mb", "prune_time_s", "units_pruned",
               "weight_grad_mb", "recover_time_s", "total_time_s", "peak_mem_mb"]


@pytest.fixture
def text_file(tmp_path) -> str:
    """A .txt corpus (documents separated by blank lines), from benchsuite.testing."""
    return str(testing.write_corpus(tmp_path / "text.txt", documents=200))


def _request(model_dir, results, text_file, methods):
    return RunRequest(methods=methods, model=str(model_dir), ratios=[0.5], profile="smoke", results=results,
                      tasks=[], ratio_basis="units", corpora=[text_file], recovery_data=text_file,
                      calibration_data=text_file)


def test_each_stage_feeds_its_fields(tiny_model_dir, tmp_path, text_file, monkeypatch):
    seen = {}
    for stage in ("prune", "recover", "merge", "measure"):
        original = getattr(pipeline, stage)

        def spy(*args, _original=original, _stage=stage, **kw):
            seen.setdefault(_stage, []).append(result := _original(*args, **kw))
            return result

        monkeypatch.setattr(f"benchsuite.running.runner.{stage}", spy)
    dense, pruned = Runner(_request(tiny_model_dir, tmp_path, text_file, ["llm-pruner"]), log=lambda _: None).run()
    assert pruned["status"] == "ok", pruned.get("traceback")
    assert [type(r) for r in (seen["prune"][0], seen["recover"][0], seen["merge"][0])] == [
        PruneResult, RecoveryResult, MergedModel]
    assert all(type(m) is Measurement for m in seen["measure"]) and len(seen["measure"]) == 2  # dense, pruned
    assert list(pruned) == [*PRUNED_KEYS, "_path"]  # _path: where it was written, not stored
    fidelity = ["kl_text", "kl_text_lo", "kl_text_hi", "top1_text", "top1_text_lo", "top1_text_hi"]
    assert list(pruned["metrics"]) == METRIC_KEYS[:3] + fidelity + METRIC_KEYS[3:]  # evaluation metrics first
    assert list(pruned["measurement"]) == ["ppl_text", "kl_text", "peak_mem_eval_mb", "params", "flops_per_token",
                                           "latency_ms", "weight_grad_mb", "peak_mem_prune_mb", "peak_mem_recover_mb",
                                           "peak_mem_mb"]
    assert list(dense["metrics"]) == METRIC_KEYS[:10] and "prune_log" not in dense
    m, log = pruned["metrics"], pruned["prune_log"]
    # one source for each number that appears twice
    assert m["weight_grad_mb"] == log["weight_grad_bytes"] / 2**20 > 0  # Taylor holds full weight gradients
    assert m["total_time_s"] == m["prune_time_s"] + m["recover_time_s"]
    timings = pruned["timings"]
    assert timings == {"prune_s": m["prune_time_s"], "recover_s": m["recover_time_s"], "eval_s": timings["eval_s"],
                       "eval_metric_s": timings["eval_metric_s"]}
    assert 0 < sum(timings["eval_metric_s"].values()) <= timings["eval_s"]  # each metric's share of the evaluation
    assert m["peak_mem_mb"] == max(m["peak_mem_prune_mb"], m["peak_mem_recover_mb"], m["peak_mem_eval_mb"])
    assert pruned["recovery_setup"]["steps"] == pruned["recovery_log"]["steps"] == 4
    assert pruned["calibration"]["corpus"] == text_file and pruned["granularity"]["label"] == "structured"
    assert m["units_pruned"] == log["units_pruned"]


def test_a_run_failing_in_recovery_records_what_finished(tiny_model_dir, tmp_path, text_file, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("recovery broke")

    monkeypatch.setattr("benchsuite.running.runner.recover", broken)
    lines = []
    runner = Runner(_request(tiny_model_dir, tmp_path, text_file, ["magnitude-l2+lora"]), log=lines.append)
    dense, failed = runner.run()
    assert dense["status"] == "ok"
    assert failed["status"] == "error" and failed["error"] == "RuntimeError: recovery broke"
    assert "Traceback" in failed["traceback"] and failed["metrics"] == {}
    assert "pruned_units" in failed and "effective_params" in failed["criterion"]  # pruning finished
    assert "recovery_setup" not in failed and "checks" not in failed and "measurement" not in failed
    assert list(failed["timings"]) == ["prune_s"]
    assert any("FAILED RuntimeError: recovery broke" in line for line in lines)
