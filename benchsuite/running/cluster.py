"""The matrix on a Ray cluster: ``benchsuite run --executor ray [--address HOST:PORT]``.

The driver plans the request exactly as an in-process run does (every check, the model loaded and every run
checked against it, before anything is submitted), then submits one Ray task per run, the dense model
included, each asking for the resources :func:`run_resources` gives it. A task plans the same request in
its worker, checks that the run's settings hash to what the driver planned (a worker that sees other model
weights, corpora or plugins fails instead of writing records of other settings), and runs that one run
through :meth:`benchsuite.running.runner.Runner.run_single`: under the record slot's lock, kept if a finished
record with the same settings exists, else written atomically to a new file, a failing pipeline recorded
with status ``error``, as in-process.

Records go to ``--results``, which every node must see at the same path (a shared filesystem); workers run
in the driver's working directory (relative paths mean the same there) with the driver's ``BENCHSUITE_*``
and Hugging Face environment variables.

Failures:

- a run whose pipeline raises is recorded (status ``error``) and not retried;
- a task whose worker process or node is lost (killed, preempted, out of memory) is submitted again, up to
  ``max_retries`` times. The new attempt finds the record if the lost one had written it (kept: a record
  is never written twice); the slot's lock died with the process that held it (an ``flock`` is released
  by the kernel when its holder exits); a temp file the lost writer left is removed before the run;
- a task that fails in Python outside the pipeline (a worker that can't plan the request) is reported,
  nothing is written for it.

The driver prints a line as each task ends (the count, what was written or kept, what failed) and a
summary; :class:`ClusterOutcome` says which runs failed (``benchsuite run`` then exits with status 1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchsuite.api.errors import ConfigError
from benchsuite.host import Registry
from benchsuite.running.plan import ModelPlan, RunPlan, RunRequest, RunSpec

#: what ``--executor ray`` asks for when Ray is not installed
INSTALL_HINT = "pip install 'benchsuite[ray]'"
#: environment variables the workers get from the driver (caches, offline switches, benchsuite settings)
FORWARDED_ENV = ("BENCHSUITE_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_PARALLELISM", "XDG_CACHE_HOME")
#: host memory a worker process needs besides the model (torch, transformers, tokenizer, data, lm-eval)
PROCESS_BYTES = 1 << 30
#: tests: ``STAGE:LABEL`` items separated by ``;``: the first attempt of run LABEL writes its pid to
#: ``<BENCHSUITE_TEST_HOLD_DIR>/<label>.pid`` and waits (up to 5 minutes) at STAGE (``prune``, ``evaluate``:
#: inside the slot's lock; ``written``: after its record is written, before the task returns) to be killed
HOLD_ENV, HOLD_DIR_ENV = "BENCHSUITE_TEST_HOLD", "BENCHSUITE_TEST_HOLD_DIR"


def import_ray():
    """The ``ray`` module, or a :class:`~benchsuite.api.errors.ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"--executor ray needs Ray, which is not installed here ({exc}); install it with "
                          f"{INSTALL_HINT}") from None
    return ray


# -- resources ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunResources:
    """What one run asks the cluster for: CPUs, GPUs and host memory (bytes; Ray's ``memory`` resource)."""

    num_cpus: float
    num_gpus: float
    memory: int

    def options(self) -> dict[str, Any]:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "memory": self.memory}

    def describe(self) -> str:
        gpus = f", {self.num_gpus:g} GPU" if self.num_gpus else ""
        return f"{self.num_cpus:g} CPU{gpus}, {self.memory / 2**30:.1f} GiB"


def run_resources(plan: RunPlan, model_plan: ModelPlan, spec: RunSpec, cpus: float = 1.0) -> RunResources:
    """The resources of one run (the one place they are decided).

    A run on a GPU gets a whole GPU: runs sharing one would disturb each other's latency and peak-memory
    measurements. Host memory: the worker process, plus the model's weights three times on the CPU (the
    planning copy, the copy that is pruned and the dense latency reference; LoRA's optimizer state and the
    activations of these smoke-to-paper batch sizes are small beside them), or once on a GPU (weights pass
    through host memory while they load)."""
    element = torch.empty((), dtype=plan.dtype).element_size()
    weights = model_plan.dense_params * element
    on_gpu = plan.device.type == "cuda"
    copies = 1 if on_gpu else (1 if spec.method is None else 3)
    return RunResources(num_cpus=float(cpus), num_gpus=1.0 if on_gpu else 0.0, memory=PROCESS_BYTES + copies * weights)


# -- the worker side -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One run as the driver submits it: ``key`` (``dense`` or a method variant), ratio, seed, and the hash of
    the settings the driver planned for it."""

    label: str
    key: str
    ratio: float
    seed: int
    config_hash: str
    resources: RunResources


def _holds() -> dict[str, str]:
    out = {}
    for item in os.environ.get(HOLD_ENV, "").split(";"):
        stage, _, label = item.partition(":")
        if label:
            out[label.strip()] = stage.strip()
    return out


def _hold(stage: str, label: str, attempt: int) -> None:
    """The test hook (see :data:`HOLD_ENV`): wait here, on the first attempt, to be killed."""
    if attempt != 1 or _holds().get(label) != stage:
        return
    from benchsuite.running.records import slug

    folder = Path(os.environ.get(HOLD_DIR_ENV) or ".")
    (folder / f"{slug(label)}.pid").write_text(str(os.getpid()))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.1)


def _worker_view(label: str, attempt: int):
    """A silent progress view that honours the test hook at each stage."""
    from benchsuite.util import progress

    class View(progress.Progress):
        def set_stage(self, name: str) -> None:
            _hold(name, label, attempt)
            super().set_stage(name)

    return View(enabled=False)


def run_task(request: RunRequest, job: Job, attempt: int, cwd: str) -> dict[str, Any]:
    """Run ``job`` in this (worker) process: plan ``request``, check the settings against the driver's, run it.
    Returns what the driver reports: status, record path, whether it was written now, the log lines."""
    from benchsuite.running.records import clean_stale_temps, config_hash, record_slot
    from benchsuite.running.runner import Runner
    from benchsuite.util import progress

    started = time.monotonic()
    torch.set_num_threads(max(1, int(job.resources.num_cpus)))
    lines: list[str] = []
    before = os.getcwd()
    os.chdir(cwd)
    try:
        runner = Runner(request, log=lines.append)
        runner.prepare()
        model_plan = runner.model_plan
        if job.key == "dense":
            spec = model_plan.dense_run
        else:
            spec = next((s for s in model_plan.runs if s.key == job.key and s.ratio == job.ratio
                         and s.seed == job.seed), None)
            if spec is None:
                raise ConfigError(f"{job.label}: the worker's plan has no such run")
        if config_hash(spec.config) != job.config_hash:
            raise ConfigError(f"{job.label}: this worker ({socket.gethostname()}) plans other settings (config_hash "
                              f"{config_hash(spec.config)}, the driver's {job.config_hash}): another model, corpus, "
                              "profile or plugin version than the driver's")
        slot = record_slot(request.results, runner.model_info.name, runner.profile.name, spec.key, spec.ratio,
                           spec.seed, spec.config)
        for tmp in clean_stale_temps(slot.folder):
            lines.append(f"  removed {tmp}, left by a killed run")
        with progress.active(_worker_view(job.label, attempt)):
            record, new = runner.run_single(job.key, job.ratio, job.seed)
        _hold("written", job.label, attempt)
    finally:
        os.chdir(before)
    return {"label": job.label, "status": record["status"], "error": record.get("error"), "path": record["_path"],
            "new": new, "lines": lines, "host": socket.gethostname(), "pid": os.getpid(), "attempt": attempt,
            "seconds": time.monotonic() - started}


# -- the driver side -----------------------------------------------------------------------------------------

@dataclass
class ClusterOutcome:
    """What a Ray run did: per run label, the final result dict of its task (see :func:`run_task`) or why it
    failed; how many attempts each run took."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed(self) -> list[str]:
        """The runs without an ``ok`` record: failed in the pipeline (an ``error`` record), or lost."""
        return [label for label in self.attempts if label in self.failures]


def _lost_worker_errors(ray) -> tuple[type[BaseException], ...]:
    """Ray's errors for a task whose worker process or node went away (retried), as opposed to an exception
    raised by the task's own code (``RayTaskError``: not retried)."""
    names = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "LocalRayletDiedError", "ObjectLostError")
    return tuple(getattr(ray.exceptions, name) for name in names if hasattr(ray.exceptions, name))


def _worker_request(plan: RunPlan) -> RunRequest:
    """The request as the workers plan it: the device and dtype the driver resolved (a worker's GPU is
    ``cuda``: Ray gives it the GPU it assigned as device 0), the results folder as an absolute path."""
    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    request = plan.request
    return dataclasses.replace(request, device=plan.device.type, dtype=names[plan.dtype],
                               results=Path(request.results).resolve())


def _forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}


@contextlib.contextmanager
def _loopback(ray) -> Iterator[None]:
    """Ray resolves a node address of 127.0.0.1 to the machine's outward address (so that other nodes can
    join) unless its cluster mode is off, as on macOS and Windows: turned off while a private cluster
    starts, so that all of its servers listen on the loopback interface only."""
    try:
        constants = ray._private.ray_constants
        before = constants.ENABLE_RAY_CLUSTER
    except AttributeError:  # another Ray layout: its default addresses
        yield
        return
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = before


def _connect(ray, address: str | None, verbose: bool) -> None:
    """Connect to the cluster at ``address`` (``auto``: the one running on this node), or start a private one
    on this machine, bound to the loopback interface (``address`` None). A cluster on a loopback address is
    joined from the loopback interface too."""
    import ipaddress
    import logging

    common = {"log_to_driver": verbose, "configure_logging": True,
              "logging_level": logging.INFO if verbose else logging.WARNING,
              "runtime_env": {"env_vars": _forwarded_env()}}
    host = (address or "").rsplit(":", 1)[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    try:
        if address is None:
            with _loopback(ray):
                ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                         object_store_memory=200 * 2**20, **common)
        elif loopback:
            with _loopback(ray):
                ray.init(address=address, _node_ip_address="127.0.0.1", **common)
        else:
            ray.init(address=address, **common)
    except ConnectionError as exc:
        raise ConfigError(f"--address {address}: no Ray cluster to connect to ({exc})") from None


def _check_feasible(ray, jobs: list[Job], local: bool, warn: Callable[[str], None]) -> None:
    """A run that no node of the cluster can hold would wait for ever: an error on a private cluster, a warning
    on an existing one (an autoscaler may add such a node)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for job in jobs:
        need = {"CPU": job.resources.num_cpus, "GPU": job.resources.num_gpus, "memory": job.resources.memory}
        if any(all(node.get(k, 0) >= v for k, v in need.items() if v) for node in nodes):
            continue
        biggest = ", ".join(f"{node.get('CPU', 0):g} CPU, {node.get('GPU', 0):g} GPU, "
                            f"{node.get('memory', 0) / 2**30:.1f} GiB" for node in nodes) or "no nodes"
        message = (f"{job.label} needs {job.resources.describe()}, which no node of the cluster has "
                   f"({biggest})")
        if local:
            raise ConfigError(message)
        warn(f"benchsuite: warning: {message}; it waits until the cluster has such a node")
        return


def run_on_ray(request: RunRequest, registry: Registry | None = None, *, address: str | None = None,
               cpus_per_run: float = 1.0, max_retries: int = 2, log: Callable[[str], None] = print,
               error: Callable[[str], None] | None = None, verbose: bool = False):
    """Run ``request`` on a Ray cluster (see the module docstring); returns the driver's
    :class:`~benchsuite.running.runner.Runner` (planned and prepared: its model and context, for the table) and the
    :class:`ClusterOutcome`. Raises :class:`~benchsuite.api.errors.ConfigError` before anything is submitted for
    anything wrong with the request, Ray's absence or the cluster. Runs with a finished record are reported
    as kept without being submitted (unless ``rerun``); a submitted run checks again under its slot's lock."""
    from benchsuite.running.records import clean_stale_temps, config_hash
    from benchsuite.running.runner import Runner

    error = error or log
    if cpus_per_run <= 0:
        raise ConfigError(f"--cpus-per-run {cpus_per_run:g}: give a positive number of CPUs")
    if max_retries < 0:
        raise ConfigError(f"max_retries {max_retries}: give 0 or more")
    ray = import_ray()
    runner = Runner(request, registry, log=log, error=error)
    runner.prepare()
    model_plan = runner.model_plan
    model_plan.dense = None  # the driver measures nothing
    for tmp in clean_stale_temps(request.results):
        log(f"removed {tmp}, left by a killed run")
    outcome = ClusterOutcome()
    specs = [model_plan.dense_run] + model_plan.runs
    total, done = len(specs), 0
    jobs = []
    for spec in specs:
        kept = runner.finished(spec)
        outcome.attempts[spec.label] = 0
        if kept is None:
            jobs.append(Job(spec.label, spec.key, spec.ratio, spec.seed, config_hash(spec.config),
                            run_resources(runner.plan, model_plan, spec, cpus_per_run)))
            continue
        done += 1
        outcome.results[spec.label] = {"label": spec.label, "status": "ok", "error": None, "path": kept["_path"],
                                       "new": False, "lines": [], "host": None, "pid": None, "attempt": 0}
        log(f"[{done}/{total}] {spec.label}: done before, kept ({kept['_path']})")
    if jobs:
        _run_jobs(ray, jobs, _worker_request(runner.plan), outcome, address=address, max_retries=max_retries,
                  log=log, error=error, verbose=verbose, done=done, total=total)
    failed = outcome.failed
    retried = sum(1 for n in outcome.attempts.values() if n > 1)
    summary = (f"{total - len(failed)}/{total} runs ok ({total - len(jobs)} kept from before, {len(jobs)} run on "
               f"Ray in {outcome.seconds:.1f}s" + (f", {retried} retried after losing their worker" if retried else "")
               + ")")
    if failed:
        error(f"{summary}; FAILED: {', '.join(failed)}")
    else:
        log(summary)
    return runner, outcome


def _run_jobs(ray, jobs: list[Job], worker_request: RunRequest, outcome: ClusterOutcome, *, address: str | None,
              max_retries: int, log: Callable[[str], None], error: Callable[[str], None], verbose: bool, done: int,
              total: int) -> None:
    """Submit ``jobs``, resubmit those whose worker was lost, report each as it ends (into ``outcome``)."""
    cwd = os.getcwd()
    _connect(ray, address, verbose)
    started = time.monotonic()
    try:
        _check_feasible(ray, jobs, address is None, error)
        task = ray.remote(run_task)
        lost = _lost_worker_errors(ray)
        pending: dict[Any, Job] = {}

        def submit(job: Job, attempt: int) -> None:
            outcome.attempts[job.label] = attempt
            ref = task.options(**job.resources.options(), max_retries=0, retry_exceptions=False,
                               name=f"benchsuite {job.label}").remote(worker_request, job, attempt, cwd)
            pending[ref] = job

        for job in jobs:
            submit(job, 1)
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        log(f"{len(jobs)} runs submitted to {where}, each {jobs[-1].resources.describe()}")
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                ref = ready[0]
                job = pending.pop(ref)
                attempt = outcome.attempts[job.label]
                result = None
                try:
                    result = ray.get(ref)
                except lost as exc:
                    text = str(exc).strip().splitlines()
                    why = f"{type(exc).__name__}: {text[0][:300] if text else ''}"
                    if attempt <= max_retries:
                        error(f"{job.label}: attempt {attempt} lost its worker ({why}); submitting it again "
                              f"(attempt {attempt + 1} of at most {max_retries + 1})")
                        submit(job, attempt + 1)
                        continue
                    outcome.failures[job.label] = f"lost its worker {attempt} times, last: {why}"
                except ray.exceptions.RayError as exc:  # the task's own code raised (or Ray refused it)
                    cause = getattr(exc, "cause", None) or exc
                    text = str(cause).strip().splitlines()
                    outcome.failures[job.label] = f"{type(cause).__name__}: {text[-1] if text else ''}"
                else:
                    outcome.results[job.label] = result
                    for line in result["lines"]:
                        log(line)
                    if result["status"] != "ok":
                        outcome.failures[job.label] = f"recorded as failed: {result['error']}"
                done += 1
                count = f"[{done}/{total}]"
                if job.label in outcome.failures:
                    error(f"{count} {job.label}: FAILED {outcome.failures[job.label]}")
                else:
                    state = "written" if result["new"] else "done before, kept"
                    retried = f", attempt {attempt}" if attempt > 1 else ""
                    log(f"{count} {job.label}: {state} ({result['path']}; {result['host']} pid {result['pid']}, "
                        f"{result['seconds']:.1f}s{retried})")
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        outcome.seconds = time.monotonic() - started
        ray.shutdown()
