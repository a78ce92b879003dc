"""The small public API that plugins implement: criteria, granularities, schedules, methods.

Data flows one way: a *schedule* asks a *criterion* to prepare (gather gradients or activations),
asks the *granularity* for the prunable units of the chosen layers, scores them with the criterion,
selects the lowest-scoring fraction, masks them, and at the end lets the granularity finalize the
model (physical removal for structured pruning).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union

import torch
from torch import nn

from benchsuite.api.errors import ConfigError

REDUCTIONS = ("sum", "mean", "max", "prod")
#: How per-module unit scores combine across coupled modules (a parameter type for criteria).
Reduction = Literal["sum", "mean", "max", "prod"]


@dataclass
class PruneContext:
    """What a schedule and a criterion may use besides the model itself."""

    seed: int
    device: torch.device
    profile: Mapping[str, Any]
    #: Returns a fresh iterator of calibration ``input_ids`` batches (LongTensor [batch, length]).
    calibration_batches: Callable[[], Iterator[torch.Tensor]]
    #: Free-form measurements a criterion or schedule wants recorded (e.g. gradient bytes held).
    notes: dict[str, Any] = field(default_factory=dict)
    #: LoRA fine-tuning of the (LoRA-wrapped) model for a number of optimizer steps, with
    #: ``before_step(step, model)`` (LoRA gradients present) and ``after_step`` callbacks. ``None``
    #: when the method has no LoRA. Returns a summary dict that is recorded.
    finetune: Callable[..., dict[str, Any]] | None = None
    #: Optimizer steps of fine-tuning the profile grants (the same for every method).
    train_steps: int = 0


#: The plugin API this benchsuite provides. A plugin module declares the version it targets with a
#: module attribute ``BENCHSUITE_API = "2.0"``; the host refuses a plugin needing a newer major or
#: minor version, and loads a plugin without the attribute as API 1 (with a deprecation warning).
API_VERSION = "2.4"

#: What a criterion may declare in ``needs``, and what the host does for each (see docs/plugins.md).
NEEDS: dict[str, str] = {
    "calibration": "calibration batches are drawn for it (ctx.calibration_batches) and recorded as used",
    "activations": "it reads layer inputs in calibration passes (calibrate(..., inputs=...))",
    "weight_grad": "it takes gradients of the pretrained weights (calibrate(..., grad='weights')); "
                   "their bytes are measured",
    "lora_grad": "the host attaches LoRA adapters before pruning (the method gets LoRA settings), "
                 "and the criterion reads the adapters' gradients",
}


class Parametrized:
    """Shared behaviour of criteria, granularities and schedules: declared, typed parameters.

    A component declares its parameters as annotated class attributes, dataclass style::

        class Magnitude(Criterion):
            name = "magnitude"
            p: Literal[1, 2] = 2
            reduction: Reduction = "sum"

    Each subclass becomes a keyword-only dataclass. Values are checked against the annotations when
    the component is constructed (before any model loads: ``bool``, ``int``, ``float``, ``str``,
    ``Literal``, unions, ``tuple``/``list``), then :meth:`validate` checks what types can't say, then
    :meth:`setup` creates runtime state. Runtime state (statistics, counters) is not a parameter:
    give it a leading underscore or create it in :meth:`setup`; :meth:`params` returns only the
    declared parameters, and those are recorded with every result.

    API 1 components (parameters as ``__init__`` keyword arguments) still work, with a deprecation
    warning: their parameters are read from ``__init__``'s signature and their public attributes.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: True for API 1 components that define ``__init__`` themselves (set by the host, not by you).
    _api1: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__ or any(base.__dict__.get("_api1") for base in cls.__mro__[1:]):
            cls._api1 = True
            return
        dataclasses.dataclass(cls, eq=False, kw_only=True)

    def __post_init__(self) -> None:
        check_parameters(self)
        self.validate()
        self.setup()

    def validate(self) -> None:
        """Check parameter values beyond their types; raise ``ValueError`` with the reason. Default: nothing."""

    def setup(self) -> None:
        """Create runtime state (statistics, counters, generators): not parameters. Default: nothing."""

    @classmethod
    def create(cls, params: Mapping[str, Any] | None = None):
        """Build from ``params`` (a method's ``criterion_params`` ...); a bad name, type or value is a
        :class:`ConfigError` that names the component, the parameter and what it accepts."""
        params = dict(params or {})
        accepted = parameter_names(cls)
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ConfigError(
                f"{cls.kind()} '{cls.name}' has no parameter {', '.join(map(repr, unknown))}; "
                f"it accepts: {', '.join(accepted) or 'none'}"
            )
        try:
            return cls(**params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{cls.kind()} '{cls.name}': {exc}") from exc

    @classmethod
    def kind(cls) -> str:
        return "component"

    def params(self) -> dict[str, Any]:
        """The declared parameters of this instance, defaults included (recorded with every result)."""
        if self._api1:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def parameter_names(cls: type) -> list[str]:
    """The parameters a component class accepts."""
    if getattr(cls, "_api1", False):
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    return [f.name for f in dataclasses.fields(cls) if f.init]


def parameter_types(cls: type) -> dict[str, Any]:
    """Declared parameter types of a component class, annotations resolved (in the class's module,
    with ``typing``'s names and :data:`Reduction` at hand); one that can't be resolved: ``Any``."""
    if getattr(cls, "_api1", False):
        return {}
    return {name: resolved for name, (resolved, _) in _resolve(cls).items()}


def unresolved_parameters(cls: type) -> dict[str, str]:
    """Parameters whose annotation can't be resolved (and so is not checked): name -> annotation."""
    if getattr(cls, "_api1", False):
        return {}
    return {name: text for name, (resolved, text) in _resolve(cls).items() if text is not None}


def _resolve(cls: type) -> dict[str, tuple[Any, str | None]]:
    import sys

    out: dict[str, tuple[Any, str | None]] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        annotation = f.type
        if not isinstance(annotation, str):
            out[f.name] = (annotation, None)
            continue
        owner = next((c for c in cls.__mro__ if f.name in c.__dict__.get("__annotations__", {})), cls)
        namespace = {**vars(typing), "Reduction": Reduction, **vars(sys.modules.get(owner.__module__, typing))}
        try:
            out[f.name] = (eval(annotation, namespace), None)  # noqa: S307 - a class's own annotation
        except Exception:  # noqa: BLE001 - e.g. a name imported only inside a function
            out[f.name] = (Any, annotation)
    return out


def check_parameters(component: Any) -> None:
    """Raise ``TypeError`` naming the first parameter whose value does not match its annotation."""
    for name, expected in parameter_types(type(component)).items():
        value = getattr(component, name)
        if not _matches(value, expected):
            raise TypeError(f"parameter {name} must be {_describe(expected)}, not {value!r}")


def _matches(value: Any, expected: Any) -> bool:
    if expected is Any or isinstance(expected, typing.TypeVar):
        return True
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if expected is type(None) or expected is None:
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (tuple, list)):
            return False
        item = args[0] if args else Any
        return all(_matches(v, item) for v in value)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, Mapping)
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True


