"""The runner: every method x ratio x seed, plus the dense model once per model and profile, each run through
the pipeline and written as one record.

    plan (benchsuite.running.plan) -> prune -> recover -> merge -> measure -> record (benchsuite.running.pipeline)

Everything that can be wrong with the request is checked before anything is written (the plan). Finished
runs are skipped when re-run (unless ``rerun``): a run is finished when a record with the same settings
(``config_hash``) says ``ok``. Each run holds its record slot's lock; a failing run is recorded (status
``error`` with the traceback) and the rest go on; records are written atomically and never overwritten.
"""

from __future__ import annotations

import errno
import shutil
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchsuite.api.errors import ConfigError, StorageError
from benchsuite.api.metrics import MeasureContext
from benchsuite.api.profiles import Profile
from benchsuite.host import Registry, get_registry
from benchsuite.models.checkpoint import save_pruned
from benchsuite.models.hf import write_card
from benchsuite.models.resolve import ResolvedModel
from benchsuite.running.pipeline import (
    Calibration,
    Failure,
    Measurement,
    RunStages,
    measure,
    merge,
    now,
    prune,
    pruned_units,
    record,
    recover,
    seed_everything,
)
from benchsuite.running.plan import (
    DEFAULT_RATIOS,
    RATIO_BASES,
    RECOVERY_CHOICES,
    MethodPlan,
    ModelPlan,
    RunPlan,
    RunRequest,
    RunSpec,
    available_devices,
    check_corpus_file,
    check_ratios,
    load_dense,
    measure_context,
    parse_granularity,
    pick_device,
    plan_methods,
    plan_model,
    plan_request,
)
from benchsuite.running.records import (
    RecordProblem,
    RecordSlot,
    clean_stale_temps,
    config_hash,
    context_hash,
    load_record,
    record_slot,
    write_new,
)
from benchsuite.util import progress

__all__ = [
    "DEFAULT_RATIOS", "RATIO_BASES", "RECOVERY_CHOICES", "MethodPlan", "RunRequest", "Runner", "available_devices",
    "check_corpus_file", "check_ratios", "parse_granularity", "pick_device", "plan_methods", "pruned_units",
    "seed_everything",
]


#: errors of a write that say the folder can't take it (not that the run went wrong)
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
#: what a record takes on disk, at most (the reference records: 24 KB on average, 40 KB the largest)
RECORD_BYTES = 64 * 1024


