"""The stages of one run, each returning a typed result, and the one function that turns them into a record.

    plan (benchsuite.running.plan) -> prune -> recover -> merge -> measure -> record

- :func:`prune`: load the dense model (seeded), attach LoRA where the method has it, run the schedule with
  the criterion and granularity -> :class:`PruneResult`;
- :func:`recover`: LoRA fine-tuning after pruning, for methods whose schedule does not train ->
  :class:`RecoveryResult`, or None;
- :func:`merge`: fold LoRA into the weights and let the granularity check the result -> :class:`MergedModel`;
- :func:`measure`: every selected metric, the evaluation ones under one peak-memory measurement ->
  :class:`Measurement`;
- :func:`record`: the record (a JSON mapping) from the plan and whatever stages finished; it is the only
  writer of every record field.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchsuite.api.architecture import architecture_of, bos_token
from benchsuite.api.columns import Column
from benchsuite.api.components import Criterion, Granularity, PruneContext, PruneOutcome, module_key
from benchsuite.api.corpora import Corpus
from benchsuite.api.metrics import MeasureContext, Metric, check_values
from benchsuite.api.model import decoder_layers, input_device, layer_paths
from benchsuite.api.profiles import Profile
from benchsuite.data.tokens import batches, calibration_samples, with_bos
from benchsuite.evaluation.memory import PeakMemory, tensor_bytes
from benchsuite.models.checkpoint import device_map_of
from benchsuite.pruning.scoring import checked_scores
from benchsuite.running.finetune import (
    LoRAConfig,
    attach_lora,
    checkpointing,
    cycle_batches,
    frozen_parameters,
    merge_lora,
    train_lora,
    wrapped_targets,
)
from benchsuite.running.plan import ModelPlan, RunPlan, RunSpec, load_dense
from benchsuite.running.records import SCHEMA, RecordProblem, check_record, config_hash, git_commit, hardware, versions


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


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# -- shared by the stages -------------------------------------------------------------------------------
class Calibration:
    """Calibration samples of a request, drawn once per (corpus, samples, length, seed)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._samples: dict[tuple[str, int, int, int], torch.Tensor] = {}

    def samples(self, corpus: Corpus, samples: int, length: int, seed: int) -> torch.Tensor:
        key = (corpus.name, samples, length, seed)
        if key not in self._samples:
            self._samples[key] = calibration_samples(self.tokenizer, corpus, samples, length, seed)
        return self._samples[key]


class WeightGradWatch:
    """The largest number of bytes of pretrained-weight gradients (and accumulators) seen held."""

    def __init__(self) -> None:
        self.peak = 0

    def observe(self, parameters) -> None:
        self.peak = max(self.peak, tensor_bytes(p.grad for p in parameters))


class LoRATrainer:
    """The suite's LoRA loop at the profile's budget, on the profile's recovery data: ``ctx.finetune`` of
    schedules that train, and the recovery after pruning. ``watch`` sees the pretrained weights'
    gradients at every step (they should stay absent)."""

    def __init__(self, tokenizer: Any, profile: Profile, data: list[Corpus], lora: LoRAConfig, seed: int,
                 gradient_checkpointing: bool = False, teacher: Callable[[], nn.Module] | None = None) -> None:
        self.tokenizer, self.profile, self.data, self.lora, self.seed = tokenizer, profile, data, lora, seed
        self.gradient_checkpointing = gradient_checkpointing
        #: loads the dense model, the teacher of a distillation (loaded for each training, dropped after it)
        self.teacher = teacher
        self.watch = WeightGradWatch()

    def __call__(self, model: nn.Module, steps: int, before_step: Callable | None = None,
                 after_step: Callable | None = None, desc: str = "LoRA fine-tuning") -> dict[str, Any]:
        p = self.profile
        frozen = frozen_parameters(model)

        def watched(step: int, model: nn.Module) -> None:
            self.watch.observe(frozen)
            if before_step is not None:
                before_step(step, model)

        bos = bos_token(model, self.tokenizer)
        data = (with_bos(batch, bos) for batch in cycle_batches(self.tokenizer, self.data, p.train_len, p.train_batch,
                                                                self.seed))
        teacher = None
        if self.lora.distill_temperature is not None:
            if self.teacher is None:
                raise ValueError("distillation needs the dense model as the teacher")
            teacher = self.teacher().eval()
            for param in teacher.parameters():
                param.requires_grad_(False)
        with checkpointing(model, self.gradient_checkpointing):
            log = train_lora(model, data, steps, self.lora, self.seed, watched, after_step, desc, teacher=teacher)
        del teacher
        distill = {} if self.lora.distill_temperature is None else {"loss": (
            f"KL(dense || pruned) of the logits at temperature {self.lora.distill_temperature:g}, x T^2"
            + (f" + {self.lora.distill_alpha:g} x the LM loss" if self.lora.distill_alpha else "")
            + "; the dense model (a second copy) run on every micro-batch")}
        return log.summary() | distill | {"micro_batch": p.train_batch, "length": p.train_len} | (
            {"gradient_checkpointing": True} if self.gradient_checkpointing else {}) | (
            {"bos": f"token {bos} before every window"} if bos is not None else {})