def _describe(expected: Any) -> str:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (tuple, list, collections.abc.Sequence):
        return f"a list of {_describe(args[0]) if args else 'values'}"
    if expected is type(None):
        return "None"
    return getattr(expected, "__name__", str(expected))


@dataclass(frozen=True)
class Coupling:
    """One module slice of a coupled group: for unit ``u`` the rows (dim 0) or columns (dim 1)
    ``index[u]`` of the Linear ``module`` (a path relative to its decoder layer)."""

    module: str
    dim: int
    index: torch.Tensor  # LongTensor [units, elements per unit]


@dataclass
class GroupSet:
    """Coupled prunable units of one layer (attention heads or MLP channels).

    ``blocks`` > 1 means the units are split into equal consecutive blocks and the same number
    must be pruned from each block (q heads sharing a key/value head under GQA).
    """

    name: str
    layer: int
    kind: str
    size: int
    members: list[Coupling]
    blocks: int = 1
    #: groups with the same ``tie`` lose the same number of units (the experts of one layer: see
    #: :func:`benchsuite.pruning.structure.tied_counts`); None: on its own
    tie: str | None = None


class Criterion(Parametrized, ABC):
    """Importance criterion (Torch-Pruning style): higher score = more important.

    Implement :meth:`element_scores` (usable by every granularity), or override
    :meth:`group_scores` for criteria defined only on whole groups. ``needs`` declares what the
    criterion uses, and the host acts on it (see :data:`NEEDS`): ``"lora_grad"`` makes the host
    attach LoRA adapters before pruning; ``"calibration"`` draws calibration batches for it.
    """

    needs: ClassVar[frozenset[str]] = frozenset()
    #: The criterion's own calibration recipe ``(corpus, samples, tokens per sample)``, used by
    #: profiles that reproduce the papers (``criterion_calibration``); ``None``: the profile's.
    calibration: ClassVar[tuple[str, int, int] | None] = None
    #: True for criteria that learn from training steps rather than from :meth:`prepare`:
    #: training-time schedules score every group after each backward (while the LoRA gradients are
    #: present), fold the scores into a running score with :meth:`accumulate`, and prune by it.
    observes_training: ClassVar[bool] = False
    #: True when what :meth:`prepare` learns about a decoder layer comes only from the inputs of that layer's
    #: modules in passes without gradients (``calibrate(..., grad="none")``; Wanda): a layer-by-layer schedule
    #: may then calibrate each layer on its cached inputs instead of running the whole model (the same inputs,
    #: bit for bit; ``LayerInputs``). Leave it False if prepare reads anything else (outputs, losses, other hooks).
    layer_local: ClassVar[bool] = False
    #: How per-module unit scores combine across coupled modules, and whether each module's vector
    #: is divided by its L2 norm first. Declare them as parameters to make them settable.
    reduction: ClassVar[str] = "sum"
    normalize: ClassVar[bool] = False

    @classmethod
    def kind(cls) -> str:
        return "criterion"

    def prepare(self, model: nn.Module, ctx: PruneContext) -> None:  # noqa: B027 - optional hook
        """Gather statistics before scoring (use :func:`benchsuite.calibrate`). Default: nothing."""

    def usable_step(self, model: nn.Module) -> bool:
        """Training-time schedules: whether this step's gradients may enter the running score (e.g.
        LoRAPrune skips steps with non-finite LoRA gradients). Default: True."""
        return True

    def accumulate(self, previous: torch.Tensor | None, current: torch.Tensor) -> torch.Tensor:
        """Training-time schedules: fold one step's scores of a group into its running score
        (``previous`` is None at the first step; ``current`` may be modified in place). Default:
        the latest step's scores."""
        return current

    def observe(self, model: nn.Module, granularity: Granularity, groups: list[GroupSet]) -> None:  # noqa: B027
        """Deprecated (API 1): training-time schedules now keep the running score themselves, through
        :meth:`usable_step` and :meth:`accumulate`. A criterion that still overrides this is called as before."""

    def release(self) -> None:  # noqa: B027 - optional hook
        """Drop gathered statistics (gradients, activations) once scoring is done. Default: nothing."""

    def stats(self) -> dict[str, Any]:
        """Counts to record with the run (e.g. samples it could not use). Default: none."""
        return {}

    def input_means(self, key: str) -> torch.Tensor | None:
        """Mean input of projection ``key`` over the calibration tokens (shape ``[in_features]``), for
        granularities that replace removed units by their mean contribution (a bias, as FLAP's
        compensation). Valid between :meth:`prepare` and :meth:`release`. Default: None (not recorded)."""
        return None

    def element_scores(self, key: str, module: nn.Module) -> torch.Tensor:
        """Per-element importance of ``module.weight`` (same shape). ``key`` is ``layers.<i>.<path>``
        (see :func:`module_key`); ``module`` may be a peft LoRA wrapper (see :func:`base_linear`)."""
        raise NotImplementedError(f"criterion '{self.name}' has no element scores")

    def group_scores(self, group: GroupSet, layer: nn.Module) -> torch.Tensor:
        """Importance of each unit of ``group`` (shape ``[group.size]``).

        Default: element scores summed over each unit's slice in each coupled module, each module's
        vector optionally L2-normalised, then reduced across modules with ``reduction``.
        """
        vectors = []
        for member in group.members:
            module = layer.get_submodule(member.module)
            scores = self.element_scores(module_key(group.layer, member.module), module).float()
            vectors.append(unit_sums(scores, member))
        return combine(vectors, self.reduction, self.normalize)


