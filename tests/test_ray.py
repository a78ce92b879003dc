"""``benchsuite run --executor ray`` on a real Ray cluster that the tests start on the loopback interface (2 CPUs, a
small object store, no dashboard) and stop: a smoke matrix with workers killed mid-run, resume, the records against
an in-process run; and the driver's errors."""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchsuite.running import cluster
from benchsuite.running.records import scan, slug
from tests.conftest import bench

#: the metrics that must not depend on where a run ran (timings and memory do)
DETERMINISTIC = ("ppl_", "params", "flops_per_token", "sparsity")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """``ray start --head --block`` on 127.0.0.1 only (its servers listen there and nowhere else), 2 CPUs; the
    address to give ``--address``. Stopped (SIGTERM to ``ray start``, which stops what it started) at the end."""
    if importlib.util.find_spec("ray") is None:  # not imported here: Ray reads RAY_AUTH_* when it is imported
        pytest.skip("Ray is an extra: pip install 'benchsuite[ray]'")
    if "ray" in sys.modules:
        pytest.skip("Ray was imported before this cluster's token was set")
    binary = Path(sys.executable).with_name("ray")
    if not binary.exists():
        pytest.skip(f"no ray command beside {sys.executable}")
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must stay under 108 bytes
    port = _free_port()
    # the cluster's own token (never ~/.ray/auth_token): the cluster and this process, the driver, share it
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | auth
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # else Ray turns 127.0.0.1 into the machine's outward address
    log = open(temp / "start.log", "w")  # noqa: SIM115 - closed below
    head = subprocess.Popen(
        [str(binary), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--num-cpus", "2", "--num-gpus", "0", "--object-store-memory", str(100 * 2**20), "--include-dashboard",
         "false", "--disable-usage-stats", "--temp-dir", str(temp)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"127.0.0.1:{port}"
    patch = pytest.MonkeyPatch()
    try:
        for key in [k for k in os.environ if k.startswith("RAY_")]:
            patch.delenv(key)
        for key, value in auth.items():
            patch.setenv(key, value)
        deadline = time.monotonic() + 60
        while "--block" not in (temp / "start.log").read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail("ray start failed:\n" + (temp / "start.log").read_text()[-3000:])
            time.sleep(0.2)
        yield address
    finally:
        patch.undo()
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # the group of the ray start this fixture began
            head.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


class Killer:
    """Kills, with SIGKILL, each worker that the test hook (:data:`benchsuite.running.cluster.HOLD_ENV`) holds, as it
    writes its pid file; in a thread, while the driver runs in the test's main thread."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.killed: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for path in self.folder.glob("*.pid"):
                if path.stem not in self.killed and path.read_text().strip():
                    pid = int(path.read_text())
                    os.kill(pid, signal.SIGKILL)
                    self.killed[path.stem] = pid
            time.sleep(0.05)

    def __enter__(self) -> Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _args(model, corpus, results, methods="magnitude,random,wanda", ratios="0.2,0.5"):
    return ["run", "--model", str(model), "--methods", methods, "--ratios", ratios, "--profile", "smoke",
            "--corpora", str(corpus), "--calibration-data", str(corpus), "--recovery-data", str(corpus), "--tasks",
            "none", "--results", str(results)]


def _files(results: Path) -> dict[str, int]:
    return {p.relative_to(results).as_posix(): p.stat().st_mtime_ns for p in results.rglob("*.json")}


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_matrix_with_killed_workers(tiny_model_dir, text_corpus, ray_cluster, tmp_path, monkeypatch):
    results = tmp_path / "r"
    stale = results / "x" / f".r.json.{socket.gethostname()}.{_dead_pid()}.0123abcd.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_text("{half a rec")
    hold = tmp_path / "hold"
    hold.mkdir()
    # one worker killed inside the slot's lock, before anything is written; one after its record is written
    monkeypatch.setenv(cluster.HOLD_ENV, "prune:magnitude ratio=0.5 seed=0;written:random ratio=0.2 seed=0")
    monkeypatch.setenv(cluster.HOLD_DIR_ENV, str(hold))
    with Killer(hold) as killer:
        out = bench(*_args(tiny_model_dir, text_corpus, results), "--executor", "ray", "--address", ray_cluster)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(killer.killed) == [slug("magnitude ratio=0.5 seed=0"), slug("random ratio=0.2 seed=0")]
    for label in ("magnitude ratio=0.5 seed=0", "random ratio=0.2 seed=0"):
        assert f"{label}: attempt 1 lost its worker (WorkerCrashedError" in out.stderr, out.stderr[-3000:]
    assert "2 retried after losing their worker" in out.stderr
    # the worker killed after writing: its second attempt keeps the record instead of writing another
    assert "random ratio=0.2 seed=0: written" not in out.stderr
    assert "random ratio=0.2 seed=0: done before, kept" in out.stderr
    assert "magnitude ratio=0.5 seed=0: written" in out.stderr and "attempt 2)" in out.stderr
    records, problems = scan(results)
    assert problems == []
    assert sorted((r["variant"] if r["method"] != "dense" else "dense", r["ratio"]) for r in records) == sorted(
        [("dense", 0.0)] + [(m, r) for m in ("magnitude", "random", "wanda") for r in (0.2, 0.5)])
    assert all(r["status"] == "ok" for r in records)
    assert len(list(results.rglob("*.json"))) == 7  # one file per run: no second attempt wrote a record
    assert not stale.exists() and not list(results.rglob("*.tmp"))
    table = (results / slug(Path(tiny_model_dir).name)).rglob("table.md")
    assert "wanda" in next(table).read_text()

    # resume: every run is kept, nothing is submitted or written
    before = _files(results)
    again = bench(*_args(tiny_model_dir, text_corpus, results), "--executor", "ray", "--address", ray_cluster)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("done before, kept") == 7 and "submitted" not in again.stderr
    assert _files(results) == before

    # the same run in this process gives the same numbers
    local = tmp_path / "local"
    single = bench(*_args(tiny_model_dir, text_corpus, local, methods="magnitude", ratios="0.5"))
    assert single.returncode == 0, single.stderr[-3000:]
    mine = {r["method"]: r for r in scan(local)[0]}
    theirs = {(r["method"], r["ratio"]): r for r in records}
    for method, ratio in (("dense", 0.0), ("magnitude", 0.5)):
        a, b = mine[method], theirs[(method, ratio)]
        assert a["config_hash"] == b["config_hash"]
        same = {k: v for k, v in a["metrics"].items() if k.startswith(DETERMINISTIC)}
        assert len(same) >= 4 and same == {k: b["metrics"][k] for k in same}, method


@pytest.mark.slow  # about 20 s: a second driver, its workers started afresh
def test_lost_worker_without_retries_is_a_failed_run(tiny_model_dir, text_corpus, ray_cluster, tmp_path,
                                                     monkeypatch):
    from benchsuite.running.runner import RunRequest

    results = tmp_path / "r"
    hold = tmp_path / "hold"
    hold.mkdir()
    monkeypatch.setenv(cluster.HOLD_ENV, "evaluate:random ratio=0.5 seed=0")
    monkeypatch.setenv(cluster.HOLD_DIR_ENV, str(hold))
    request = RunRequest(methods=["random"], model=str(tiny_model_dir), ratios=[0.5], profile="smoke", results=results,
                         tasks=[], corpora=[str(text_corpus)], calibration_data=str(text_corpus),
                         recovery_data=str(text_corpus))
    lines = []
    with Killer(hold) as killer:
        _, outcome = cluster.run_on_ray(request, address=ray_cluster, max_retries=0, log=lines.append)
    assert list(killer.killed) == [slug("random ratio=0.5 seed=0")]
    assert outcome.failed == ["random ratio=0.5 seed=0"]
    assert outcome.failures["random ratio=0.5 seed=0"].startswith("lost its worker 1 times")
    assert "1/2 runs ok" in lines[-1] and "FAILED: random ratio=0.5 seed=0" in lines[-1]
    records, _ = scan(results)
    assert [r["method"] for r in records] == ["dense"]  # nothing recorded for the lost run


def test_without_ray_the_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    out = bench("run", "--methods", "random", "--results", str(tmp_path / "r"), "--executor", "ray")
    assert out.returncode == 2
    assert "pip install 'benchsuite[ray]'" in out.stderr and out.stderr.count("\n") == 1
    assert not (tmp_path / "r").exists()
    out = bench("run", "--methods", "random", "--results", str(tmp_path / "r"), "--address", "127.0.0.1:1")
    assert out.returncode == 2 and "options of --executor ray" in out.stderr


def test_run_resources():
    spec = SimpleNamespace(method=object())
    model_plan = SimpleNamespace(dense_params=10**9)
    cpu = SimpleNamespace(dtype=torch.float32, device=torch.device("cpu"))
    res = cluster.run_resources(cpu, model_plan, spec, cpus=4)
    assert (res.num_cpus, res.num_gpus, res.memory) == (4.0, 0.0, cluster.PROCESS_BYTES + 3 * 4 * 10**9)
    dense = cluster.run_resources(cpu, model_plan, SimpleNamespace(method=None))
    assert dense.memory == cluster.PROCESS_BYTES + 4 * 10**9
    gpu = SimpleNamespace(dtype=torch.bfloat16, device=torch.device("cuda", 1))
    res = cluster.run_resources(gpu, model_plan, spec)
    assert (res.num_gpus, res.memory) == (1.0, cluster.PROCESS_BYTES + 2 * 10**9)
    assert res.options() == {"num_cpus": 1.0, "num_gpus": 1.0, "memory": res.memory}
