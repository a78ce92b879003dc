"""The results store keeps everything: records are never overwritten, other settings and other weights
live beside earlier records, damaged files are reported by path and kept, writes survive kills and
concurrent runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchsuite.cli import main as cli_main
from benchsuite.reporting.tables import render
from benchsuite.running.records import (
    check_record,
    clean_stale_temps,
    load_records,
    record_slot,
    scan,
    slug,
    write_atomic,
)
from benchsuite.running.runner import Runner, RunRequest


def _request(model_dir, results, methods=("random",), **kw):
    return RunRequest(methods=list(methods), model=str(model_dir), ratios=kw.pop("ratios", [0.5]),
                      profile="smoke", results=results, ratio_basis="units", **kw)


def _run(model_dir, results, **kw):
    return Runner(_request(model_dir, results, **kw), log=lambda _: None).run()


def _snapshot(results: Path) -> dict[str, bytes]:
    return {p.relative_to(results).as_posix(): p.read_bytes() for p in results.rglob("*.json")}


@pytest.mark.network
def test_other_settings_live_beside_the_earlier_record(tiny_model_dir, offline, tmp_path, capsys):
    first = _run(tiny_model_dir, tmp_path, limit=2, **offline | {"tasks": ["boolq"]})
    before = _snapshot(tmp_path)
    second = _run(tiny_model_dir, tmp_path, **offline)
    after = _snapshot(tmp_path)
    assert all(after[k] == v for k, v in before.items()), "a record was overwritten"
    assert len(after) == 2 * len(before)
    assert "acc_boolq" in first[1]["metrics"] and "acc_boolq" not in second[1]["metrics"]
    # both show, told apart by what differs; --settings picks one
    table = render(load_records(tmp_path))
    assert "settings" in table and "tasks=boolq" in table and "tasks=none" in table
    from benchsuite.running.records import settings_hash

    wanted = settings_hash(second[1]["config"])[:6]
    assert cli_main(["report", "--results", str(tmp_path), "--settings", wanted, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["method"] for r in rows} == {"dense", "random"}
    assert all(r["config"]["tasks"] == [] for r in rows), "the dense record of the other settings came along"
    # the same request again keeps both
    again = _run(tiny_model_dir, tmp_path, **offline)
    assert [r["_path"] for r in again] == [r["_path"] for r in second]


def test_models_of_one_folder_name_do_not_share_records(tiny_model_dir, offline, tmp_path):
    from transformers import AutoModelForCausalLM

    a, b = tmp_path / "a" / "model", tmp_path / "b" / "model"
    shutil.copytree(tiny_model_dir, a)
    shutil.copytree(tiny_model_dir, b)
    model = AutoModelForCausalLM.from_pretrained(b)
    model.model.embed_tokens.weight.data.mul_(2)
    model.save_pretrained(b)
    results = tmp_path / "results"
    ra, rb = _run(a, results, **offline), _run(b, results, **offline)
    assert ra[0]["weights_sha256"] != rb[0]["weights_sha256"]
    assert len(_snapshot(results)) == 4 and all(Path(r["_path"]).exists() for r in ra + rb)
    table = render(load_records(results))
    assert f"model@{ra[0]['weights_sha256'][:8]}" in table and f"model@{rb[0]['weights_sha256'][:8]}" in table


def test_names_from_user_input_stay_inside_results(tiny_model_dir, offline, tmp_path):
    assert slug("..") == "_.." and slug(".") == "_." and slug("") == "_" and slug("a/../b") == "a_.._b"
    inner = tmp_path / "m" / "X"
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    inner.mkdir()
    results = tmp_path / "results"
    records = _run(str(inner) + "/..", results, **offline)  # resolves to the folder m
    assert records[0]["model"] == "m"
    assert all(Path(r["_path"]).resolve().is_relative_to(results.resolve()) for r in records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "results"]
    for hostile in ("..", "../..", "/etc", "~", ".hidden", "a/../../b"):
        slot = record_slot(results, hostile, hostile, hostile, 0.5, 0, {})
        assert slot.folder.resolve().is_relative_to(results.resolve()), hostile
        assert slot.folder.relative_to(results).parts[0] == slug(hostile)


def _damage(results: Path) -> dict[str, Path]:
    """Write one of each kind of bad file next to good records; return them by kind."""
    folder = next(results.rglob("random"))
    good = next(folder.glob("ratio-*.json"))
    data = json.loads(good.read_text())
    bad = {}

    def variant(name, content):
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
        bad[name] = path

    variant("utf8.json", b'{"schema": 1, "method": "caf\xe9"}')
    variant("string-metric.json", data | {"metrics": data["metrics"] | {"ppl_wiki": "12.5"}})
    variant("no-metrics.json", {k: v for k, v in data.items() if k != "metrics"})
    variant("no-method.json", {k: v for k, v in data.items() if k != "method"})
    variant("nan-ok.json", data | {"metrics": data["metrics"] | {"ppl_wiki": float("nan")}})
    variant("list.json", [1, 2, 3])
    variant("foreign.json", {"name": "some other tool's file"})
    variant("truncated.json", good.read_bytes()[:200])
    (folder / "a-folder.json").mkdir()
    bad["a-folder.json"] = folder / "a-folder.json"
    return bad


def test_damaged_records_are_reported_by_path_kept_and_the_rest_works(tiny_model_dir, offline, tmp_path, capsys):
    _run(tiny_model_dir, tmp_path, **offline)
    bad = _damage(tmp_path)
    before = {name: (p.read_bytes() if p.is_file() else None) for name, p in bad.items()}
    records, problems = scan(tmp_path)
    assert {r["method"] for r in records} == {"dense", "random"}
    assert {p.name for p, _ in problems} == set(bad)
    reasons = {p.name: why for p, why in problems}
    assert "UTF-8" in reasons["utf8.json"] and "'ppl_wiki' is '12.5'" in reasons["string-metric.json"]
    assert "incomplete" in reasons["no-metrics.json"] and "'method'" in reasons["no-method.json"]
    assert "non-finite" in reasons["nan-ok.json"] and "not valid JSON" in reasons["truncated.json"]
    assert "unreadable" in reasons["a-folder.json"] and "no 'schema'" in reasons["foreign.json"]
    for fmt in ("markdown", "csv", "json"):
        assert cli_main(["report", "--results", str(tmp_path), "--format", fmt]) == 0
        out, err = capsys.readouterr()
        assert "random" in out
        assert all(str(path) in err for path in bad.values()), fmt
    assert cli_main(["report", "--results", str(tmp_path), "--format", "json"]) == 0
    assert {r["method"] for r in json.loads(capsys.readouterr().out)} == {"dense", "random"}
    # run still works and leaves them alone
    again = Runner(_request(tiny_model_dir, tmp_path, **offline), log=lambda _: None).run()
    assert all(r["status"] == "ok" for r in again)
    assert {name: (p.read_bytes() if p.is_file() else None) for name, p in bad.items()} == before


def test_incomplete_or_damaged_record_is_rerun_into_a_new_file(tiny_model_dir, offline, tmp_path):
    first = _run(tiny_model_dir, tmp_path, **offline)
    path = Path(first[1]["_path"])
    data = json.loads(path.read_text())
    del data["metrics"]  # used to be "done before, kept" forever
    path.write_text(json.dumps(data))
    damaged = path.read_bytes()
    lines = []
    records = Runner(_request(tiny_model_dir, tmp_path, **offline), log=lines.append).run()
    assert records[1]["status"] == "ok" and records[1]["_path"] != str(path)
    assert Path(records[1]["_path"]).name.endswith(".2.json")
    assert path.read_bytes() == damaged, "the damaged record was overwritten"
    assert any(str(path) in line and "incomplete" in line for line in lines)
    assert [r["_path"] for r in load_records(tmp_path) if r["method"] == "random"] == [records[1]["_path"]]


def test_a_failed_attempt_is_kept_beside_the_successful_one(tiny_model_dir, offline, tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr("benchsuite_plugins.granularities.remove_units", explode)
        failed = _run(tiny_model_dir, tmp_path, **offline)[1]
    assert failed["status"] == "error"
    assert "1/1 failed" in render(load_records(tmp_path))  # a folder where every run failed still renders
    ok = _run(tiny_model_dir, tmp_path, **offline)[1]
    assert ok["status"] == "ok" and Path(failed["_path"]).exists() and ok["_path"] != failed["_path"]
    table = render(load_records(tmp_path))
    assert "failed" not in table  # the latest attempt is the one shown


def test_only_failed_runs_render(tiny_model_dir, offline, tmp_path, monkeypatch):
    monkeypatch.setattr("benchsuite.running.runner.Runner.evaluate", lambda self, *args: (_ for _ in ()).throw(
        RuntimeError("eval broke")))
    records = _run(tiny_model_dir, tmp_path, **offline)
    assert {r["status"] for r in records} == {"error"}
    for fmt in ("markdown", "csv", "json"):
        assert "failed" in render(load_records(tmp_path), fmt) or fmt == "json"


def test_records_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    path = tmp_path / "r.json"
    write_atomic(path, {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


_SLOW_WRITER = """
import os, sys, time
from benchsuite import records
os.fsync = lambda fd: (print("writing", flush=True), time.sleep(60))
records.write_atomic(records.Path(sys.argv[1]), {"schema": 1, "big": "x" * 100000})
"""


def test_a_kill_during_a_record_write_leaves_no_record_and_its_temp_is_cleaned(tmp_path):
    target = tmp_path / "model" / "smoke" / "dense.0123abcd.json"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    temps = list(target.parent.glob(".*.tmp"))
    assert len(temps) == 1 and not target.exists()
    fresh = target.parent / f".other.json.{temps[0].name.split('.')[-4]}.{os.getpid()}.0badc0de.tmp"
    fresh.write_text("being written by this (live) process")
    assert clean_stale_temps(tmp_path) == temps
    assert not temps[0].exists() and fresh.exists()  # a live writer's temp is left alone


_CONCURRENT = """
import json, sys
from benchsuite.running.runner import Runner, RunRequest
request = RunRequest(methods=["random"], model=sys.argv[1], ratios=[0.5], profile="smoke",
                     results=sys.argv[2], ratio_basis="units", **json.loads(sys.argv[3]))
