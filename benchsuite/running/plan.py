"""The plan stage: a request checked in full before anything is written.

:func:`plan_request` checks everything that needs no model (profile, ratios, seeds, methods and their
parameters, device, results folder, corpora, tasks, metrics) and returns a :class:`RunPlan`;
:func:`plan_model` loads the tokenizer and the dense model, checks every method against it (layers,
ratios that can be reached), fetches what the metrics and the recovery need, and returns a
:class:`ModelPlan` with one :class:`RunSpec` per run: its settings (``config``, whose hash names the
record and tells a finished run), layers, unit ratio, LoRA settings and calibration. Every problem is a
:class:`~benchsuite.api.errors.ConfigError` raised before the first record is written.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchsuite.api.architecture import architecture_of
from benchsuite.api.components import Criterion, Granularity, Method, Schedule
from benchsuite.api.corpora import Corpus
from benchsuite.api.errors import AssetError, ConfigError
from benchsuite.api.metrics import STANDARD_METRICS, MeasureContext, Metric
from benchsuite.api.model import base_linear, decoder_layers, layer_paths
from benchsuite.api.profiles import (
    Profile,
    get_profile,
    with_batching,
    with_calibration_data,
    with_corpora,
    with_recovery_data,
    with_train_steps,
)
from benchsuite.api.recovery import TRAINING_KEYS, Recovery
from benchsuite.data.assets import weights_sha256
from benchsuite.data.corpora import load_documents, resolve_corpus
from benchsuite.data.tokens import training_windows
from benchsuite.evaluation.size import count_params
from benchsuite.host import Registry
from benchsuite.models.checkpoint import DEVICE_MAPS, device_map_of, load_model_dir, load_tokenizer
from benchsuite.models.hf import read_config
from benchsuite.models.resolve import ResolvedModel, resolve_model
from benchsuite.pruning.structure import parse_layers
from benchsuite.running.finetune import LoRAConfig
from benchsuite.running.records import check_writable


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
    #: lm-eval: a folder of task YAMLs (``--tasks`` may name them), few-shot examples for lm-eval's tasks (None: each
    #: task's default; the seven built-in tasks stay 0-shot) and lm-eval's batch size (None: the profile's)
    include_path: Path | None = None
    num_fewshot: int | None = None
    task_batch: int | None = None
    #: how every method spreads its ratio over its layers: ``NAME[:PARAM=VALUE,...]`` of a registered allocation
    #: (``owl``, ``owl:lam=0.1``, ``profile:file=ratios.json``); None: uniform
    allocation: str | None = None
    #: LoRA optimizer steps instead of the profile's (the profile is then named e.g. quick-steps200)
    train_steps: int | None = None
    #: micro-batches per optimizer step and the learning-rate schedule instead of the profile's (named e.g.
    #: quick-steps250-accum16, quick-steps2000-lr-linear); the same for every method
    grad_accum: int | None = None
    lr_schedule: str | None = None
    #: perplexity corpora instead of the profile's (names, wikitext2/ptb through datasets, or file paths)
    corpora: list[str] | None = None
    #: ``None``/``method``: each method's own recovery; ``lora``: every method gets the profile's LoRA
    #: recovery (equal budget); ``none``: no recovery (not possible for methods that prune while training)
    recovery: str | None = None
    #: LoRA training text instead of the profile's (``instruct``, a corpus name or a .txt/.jsonl path)
    recovery_data: str | None = None
    #: calibration corpus for every criterion instead of the profile's (a corpus name or a .txt/.jsonl path)
    calibration_data: str | None = None
    #: ``params``: a ratio is the fraction of the decoder layers' projection weights removed, the
    #: same parameter count for every method whatever layers it prunes; ``units``: the fraction of
    #: heads/channels (or weights) removed in each method's own pruned layers
    ratio_basis: str = "params"
    #: metrics to measure (registered names; ``default`` stands for every metric with ``default = True``);
    #: None: the default ones
    metrics: list[str] | None = None
    #: LoRA training (recovery, and schedules that train) recomputes each decoder layer's activations
    #: in the backward pass instead of keeping them: less memory, about a third more compute
    gradient_checkpointing: bool = False
    #: spread the model's layers over the visible GPUs with accelerate (``auto``, ``balanced``, ``balanced_low_0``
    #: or ``sequential``, see :data:`~benchsuite.models.DEVICE_MAPS`), or an explicit ``{module: device}`` map
    #: (Python API only; ``cpu`` modules run on the CPU); None: the whole model on ``device``
    device_map: str | dict[str, str] | None = None


DEFAULT_RATIOS = [0.2, 0.5]
#: the built-in recoveries ``--recovery`` names (plugins add theirs: ``benchsuite_register_recoveries``), and
#: ``method``: each method's own
RECOVERY_CHOICES = ("method", "lora", "distill", "full", "none")
RATIO_BASES = ("params", "units")


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
    #: the qualified name (``DIST:NAME``) of the method and of each of its parts, recorded with every run
    components: dict[str, str] = field(default_factory=dict)
    #: the recovery ``--recovery`` (or ``METHOD+NAME``) chose; None: the method's own
    recovery: Recovery | None = None

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
        """``none``, ``LoRA`` (after pruning) or ``LoRA, during`` (a schedule that prunes while training); ``LoRA
        distill`` where it learns from the dense model's logits; ``full`` where every remaining weight trains."""
        if self.method.recovery is None and not self.needs_lora:
            return "none"
        if self.recovery is not None and self.recovery.name not in RECOVERY_CHOICES:  # a plugin's recovery
            return f"{self.recovery.name}, during" if self.schedule.trains else self.recovery.name
        recovery = self.method.recovery or {}
        if recovery.get("full"):
            return "full"
        name = "LoRA distill" if recovery.get("distill_temperature") is not None else "LoRA"
        return f"{name}, during" if self.schedule.trains else name


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