# -- prune ----------------------------------------------------------------------------------------------
@dataclass
class PruneResult:
    """The pruned model (still LoRA-wrapped where the method has LoRA) and what pruning did."""

    model: nn.Module
    outcome: PruneOutcome
    granularity: Granularity
    #: the LoRA loop (None without LoRA), for the recovery
    trainer: LoRATrainer | None
    #: the schedule's log, with the criterion's ``stats()`` as ``criterion_stats``
    log: dict[str, Any]
    #: what the criterion and schedule noted (``ctx.notes``)
    notes: dict[str, Any]
    #: part (criterion, granularity, schedule) -> its parameters, defaults included
    effective_params: dict[str, dict[str, Any]]
    pruned_units: dict[str, Any]
    memory: dict[str, Any]
    seconds: float
    #: the largest pretrained-weight gradients seen held while pruning (training steps, and at the end)
    weight_grad_bytes: int


def prune(plan: RunPlan, model_plan: ModelPlan, spec: RunSpec, calibration: Calibration) -> PruneResult:
    """Load -> (attach LoRA) -> prune with the schedule."""
    method = spec.method
    criterion, granularity, schedule = method.build()
    seed_everything(spec.seed)  # before LoRA's initialisation: the run must not depend on what ran before
    model = load_dense(plan, model_plan.model_info)
    trainer = None
    if spec.lora is not None:
        if not spec.lora.full:  # full fine-tuning trains the plain model's weights
            model = attach_lora(model, spec.lora)
        trainer = LoRATrainer(model_plan.tokenizer, plan.profile, model_plan.recovery_corpora, spec.lora, spec.seed,
                              gradient_checkpointing=bool(spec.config.get("gradient_checkpointing")),
                              teacher=lambda: load_dense(plan, model_plan.model_info))
    cal = spec.calibration
    # a model spread over GPUs (--device-map): ctx.device is where its inputs go, the embedding's GPU
    ctx = PruneContext(seed=spec.seed, device=input_device(model) if plan.request.device_map else plan.device,
                       profile=plan.profile.as_dict(),
                       calibration_batches=lambda: batches(with_bos(
                           calibration.samples(spec.calibration_corpus, cal["samples"], cal["length"], spec.seed),
                           bos_token(model, model_plan.tokenizer)), plan.profile.calib_batch),
                       train_steps=model_plan.train_steps, finetune=trainer)
    placement = device_map_of(model) if plan.request.device_map else None
    if placement is not None:  # this run's own load: a balanced map follows the GPUs' free memory
        ctx.notes["device_map"] = placement
    watch = trainer.watch if trainer is not None else WeightGradWatch()
    start = time.perf_counter()
    allocated = None
    with PeakMemory(plan.device) as mem:
        if plan.allocation is not None:
            allocated = allocate(plan, model, criterion, granularity, spec.unit_ratio["unit_ratio"], spec.layers, ctx)
        outcome = schedule.run(model, criterion, granularity, spec.unit_ratio["unit_ratio"], spec.layers, ctx)
        watch.observe(frozen_parameters(outcome.model))
    seconds = time.perf_counter() - start
    log = dict(outcome.log)
    if allocated is not None:
        log["allocation"] = allocated
    stats = criterion.stats()
    if stats:
        log["criterion_stats"] = stats
    return PruneResult(
        model=outcome.model, outcome=outcome, granularity=granularity, trainer=trainer, log=log,
        notes=dict(ctx.notes), effective_params={part: component.params() for part, component in (
            ("criterion", criterion), ("granularity", granularity), ("schedule", schedule))},
        pruned_units=pruned_units(outcome), memory=mem.result(), seconds=seconds, weight_grad_bytes=watch.peak)