Runner(request, log=lambda line: print(line, flush=True)).run()
"""


@pytest.mark.slow  # two interpreters
def test_concurrent_runs_on_one_results_folder_run_each_record_once(tiny_model_dir, offline, tmp_path):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")  # one torch thread each
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT, str(tiny_model_dir), str(tmp_path),
                               json.dumps(offline)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json"))
    assert len(files) == 2, files  # dense and random, each written once
    log = "\n".join(outs)
    assert log.count("evaluating") == 1 and log.count("pruning") == 1
    assert log.count("done before, kept") == 2
    records, problems = scan(tmp_path)
    assert not problems and all(check_record(r) is None for r in records)


@pytest.mark.slow  # eight interpreters, ~12 s
def test_ctrl_c_at_any_moment_is_one_line_and_death_by_sigint(tmp_path):
    # Early (python starting, torch and numpy loading) and late (the table printed, the interpreter
    # exiting): every moment ends killed by SIGINT, as shells expect, with at most one line on stderr,
    # never a traceback; output is either complete or absent.
    full = subprocess.run([sys.executable, "-m", "benchsuite", "methods"], capture_output=True, text=True,
                          timeout=120).stdout
    # (from 0.15 s: the interpreter's own first ~50 ms, before any benchsuite code runs, are Python's: a
    # Ctrl-C there prints Python's KeyboardInterrupt traceback, as for any Python program)
    for delay in (0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.5):
        proc = subprocess.Popen([sys.executable, "-m", "benchsuite", "methods"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        if proc.returncode == 0:  # finished before the signal came
            assert out == full
            continue
        assert proc.returncode == -signal.SIGINT, (delay, proc.returncode, err)
        assert err.strip() in ("", "benchsuite: interrupted"), (delay, err)
        assert out in ("", full), (delay, out[-200:])


def test_report_seeds_keeps_those_seeds(tiny_model_dir, offline, tmp_path, capsys):
    """``report --seeds 0`` shows what a default (seed 0) run measures where more seeds are stored."""
    _run(tiny_model_dir, tmp_path, seeds=[0, 1], **offline)
    for seeds, want in (("0", {0}), ("1", {1}), ("0,1", {0, 1}), (None, {0, 1})):
        argv = ["report", "--results", str(tmp_path), "--format", "json"] + (["--seeds", seeds] if seeds else [])
        assert cli_main(argv) == 0
        rows = json.loads(capsys.readouterr().out)
        assert {r["seed"] for r in rows if r["method"] == "random"} == want, seeds
        assert any(r["method"] == "dense" for r in rows)