def _existing(path):
    """``path``, or its closest existing parent (the results folder may not exist yet)."""
    from pathlib import Path

    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class Runner:
    """Runs one request; ``log`` receives progress lines, ``error`` the lines of failed runs (default: ``log``).
    Constructing it checks the request (a :class:`~benchsuite.api.errors.ConfigError` for anything wrong); :meth:`run`
    loads the model, checks every run against it, then runs and records them, telling the active
    :mod:`benchsuite.util.progress` view which run and stage is under way."""

    def __init__(self, request: RunRequest, registry: Registry | None = None,
                 log: Callable[[str], None] = print, error: Callable[[str], None] | None = None) -> None:
        self.request = request
        self.registry = registry or get_registry()
        self.log = log
        self.error = error or log
        self._position = 0
        self._total = 0
        self.plan: RunPlan = plan_request(request, self.registry)
        self.model_plan: ModelPlan | None = None

    # -- the plan, as earlier versions exposed it ---------------------------------------------------------
    @property
    def profile(self) -> Profile:
        return self.plan.profile

    @property
    def plans(self) -> list[MethodPlan]:
        return self.plan.methods

    @property
    def device(self) -> torch.device:
        return self.plan.device

    @property
    def dtype(self) -> torch.dtype:
        return self.plan.dtype

    @property
    def tasks(self) -> list[str]:
        return self.plan.tasks

    @property
    def limit(self) -> int | None:
        return self.plan.limit

    @property
    def model_info(self) -> ResolvedModel:
        return self._model_plan().model_info

    @property
    def context_hash(self) -> str:
        """What every record of this request shares (see :func:`benchsuite.running.records.context_hash`)."""
        return context_hash(self._model_plan().dense_run.config)

    def _model_plan(self) -> ModelPlan:
        if self.model_plan is None:
            raise RuntimeError("the model is not loaded yet: call prepare() or run() first")
        return self.model_plan

    def prepare(self) -> None:
        """Refuse a request with a run that can't fit the device (:func:`~benchsuite.running.estimate.check_fits`, from
        the model's config), then resolve and load the model, check every run against it (may raise ConfigError)."""
        from benchsuite.running.estimate import check_fits

        with progress.setup("memory check"):  # the default model is fetched and converted here on first use
            check_fits(self.plan, self.log)
        with progress.setup("plan"):  # tokenizer, dense model, recovery text, the metrics' data, every check
            self.model_plan = plan_model(self.plan)
        self._calibration = Calibration(self.model_plan.tokenizer)
        self._check_space()

    def _check_space(self) -> None:
        """Refuse, before any work, a plan whose records (and saved models) would not fit the results folder's free
        space (estimated: 64 KB a record, the dense model's size a saved model; runs finished before are left out)."""
        model_plan = self._model_plan()
        todo = [spec for spec in [model_plan.dense_run, *model_plan.runs] if self.finished(spec) is None]
        need = len(todo) * RECORD_BYTES + 1_000_000  # and the table
        if self.request.save_models:
            need += sum(1 for spec in todo if spec.method is not None) * model_plan.dense_params * \
                torch.empty(0, dtype=self.dtype).element_size()
        free = shutil.disk_usage(_existing(self.request.results)).free
        if free < need:
            raise ConfigError(f"--results {self.request.results}: {free / 1e6:,.1f} MB free, and the {len(todo)} runs "
                              f"to do write about {need / 1e6:,.1f} MB (records"
                              f"{', saved models' if self.request.save_models else ''}): free some space, or give "
                              "another --results folder")

    # -- run ------------------------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        self.prepare()
        for tmp in clean_stale_temps(self.request.results):
            self.log(f"removed {tmp}, left by a killed run")
        kinds = ["dense"] + [plan.key for plan in self.plans for _ in plan.ratios for _ in self.request.seeds]
        self._position, self._total = 0, len(kinds)
        progress.current().start_matrix(kinds)
        records = [self.run_dense()]
        self.model_plan.dense = None  # each run loads its own copy; keep one model in memory at a time
        for plan in self.plans:
            for ratio in plan.ratios:
                for seed in self.request.seeds:
                    records.append(self.run_one(plan, ratio, seed))
        return records

    def run_dense(self) -> dict[str, Any]:
        spec = self._model_plan().dense_run
        return self._run(spec, f"dense: evaluating {self.model_info.name} ({self.profile.name} profile)")[0]

    def run_one(self, plan: MethodPlan, ratio: float, seed: int) -> dict[str, Any]:
        return self._run_pruned(plan, ratio, seed)[0]

    def run_single(self, key: str, ratio: float = 0.0, seed: int = 0) -> tuple[dict[str, Any], bool]:
        """One run of the matrix on its own, as :meth:`run` runs it (under its slot's lock, kept if finished, else
        written atomically to a new file): ``key`` ``dense``, or a method variant of the plan (its ``key``) at one
        of its ratios and one of the request's seeds. Returns the record and whether it was written now. For
        executors that give each run a process of their own (:mod:`benchsuite.running.cluster`); call :meth:`prepare`
        first."""
        model_plan = self._model_plan()
        if key == "dense":
            return self._run(model_plan.dense_run, f"dense: evaluating {self.model_info.name} "
                             f"({self.profile.name} profile)")
        plan = next((p for p in self.plans if p.key == key), None)
        if plan is None:
            raise KeyError(f"no method {key} in the plan (it has {', '.join(p.key for p in self.plans)})")
        model_plan.dense = None  # a pruned run loads its own copy
        return self._run_pruned(plan, ratio, seed)

    def _run_pruned(self, plan: MethodPlan, ratio: float, seed: int) -> tuple[dict[str, Any], bool]:
        spec = self._model_plan().spec(plan, ratio, seed)
        record, new = self._run(spec, f"{spec.label}: pruning")
        if new and record["status"] == "ok":
            m = record["metrics"]
            ppl = ", ".join(f"{k}={v:.2f} [{m[k + '_lo']:.2f}, {m[k + '_hi']:.2f}]" for k, v in m.items()
                            if k.startswith("ppl_") and k + "_lo" in m)
            params = f"params {m['params'] / 1e6:.1f}M" if m.get("params") is not None else ""
            self.log(f"{spec.label}: " + ", ".join(x for x in (ppl, params) if x))
        return record, new

    def _run(self, spec: RunSpec, starting: str) -> tuple[dict[str, Any], bool]:
        """One run under its slot's lock: the finished record if there is one (and False), else the
        pipeline's, written to a new file (and True)."""
        slot = self._slot(spec)
        view = progress.current()
        self._position += 1
        count = f"[{self._position}/{self._total}] " if self._total else ""
        view.start_run(spec.label, spec.key)
        result: dict[str, Any] | None = None
        try:
            with slot.lock(self.log):
                kept = self._done(slot, spec.config)
                if kept is not None:
                    self.log(f"{count}{spec.label}: done before, kept ({kept['_path']})")
                    return kept, False
                path = slot.next_path()
                self.log(count + starting + view.eta_text(" · "))
                started_at = now()
                stages = self._stages(spec, path)
                result = record(self.plan, self._model_plan(), spec, stages, started_at, now())
                if stages.failure is None and result["status"] != "ok":
                    self.error(f"{spec.label}: FAILED {result['error']}")
                try:
                    write_new(path, result)
                    if stages.model_path is not None:  # the saved model's card, with what the run measured
                        write_card(stages.model_path, result)
                except OSError as exc:
                    raise self._storage_error(exc, path) from None
        finally:
            view.finish_run(measured=result is not None and result["status"] == "ok")
        return result | {"_path": str(path)}, True

    def _stages(self, spec: RunSpec, path) -> RunStages:
        """Prune -> recover -> merge -> measure (the dense model: measure only); a failure is kept, not raised."""
        stages = RunStages()
        try:
            if spec.method is None:
                progress.stage("evaluate")
                stages.measured = self.evaluate(self._model_plan().dense)
                return stages
            model_plan = self._model_plan()
            progress.stage("prune")
            stages.pruned = prune(self.plan, model_plan, spec, self._calibration)
            if spec.recovers_after_pruning:
                progress.stage("fine-tune")
            stages.recovered = recover(self.plan, spec, stages.pruned)
            stages.merged = merge(spec, stages.pruned)
            model = stages.merged.model
            progress.stage("evaluate")
            stages.measured = self.evaluate(model, spec.seed)
            if self.request.save_models:
                out = path.parent / "models" / path.stem
                try:
                    save_pruned(model, out, model_plan.tokenizer, provenance={
                        "method": spec.method.method.name, "ratio": spec.ratio, "seed": spec.seed,
                        "model": model_plan.model_info.name, "weights_sha256": model_plan.weights_sha,
                        "config": spec.config})
                except BaseException as exc:
                    shutil.rmtree(out, ignore_errors=True)  # no half-saved model stays
                    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:  # the folder's fault, not the run's
                        raise self._storage_error(exc, out) from None
                    raise
                stages.model_path = out
            del model
        except StorageError:
            raise  # the same command resumes once the folder can take it
        except Exception as exc:  # noqa: BLE001 - one failing run must not stop the others
            stages.failure = Failure(f"{type(exc).__name__}: {exc}", traceback.format_exc())
            self.error(f"{spec.label}: FAILED {stages.failure.error}")
        return stages

    def _storage_error(self, exc: OSError, path) -> Exception:
        """A write that failed for the folder's sake (no space, no write access) as one line saying what was kept;
        any other OSError as it is."""
        if exc.errno not in STORAGE_ERRNOS:
            return exc
        from benchsuite.running.records import latest_attempts, scan

        kept = sum(1 for r in latest_attempts(scan(self.request.results)[0]) if r.get("status") == "ok")
        return StorageError(f"--results {self.request.results}: can't write {path.name} ({exc.strerror}); the "
                            f"{kept} finished records there are intact and nothing partial was left: free space (or "
                            "restore write access) and run the same command again, it goes on where it stopped")

    # -- measure ----------------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, seed: int = 0) -> Measurement:
        """Every selected metric on ``model`` (the dense model, or a pruned one of the run with ``seed``)."""
        return measure(model, self.plan.metrics, self.measure_context(model, seed), self.plan.device)

    def measure_context(self, model: nn.Module, seed: int = 0) -> MeasureContext:
        model_plan = self._model_plan()
        dense = model is model_plan.dense
        return measure_context(self.plan, model_plan.tokenizer, model_plan.dense_params, seed, dense,
                               reference=(lambda: None) if dense else (lambda: self.latency_reference(model)))

    def load_dense(self) -> nn.Module:
        return load_dense(self.plan, self._model_plan().model_info)

    def latency_reference(self, model: nn.Module) -> nn.Module | None:
        """A fresh dense copy to time interleaved with a pruned ``model`` (its speedup is then measured in
        the same process, under the same load), when a second copy fits in memory; else None."""
        if model is self._model_plan().dense:
            return None
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        if self.device.type == "cuda":
            free = torch.cuda.mem_get_info(self.device)[0]
        else:
            import psutil

            free = psutil.virtual_memory().available
        if 3 * size > free:  # the dense copy is larger than the pruned model: keep a wide margin
            return None
        return self.load_dense()

    # -- records ----------------------------------------------------------------------------------------------
    def finished(self, spec: RunSpec) -> dict[str, Any] | None:
        """The finished record of ``spec`` (None with ``rerun``), looked up without the slot's lock: a hint that
        saves starting the run (an executor's), which checks again under the lock."""
        return self._done(self._slot(spec), spec.config)

    def _done(self, slot: RecordSlot, config: dict[str, Any]) -> dict[str, Any] | None:
        """The finished record of this slot with these settings, if any (the newest). Other files of the
        slot (failed, damaged or incomplete attempts) are kept; the run then goes to a new file."""
        if self.request.rerun:
            return None
        wanted = config_hash(config)
        for path in reversed(slot.attempts()):
            try:
                old = load_record(path)
            except RecordProblem as exc:
                self.log(f"  {path}: {exc}; kept as it is, the run goes to a new file")
                continue
            if old["config_hash"] != wanted:
                self.log(f"  {path.name}: recorded with other settings (config_hash {old['config_hash']}); "
                         "kept, running again into a new file")
            elif old["status"] == "ok":
                old["_path"] = str(path)
                return old
        return None

    def _slot(self, spec: RunSpec) -> RecordSlot:
        return record_slot(self.request.results, self.model_info.name, self.profile.name, spec.key, spec.ratio,
                           spec.seed, spec.config)