def allocate(plan: RunPlan, model: nn.Module, criterion: Criterion, granularity: Granularity, ratio: float,
             layers: list[int], ctx: PruneContext) -> dict[str, Any]:
    """Spread ``ratio`` (the run's unit ratio: the fraction of the pruned layers' units, which ``--ratio-basis params``
    derives from the fraction of all decoder weights) over ``layers`` with the plan's allocation (scoring the unpruned
    model once where it asks for scores) and have the granularity prune each layer at its ratio; what the record keeps
    of it (``target``: that unit ratio, the size-weighted mean of ``layer_ratios``)."""
    from benchsuite.api.allocation import check_ratios, layer_sizes

    name, params = plan.allocation
    rule = plan.registry.lookup("allocations", name, ambiguous="quiet").create(params)
    groups = granularity.units(model, layers)
    sizes = layer_sizes(groups, [g.size * n for g, n in zip(groups, granularity.unit_params(model, groups))])
    by_layer = None
    if rule.needs_scores:  # the criterion's element scores of every projection (its unit scores where it has none)
        criterion.prepare(model, ctx)
        by_layer = {}
        try:
            decoder = decoder_layers(model)
            for i in sorted({g.layer for g in groups}):
                by_layer[i] = [criterion.element_scores(module_key(i, path), decoder[i].get_submodule(path)).cpu()
                               for path in layer_paths(model, decoder[i])]
        except NotImplementedError:
            by_layer = {}
            for group, score in zip(groups, checked_scores(criterion, granularity, model, groups)):
                by_layer.setdefault(group.layer, []).append(score)
        criterion.release()
    ratios = check_ratios(name, rule.layer_ratios(sorted(sizes), ratio, sizes, by_layer), sizes, ratio)
    granularity.allocate(ratios, ratio)
    extra = rule.outlier_ratios(by_layer) if hasattr(rule, "outlier_ratios") and by_layer is not None else None
    return {"name": name, "params": rule.params(), "target": ratio,
            "layer_ratios": {str(k): round(v, 6) for k, v in ratios.items()}} | (
        {"outlier_ratios": {str(k): round(v, 6) for k, v in extra.items()}} if extra else {})


#: how many mask entries :func:`pruned_units` samples (at fixed pseudo-random positions of all masks in order)
MASK_SAMPLE = 4096


def pruned_units(outcome: PruneOutcome) -> dict[str, Any]:
    """Units pruned per layer and kind (read from the masks), the totals, a digest of the masks (equal
    digests: the same units were pruned) and a sample of the masks: their keep bits at
    :data:`MASK_SAMPLE` fixed positions, in hex (two samples' agreement estimates how many decisions two runs
    share, where the digest only says whether all do)."""
    digest = hashlib.sha256()
    per_layer: dict[tuple[int, str], list[int]] = {}
    masks = [keep.detach().cpu().bool() for keep in outcome.masks]
    for group, keep in zip(outcome.groups, masks):
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
            "mask_sha256": digest.hexdigest(), "mask_sample": mask_sample(masks)}


def mask_sample(masks: list[torch.Tensor], size: int = MASK_SAMPLE) -> str:
    """The keep bits of ``masks`` (flattened and joined in order) at ``size`` positions drawn once from a
    fixed seed, packed into hex ('' for no masks)."""
    total = sum(keep.numel() for keep in masks)
    if not total:
        return ""
    positions = torch.randint(total, (size,), generator=torch.Generator().manual_seed(0)).sort().values
    bits, offset, start = [], 0, 0
    for keep in masks:
        end = int(torch.searchsorted(positions, offset + keep.numel()))
        bits.append(keep.reshape(-1)[positions[start:end] - offset])
        offset, start = offset + keep.numel(), end
    return np.packbits(torch.cat(bits).numpy()).tobytes().hex()