def module_key(layer: int, path: str) -> str:
    """The key a criterion's :meth:`~Criterion.element_scores` receives: ``layers.<layer>.<path>``
    (e.g. ``layers.3.self_attn.q_proj``)."""
    return f"layers.{layer}.{path}"


def unit_sums(element_scores: torch.Tensor, member: Coupling) -> torch.Tensor:
    """Sum element scores over each unit's rows/columns: shape ``[units]``."""
    index = member.index
    units, width = index.shape
    if torch.equal(index.reshape(-1), torch.arange(units * width)):  # consecutive units: no gather
        if member.dim == 0:
            return element_scores[: units * width].reshape(units, -1).sum(1)
        return element_scores[:, : units * width].sum(0).reshape(units, width).sum(1)
    scores = element_scores if member.dim == 0 else element_scores.t()
    return scores[index.reshape(-1).to(scores.device)].reshape(units, -1).sum(1)


def combine(vectors: list[torch.Tensor], reduction: str = "sum", normalize: bool = False) -> torch.Tensor:
    """Reduce per-module unit vectors across coupled modules."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"unknown reduction '{reduction}'; choose one of {', '.join(REDUCTIONS)}")
    if normalize:
        vectors = [v / v.norm().clamp_min(1e-12) for v in vectors]
    stacked = torch.stack([v.to(vectors[0].device) for v in vectors])  # modules may sit on different devices
    if reduction == "sum":
        return stacked.sum(0)
    if reduction == "mean":
        return stacked.mean(0)
    if reduction == "max":
        return stacked.max(0).values
    return stacked.prod(0)


class Granularity(Parametrized, ABC):
    """What gets removed: whole heads/channels (structured), N:M blocks, single weights."""

    #: Set by granularities that fix the sparsity (N:M, as a property); ``None``: the ratio is free.
    fixed_ratio: ClassVar[float | None] = None
    #: True for granularities whose :meth:`select` spreads the ratio over the groups by score (FLAP's
    #: global threshold): the target then holds for the parameters removed in all (``ratio`` times the
    #: units' :meth:`unit_params`), not group by group.
    adaptive: ClassVar[bool] = False
    #: True when :meth:`select`'s mask of a group depends only on that group's scores and previous mask (N:M,
    #: unstructured): schedules may then call :meth:`select` and :meth:`apply_masks` with some of the groups.
    local_selection: ClassVar[bool] = False
    #: True when :meth:`select` prunes each group at :meth:`group_ratio` (an allocation's per-layer ratio,
    #: ``--allocation``); granularities without it run only with the uniform allocation
    supports_allocation: ClassVar[bool] = False

    def allocate(self, ratios: dict[int, float], target: float) -> None:
        """Prune layer ``l`` at ``ratios[l]`` when asked for ``target`` (an allocation's per-layer ratios; the
        pipeline calls this before the schedule runs)."""
        self._allocation = (dict(ratios), float(target))

    def group_ratio(self, group: GroupSet, ratio: float) -> float:
        """The ratio to prune ``group`` at when :meth:`select` is asked for ``ratio``: ``ratio`` itself, or, after
        :meth:`allocate`, its layer's allocated ratio scaled by ``ratio / target`` (an iterative schedule's
        intermediate ratios keep the layers' proportions)."""
        allocation = getattr(self, "_allocation", None)
        if allocation is None or not allocation[1]:
            return ratio
        ratios, target = allocation
        return ratios.get(group.layer, target) * ratio / target

    @classmethod
    def kind(cls) -> str:
        return "granularity"

    @abstractmethod
    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`ConfigError` if this granularity can't prune ``model``'s layout."""

    @abstractmethod
    def units(self, model: nn.Module, layers: list[int]) -> list[GroupSet]:
        """The prunable groups of ``layers``."""

    @abstractmethod
    def score(self, criterion: Criterion, model: nn.Module, groups: list[GroupSet]) -> list[torch.Tensor]:
        """Scores for each group's units, from ``criterion``."""

    @abstractmethod
    def select(
        self, groups: list[GroupSet], scores: list[torch.Tensor], ratio: float,
        previous: list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Boolean keep-masks, one per group; units pruned in ``previous`` stay pruned."""

    @abstractmethod
    def apply_masks(self, model: nn.Module, groups: list[GroupSet], masks: list[torch.Tensor]) -> None:
        """Make masked units contribute nothing (reversible, replaces earlier masks)."""

    @abstractmethod
    def finalize(self, model: nn.Module, groups: list[GroupSet], masks: list[torch.Tensor]) -> nn.Module:
        """Turn the masks into the pruned model (e.g. physical removal). Masks that must hold
        during a later LoRA recovery (element sparsity) stay in force."""

    def after_merge(self, model: nn.Module, groups: list[GroupSet], masks: list[torch.Tensor]) -> dict[str, Any]:
        """Called on the plain model after LoRA is merged (or after pruning, without LoRA): re-apply
        what merging may undo and check the result. Returns checks to record. Default: nothing."""
        return {}

    def label(self) -> str:
        """Short name for tables (e.g. ``structured``, ``2:4``)."""
        return self.name

    def unit_params(self, model: nn.Module, groups: list[GroupSet]) -> list[int]:
        """Parameters one unit of each group holds (what pruning it removes): lets a ratio of
        parameters become a ratio of units (``--ratio-basis params``). Default: from the couplings
        (rows/columns times the Linear's other dimension)."""
        from benchsuite.api.model import base_linear, decoder_layers

        layers = decoder_layers(model)
        out = []
        for group in groups:
            total = 0
            for member in group.members:
                linear = base_linear(layers[group.layer].get_submodule(member.module))
                other = linear.in_features if member.dim == 0 else linear.out_features
                total += member.index.shape[1] * (other + (1 if member.dim == 0 and linear.bias is not None else 0))
            out.append(total)
        return out

    def max_ratio(self, groups: list[GroupSet]) -> float:
        """The largest fraction of units :meth:`select` can remove from these groups. Default: 1."""
        return 1.0


@dataclass
class PruneOutcome:
    """What a schedule returns: the pruned model and what happened on the way."""

    model: nn.Module
    groups: list[GroupSet]
    masks: list[torch.Tensor]
    log: dict[str, Any] = field(default_factory=dict)


class Schedule(Parametrized, ABC):
    """When pruning happens: once, or many times while fine-tuning."""

    #: True when the schedule fine-tunes with LoRA itself (no separate recovery afterwards).
    trains: ClassVar[bool] = False

    @classmethod
    def kind(cls) -> str:
        return "schedule"

    @abstractmethod
    def run(
        self, model: nn.Module, criterion: Criterion, granularity: Granularity,
        ratio: float, layers: list[int], ctx: PruneContext,
    ) -> PruneOutcome:
        """Prune ``model`` to ``ratio`` of the units in ``layers``."""


@dataclass(frozen=True)
class Method:
    """A named preset over the three axes, plus optional recovery (LoRA fine-tuning)."""

    name: str
    criterion: str
    granularity: str = "structured"
    schedule: str = "one-shot"
    criterion_params: Mapping[str, Any] = field(default_factory=dict)
    granularity_params: Mapping[str, Any] = field(default_factory=dict)
    schedule_params: Mapping[str, Any] = field(default_factory=dict)
    #: ``"default"`` (the papers' block range scaled to the model's depth), ``"all"``,
    #: ``"start:end"`` (end exclusive) or comma-separated indices.
    layers: str = "default"
    recovery: Mapping[str, Any] | None = None
    description: str = ""

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "criterion": {"name": self.criterion, "params": dict(self.criterion_params)},
            "granularity": {"name": self.granularity, "params": dict(self.granularity_params)},
            "schedule": {"name": self.schedule, "params": dict(self.schedule_params)},
            "layers": self.layers,
            "recovery": dict(self.recovery) if self.recovery else None,
        }


@dataclass(frozen=True)
class ModelSpec:
    """A named model: ``source`` is a hub id or local path; ``fetch`` (if given) returns a local dir."""

    name: str
    source: str
    description: str = ""
    fetch: Callable[[], Any] | None = None
    aliases: tuple[str, ...] = ()
