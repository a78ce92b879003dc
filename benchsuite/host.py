"""The pluggy host: loads every plugin of the ``benchsuite`` entry-point group in isolation and
collects what they register into a :class:`Registry`.

A plugin that fails to import, fails validation, or raises while registering is reported (name
and error) and skipped; ``BENCHSUITE_STRICT_PLUGINS=1`` turns such failures into errors (for CI).
"""

from __future__ import annotations

import importlib.metadata
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .api import (
    API_VERSION,
    NEEDS,
    ConfigError,
    Criterion,
    Granularity,
    Method,
    ModelSpec,
    Parametrized,
    Schedule,
    unresolved_parameters,
)
from .corpora import Corpus
from .metrics import Metric
from .names import did_you_mean

ENTRY_POINT_GROUP = "benchsuite"
STRICT_ENV = "BENCHSUITE_STRICT_PLUGINS"

#: hook name -> (kind shown to users, expected type)
KINDS: dict[str, tuple[str, Any]] = {
    "benchsuite_register_criteria": ("criteria", Criterion),
    "benchsuite_register_granularities": ("granularities", Granularity),
    "benchsuite_register_schedules": ("schedules", Schedule),
    "benchsuite_register_methods": ("methods", Method),
    "benchsuite_register_models": ("models", ModelSpec),
    "benchsuite_register_metrics": ("metrics", Metric),
    "benchsuite_register_corpora": ("corpora", Corpus),
}


class PluginError(RuntimeError):
    """A plugin failed to load while strict loading was asked for."""


@dataclass
class PluginInfo:
    name: str
    distribution: str | None = None
    version: str | None = None
    module: str | None = None
    #: the plugin API it targets (its ``BENCHSUITE_API``; "1" when it declares none)
    api: str | None = None
    registers: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    #: what of it was set aside although it loaded (e.g. a method naming an unknown granularity)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "distribution": self.distribution, "version": self.version,
                "module": self.module, "api": self.api,
                "registers": self.registers, "error": self.error, "warnings": self.warnings}


@dataclass
class Registry:
    """Everything the loaded plugins registered, by name."""

    criteria: dict[str, type[Criterion]] = field(default_factory=dict)
    granularities: dict[str, type[Granularity]] = field(default_factory=dict)
    schedules: dict[str, type[Schedule]] = field(default_factory=dict)
    methods: dict[str, Method] = field(default_factory=dict)
    models: dict[str, ModelSpec] = field(default_factory=dict)
    metrics: dict[str, type[Metric]] = field(default_factory=dict)
    corpora: dict[str, Corpus] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)
    #: methods whose parts no plugin registers (or whose parameters are invalid): name -> why
    broken_methods: dict[str, str] = field(default_factory=dict)

    def lookup(self, kind: str, name: str) -> Any:
        """The item ``name`` of ``kind``, or a ConfigError naming close matches."""
        table: dict[str, Any] = getattr(self, kind)
        if kind == "models":
            for spec in table.values():
                if name in spec.aliases:
                    return spec
        if name in table:
            return table[name]
        if kind == "methods" and name in self.broken_methods:
            raise ConfigError(f"method '{name}' can't run: {self.broken_methods[name]}")
        singular = {"criteria": "criterion", "granularities": "granularity", "corpora": "corpus"}.get(kind, kind[:-1])
        names = sorted(table) + ([a for s in table.values() for a in s.aliases] if kind == "models" else [])
        raise ConfigError(f"unknown {singular} '{name}'{did_you_mean(name, names)} "
                          f"(available: {', '.join(sorted(table))})")

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]


def _item_name(item: Any) -> str:
    return item.name


def _check_component(item: Any) -> list[str]:
    """Raise TypeError for what can't work; return deprecation warnings for what still works (API 1)."""
    if not (isinstance(item, type) and issubclass(item, Parametrized)):
        return []
    if issubclass(item, Criterion):
        needs = item.needs
        if isinstance(needs, str) or not all(isinstance(n, str) for n in needs):
            raise TypeError(f"criterion '{item.name}': needs must be a set of names, not {needs!r}")
        unknown = sorted(set(needs) - set(NEEDS))
        if unknown:
            raise TypeError(f"criterion '{item.name}': needs {unknown} unknown; choose from {', '.join(NEEDS)}")
    warnings = [f"parameter {name}: annotation {text!r} can't be resolved, so its values are not checked"
                for name, text in unresolved_parameters(item).items()]
    if item._api1:
        warnings.append("parameters as __init__ arguments are deprecated (API 1): declare them as annotated "
                        "class attributes and create runtime state in setup() (docs/plugins.md, Parameters)")
    if issubclass(item, Criterion) and item.observe is not Criterion.observe:
        warnings.append("observe(model, granularity, groups) is deprecated (API 1): implement usable_step() and "
                        "accumulate(previous, current); the schedule keeps the running score")
    return warnings