#: method names that were duplicates of another spelling: old name -> the one name it has now
RENAMED = {"llm-pruner-notune": "llm-pruner+none"}


def split_overrides(name: str) -> tuple[str, list[tuple[str, str]]]:
    """``loraprune:beta=0.99`` -> (``loraprune``, [(``beta``, ``0.99``)]): a method name (``DIST:NAME`` too)
    followed by ``:PARAM=VALUE`` settings of its criterion, granularity or schedule (``criterion.PARAM=VALUE``
    where two of them have that parameter)."""
    parts = name.split(":")
    base = [p for p in parts if "=" not in p]
    settings = [p for p in parts if "=" in p]
    if not base or parts[:len(base)] != base:
        raise ConfigError(f"method '{name}': give the method first, then :PARAM=VALUE settings "
                          "(e.g. loraprune:beta=0.99)")
    out = []
    for setting in settings:
        key, _, value = setting.partition("=")
        if not key or not value:
            raise ConfigError(f"method '{name}': '{setting}' is not PARAM=VALUE")
        out.append((key.strip(), value.strip()))
    return ":".join(base), out


def _parse_value(text: str) -> Any:
    """A setting's value as Python reads a literal (0.99, 10, True, 'text'), else the text itself."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


_PARTS = (("criterion", "criterion_params"), ("granularity", "granularity_params"), ("schedule", "schedule_params"))


def apply_overrides(method: Method, plan_parts: dict[str, Any], settings: list[tuple[str, str]]) -> Method:
    """``method`` with ``settings`` ((param, value) pairs) in the parameters of the component that declares each
    (``criterion.beta`` names the component); a parameter that none or several declare is a ConfigError."""
    from benchsuite.api.components import parameter_names

    params = {attr: dict(getattr(method, attr)) for _, attr in _PARTS}
    for key, value in settings:
        part, dot, param = key.rpartition(".")
        owners = [(kind, attr) for kind, attr in _PARTS if (not dot or kind == part)
                  and param in parameter_names(plan_parts[kind])]
        if dot and part not in dict(_PARTS):
            raise ConfigError(f"method '{method.name}': '{key}': say criterion., granularity. or schedule.")
        if not owners:
            known = {kind: parameter_names(plan_parts[kind]) for kind, _ in _PARTS}
            hint = "; ".join(f"{kind} {plan_parts[kind].name}: {', '.join(names) or 'none'}"
                             for kind, names in known.items())
            raise ConfigError(f"method '{method.name}' has no parameter '{key}' ({hint})")
        if len(owners) > 1:
            raise ConfigError(f"method '{method.name}': '{param}' is a parameter of its "
                              f"{' and '.join(k for k, _ in owners)}: write e.g. {owners[0][0]}.{param}={value}")
        params[owners[0][1]][param] = _parse_value(value)
    return replace(method, **params)


def parse_recovery(text: str, registry: Registry) -> tuple[Recovery | None, str, str]:
    """``full:lr=2e-5`` -> (the registered ``full`` recovery built with ``lr=2e-05``, ``+full:lr=2e-5`` for the
    results folder's name); ``method`` -> (None, ``""``): each method's own. Unknown recoveries and parameters are
    refused naming what is accepted. Also returns the recovery's qualified name (``DIST:NAME``)."""
    name, _, rest = text.strip().partition(":")
    if name == "method" and not rest:
        return None, "", ""
    if name not in registry.recoveries and ":" in name:  # DIST:NAME[:k=v]
        head, _, tail = rest.partition(":")
        name, rest = f"{name}:{head}", tail
    try:
        qualified = registry.qualify("recoveries", name, ambiguous="error" if registry.strict else "warn")
        cls = registry.lookup("recoveries", qualified, ambiguous="quiet")
    except ConfigError as exc:
        raise ConfigError(f"--recovery: {exc} (or method: each method's own)") from None
    params: dict[str, Any] = {}
    for item in (x.strip() for x in rest.split(",") if x.strip()):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--recovery {text}: '{item}' is not key=value (write {cls.name}:key=value,...)")
        params[key] = _parse_value(value)
    written = "+" + cls.name + "".join(f":{x.strip()}" for x in rest.split(",") if x.strip())
    return cls.create(params), written, qualified


def _check_folder_spelling(name: str, registry: Registry) -> None:
    """A method named as its results folder spells it (``random_lora`` for ``random+lora``): say so."""
    base, sep, suffix = name.rpartition("_")
    if sep and (suffix in registry.recoveries or suffix == "method") and base in registry.methods and \
            name not in registry.methods:
        raise ConfigError(f"unknown method '{name}'; did you mean {base}+{suffix}? (results folders write "
                          f"{base}+{suffix} as {name})")


def plan_methods(names: list[str], registry: Registry, ratios: list[float] | None = None,
                 granularity: str | None = None, recovery: str | None = None) -> list[MethodPlan]:
    plans = []
    override = parse_granularity(granularity) if granularity else None
    if recovery is not None:
        parse_recovery(recovery, registry)  # an unknown recovery or setting fails before anything else
    for name in names:
        own = recovery
        if name in RENAMED:  # one name per method: the old spelling still runs, and says the new one
            print(f"benchsuite: warning: method '{name}' is now '{RENAMED[name]}' (the same method); "
                  f"write {RENAMED[name]}", file=sys.stderr)
            name = RENAMED[name]
        base, plus, suffix = name.rpartition("+")
        if plus and (suffix.partition(":")[0] in registry.recoveries or suffix.partition(":")[0] == "method"):
            name, own = base, suffix  # e.g. magnitude-l2+lora: this method with LoRA recovery
        name, settings = split_overrides(name)  # e.g. loraprune:beta=0.99: a parameter of one of its parts
        _check_folder_spelling(name, registry)
        # strict (CI): a bare name two plugins register is an error listing the qualified names, not a guess
        qualified = registry.qualify("methods", name, ambiguous="error" if registry.strict else "warn")
        method: Method = registry.lookup("methods", qualified)
        key = method.name
        if override is not None:
            gran_name, gran_params = override
            registry.lookup("granularities", gran_name)  # unknown -> close matches
            if gran_name == "structured":
                layers = method.layers if method.granularity == "structured" else "default"
            else:
                layers = method.layers if method.granularity != "structured" else "all"
            method = replace(method, granularity=gran_name, granularity_params=gran_params, layers=layers)
        parts = {kind: registry.qualify(kind, getattr(method, attr), ambiguous="quiet") for kind, attr in
                 (("criteria", "criterion"), ("granularities", "granularity"), ("schedules", "schedule"))}
        if settings:
            classes = {"criterion": registry.lookup("criteria", parts["criteria"], ambiguous="quiet"),
                       "granularity": registry.lookup("granularities", parts["granularities"], ambiguous="quiet"),
                       "schedule": registry.lookup("schedules", parts["schedules"], ambiguous="quiet")}
            method = apply_overrides(method, classes, settings)
        plan = MethodPlan(method, *(registry.lookup(kind, q) for kind, q in parts.items()),
                          components={"method": qualified, "criterion": parts["criteria"],
                                      "granularity": parts["granularities"], "schedule": parts["schedules"]})
        gran = plan.build()[1]  # validates parameters
        if override is not None:
            key = f"{method.name}@{gran.label()}"
        key += "".join(f":{k}={v}" for k, v in settings)  # e.g. loraprune:beta=0.99, as the user wrote it
        chosen, written, qualified_recovery = parse_recovery(own, registry) if own is not None else (None, "", "")
        if chosen is not None:
            if chosen.trains != "lora" and plan.needs_lora:
                raise ConfigError(f"{method.name} prunes with LoRA ({plan.schedule.name} schedule, criterion "
                                  f"{plan.criterion.name}): it can't run with --recovery {chosen.name}"
                                  + (" (for methods that prune without LoRA)" if chosen.trains == "weights" else ""))
            training = chosen.training(method.recovery)
            if (training is None) != (chosen.trains == "nothing"):
                raise ConfigError(f"recovery '{chosen.name}': trains = {chosen.trains!r} but training() returned "
                                  f"{'nothing' if training is None else 'settings'}")
            if training is not None:
                unknown = sorted(set(training) - set(TRAINING_KEYS))
                if unknown:
                    raise ConfigError(f"recovery '{chosen.name}' gives unknown training settings {unknown}; "
                                      f"accepted: {', '.join(TRAINING_KEYS)}")
                if bool(training.get("full")) != (chosen.trains == "weights"):
                    raise ConfigError(f"recovery '{chosen.name}': trains = {chosen.trains!r} but its training "
                                      f"settings {'' if training.get('full') else 'do not '}say full=True")
            if training != method.recovery:  # what the method does anyway keeps its name, settings and label
                plan.method = replace(method, recovery=training)
                key += written
                plan.recovery = chosen
                plan.components["recovery"] = qualified_recovery
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


def auto_dtype(device: torch.device) -> torch.dtype:
    """``--dtype auto``: bfloat16 on a GPU that has it (Ampere and newer), float16 on an older GPU,
    float32 on the CPU (and on mps)."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16


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
        return dev, auto_dtype(dev)
    try:
        return dev, {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ConfigError(f"dtype '{dtype}' unknown; choose auto, float32, bfloat16 or float16") from None


def check_device_map(device_map: str | dict[str, str] | None, device: torch.device) -> None:
    """``--device-map`` needs CUDA GPUs and ``--device cuda`` (it spreads the model over every visible GPU). An
    explicit ``{module: device}`` map is checked against the model when it loads."""
    if device_map is None or isinstance(device_map, dict):
        return
    if device_map not in DEVICE_MAPS:
        raise ConfigError(f"--device-map '{device_map}' unknown; choose one of {', '.join(DEVICE_MAPS)}")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device-map {device_map} spreads the model over GPUs, and torch sees no CUDA GPU here; "
                          "leave --device-map out to run on one device")
    if device.type != "cuda" or device.index is not None:
        raise ConfigError(f"--device-map {device_map} spreads the model over every visible GPU: give --device cuda "
                          f"(not {device}); choose the GPUs with CUDA_VISIBLE_DEVICES")


def check_corpus_file(corpus: str, role: str = "") -> None:
    """A corpus given as a .txt/.jsonl path must exist and be readable text: checked before the model loads."""
    path = Path(corpus).expanduser()
    if path.suffix not in (".txt", ".jsonl"):
        return
    try:
        load_documents(path)
    except ValueError as exc:  # the message names the file
        raise ConfigError(f"{role}{exc}") from None


def select_metrics(names: list[str] | None, registry: Registry) -> tuple[list[Metric], list[str] | None]:
    """The metrics to measure, built (parameters checked), in the order they were registered; and the
    selection to record in the settings, sorted (None for the standard one, see :data:`STANDARD_METRICS`)."""
    defaults = [name for name, cls in registry.metrics.items() if cls.default]
    if names is None:
        chosen = set(defaults)
    else:
        chosen = set()
        for name in names:
            if name == "default":
                chosen |= set(defaults)
            else:
                chosen.add(registry.lookup("metrics", name).name)
        if not chosen:
            raise ConfigError("--metrics is empty: give at least one metric, e.g. default (or leave it out)")
    metrics = [registry.metrics[name].create({}) for name in registry.metrics if name in chosen]
    return metrics, None if chosen == set(STANDARD_METRICS) else sorted(chosen)


@dataclass
class RunPlan:
    """A request with everything that needs no model checked and resolved."""

    request: RunRequest
    registry: Registry
    profile: Profile
    methods: list[MethodPlan]
    device: torch.device
    dtype: torch.dtype
    #: zero-shot tasks (resolved names) and examples per task
    tasks: list[str]
    limit: int | None
    #: perplexity corpora, in the profile's order
    corpora: list[Corpus]
    #: the metrics, built once (their state is kept across the runs), in registration order
    metrics: list[Metric]
    #: the metric selection recorded in the settings; None for the standard one (records stay comparable)
    metric_selection: list[str] | None
    #: the allocation (name and parameters) where it is not uniform
    allocation: tuple[str, dict[str, Any]] | None = None


def plan_request(request: RunRequest, registry: Registry) -> RunPlan:
    """Check everything about ``request`` that needs no model (see the module docstring)."""
    profile = with_train_steps(get_profile(request.profile), request.train_steps)
    profile = with_batching(profile, request.grad_accum, request.lr_schedule)
    profile = with_recovery_data(with_corpora(profile, request.corpora), request.recovery_data)
    profile = with_calibration_data(profile, request.calibration_data)
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
    methods = plan_methods(request.methods, registry, request.ratios, request.granularity, request.recovery)
    for plan in methods:
        plan.lora(profile.lora_budget())  # a method that sets the profile's budget keys fails now
    device, dtype = pick_device(request.device, request.dtype)
    check_device_map(request.device_map, device)
    try:  # an unusable results folder fails now, not after the dense model was evaluated
        check_writable(request.results)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"--results {request.results}: records can't be written there ({reason})") from None
    tasks = list(profile.tasks if request.tasks is None else request.tasks)
    limit = profile.task_limit if request.limit is None else request.limit
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit}: give a positive number of examples per task")
    for corpus in profile.corpora:
        check_corpus_file(corpus.strip())
    for corpus in profile.recovery_data.split(","):
        check_corpus_file(corpus.strip(), "recovery data: ")
    if request.calibration_data:
        check_corpus_file(profile.calib_corpus, "calibration data: ")
        try:
            resolve_corpus(profile.calib_corpus, registry)
        except ValueError as exc:
            raise ConfigError(f"calibration data: {exc}") from None
    corpora = []
    for name in profile.corpora:  # an unknown name fails now, with the names there are
        try:
            corpora.append(resolve_corpus(name.strip(), registry))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if request.num_fewshot is not None and request.num_fewshot < 0:
        raise ConfigError(f"--num-fewshot {request.num_fewshot}: give 0 or more examples")
    if request.task_batch is not None and request.task_batch < 1:
        raise ConfigError(f"--batch-size {request.task_batch}: give a positive batch size")
    if tasks:
        from benchsuite.data.tasks import resolve_tasks

        tasks = resolve_tasks(tasks, include_path=request.include_path)
        if request.num_fewshot is not None and all(_offline_task(t) for t in tasks):
            raise ConfigError(f"--num-fewshot {request.num_fewshot}: the offline tasks ({', '.join(tasks)}) stay "
                              "0-shot, as the pruning papers score them; it applies to lm-eval's tasks and yours")
    elif request.include_path is not None or request.num_fewshot is not None:
        raise ConfigError("--include-path and --num-fewshot set how lm-eval tasks run: name them with --tasks")
    metrics, selection = select_metrics(request.metrics, registry)
    allocation = parse_allocation(request.allocation, registry)
    if allocation is not None:
        for method in methods:  # a granularity that can't apply it is refused before any run
            granularity = method.build()[1]
            if not granularity.supports_allocation:
                why = ("N:M fixes every row's density" if granularity.fixed_ratio is not None else
                       "it allocates by itself, or has no per-layer ratio")
                raise ConfigError(f"--allocation {allocation[0]}: method {method.key} prunes at granularity "
                                  f"'{granularity.label()}', which can't take a ratio per layer ({why})")
    return RunPlan(request, registry, profile, methods, device, dtype, tasks, limit, corpora, metrics, selection,
                   allocation)


def _offline_task(name: str) -> bool:
    from benchsuite.data.tasks import ALL_TASKS

    return name in ALL_TASKS


def parse_allocation(text: str | None, registry: Registry) -> tuple[str, dict[str, Any]] | None:
    """``NAME[:PARAM=VALUE,...]`` -> (name, parameters), checked against the registered allocation (unknown names
    and parameters: a ConfigError with close matches); None for the uniform allocation without parameters."""
    from benchsuite.api.allocation import UNIFORM

    if text is None or not text.strip():
        return None
    name, _, rest = text.strip().partition(":")
    params: dict[str, Any] = {}
    for setting in filter(None, (s.strip() for s in rest.split(","))):
        key, sep, value = setting.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--allocation {text}: '{setting}' is not PARAM=VALUE")
        params[key.strip()] = _parse_value(value.strip())
    cls = registry.lookup("allocations", name)
    cls.create(params)  # a bad parameter: ConfigError naming the accepted ones
    return None if name == UNIFORM and not params else (registry.display("allocations", registry.qualify(
        "allocations", name, ambiguous="quiet")), params)


@dataclass
class RunSpec:
    """One run, settled before any run starts: a method at a ratio and seed, or the dense model
    (``method`` None). Its ``config`` is what defines the result (hashed into the record's name)."""

    method: MethodPlan | None
    ratio: float
    seed: int
    config: dict[str, Any]
    #: pruned runs: the decoder layers pruned, the unit ratio with how it was derived, the granularity's
    #: table label, LoRA settings (None: no LoRA) and recovery steps after pruning, calibration
    layers: list[int] = field(default_factory=list)
    unit_ratio: dict[str, Any] = field(default_factory=dict)
    granularity_label: str = ""
    lora: LoRAConfig | None = None
    recovery_steps: int = 0
    calibration: dict[str, Any] = field(default_factory=dict)
    calibration_corpus: Corpus | None = None

    @property
    def key(self) -> str:
        """The records' folder: the method variant, or ``dense``."""
        return "dense" if self.method is None else self.method.key

    @property
    def label(self) -> str:
        return "dense" if self.method is None else f"{self.key} ratio={self.ratio:g} seed={self.seed}"

    @property
    def recovers_after_pruning(self) -> bool:
        """LoRA recovery after pruning (a schedule that trains recovers while pruning)."""
        return self.lora is not None and not self.method.schedule.trains


@dataclass
class ModelPlan:
    """The loaded model and every run, checked against it."""

    model_info: ResolvedModel
    tokenizer: Any
    #: the dense model, held until it is measured (each run loads its own copy)
    dense: nn.Module | None
    weights_sha: str
    dense_params: int
    #: LoRA optimizer steps of the profile (set by ``train_epochs`` where the profile gives epochs)
    train_steps: int
    #: the LoRA training corpora and what they hold (recorded as ``recovery_setup.data``); empty and None
    #: when no method trains
    recovery_corpora: list[Corpus]
    recovery_data: dict[str, Any] | None
    dense_run: RunSpec
    runs: list[RunSpec]
    #: ``{module: device}`` of the dense model spread over GPUs (``--device-map``); None on one device
    device_map: dict[str, str] | None = None
    #: the model's family, as records keep it (:meth:`~benchsuite.api.architecture.Architecture.as_dict`)
    family: dict[str, Any] | None = None

    def spec(self, method: MethodPlan, ratio: float, seed: int) -> RunSpec:
        for spec in self.runs:
            if spec.method is method and spec.ratio == ratio and spec.seed == seed:
                return spec
        raise KeyError(f"no run {method.key} ratio={ratio:g} seed={seed} in the plan")


def unit_ratio(plan: RunPlan, method: MethodPlan, ratio: float, dense: nn.Module) -> dict[str, Any]:
    """The fraction of units to prune in the method's layers for ``ratio``.

    With ``ratio_basis`` ``params`` the ratio is of the decoder layers' projection weights, so
    methods that prune different layer ranges end with the same parameter count: the unit ratio
    is ``ratio * all projection weights / weights the pruned units hold``."""
    basis = plan.request.ratio_basis
    granularity = method.build()[1]
    info: dict[str, Any] = {"ratio": ratio, "basis": basis}
    if granularity.fixed_ratio is not None:
        return info | {"basis": "fixed by the granularity", "unit_ratio": ratio}
    layers = parse_layers(method.method.layers, len(decoder_layers(dense)))
    groups = granularity.units(dense, layers)
    cap = granularity.max_ratio(groups)
    if basis == "units":
        unit = ratio
    else:
        total = sum(base_linear(layer.get_submodule(path)).weight.numel()
                    for layer in decoder_layers(dense) for path in layer_paths(dense, layer))
        prunable = sum(g.size * n for g, n in zip(groups, granularity.unit_params(dense, groups)))
        unit = ratio * total / prunable
        info |= {"projection_params": total, "prunable_params": prunable}
        if cap < unit <= cap + 1e-9:
            unit = cap
    if unit > cap:
        raise ConfigError(
            f"{method.key} at ratio {ratio:g} ({basis}) must remove {unit:.1%} of the units in "
            f"its {len(layers)} pruned layers, more than the {cap:.1%} that can go (one unit per block stays); "
            "use a lower ratio" + (", or --ratio-basis units" if basis == "params" else ""))
    return info | {"unit_ratio": unit}


def calibration_spec(plan: RunPlan, method: MethodPlan) -> dict[str, Any]:
    """Corpus, samples and length of calibration for a method: the profile's, or in the papers'
    profiles the criterion's own recipe."""
    p = plan.profile
    own = method.criterion.calibration
    if p.criterion_calibration and own is not None:
        corpus, samples, length = own
        return {"corpus": corpus, "samples": samples, "length": length, "from": "criterion"}
    return {"corpus": p.calib_corpus, "samples": p.calib_samples, "length": p.calib_len, "from": "profile"}


def task_options(request: RunRequest) -> dict[str, Any]:
    """How lm-eval runs the tasks, where the request says more than the defaults (kept in the settings only then,
    so that records without them keep their settings hash)."""
    return {k: v for k, v in (("include_path", str(request.include_path) if request.include_path else None),
                              ("num_fewshot", request.num_fewshot), ("batch_size", request.task_batch))
            if v is not None}


def measure_context(plan: RunPlan, tokenizer: Any, dense_params: int, seed: int, dense: bool,
                    reference=lambda: None) -> MeasureContext:
    """What the metrics get for one measurement."""
    return MeasureContext(device=plan.device, dtype=plan.dtype, tokenizer=tokenizer, profile=plan.profile, seed=seed,
                          dense=dense, corpora=plan.corpora, tasks=plan.tasks, task_limit=plan.limit,
                          dense_params=dense_params, reference=reference, task_options=task_options(plan.request))


def load_dense(plan: RunPlan, model_info: ResolvedModel) -> nn.Module:
    """The dense model on ``plan.device``, or spread over the GPUs with ``--device-map``."""
    return load_model_dir(model_info.path, dtype=plan.dtype, device=plan.device, device_map=plan.request.device_map)


def plan_model(plan: RunPlan) -> ModelPlan:
    """Resolve and load the model, check every method and run against it, prepare the recovery data and
    the metrics (may raise ConfigError; writes nothing)."""
    model_info = resolve_model(plan.request.model, plan.registry)
    try:  # the family, from config.json: one that no plugin describes, or can't be pruned yet, is refused unread
        architecture_of(read_config(model_info.path))
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - an unreadable config fails below, as one line with the checkpoint's error
        pass
    try:
        tokenizer = load_tokenizer(model_info.path)
        dense = load_dense(plan, model_info)
    except (ConfigError, AssetError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a broken checkpoint is one clear line, not a traceback
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"model {model_info.source} can't be loaded: {type(exc).__name__}: "
                          f"{reason}") from None
    n_layers = len(decoder_layers(dense))
    unit_ratios: dict[tuple[str, float], dict[str, Any]] = {}
    for method in plan.methods:
        method.build()[1].check_model(dense)
        parse_layers(method.method.layers, n_layers)
        for ratio in method.ratios:  # an impossible ratio fails before any run
            unit_ratios[(method.key, ratio)] = unit_ratio(plan, method, ratio, dense)
    weights_sha = weights_sha256(model_info.path)
    profile = plan.profile
    train_steps = profile.train_steps
    recovery_corpora: list[Corpus] = []
    recovery_data = None
    if any(method.lora()[0] is not None for method in plan.methods):
        try:  # recovery data: a missing file fails before any run; epochs become steps
            recovery_corpora = [resolve_corpus(name.strip(), plan.registry)
                                for name in profile.recovery_data.split(",")]
            windows = training_windows(tokenizer, recovery_corpora, profile.train_len)
        except ValueError as exc:
            raise ConfigError(f"recovery data: {exc}") from None
        identity = recovery_corpora[0].identity() if len(recovery_corpora) == 1 else {"name": profile.recovery_data}
        recovery_data = identity | {
            "windows": len(windows), "tokens": windows.numel(), "window_len": profile.train_len,
            "packing": "documents joined by blank lines, cut into non-overlapping windows"}
        if profile.train_epochs is not None:
            per_step = profile.train_batch * profile.grad_accum
            train_steps = max(1, math.ceil(profile.train_epochs * len(windows) / per_step))
    dense_params = count_params(dense)
    context = measure_context(plan, tokenizer, dense_params, seed=0, dense=True)
    for metric in plan.metrics:  # data a metric needs (corpora, tasks) fails before any run
        metric.prepare(context)
    runs = [run_spec(plan, weights_sha, train_steps, method, ratio, seed, n_layers, unit_ratios[(method.key, ratio)])
            for method in plan.methods for ratio in method.ratios for seed in plan.request.seeds]
    return ModelPlan(model_info, tokenizer, dense, weights_sha, dense_params, train_steps, recovery_corpora,
                     recovery_data, RunSpec(None, 0.0, 0, dense_config(plan, weights_sha)), runs,
                     device_map_of(dense), architecture_of(dense, prunable=False).as_dict())


def _context_config(plan: RunPlan, weights_sha: str) -> dict[str, Any]:
    options = task_options(plan.request)
    options.pop("batch_size", None)  # lm-eval's batch size does not change what it scores
    return {"profile": plan.profile.as_dict(), "weights": weights_sha, "dtype": str(plan.dtype),
            "tasks": plan.tasks, "limit": plan.limit} | ({"task_options": options} if options else {})


def dense_config(plan: RunPlan, weights_sha: str) -> dict[str, Any]:
    """The settings of the dense record."""
    config = {"method": "dense"} | _context_config(plan, weights_sha)
    if plan.metric_selection is not None:
        config["metrics"] = plan.metric_selection
    return config


def run_spec(plan: RunPlan, weights_sha: str, train_steps: int, method: MethodPlan, ratio: float, seed: int,
             n_layers: int, unit: dict[str, Any]) -> RunSpec:
    """One pruned run's settings (``config``) and what it needs."""
    config = method.method.describe() | {"ratio": ratio, "seed": seed} | _context_config(plan, weights_sha) | {
        "ratio_basis": plan.request.ratio_basis, "train_steps": train_steps}
    if plan.metric_selection is not None:
        config["metrics"] = plan.metric_selection
    if plan.allocation is not None:  # uniform is not named: records without it keep their settings hash
        config["allocation"] = {"name": plan.allocation[0]} | plan.allocation[1]
    files = {p.prefix: {"file": p.file, "sha256": p.sha256} for p in plan.registry.plugins if p.file}
    used = sorted({q.partition(":")[0] for q in method.components.values()} & files.keys())
    if used:  # a component from a --plugin file: the file's digest defines the result too
        config["plugin_files"] = {name: files[name] for name in used}
    lora, steps = method.lora(plan.profile.lora_budget())
    if plan.request.gradient_checkpointing and lora is not None:  # same results, other memory and time
        config["gradient_checkpointing"] = True
    calibration = calibration_spec(plan, method)
    needs = method.criterion.needs
    try:
        corpus = resolve_corpus(calibration["corpus"], plan.registry)
    except ValueError as exc:
        raise ConfigError(f"{method.key}: calibration: {exc}") from None
    return RunSpec(method, ratio, seed, config, layers=parse_layers(method.method.layers, n_layers), unit_ratio=unit,
                   granularity_label=method.build()[1].label(), lora=lora,
                   recovery_steps=train_steps if steps is None else steps,
                   calibration=calibration | {
                       "used": "calibration" in needs or ("lora_grad" in needs and not method.schedule.trains)},
                   calibration_corpus=corpus)
