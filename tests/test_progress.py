"""The console: one progress view on stderr, the table alone on stdout, other libraries' output held back."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from benchsuite.util import progress
from benchsuite.util.progress import Progress
from tests.conftest import bench
from tests.test_cli import smoke

#: lines other libraries print when they are not silenced
FOREIGN = ["Loading weights", "Overwriting default num_fewshot", "Looking in links", "Saved ",
           "Successfully downloaded", "FutureWarning", "DeprecationWarning", "it/s]", "%|"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_eta_learns_from_finished_runs_and_stages():
    clock = Clock()
    view = Progress(io.StringIO(), clock=clock)
    view.start_matrix(["dense", "a", "a", "b"])
    view.start_run("dense", "dense")
    view.set_stage("evaluate")
    assert view.eta() is None  # nothing finished yet
    clock.now = 10
    view.finish_run()
    view.start_run("a ratio=0.5", "a")
    view.set_stage("prune")
    assert view.eta() is None  # no pruned run finished: unknown
    clock.now = 20
    view.set_stage("fine-tune")
    clock.now = 50
    view.set_stage("evaluate")
    clock.now = 60  # a: prune 10, fine-tune 30, evaluate 10 = 50 s
    view.finish_run()
    view.start_run("a ratio=0.2", "a")
    view.set_stage("prune")
    # this run: 50 s (its kind's stages); the next, kind b unseen: the mean pruned run, 50 s
    assert view.eta() == pytest.approx(100)
    clock.now = 65
    assert view.eta() == pytest.approx(95)  # 5 s into a 10 s stage
    clock.now = 75  # prune overran by 5 s: fine-tune and evaluate remain
    view.set_stage("fine-tune")
    assert view.eta() == pytest.approx(40 + 50)
    clock.now = 125
    view.finish_run()
    assert view.done == 3 and view.eta() == pytest.approx((50 + 65) / 2)  # b: the mean of the pruned runs


def test_kept_runs_teach_nothing():
    clock = Clock()
    view = Progress(io.StringIO(), clock=clock)
    view.start_matrix(["dense", "a", "a"])
    view.start_run("dense", "dense")
    clock.now = 5
    view.finish_run(measured=False)  # a record kept from before: instantaneous, says nothing
    assert not view.run_times and view.done == 1


def test_the_timeline_says_where_the_time_went():
    clock = Clock()
    view = Progress(io.StringIO(), clock=clock)
    with view.setup("plan"):
        clock.now = 4
    view.start_matrix(["dense", "a"])
    view.start_run("dense", "dense")
    view.set_stage("evaluate")
    clock.now = 10
    view.finish_run()
    view.start_run("a ratio=0.5", "a")
    view.set_stage("prune")
    clock.now = 13
    view.set_stage("evaluate")
    clock.now = 20
    view.finish_run()
    clock.now = 21  # after the runs: writing the table
    summary = view.summary()
    assert [(e["run"], e["stage"], e["seconds"]) for e in summary["timeline"]] == [
        ("setup", "plan", 4), ("dense", "evaluate", 6), ("a ratio=0.5", "prune", 3), ("a ratio=0.5", "evaluate", 7)]
    assert summary["total_s"] == 21
    assert summary["by_stage"] == {"setup": 4, "evaluate": 13, "prune": 3, "other": 1}
    assert summary["runs"]["a ratio=0.5"] == {"prune": 3, "evaluate": 7}
    assert view.time_report() == ("time: 21s in all · setup 4.0s (19%) · evaluate 13s (62%) · prune 3.0s (14%) · "
                                  "other 1.0s (5%)")


def test_a_kept_run_is_not_in_the_timeline():
    clock = Clock()
    view = Progress(io.StringIO(), clock=clock)
    view.start_matrix(["dense"])
    view.start_run("dense", "dense")
    view.set_stage("evaluate")
    clock.now = 5
    view.finish_run(measured=False)
    assert view.summary()["timeline"] == [] and view.time_report() == ""
    silent = Progress(enabled=False)
    with silent.setup("plan"):
        pass
    assert silent.summary()["timeline"] == []


def test_plain_lines_have_no_carriage_return():
    out = io.StringIO()
    view = Progress(out, live=False)
    with progress.active(view):
        view.start_matrix(["dense", "a"])
        view.start_run("a ratio=0.5 seed=0", "a")
        progress.stage("prune")
        for _ in progress.track(range(50), "calibrate: Wanda"):
            pass
        progress.stage("evaluate")
        view.log("a line")
        view.finish_run()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert text.splitlines() == ["[1/2] a ratio=0.5 seed=0: evaluate", "a line"]


def test_live_view_is_one_redrawn_line():
    out = io.StringIO()
    view = Progress(out, live=True, min_interval=0)
    with progress.active(view):
        view.start_matrix(["dense"])
        view.start_run("dense", "dense")
        progress.stage("evaluate")
        for _ in progress.track(range(3), "ppl wiki"):
            pass
        view.log("dense: done")
        view.finish_run()
    text = out.getvalue()
    assert "\n" not in text.replace("dense: done\n", "")  # the status line is redrawn, never scrolled
    assert "[0/1 runs done] · dense · evaluate · ppl wiki 3/3" in text
    assert text.endswith("\r\x1b[K")  # cleared at the end


def test_quiet_prints_only_errors():
    out = io.StringIO()
    view = Progress(out, live=True, quiet=True)
    view.start_matrix(["dense"])
    view.start_run("dense", "dense")
    view.log("dense: evaluating")
    view.error("dense: FAILED boom")
    assert out.getvalue() == "dense: FAILED boom\n"


def test_without_a_view_nothing_is_printed(capsys):
    assert list(progress.track(range(3), "x")) == [0, 1, 2]
    progress.stage("prune")
    assert capsys.readouterr() == ("", "")


def test_foreign_output_is_held_and_shown_on_failure(capsys):
    view = Progress(sys.stderr)
    progress.quiet_libraries(verbose=False)
    with progress.active(view):
        with progress.captured_stderr("lm-eval"):
            logging.getLogger("lm_eval.evaluator").warning("Overwriting default num_fewshot of x from None to 0")
            print("Running loglikelihood requests: 100%|", file=sys.stderr)
        assert capsys.readouterr().err == ""
        with pytest.raises(RuntimeError), progress.captured_stderr("lm-eval"):
            print("lm-eval's last words", file=sys.stderr)
            raise RuntimeError("broken")
        assert "lm-eval's last words" in capsys.readouterr().err  # errors are never hidden


def test_pip_chatter_is_held(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("BENCHSUITE_CACHE", str(tmp_path / "cache"))
    from benchsuite.api.errors import AssetError
    from benchsuite.data import assets
    from benchsuite.data.assets import WheelAsset

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'Looking in links: /x'\necho 'Saved /x/a.whl'\necho 'pip broke' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(assets.sys, "executable", str(fake))
    with progress.active(Progress(sys.stderr)), pytest.raises(AssetError) as info:
        assets.fetch_wheel(WheelAsset("nothing-here", "1.0", "0" * 64))
    out, err = capfd.readouterr()
    assert out == "" and "Looking in links" not in err
    assert "Looking in links" in str(info.value) and "pip broke" in str(info.value)  # shown on failure


def _run_args(tmp_path, tiny_model_dir, offline):
    return ["run", "--model", str(tiny_model_dir), "--methods", "magnitude-l2", "--ratios", "0.5",
            "--results", str(tmp_path / "r"), *smoke(offline)]


def _table(tmp_path) -> str:
    return next((tmp_path / "r").rglob("table.md")).read_text()


def test_stdout_is_the_table_and_stderr_is_clean(tmp_path, tiny_model_dir, offline):
    result = bench(*_run_args(tmp_path, tiny_model_dir, offline), "--view", "full")
    assert result.returncode == 0, result.stderr
    assert result.stdout == _table(tmp_path)  # exactly the table: it can be piped
    compact = bench(*_run_args(tmp_path, tiny_model_dir, offline))  # the default: the compact view of it
    assert compact.stdout.splitlines()[0] == result.stdout.splitlines()[0] and "| magnitude-l2" in compact.stdout
    header = [next(line for line in text.splitlines() if line.startswith("|")) for text in (compact.stdout,
                                                                                       result.stdout)]
    assert len(header[0]) < len(header[1])
    assert "\r" not in result.stderr  # not a terminal: plain lines
    assert not [f for f in FOREIGN if f in result.stderr], result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("[1/2] dense: evaluating") and any(x.startswith("[2/2] magnitude-l2") for x in lines)
    assert lines[-1].startswith("time: ") and " in all · setup " in lines[-1] and "evaluate " in lines[-1]
    # again: both kept, and --quiet prints nothing at all on success
    quiet = bench(*_run_args(tmp_path, tiny_model_dir, offline), "--quiet")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    # -v lets the libraries' output through (transformers' loading bar)
    loud = bench(*_run_args(tmp_path, tiny_model_dir, offline), "--rerun", "-v", "--view", "full")
    assert loud.returncode == 0 and "Loading weights" in loud.stderr, loud.stderr
    assert loud.stdout == _table(tmp_path)


@pytest.mark.slow
def test_a_real_process_pipes_only_the_table(tmp_path, tiny_model_dir, offline):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "benchsuite", *_run_args(tmp_path, tiny_model_dir, offline),
                           "--view", "full"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == _table(tmp_path)
    assert "\r" not in proc.stderr and not [f for f in FOREIGN if f in proc.stderr], proc.stderr


def test_timings_file_and_records_agree(tmp_path, tiny_model_dir, offline):
    out = tmp_path / "timings.json"
    result = bench(*_run_args(tmp_path, tiny_model_dir, offline), "--timings", out)
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert list(summary["runs"]) == ["setup", "dense", "magnitude-l2 ratio=0.5 seed=0"]
    assert list(summary["runs"]["setup"]) == ["memory check", "plan"]
    assert list(summary["runs"]["magnitude-l2 ratio=0.5 seed=0"]) == ["prune", "evaluate"]
    assert summary["total_s"] >= sum(e["seconds"] for e in summary["timeline"])
    record = json.loads(next((tmp_path / "r").rglob("ratio-0.5_seed-0.*.json")).read_text())
    timings = record["timings"]
    # the record's own clock sits inside the view's stage; each metric's time inside the evaluation's
    assert summary["runs"]["magnitude-l2 ratio=0.5 seed=0"]["evaluate"] >= timings["eval_s"]
    assert set(timings["eval_metric_s"]) == {"perplexity", "zeroshot", "params", "flops", "latency", "sparse-latency",
                                             "fidelity"}
    assert sum(timings["eval_metric_s"].values()) <= timings["eval_s"]
    # a second run keeps both records: nothing ran, nothing is in the timeline but the setup
    again = bench(*_run_args(tmp_path, tiny_model_dir, offline), "--timings", out)
    assert again.returncode == 0 and list(json.loads(out.read_text())["runs"]) == ["setup"]


def test_torch_cuda_wheel_warning_is_held_unless_verbose():
    # torch's CUDA wheels log "No CUDA runtime is found" from here when imported on a machine without CUDA
    logger = logging.getLogger("torch.utils.cpp_extension")
    try:
        progress.quiet_libraries(verbose=False)
        assert not logger.isEnabledFor(logging.WARNING)
        progress.quiet_libraries(verbose=True)
        assert logger.isEnabledFor(logging.WARNING)
    finally:
        progress.quiet_libraries(verbose=False)