def check_api_version(plugin: object) -> str | None:
    """The plugin's ``BENCHSUITE_API``: a refusal (ValueError naming what to change) if this benchsuite
    can't serve it; a deprecation warning (returned) if it targets API 1; None when it fits."""
    declared = getattr(plugin, "BENCHSUITE_API", None)
    if declared is None:
        return (f"declares no BENCHSUITE_API: loaded as API 1 (deprecated); add BENCHSUITE_API = "
                f"\"{API_VERSION}\" to the plugin module once it follows docs/plugins.md")
    try:
        major, minor = (int(x) for x in str(declared).split(".")) if "." in str(declared) else (int(declared), 0)
    except ValueError:
        raise ValueError(f"BENCHSUITE_API = {declared!r} is not a version like \"{API_VERSION}\"") from None
    have_major, have_minor = (int(x) for x in API_VERSION.split("."))
    if major > have_major or (major == have_major and minor > have_minor):
        raise ValueError(f"targets plugin API {declared}, but this benchsuite provides {API_VERSION}: "
                         "upgrade benchsuite (pip install -U benchsuite)")
    if major < 1:
        raise ValueError(f"BENCHSUITE_API = {declared!r}: no such plugin API; this benchsuite provides {API_VERSION}")
    if major < have_major:
        return (f"targets plugin API {declared} (deprecated): it still loads; see docs/plugins.md, "
                f"'Moving from API 1', to target {API_VERSION}")
    return None


def _collect(pm: pluggy.PluginManager, plugin: object, info: PluginInfo, registry: Registry) -> None:
    """Call each registration hook of one plugin; record what it registered."""
    staged: dict[str, dict[str, Any]] = {}
    for hook_name, (kind, expected) in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin is not plugin:
                continue

            def register(item: Any, _kind: str = kind, _expected: Any = expected) -> None:
                ok = isinstance(item, type) and issubclass(item, _expected) or isinstance(item, _expected)
                if not ok:
                    raise TypeError(f"{_kind}: expected {_expected.__name__}, got {item!r}")
                name = _item_name(item)
                if not isinstance(name, str) or not name:
                    raise TypeError(f"{_kind}: {item!r} has no name")
                for problem in _check_component(item):
                    info.warnings.append(f"{_kind[:-1] if _kind != 'criteria' else 'criterion'} '{name}': {problem}")
                if name in getattr(registry, _kind) or name in staged.get(_kind, {}):
                    owner = next((p.name for p in registry.plugins if name in p.registers.get(_kind, [])), "?")
                    raise ValueError(f"{_kind} '{name}' is already registered by plugin '{owner}'")
                staged.setdefault(_kind, {})[name] = item

            impl.function(**{arg: register for arg in impl.argnames})
    for kind, items in staged.items():  # all or nothing: a plugin that raised registers nothing
        getattr(registry, kind).update(items)
        info.registers[kind] = sorted(items)


def load_registry(extra_plugins: list[tuple[str, object]] | None = None,
                  strict: bool | None = None) -> Registry:
    """Load every entry-point plugin (plus ``extra_plugins``, for tests) into a fresh Registry."""
    strict = os.environ.get(STRICT_ENV, "") not in ("", "0") if strict is None else strict
    pm = pluggy.PluginManager("benchsuite")
    pm.add_hookspecs(hookspecs)
    registry = Registry()

    candidates: list[tuple[PluginInfo, Callable[[], object]]] = []
    seen: set[tuple[str, str]] = set()
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        key = (ep.name, ep.value)
        if key in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(key)
        info = PluginInfo(ep.name, dist.name if dist else None, dist.version if dist else None, ep.value)
        candidates.append((info, ep.load))
    for name, obj in extra_plugins or []:
        candidates.append((PluginInfo(name, module=getattr(obj, "__name__", repr(obj))), lambda o=obj: o))

    for info, load in candidates:
        registry.plugins.append(info)
        plugin = None
        try:
            plugin = load()
            info.api = str(getattr(plugin, "BENCHSUITE_API", "1"))
            warning = check_api_version(plugin)
            if warning:
                info.warnings.append(warning)
            pm.register(plugin, name=info.name)
            pm.check_pending()
            _collect(pm, plugin, info, registry)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the others
            info.error = f"{type(exc).__name__}: {exc}"
            info.registers = {}
            if plugin is not None and pm.is_registered(plugin):
                pm.unregister(plugin)
            if strict:
                raise PluginError(f"plugin '{info.name}' failed to load: {info.error}\n"
                                  f"{traceback.format_exc()}") from exc
    _check_methods(registry, strict)
    return registry


def _check_methods(registry: Registry, strict: bool) -> None:
    """Set aside methods that name a criterion, granularity or schedule nobody registered, or give their
    granularity parameters it rejects: they are reported (``plugins``, warnings), the rest work."""
    for name, method in list(registry.methods.items()):
        owner = next((p for p in registry.plugins if name in p.registers.get("methods", [])), None)
        try:
            for kind, part in (("criteria", method.criterion), ("granularities", method.granularity),
                               ("schedules", method.schedule)):
                registry.lookup(kind, part)
            registry.granularities[method.granularity].create(method.granularity_params)
        except Exception as exc:  # noqa: BLE001 - a plugin's bad method must not break the others
            why = f"{exc} (method from plugin '{owner.name if owner else '?'}')"
            del registry.methods[name]
            registry.broken_methods[name] = why
            if owner is not None:
                owner.registers["methods"] = [m for m in owner.registers["methods"] if m != name]
                owner.warnings.append(f"method '{name}' skipped: {exc}")
            if strict:
                raise PluginError(f"method '{name}' can't run: {why}") from exc


_REGISTRY: Registry | None = None


def reset_registry() -> None:
    """Forget the process-wide registry: the next :func:`get_registry` loads the plugins again (e.g.
    after installing one into this process's path)."""
    global _REGISTRY
    _REGISTRY = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = load_registry()
    return _REGISTRY
