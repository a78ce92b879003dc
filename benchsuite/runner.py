"""The runner: load -> score -> select -> apply -> recover -> evaluate -> record, for every
method x ratio x seed, plus the dense model once per model and profile.

Everything that can be wrong with the request is checked before anything is written. Finished
runs are skipped when re-run (unless ``rerun``); a failing run is recorded and the rest go on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import random
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .api import ConfigError, Criterion, Granularity, Method, PruneContext, PruneOutcome, Schedule
from .assets import AssetError, weights_sha256
from .corpora import corpus_identity, load_documents
from .data import batches, calibration_samples, eval_windows, training_windows
from .evaluate import count_params, flops_per_token, latency, perplexity, sparse_latency
from .finetune import LoRAConfig, attach_lora, cycle_batches, frozen_parameters, merge_lora, train_lora
from .host import Registry, get_registry
from .memory import PeakMemory, tensor_bytes
from .models import ResolvedModel, load_model_dir, load_tokenizer, resolve_model, save_pruned
from .profiles import Profile, corpus_label, get_profile, with_corpora, with_recovery_data, with_train_steps
from .records import (
    SCHEMA,
    RecordProblem,
    RecordSlot,
    check_record,
    check_writable,
    clean_stale_temps,
    config_hash,
    context_hash,
    git_commit,
    hardware,
    load_record,
    record_slot,
    versions,
    write_new,
)
from .structure import PROJECTIONS, base_linear, decoder_layers, parse_layers


@dataclass
class RunRequest:
    methods: list[str]
    model: str = "smollm2-135m"
    #: None: [0.2, 0.5] for free-ratio granularities; N:M fixes its own ratio
    ratios: list[float] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    profile: str = "quick"
    results: Path = Path("results")
    rerun: bool = False
    save_models: bool = False
    device: str = "auto"
    dtype: str = "auto"
    #: run every method at this granularity instead of its own: structured, unstructured, N:M (e.g. 2:4)
    granularity: str | None = None
    #: zero-shot tasks and examples per task; None: the profile's (an empty list: none)
    tasks: list[str] | None = None
    limit: int | None = None
    #: LoRA optimizer steps instead of the profile's (the profile is then named e.g. quick-steps200)
    train_steps: int | None = None
    #: perplexity corpora instead of the profile's (names, wikitext2/ptb through datasets, or file paths)
    corpora: list[str] | None = None
    #: ``None``/``method``: each method's own recovery; ``lora``: every method gets the profile's LoRA
    #: recovery (equal budget); ``none``: no recovery (not possible for methods that prune while training)
    recovery: str | None = None
    #: LoRA training text instead of the profile's (``instruct``, a corpus name or a .txt/.jsonl path)
    recovery_data: str | None = None
    #: ``params``: a ratio is the fraction of the decoder layers' projection weights removed, the
    #: same parameter count for every method whatever layers it prunes; ``units``: the fraction of
    #: heads/channels (or weights) removed in each method's own pruned layers
    ratio_basis: str = "params"


DEFAULT_RATIOS = [0.2, 0.5]
RECOVERY_CHOICES = ("method", "lora", "none")
RATIO_BASES = ("params", "units")


def seed_everything(seed: int) -> None:
    """Seed every global generator a run draws from (peft's LoRA init, dropout, numpy, random), so a
    run's result does not depend on what ran before it in the process."""
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy comes with torch/pandas
        pass


@dataclass
class MethodPlan:
    """A method with its components resolved (validated before any run starts)."""

    method: Method
    criterion: type[Criterion]
    granularity: type[Granularity]
    schedule: type[Schedule]
    ratios: list[float] = field(default_factory=list)
    #: directory name of the records: the method name, plus the granularity when overridden
    key: str = ""

    def build(self) -> tuple[Criterion, Granularity, Schedule]:
        m = self.method
        return (self.criterion.create(m.criterion_params), self.granularity.create(m.granularity_params),
                self.schedule.create(m.schedule_params))

    @property
    def needs_lora(self) -> bool:
        return "lora_grad" in self.criterion.needs or self.schedule.trains

    def lora(self, budget: dict[str, Any] | None = None) -> tuple[LoRAConfig | None, int | None]:
        """The method's LoRA settings, completed by the profile's ``budget``, and its recovery steps
        (None: the profile's)."""
        m = self.method
        if m.recovery is None and not self.needs_lora:
            return None, None
        params = dict(m.recovery or {})
        steps = params.pop("steps", None)
        return LoRAConfig.from_params(params, budget), steps

    def recovery_label(self) -> str:
        """``none``, ``LoRA`` (after pruning) or ``LoRA, during`` (a schedule that prunes while training)."""
        if self.method.recovery is None and not self.needs_lora:
            return "none"
        return "LoRA, during" if self.schedule.trains else "LoRA"


def parse_granularity(text: str) -> tuple[str, dict[str, Any]]:
    """``structured``, ``unstructured``, ``nm`` or ``N:M`` (e.g. ``2:4``) -> (name, params)."""
    text = text.strip()
    if ":" in text:
        try:
            n, m = (int(x) for x in text.split(":"))
        except ValueError:
            raise ConfigError(f"granularity '{text}' is not N:M with integers (e.g. 2:4)") from None
        return "nm", {"n": n, "m": m}
    return text, {}


def plan_methods(names: list[str], registry: Registry, ratios: list[float] | None = None,
                 granularity: str | None = None, recovery: str | None = None) -> list[MethodPlan]:
    plans = []
    override = parse_granularity(granularity) if granularity else None
    if recovery not in (None, *RECOVERY_CHOICES):
        raise ConfigError(f"--recovery '{recovery}' unknown; choose one of {', '.join(RECOVERY_CHOICES)}")
    for name in names:
        own = recovery
        base, plus, suffix = name.rpartition("+")
        if plus and suffix in RECOVERY_CHOICES:  # e.g. magnitude-l2+lora: this method with LoRA recovery
            name, own = base, suffix
        method: Method = registry.lookup("methods", name)
        key = method.name
        if override is not None:
            gran_name, gran_params = override
            registry.lookup("granularities", gran_name)  # unknown -> close matches
            if gran_name == "structured":
                layers = method.layers if method.granularity == "structured" else "default"
            else:
                layers = method.layers if method.granularity != "structured" else "all"
            method = replace(method, granularity=gran_name, granularity_params=gran_params, layers=layers)
        plan = MethodPlan(method, registry.lookup("criteria", method.criterion),
                          registry.lookup("granularities", method.granularity),
                          registry.lookup("schedules", method.schedule))
        gran = plan.build()[1]  # validates parameters
        if override is not None:
            key = f"{method.name}@{gran.label()}"
        if own == "none" and plan.needs_lora:
            raise ConfigError(f"{method.name} prunes with LoRA ({plan.schedule.name} schedule, criterion "
                              f"{plan.criterion.name}): it can't run with --recovery none")
        if own == "none" and method.recovery is not None:
            plan.method = replace(method, recovery=None)
            key += "+none"
        elif own == "lora" and method.recovery is None:
            plan.method = replace(method, recovery={})  # LoRAConfig's defaults: r 8, alpha 16, dropout 0.05
            key += "+lora"
        plan.lora()
        plan.key = key
        fixed = gran.fixed_ratio
        if fixed is None:
            plan.ratios = list(ratios or DEFAULT_RATIOS)
        elif ratios is not None and any(abs(r - fixed) > 1e-9 for r in ratios):
            raise ConfigError(f"{key} prunes at {gran.label()}, which fixes the ratio at {fixed:g}; "
                              f"--ratios {','.join(f'{r:g}' for r in ratios)} conflicts (leave --ratios out)")
        else:
            plan.ratios = [fixed]
        plans.append(plan)
    return plans


def check_ratios(ratios: list[float]) -> None:
    for r in ratios:
        if not 0.0 < r < 1.0:
            raise ConfigError(f"ratio {r} is outside (0, 1): give the fraction of units to remove, e.g. 0.2")


def available_devices() -> list[str]:
    """The ``--device`` values that work on this machine."""
    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


def pick_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    device = device.strip().lower()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    here = available_devices()
    if device not in here:
        known = re.fullmatch(r"(cpu|cuda|mps)(:\d+)?", device)
        why = "torch sees no such device here" if known else "benchsuite runs on cpu, cuda[:N] or mps"
        raise ConfigError(f"--device {device}: {why}; here you can use {', '.join(here)}")
    dev = torch.device(device)
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    try:
        return dev, {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ConfigError(f"dtype '{dtype}' unknown; choose auto, float32, bfloat16 or float16") from None


def check_corpus_file(corpus: str, role: str = "") -> None:
    """A corpus given as a .txt/.jsonl path must exist and be readable text: checked before the model loads."""
    path = Path(corpus).expanduser()
    if path.suffix not in (".txt", ".jsonl"):
        return
    try:
        load_documents(path)
    except ValueError as exc:  # the message names the file
        raise ConfigError(f"{role}{exc}") from None


class Runner:
    """Runs one request; ``log`` receives progress lines."""

    def __init__(self, request: RunRequest, registry: Registry | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.request = request
        self.registry = registry or get_registry()
        self.log = log
        # validate everything that needs no model before touching disk
        profile = with_train_steps(get_profile(request.profile), request.train_steps)
        self.profile: Profile = with_recovery_data(with_corpora(profile, request.corpora), request.recovery_data)
        if request.ratios is not None and not request.ratios:
            raise ConfigError("--ratios is empty: give at least one ratio, e.g. 0.2,0.5 (or leave it out)")
        check_ratios(request.ratios or [])
        if not request.seeds:
            raise ConfigError("--seeds is empty: give at least one seed, e.g. 0")
        for seed in request.seeds:
            if not 0 <= seed < 2**63:
                raise ConfigError(f"seed {seed} is outside [0, 2**63): torch can't be seeded with it")
        if request.ratio_basis not in RATIO_BASES:
            raise ConfigError(f"--ratio-basis '{request.ratio_basis}' unknown; choose one of {', '.join(RATIO_BASES)}")
        if not request.methods:
            raise ConfigError("no methods given")
        self.plans = plan_methods(request.methods, self.registry, request.ratios, request.granularity,
                                  request.recovery)
        for plan in self.plans:
            plan.lora(self.profile.lora_budget())  # a method that sets the profile's budget keys fails now
        self.device, self.dtype = pick_device(request.device, request.dtype)
        try:  # an unusable results folder fails now, not after the dense model was evaluated
            check_writable(request.results)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(f"--results {request.results}: records can't be written there ({reason})") from None
        self.tasks = list(self.profile.tasks if request.tasks is None else request.tasks)
        self.limit = self.profile.task_limit if request.limit is None else request.limit
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit {self.limit}: give a positive number of examples per task")
        for corpus in self.profile.corpora:
            check_corpus_file(corpus.strip())
        for corpus in self.profile.recovery_data.split(","):
            check_corpus_file(corpus.strip(), "recovery data: ")
        if self.tasks:
            from .zeroshot import resolve_tasks

            self.tasks = resolve_tasks(self.tasks)
        self._windows: dict[str, torch.Tensor] = {}
        self._calibration: dict[tuple[str, int, int, int], torch.Tensor] = {}
        #: (plan key, ratio) -> the unit ratio and how it was derived (see ``unit_ratio``)
        self._unit_ratios: dict[tuple[str, float], dict[str, Any]] = {}
        self.train_steps = self.profile.train_steps

    # -- load ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Resolve and load the model, check every method supports it (may raise ConfigError)."""
        self.model_info: ResolvedModel = resolve_model(self.request.model, self.registry)
        try:
            self.tokenizer = load_tokenizer(self.model_info.path)
            self.dense = self.load_dense()
        except (ConfigError, AssetError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - a broken checkpoint is one clear line, not a traceback
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ConfigError(f"model {self.model_info.source} can't be loaded: {type(exc).__name__}: "
                              f"{reason}") from None
        for plan in self.plans:
            plan.build()[1].check_model(self.dense)
            parse_layers(plan.method.layers, len(decoder_layers(self.dense)))
            for ratio in plan.ratios:  # an impossible ratio fails before any run
                self._unit_ratios[(plan.key, ratio)] = self.unit_ratio(plan, ratio)
        self.weights_sha = weights_sha256(self.model_info.path)
        if any(plan.lora()[0] is not None for plan in self.plans):
            try:  # recovery data: a missing file fails before any run; epochs become steps
                windows = training_windows(self.tokenizer, self.profile.recovery_data, self.profile.train_len)
            except ValueError as exc:
                raise ConfigError(f"recovery data: {exc}") from None
            self.recovery_data = corpus_identity(self.profile.recovery_data) | {
                "windows": len(windows), "tokens": windows.numel(), "window_len": self.profile.train_len,
                "packing": "documents joined by blank lines, cut into non-overlapping windows"}
            if self.profile.train_epochs is not None:
                per_step = self.profile.train_batch * self.profile.grad_accum
                self.train_steps = max(1, math.ceil(self.profile.train_epochs * len(windows) / per_step))
        for corpus in self.profile.corpora:  # a missing, unreachable or too short corpus fails before any run
            try:
                windows = self.windows(corpus)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            if len(windows) == 0:
                raise ConfigError(f"corpus '{corpus}': its evaluation part holds fewer than {self.profile.seq_len} "
                                  "tokens, not one perplexity window")
        if self.tasks:
            from .zeroshot import prepare_tasks

            prepare_tasks(self.tasks)  # fetch task data now: a missing download fails before any run
        self.dense_params = count_params(self.dense)

    def load_dense(self) -> nn.Module:
        return load_model_dir(self.model_info.path, dtype=self.dtype, device=self.device)

    def windows(self, corpus: str) -> torch.Tensor:
        if corpus not in self._windows:
            p = self.profile
            self._windows[corpus] = eval_windows(self.tokenizer, corpus, p.seq_len, p.eval_windows)
        return self._windows[corpus]

    def calibration_spec(self, plan: MethodPlan) -> dict[str, Any]:
        """Corpus, samples and length of calibration for a method: the profile's, or in the papers'
        profiles the criterion's own recipe."""
        p = self.profile
        own = plan.criterion.calibration
        if p.criterion_calibration and own is not None:
            corpus, samples, length = own
            return {"corpus": corpus, "samples": samples, "length": length, "from": "criterion"}
        return {"corpus": p.calib_corpus, "samples": p.calib_samples, "length": p.calib_len, "from": "profile"}

    def calibration(self, spec: dict[str, Any], seed: int) -> torch.Tensor:
        key = (spec["corpus"], spec["samples"], spec["length"], seed)
        if key not in self._calibration:
            self._calibration[key] = calibration_samples(self.tokenizer, spec["corpus"], spec["samples"],
                                                         spec["length"], seed)
        return self._calibration[key]

    def unit_ratio(self, plan: MethodPlan, ratio: float) -> dict[str, Any]:
        """The fraction of units to prune in the method's layers for ``ratio``.

        With ``ratio_basis`` ``params`` the ratio is of the decoder layers' projection weights, so
        methods that prune different layer ranges end with the same parameter count: the unit ratio
        is ``ratio * all projection weights / weights the pruned units hold``."""
        granularity = plan.build()[1]
        info: dict[str, Any] = {"ratio": ratio, "basis": self.request.ratio_basis}
        if granularity.fixed_ratio is not None:
            return info | {"basis": "fixed by the granularity", "unit_ratio": ratio}
        layers = parse_layers(plan.method.layers, len(decoder_layers(self.dense)))
        groups = granularity.units(self.dense, layers)
        cap = granularity.max_ratio(groups)
        if self.request.ratio_basis == "units":
            unit = ratio
        else:
            total = sum(base_linear(layer.get_submodule(path)).weight.numel()
                        for layer in decoder_layers(self.dense) for path in PROJECTIONS)
            prunable = sum(g.size * n for g, n in zip(groups, granularity.unit_params(self.dense, groups)))
            unit = ratio * total / prunable
            info |= {"projection_params": total, "prunable_params": prunable}
            if cap < unit <= cap + 1e-9:
                unit = cap
        if unit > cap:
            raise ConfigError(
                f"{plan.key} at ratio {ratio:g} ({self.request.ratio_basis}) must remove {unit:.1%} of the units in "
                f"its {len(layers)} pruned layers, more than the {cap:.1%} that can go (one unit per block stays); "
                "use a lower ratio" + (", or --ratio-basis units" if self.request.ratio_basis == "params" else ""))
        return info | {"unit_ratio": unit}

    # -- evaluate -----------------------------------------------------------------------------
    def evaluate(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        p = self.profile
        metrics: dict[str, Any] = {}
        how: dict[str, Any] = {}
        model.eval()
        with PeakMemory(self.device) as mem:
            for corpus in p.corpora:
                result = perplexity(model, self.windows(corpus), p.eval_batch, desc=f"ppl {corpus}")
                metrics[f"ppl_{corpus_label(corpus)}"] = result["ppl"]
                metrics[f"ppl_{corpus_label(corpus)}_lo"] = result["ci_lo"]
                metrics[f"ppl_{corpus_label(corpus)}_hi"] = result["ci_hi"]
                how[f"ppl_{corpus_label(corpus)}"] = {k: v for k, v in result.items() if k != "ppl"} | {
                    "corpus": corpus,
                    "split": "evaluation part (disjoint from calibration)", "windows": "non-overlapping",
                    "bos": "none prepended"}
            if self.tasks:
                from .zeroshot import evaluate_zeroshot

                zeroshot = evaluate_zeroshot(model, self.tokenizer, self.tasks, self.limit, p.task_batch)
                for task, result in zeroshot["tasks"].items():
                    if not isinstance(result["value"], (int, float)) or not math.isfinite(result["value"]):
                        raise FloatingPointError(f"zero-shot {task}: accuracy {result['value']!r} is not a number")
                    metrics[f"acc_{task}"] = result["value"]
                    metrics[f"acc_{task}_lo"], metrics[f"acc_{task}_hi"] = result["ci_lo"], result["ci_hi"]
                metrics["acc_avg"] = zeroshot["average"]
                metrics["acc_avg_lo"], metrics["acc_avg_hi"] = zeroshot["average_ci_lo"], zeroshot["average_ci_hi"]
                how["zeroshot"] = zeroshot
        metrics["peak_mem_eval_mb"] = mem.result()["peak_mb"]
        how["peak_mem_eval_mb"] = mem.result()
        metrics["params"] = count_params(model)
        metrics["params_ratio"] = metrics["params"] / self.dense_params
        how["params"] = "unique parameters (tied embeddings once), embeddings included"
        flops = flops_per_token(model, p.seq_len)
        metrics["flops_per_token"] = flops["flops_per_token"]
        how["flops_per_token"] = flops
        reference = self.latency_reference(model)
        lat = latency(model, p.latency_batch, p.latency_len, p.latency_repeats, reference=reference)
        del reference
        metrics["latency_ms"] = lat["latency_ms"]
        metrics["latency_iqr_ms"] = lat["iqr_ms"]
        metrics["latency_noisy"] = int(lat["noisy"])
        if lat.get("speedup") is not None:
            metrics.update(speedup=lat["speedup"], speedup_lo=lat["speedup_lo"], speedup_hi=lat["speedup_hi"])
        how["latency_ms"] = lat
        sparse = sparse_latency(model, p.latency_batch, p.latency_len, p.latency_repeats)
        if sparse["latency_ms"] is not None:
            metrics["latency_sparse_ms"] = sparse["latency_ms"]
            metrics["latency_sparse_noisy"] = int(bool(sparse.get("noisy")))
        if sparse.get("reason") != "no 2:4-sparse weights":
            how["latency_sparse_ms"] = sparse
        return metrics, how

    def latency_reference(self, model: nn.Module) -> nn.Module | None:
        """A fresh dense copy to time interleaved with a pruned ``model`` (its speedup is then measured in
        the same process, under the same load), when a second copy fits in memory; else None."""
        if model is self.dense:
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

    # -- records ------------------------------------------------------------------------------
    def _base_record(self, method: str, ratio: float, seed: int, config: dict[str, Any]) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "method": method, "ratio": ratio, "seed": seed,
            "profile": self.profile.name, "profile_settings": self.profile.as_dict(),
            "model": self.model_info.name, "model_source": self.model_info.source,
            "weights_sha256": self.weights_sha, "config": config, "config_hash": config_hash(config),
            "versions": versions(), "git": git_commit(), "hardware": hardware(str(self.device)),
            "dtype": str(self.dtype).replace("torch.", ""),
        }

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

    def _finetune(self, lora: LoRAConfig, seed: int, notes: dict[str, Any]):
        p = self.profile

        def finetune(model: nn.Module, steps: int, before_step=None, after_step=None,
                     desc: str = "LoRA fine-tuning") -> dict[str, Any]:
            frozen = frozen_parameters(model)

            def watch(step: int, model: nn.Module) -> None:
                held = tensor_bytes(q.grad for q in frozen)  # pretrained-weight gradients: should stay 0
                notes["weight_grad_bytes"] = max(notes.get("weight_grad_bytes", 0), held)
                if before_step is not None:
                    before_step(step, model)

            data = cycle_batches(self.tokenizer, p.recovery_data, p.train_len, p.train_batch, seed)
            log = train_lora(model, data, steps, lora, seed, watch, after_step, desc)
            return log.summary() | {"micro_batch": p.train_batch, "length": p.train_len}

        return finetune

    def _slot(self, method: str, ratio: float, seed: int, config: dict[str, Any]) -> RecordSlot:
        return record_slot(self.request.results, self.model_info.name, self.profile.name, method, ratio, seed,
                           config)

    # -- run ----------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        self.prepare()
        for tmp in clean_stale_temps(self.request.results):
            self.log(f"removed {tmp}, left by a killed run")
        records = [self.run_dense()]
        self.dense = None  # each run loads its own copy; keep one model in memory at a time
        for plan in self.plans:
            for ratio in plan.ratios:
                for seed in self.request.seeds:
                    records.append(self.run_one(plan, ratio, seed))
        return records

    def dense_config(self) -> dict[str, Any]:
        return {"method": "dense", "profile": self.profile.as_dict(), "weights": self.weights_sha,
                "dtype": str(self.dtype), "tasks": self.tasks, "limit": self.limit}

    @property
    def context_hash(self) -> str:
        """What every record of this request shares (see :func:`benchsuite.records.context_hash`)."""
        return context_hash(self.dense_config())

    def run_dense(self) -> dict[str, Any]:
        config = self.dense_config()
        slot = self._slot("dense", 0.0, 0, config)
        with slot.lock(self.log):
            kept = self._done(slot, config)
            if kept is not None:
                self.log(f"dense: done before, kept ({kept['_path']})")
                return kept
            path = slot.next_path()
            self.log(f"dense: evaluating {self.model_info.name} ({self.profile.name} profile)")
            record = self._base_record("dense", 0.0, 0, config)
            record["started_at"] = _now()
            start = time.perf_counter()
            try:
                metrics, how = self.evaluate(self.dense)
                record.update(status="ok", error=None, metrics=metrics, measurement=how)
            except Exception as exc:  # noqa: BLE001 - recorded, the rest goes on
                record.update(status="error", error=f"{type(exc).__name__}: {exc}",
                              traceback=traceback.format_exc(), metrics={})
                self.log(f"dense: FAILED {record['error']}")
            record["timings"] = {"eval_s": time.perf_counter() - start}
            record["finished_at"] = _now()
            write_new(path, record)
        return record | {"_path": str(path)}

    def prune(self, plan: MethodPlan, ratio: float, seed: int, record: dict[str, Any],
              timings: dict[str, float]) -> tuple[nn.Module, PruneOutcome, PruneContext, dict[str, Any]]:
        """Load -> (attach LoRA) -> prune with the schedule -> (LoRA recovery) -> merge -> checks.

        Fills ``record`` (layers, LoRA settings, recovery log, checks) and ``timings``; returns the
        plain pruned model, the schedule's outcome, the context and the memory of each phase."""
        method = plan.method
        criterion, granularity, schedule = plan.build()
        record["granularity"]["label"] = granularity.label()
        lora, recovery_steps = plan.lora(self.profile.lora_budget())
        seed_everything(seed)  # before LoRA's initialisation: the run must not depend on what ran before
        model = self.load_dense()
        layers = parse_layers(method.layers, len(decoder_layers(model)))
        record["layers_pruned"] = layers
        ratios = self._unit_ratios[(plan.key, ratio)]
        record["ratio_basis"] = ratios
        if lora is not None:
            model = attach_lora(model, lora)
            record["lora"] = lora.as_dict()
        calibration = self.calibration_spec(plan)
        needs = plan.criterion.needs
        record["calibration"] = calibration | {
            "used": "calibration" in needs or ("lora_grad" in needs and not schedule.trains)}
        ctx = PruneContext(seed=seed, device=self.device, profile=self.profile.as_dict(),
                           calibration_batches=lambda: batches(self.calibration(calibration, seed),
                                                               self.profile.calib_batch),
                           train_steps=self.train_steps)
        ctx.finetune = self._finetune(lora, seed, ctx.notes) if lora else None
        start = time.perf_counter()
        with PeakMemory(self.device) as mem:
            outcome = schedule.run(model, criterion, granularity, ratios["unit_ratio"], layers, ctx)
            held = tensor_bytes(p.grad for p in frozen_parameters(outcome.model))
            ctx.notes["weight_grad_bytes"] = max(ctx.notes.get("weight_grad_bytes", 0), held)
        timings["prune_s"] = time.perf_counter() - start
        stats = criterion.stats()
        if stats:
            outcome.log["criterion_stats"] = stats
        for part, component in (("criterion", criterion), ("granularity", granularity), ("schedule", schedule)):
            record[part]["effective_params"] = component.params()  # defaults included
        model = outcome.model
        memory = {"peak_mem_prune_mb": mem.result()}
        record["pruned_units"] = pruned_units(outcome)
        if lora is not None and not schedule.trains:
            steps = self.train_steps if recovery_steps is None else recovery_steps
            start = time.perf_counter()
            with PeakMemory(self.device) as rmem:
                record["recovery_log"] = ctx.finetune(model, steps, desc="LoRA recovery")
            timings["recover_s"] = time.perf_counter() - start
            memory["peak_mem_recover_mb"] = rmem.result()
        if lora is not None:
            model = merge_lora(model)
        train_log = record.get("recovery_log") or outcome.log.get("train") or {}
        record["recovery_setup"] = {"label": plan.recovery_label()} if lora is None else {
            "label": plan.recovery_label(), "when": "while pruning" if schedule.trains else "after pruning",
            "steps": train_log.get("steps"), "micro_batch": self.profile.train_batch,
            "grad_accum": lora.grad_accum, "length": self.profile.train_len, "tokens": train_log.get("tokens"),
            "lr": lora.lr, "lr_schedule": lora.lr_schedule, "warmup_steps": lora.warmup_steps,
            "data": self.recovery_data}
        record["checks"] = granularity.after_merge(model, outcome.groups, outcome.masks)
        return model, outcome, ctx, memory

    def run_one(self, plan: MethodPlan, ratio: float, seed: int) -> dict[str, Any]:
        method = plan.method
        config = method.describe() | {"ratio": ratio, "seed": seed, "profile": self.profile.as_dict(),
                                      "weights": self.weights_sha, "dtype": str(self.dtype),
                                      "tasks": self.tasks, "limit": self.limit,
                                      "ratio_basis": self.request.ratio_basis, "train_steps": self.train_steps}
        slot = self._slot(plan.key, ratio, seed, config)
        label = f"{plan.key} ratio={ratio:g} seed={seed}"
        with slot.lock(self.log):
            kept = self._done(slot, config)
            if kept is not None:
                self.log(f"{label}: done before, kept ({kept['_path']})")
                return kept
            path = slot.next_path()
            record = self._run_one(plan, ratio, seed, config, path, label)
            if record["status"] == "ok":
                try:  # what would be read back as damaged is not written as ok
                    check_record(record)
                except RecordProblem as exc:
                    record.update(status="error", error=f"RecordProblem: {exc}")
                    self.log(f"{label}: FAILED {record['error']}")
            write_new(path, record)
        if record["status"] == "ok":
            m = record["metrics"]
            ppl = ", ".join(f"{k}={v:.2f} [{m[k + '_lo']:.2f}, {m[k + '_hi']:.2f}]" for k, v in m.items()
                            if k.startswith("ppl_") and k + "_lo" in m)
            self.log(f"{label}: {ppl}, params {m['params'] / 1e6:.1f}M")
        return record | {"_path": str(path)}

    def _run_one(self, plan: MethodPlan, ratio: float, seed: int, config: dict[str, Any], path: Path,
                 label: str) -> dict[str, Any]:
        method = plan.method
        self.log(f"{label}: pruning")
        record = self._base_record(method.name, ratio, seed, config)
        record.update(criterion=dict(config["criterion"]), granularity=dict(config["granularity"]),
                      schedule=dict(config["schedule"]), recovery=config["recovery"], variant=plan.key,
                      started_at=_now())
        timings: dict[str, float] = {}
        try:
            model, outcome, ctx, memory = self.prune(plan, ratio, seed, record, timings)
            start = time.perf_counter()
            metrics, how = self.evaluate(model)
            timings["eval_s"] = time.perf_counter() - start
            metrics.update({k: v["peak_mb"] for k, v in memory.items()}, prune_time_s=timings["prune_s"],
                           units_pruned=outcome.log.get("units_pruned"),
                           weight_grad_mb=ctx.notes["weight_grad_bytes"] / 2**20)
            how["weight_grad_mb"] = ("largest bytes of pretrained-weight gradients (and gradient accumulators) "
                                     "held: reported by the criterion, checked after pruning and at every "
                                     "fine-tuning step (exact)")
            if "recover_s" in timings:
                metrics["recover_time_s"] = timings["recover_s"]
            metrics["total_time_s"] = timings["prune_s"] + timings.get("recover_s", 0.0)
            metrics["peak_mem_mb"] = max(metrics[k] for k in (*memory, "peak_mem_eval_mb"))
            how.update(memory)
            how["peak_mem_mb"] = "max over the pruning, recovery and evaluation phases (each above its start)"
            record.update(status="ok", error=None, metrics=metrics, measurement=how,
                          prune_log=outcome.log | ctx.notes)
            if self.request.save_models:
                out = path.parent / "models" / path.stem
                save_pruned(model, out, self.tokenizer, provenance={k: record[k] for k in (
                    "method", "ratio", "seed", "model", "weights_sha256", "config")})
                record["model_path"] = str(out)
            del model
        except Exception as exc:  # noqa: BLE001 - one failing run must not stop the others
            record.update(status="error", error=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc(), metrics={})
            self.log(f"{label}: FAILED {record['error']}")
        record["timings"] = timings
        record["finished_at"] = _now()
        return record


def pruned_units(outcome: PruneOutcome) -> dict[str, Any]:
    """Units pruned per layer and kind (read from the masks), the totals, and a digest of the masks
    (equal digests: the same units were pruned)."""
    digest = hashlib.sha256()
    per_layer: dict[tuple[int, str], list[int]] = {}
    for group, keep in zip(outcome.groups, outcome.masks):
        keep = keep.detach().cpu().bool()
        digest.update(group.name.encode())
        digest.update(keep.numpy().tobytes())
        entry = per_layer.setdefault((group.layer, group.kind), [0, 0])
        entry[0] += int((~keep).sum())
        entry[1] += keep.numel()
    totals: dict[str, list[int]] = {}
    for (_, kind), (pruned, size) in per_layer.items():
        total = totals.setdefault(kind, [0, 0])
        total[0] += pruned
        total[1] += size
    return {"per_layer": [{"layer": layer, "kind": kind, "pruned": pruned, "of": size}
                          for (layer, kind), (pruned, size) in sorted(per_layer.items())],
            "total": {kind: {"pruned": pruned, "of": size} for kind, (pruned, size) in totals.items()},
            "mask_sha256": digest.hexdigest()}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