def sample_agreement(a: str, b: str) -> float:
    """The fraction of sampled decisions on which two :func:`mask_sample` strings agree."""
    if len(a) != len(b) or not a:
        return 0.0
    x = np.frombuffer(bytes.fromhex(a), np.uint8) ^ np.frombuffer(bytes.fromhex(b), np.uint8)
    return 1.0 - float(np.unpackbits(x).sum()) / (4 * len(a))


# -- recover --------------------------------------------------------------------------------------------
@dataclass
class RecoveryResult:
    """LoRA fine-tuning after pruning."""

    #: the training loop's summary (steps, tokens, losses ...)
    log: dict[str, Any]
    memory: dict[str, Any]
    seconds: float
    #: the largest pretrained-weight gradients seen held during its steps
    weight_grad_bytes: int


def recover(plan: RunPlan, spec: RunSpec, pruned: PruneResult) -> RecoveryResult | None:
    """LoRA recovery of the pruned model, for methods with LoRA whose schedule does not train; else None."""
    if not spec.recovers_after_pruning:
        return None
    trainer = pruned.trainer
    trainer.watch = WeightGradWatch()
    start = time.perf_counter()
    with PeakMemory(plan.device) as mem:
        log = trainer(pruned.model, spec.recovery_steps,
                      desc="full fine-tuning recovery" if spec.lora.full else "LoRA recovery")
    return RecoveryResult(log, mem.result(), time.perf_counter() - start, trainer.watch.peak)


# -- merge ----------------------------------------------------------------------------------------------
@dataclass
class MergedModel:
    """The plain pruned model (LoRA folded into the weights) and the granularity's checks of it."""

    model: nn.Module
    checks: dict[str, Any]


def merge(spec: RunSpec, pruned: PruneResult) -> MergedModel:
    model = merge_lora(pruned.model) if spec.lora is not None else pruned.model
    return MergedModel(model, pruned.granularity.after_merge(model, pruned.outcome.groups, pruned.outcome.masks))


# -- measure --------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """Every metric's values (the record's ``metrics``, plus ``peak_mem_eval_mb``), how each was measured
    (``measurement``) and the metrics' table columns."""

    values: dict[str, float | int | None]
    details: dict[str, Any]
    columns: list[Column]
    seconds: float
    #: each metric's own seconds (the record's ``timings.eval_metric_s``)
    metric_seconds: dict[str, float]


def measure(model: nn.Module, metrics: list[Metric], ctx: MeasureContext, device: torch.device) -> Measurement:
    """Run the metrics: the ``evaluation`` ones under one peak-memory measurement (``peak_mem_eval_mb``), then
    the ``efficiency`` ones. A field produced twice, or by a metric that should not, fails the measurement."""
    start = time.perf_counter()
    values: dict[str, float | int | None] = {}
    details: dict[str, Any] = {}
    writers: dict[str, str] = {}

    def add(name: str, new_values: dict[str, Any], new_details: dict[str, Any]) -> None:
        for kind, known, new in (("field", values, new_values), ("measurement", details, new_details)):
            for key in new:
                if key in known:
                    raise ValueError(f"metric '{name}' writes {kind} '{key}', which '{writers[kind + key]}' wrote")
                writers[kind + key] = name
            known.update(new)

    seconds: dict[str, float] = {}

    def run(metric: Metric) -> None:
        began = time.perf_counter()
        result = metric.measure(model, ctx)
        seconds[metric.name] = time.perf_counter() - began
        check_values(metric.name, result.values)
        add(metric.name, result.values, result.details)

    model.eval()
    for metric in metrics:  # metrics that share another's forward pass over the perplexity windows
        for corpus in ctx.corpora:
            callback = metric.observe(corpus.name, ctx)
            if callback is not None:
                ctx.window_observers.setdefault(corpus.name, []).append(callback)
    with PeakMemory(device) as mem:
        for metric in metrics:
            if metric.phase == "evaluation":
                run(metric)
    memory = mem.result()
    add("the runner", {"peak_mem_eval_mb": memory["peak_mb"]}, {"peak_mem_eval_mb": memory})
    for metric in metrics:
        if metric.phase != "evaluation":
            run(metric)
    columns = [column for metric in metrics for column in metric.columns(ctx)]
    return Measurement(values, details, columns, time.perf_counter() - start, seconds)


# -- record ---------------------------------------------------------------------------------------------
@dataclass
class Failure:
    """A run that raised: the error line and its traceback."""

    error: str
    traceback: str


@dataclass
class RunStages:
    """What the stages of one run returned (None: not reached, or not part of this run)."""

    pruned: PruneResult | None = None
    recovered: RecoveryResult | None = None
    merged: MergedModel | None = None
    measured: Measurement | None = None
    #: where the pruned model was saved (``--save-models``)
    model_path: Path | None = None
    failure: Failure | None = None


def weight_grad_bytes(pruned: PruneResult, recovered: RecoveryResult | None) -> int:
    """The largest pretrained-weight gradients held during the run: what the criterion reported
    (``ctx.notes["weight_grad_bytes"]``) and what was seen after pruning and at every fine-tuning step."""
    return max(pruned.notes.get("weight_grad_bytes", 0), pruned.weight_grad_bytes,
               recovered.weight_grad_bytes if recovered is not None else 0)


def run_costs(pruned: PruneResult, recovered: RecoveryResult | None, measured: Measurement
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The metric fields the runner measures around the phases (memory, times, weight gradients), and how."""
    memory = {"peak_mem_prune_mb": pruned.memory} | (
        {"peak_mem_recover_mb": recovered.memory} if recovered is not None else {})
    values: dict[str, Any] = {k: v["peak_mb"] for k, v in memory.items()}
    values |= {"prune_time_s": pruned.seconds, "units_pruned": pruned.log.get("units_pruned"),
               "weight_grad_mb": weight_grad_bytes(pruned, recovered) / 2**20}
    if recovered is not None:
        values["recover_time_s"] = recovered.seconds
    values["total_time_s"] = pruned.seconds + (recovered.seconds if recovered is not None else 0.0)
    values["peak_mem_mb"] = max([values[k] for k in memory] + [measured.values["peak_mem_eval_mb"]])
    how: dict[str, Any] = {"weight_grad_mb": (
        "largest bytes of pretrained-weight gradients (and gradient accumulators) held: reported by the criterion, "
        "checked after pruning and at every fine-tuning step (exact)")}
    how |= memory
    how["peak_mem_mb"] = "max over the pruning, recovery and evaluation phases (each above its start)"
    return values, how


def recovery_setup(plan: RunPlan, model_plan: ModelPlan, spec: RunSpec, pruned: PruneResult,
                   recovered: RecoveryResult | None) -> dict[str, Any]:
    label = spec.method.recovery_label()
    lora = spec.lora
    chosen = spec.method.recovery
    which = {} if chosen is None else {"recovery": {"name": spec.method.components.get("recovery", chosen.name),
                                                    "params": chosen.params()}}
    if lora is None:
        return {"label": label} | which
    train_log = (recovered.log if recovered is not None else None) or pruned.log.get("train") or {}
    return {"label": label, "when": "while pruning" if spec.method.schedule.trains else "after pruning",
            "steps": train_log.get("steps"), "micro_batch": plan.profile.train_batch, "grad_accum": lora.grad_accum,
            "length": plan.profile.train_len, "tokens": train_log.get("tokens"), "lr": lora.lr,
            "trains": "every remaining weight (pruned zeros kept at zero)" if lora.full else "LoRA adapters",
            "lr_schedule": lora.lr_schedule, "warmup_steps": lora.warmup_steps, "data": model_plan.recovery_data} | (
                {"bos": train_log["bos"]} if train_log.get("bos") else {}) | which


def record(plan: RunPlan, model_plan: ModelPlan, spec: RunSpec, stages: RunStages, started_at: str,
           finished_at: str) -> dict[str, Any]:
    """The record of a run (dense when ``spec.method`` is None) from the stages that finished: the one writer
    of every field. A run without a failure whose record would not read back as complete
    (:func:`~benchsuite.running.records.check_record`) is recorded as failed, naming the problem."""
    pruned, recovered, merged, measured = stages.pruned, stages.recovered, stages.merged, stages.measured
    failure = stages.failure
    config = spec.config
    out: dict[str, Any] = {
        "schema": SCHEMA, "method": "dense" if spec.method is None else spec.method.method.name, "ratio": spec.ratio,
        "seed": spec.seed, "profile": plan.profile.name, "profile_settings": plan.profile.as_dict(),
        "model": model_plan.model_info.name, "model_source": model_plan.model_info.source,
        "architecture": model_plan.family,
        "weights_sha256": model_plan.weights_sha, "config": config, "config_hash": config_hash(config),
        "versions": versions(), "git": git_commit(), "hardware": hardware(str(plan.device)) | (
            {"device_map": {"requested": plan.request.device_map, "modules": model_plan.device_map}}
            if plan.request.device_map else {}),
        "dtype": str(plan.dtype).replace("torch.", ""),
    }
    pruning = spec.method is not None
    if pruning:
        done = {} if pruned is None else pruned.effective_params
        out["criterion"] = dict(config["criterion"]) | _effective(done, "criterion")
        out["granularity"] = dict(config["granularity"]) | {"label": spec.granularity_label} | _effective(
            done, "granularity")
        out["schedule"] = dict(config["schedule"]) | _effective(done, "schedule")
        out["recovery"] = config["recovery"]
        out["variant"] = spec.method.key
        # which plugins' components these are (DIST:NAME): two plugins may register the same bare name
        out["components"] = dict(spec.method.components)
    out["started_at"] = started_at
    if pruning:
        out["layers_pruned"] = spec.layers
        out["ratio_basis"] = spec.unit_ratio
        if spec.lora is not None:  # with the module names it wrapped, in the family's names
            family = architecture_of({"model_type": (model_plan.family or {}).get("model_types", ["llama"])[0]},
                                     prunable=False)
            out["lora"] = spec.lora.as_dict() | {"wrapped": list(wrapped_targets(spec.lora, family))}
        out["calibration"] = spec.calibration
        if pruned is not None:
            out["pruned_units"] = pruned.pruned_units
            if "allocation" in pruned.log:  # each layer's ratio, as the allocation gave it
                out["allocation"] = pruned.log["allocation"]
            if recovered is not None:
                out["recovery_log"] = recovered.log
            if recovered is not None or not spec.recovers_after_pruning:
                out["recovery_setup"] = recovery_setup(plan, model_plan, spec, pruned, recovered)
        if merged is not None:
            out["checks"] = merged.checks
    if failure is None:
        metrics, how = dict(measured.values), dict(measured.details)
        if pruning:
            values, costs = run_costs(pruned, recovered, measured)
            metrics |= values
            how |= costs
        body: dict[str, Any] = {"metrics": metrics, "measurement": how,
                                "metric_columns": [c.as_dict() for c in measured.columns]}
        if pruning:
            wgb = weight_grad_bytes(pruned, recovered)
            body["prune_log"] = pruned.log | {k: v for k, v in pruned.notes.items() if k != "weight_grad_bytes"} | {
                "weight_grad_bytes": wgb}
        if stages.model_path is not None:
            body["model_path"] = str(stages.model_path)
        try:  # what would be read back as damaged is not written as ok
            check_record(out | {"status": "ok", "error": None} | body)
        except RecordProblem as exc:
            failure = Failure(f"RecordProblem: {exc}", "")
            out |= {"status": "error", "error": failure.error}
        else:
            out |= {"status": "ok", "error": None}
        out |= body
    else:
        out |= {"status": "error", "error": failure.error, "traceback": failure.traceback, "metrics": {}}
    timings = {}
    if pruned is not None:
        timings["prune_s"] = pruned.seconds
    if recovered is not None:
        timings["recover_s"] = recovered.seconds
    if measured is not None:
        timings["eval_s"] = measured.seconds
        timings["eval_metric_s"] = measured.metric_seconds
    out["timings"] = timings
    out["finished_at"] = finished_at
    return out


def _effective(params: dict[str, dict[str, Any]], part: str) -> dict[str, Any]:
    return {"effective_params": params[part]} if part in params else {}
