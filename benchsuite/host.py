"""The pluggy host: loads every plugin of the ``benchsuite`` entry-point group in isolation and
collects what they register into a :class:`Registry`.

A plugin that fails to import, fails validation, or raises while registering is reported (one line:
plugin, distribution, reason) and skipped; ``BENCHSUITE_STRICT_PLUGINS=1`` turns such failures into errors
(for CI).

Names. Every plugin is registered with pluggy under its distribution-qualified name (``benchsuite:flap``,
``benchsuite-flap:flap``), so two distributions never collide, and every component it registers is known by
``DIST:NAME`` too (``PLUGIN:NAME`` where that is unique). Two plugins may register the same bare name: the
bare name then means the built-in one (else the first loaded), with one warning naming both; a method's own
criterion, granularity and schedule names mean its own distribution's components first. Where a bare name
is someone else's, tables and records name the component by its qualified name (:meth:`Registry.display`).

May import: :mod:`benchsuite.api` and :mod:`benchsuite.util`.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pluggy

from benchsuite.api import hookspecs
from benchsuite.api.allocation import Allocation
from benchsuite.api.architecture import Architecture, use_architectures
from benchsuite.api.components import (
    API_VERSION,
    NEEDS,
    Criterion,
    Granularity,
    Method,
    ModelSpec,
    Parametrized,
    Schedule,
    unresolved_parameters,
)
from benchsuite.api.corpora import Corpus
from benchsuite.api.errors import ConfigError
from benchsuite.api.metrics import Metric
from benchsuite.api.recovery import Recovery
from benchsuite.util.names import did_you_mean

ENTRY_POINT_GROUP = "benchsuite"
STRICT_ENV = "BENCHSUITE_STRICT_PLUGINS"
#: the distribution of the built-in plugins: its components own their bare names
BUILTIN_DISTRIBUTION = "benchsuite"

#: hook name -> (kind shown to users, expected type)
KINDS: dict[str, tuple[str, Any]] = {
    "benchsuite_register_criteria": ("criteria", Criterion),
    "benchsuite_register_granularities": ("granularities", Granularity),
    "benchsuite_register_schedules": ("schedules", Schedule),
    "benchsuite_register_methods": ("methods", Method),
    "benchsuite_register_models": ("models", ModelSpec),
    "benchsuite_register_metrics": ("metrics", Metric),
    "benchsuite_register_corpora": ("corpora", Corpus),
    "benchsuite_register_architectures": ("architectures", Architecture),
    "benchsuite_register_allocations": ("allocations", Allocation),
    "benchsuite_register_recoveries": ("recoveries", Recovery),
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
    #: a plugin loaded from a .py file for one run (``--plugin PATH``): the file and its sha256
    file: str | None = None
    sha256: str | None = None

    @property
    def qualified(self) -> str:
        """``DIST:PLUGIN`` (the plugin's name in pluggy), or the plugin name where no distribution holds it."""
        return f"{self.distribution}:{self.name}" if self.distribution else self.name

    @property
    def prefix(self) -> str:
        """What qualifies the names of its components: its distribution (or, outside one, its own name)."""
        return self.distribution or self.name

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "qualified": self.qualified, "distribution": self.distribution,
                "version": self.version, "module": self.module, "api": self.api,
                "registers": self.registers, "error": self.error, "warnings": self.warnings} | (
                    {"file": self.file, "sha256": self.sha256} if self.file else {})


@dataclass
class Registry:
    """Everything the loaded plugins registered. The tables by kind (``criteria``, ``methods``, ...) map each
    bare name to the component it means (the built-in one where two plugins use the name); :attr:`qualified`
    holds every component by ``DIST:NAME``."""

    criteria: dict[str, type[Criterion]] = field(default_factory=dict)
    granularities: dict[str, type[Granularity]] = field(default_factory=dict)
    schedules: dict[str, type[Schedule]] = field(default_factory=dict)
    methods: dict[str, Method] = field(default_factory=dict)
    models: dict[str, ModelSpec] = field(default_factory=dict)
    metrics: dict[str, type[Metric]] = field(default_factory=dict)
    corpora: dict[str, Corpus] = field(default_factory=dict)
    architectures: dict[str, Architecture] = field(default_factory=dict)
    allocations: dict[str, type[Allocation]] = field(default_factory=dict)
    recoveries: dict[str, type[Recovery]] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)
    #: BENCHSUITE_STRICT_PLUGINS: a failing plugin is an error, and so is an ambiguous bare name in ``--methods``
    strict: bool = False
    #: methods whose parts no plugin registers (or whose parameters are invalid): name -> why
    broken_methods: dict[str, str] = field(default_factory=dict)
    #: kind -> ``DIST:NAME`` -> component, for every component of every plugin
    qualified: dict[str, dict[str, Any]] = field(default_factory=lambda: {kind: {} for kind, _ in KINDS.values()})
    #: kind -> bare name -> the qualified names that register it, the one the bare name means first
    owners: dict[str, dict[str, list[str]]] = field(default_factory=lambda: {kind: {} for kind, _ in KINDS.values()})
    #: ambiguous bare names already warned about, (kind, name)
    _warned: set[tuple[str, str]] = field(default_factory=set, repr=False)

    def lookup(self, kind: str, name: str, ambiguous: Literal["warn", "error", "quiet"] = "warn") -> Any:
        """The item ``name`` of ``kind`` (a bare name, ``DIST:NAME`` or ``PLUGIN:NAME``), or a ConfigError naming
        close matches. A bare name that several plugins register means the built-in one: one warning names the
        others (``ambiguous="error"``: a ConfigError listing the qualified choices; ``"quiet"``: no warning, for
        names the registry itself gave, such as a resolved method's parts)."""
        return self.qualified[kind][self.qualify(kind, name, ambiguous=ambiguous)]

    def qualify(self, kind: str, name: str, ambiguous: Literal["warn", "error", "quiet"] = "warn") -> str:
        """The ``DIST:NAME`` that ``name`` stands for (see :meth:`lookup`)."""
        table: dict[str, Any] = getattr(self, kind)
        if kind == "models":
            for bare, spec in table.items():
                if name in spec.aliases:
                    name = bare
                    break
        if name in self.qualified[kind]:
            return name
        owners = self.owners[kind].get(name)
        if owners:
            if len(owners) > 1:
                self._ambiguous(kind, name, owners, ambiguous)
            return owners[0]
        if ":" in name:  # PLUGIN:NAME, where the plugin's name is unique among those that register NAME
            plugin, _, bare = name.partition(":")
            matches = [q for q in self.owners[kind].get(bare, [])
                       if any(p.name == plugin and p.prefix == q.partition(":")[0] for p in self.plugins)]
            if len(matches) == 1:
                return matches[0]
            if matches:
                raise ConfigError(f"{_singular(kind)} '{name}' is ambiguous: plugins named '{plugin}' in several "
                                  f"distributions register '{bare}'; name one of {', '.join(matches)}")
        if kind == "methods" and name in self.broken_methods:
            raise ConfigError(f"method '{name}' can't run: {self.broken_methods[name]}")
        names = sorted(table) + ([a for s in table.values() for a in s.aliases] if kind == "models" else [])
        qualified = [q for q in self.qualified[kind] if q.partition(":")[2] in self.owners[kind]
                     and len(self.owners[kind][q.partition(":")[2]]) > 1]
        raise ConfigError(f"unknown {_singular(kind)} '{name}'{did_you_mean(name, names + qualified)} "
                          f"(available: {', '.join(sorted(table) + sorted(qualified))})")

    def display(self, kind: str, qualified: str) -> str:
        """How tables and records name a component: its bare name where the bare name means it, else
        ``DIST:NAME``."""
        bare = qualified.partition(":")[2]  # a distribution's name has no ':'; a component's may (loraprune-2:4)
        return bare if self.owners[kind].get(bare, [None])[0] == qualified else qualified

    def _ambiguous(self, kind: str, name: str, owners: list[str], ambiguous: str) -> None:
        others = ", ".join(owners[1:])
        if ambiguous == "error":
            raise ConfigError(f"{_singular(kind)} '{name}' is registered by several plugins: name one of "
                              f"{', '.join(owners)} (BENCHSUITE_STRICT_PLUGINS is set, so a bare name is not "
                              "resolved to the built-in one)")
        if ambiguous == "warn" and (kind, name) not in self._warned:
            self._warned.add((kind, name))
            print(f"benchsuite: warning: {_singular(kind)} '{name}' is registered by several plugins; using "
                  f"{owners[0]} (name {others} to use {'that' if len(owners) == 2 else 'another'} one)",
                  file=sys.stderr)

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]


def _item_name(item: Any) -> str:
    return item.name


def _singular(kind: str) -> str:
    return {"criteria": "criterion", "granularities": "granularity", "corpora": "corpus",
            "architectures": "architecture", "allocations": "allocation", "recoveries": "recovery"}.get(kind, kind[:-1])


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
                    info.warnings.append(f"{_singular(_kind)} '{name}': {problem}")
                qualified = f"{info.prefix}:{name}"
                if qualified in registry.qualified[_kind] or name in staged.get(_kind, {}):
                    owner = next((p.name for p in registry.plugins if p.prefix == info.prefix
                                  and name in p.registers.get(_kind, [])), info.name)
                    raise ValueError(f"{_kind} '{name}' is already registered by plugin '{owner}' of the same "
                                     "distribution")
                staged.setdefault(_kind, {})[name] = item

            impl.function(**{arg: register for arg in impl.argnames})
    for kind, items in staged.items():  # all or nothing: a plugin that raised registers nothing
        for name, item in items.items():
            registry.qualified[kind][f"{info.prefix}:{name}"] = item
            registry.owners[kind].setdefault(name, []).append(f"{info.prefix}:{name}")
        info.registers[kind] = sorted(items)


def _one_line(exc: BaseException) -> str:
    """An exception as one short line: its type and first line, never a repr of internal state."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, ValueError) and text.startswith("Plugin name already registered"):
        text = "another plugin is registered under the same name"
    elif isinstance(exc, pluggy.PluginValidationError):
        text = text.split(" for plugin ")[0] if " for plugin " in text else text
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _file_loader(path: Path, module_name: str) -> Callable[[], object]:
    """Import a plugin module from a .py file when called (inside the loader's isolation: an error is reported)."""
    def load() -> object:
        import importlib.util

        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"{path} is not a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look their module up by name
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        return module

    return load


def file_plugin_infos(paths: list[Path]) -> list[tuple[PluginInfo, Callable[[], object]]]:
    """``--plugin PATH`` files as plugins: named by the file's stem (its components are ``STEM:NAME``), with the
    file and its sha256 (records of runs that use its components name both)."""
    import hashlib
    import re

    out = []
    for path in paths:
        path = Path(path)
        if not path.is_file() or path.suffix != ".py":
            raise ConfigError(f"--plugin {path}: give a .py file that implements benchsuite hooks")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        name = path.stem
        module_name = "benchsuite_file_plugin_" + re.sub(r"\W", "_", name) + "_" + digest[:8]
        out.append((PluginInfo(name, module=str(path), file=str(path.resolve()), sha256=digest),
                    _file_loader(path, module_name)))
    return out


def load_registry(extra_plugins: list[tuple[str, object]] | None = None,
                  strict: bool | None = None, plugin_files: list[Path] | None = None) -> Registry:
    """Load every entry-point plugin (plus ``extra_plugins``, for tests, and ``plugin_files``, .py files given with
    ``--plugin``) into a fresh Registry."""
    strict = os.environ.get(STRICT_ENV, "") not in ("", "0") if strict is None else strict
    pm = pluggy.PluginManager("benchsuite")
    pm.add_hookspecs(hookspecs)
    registry = Registry(strict=strict)

    candidates: list[tuple[PluginInfo, Callable[[], object]]] = []
    seen: set[tuple[str | None, str]] = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        info = PluginInfo(ep.name, dist.name if dist else None, dist.version if dist else None, ep.value)
        if (info.distribution, ep.name) in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add((info.distribution, ep.name))
        candidates.append((info, ep.load))
    candidates.sort(key=lambda c: (c[0].name, not c[0].builtin, c[0].qualified))  # by plugin name, as ever
    for name, obj in extra_plugins or []:
        candidates.append((PluginInfo(name, module=getattr(obj, "__name__", repr(obj))), lambda o=obj: o))
    candidates += file_plugin_infos(list(plugin_files or []))

    for info, load in candidates:
        registry.plugins.append(info)
        plugin = None
        try:
            plugin = load()
            info.api = str(getattr(plugin, "BENCHSUITE_API", "1"))
            warning = check_api_version(plugin)
            if warning:
                info.warnings.append(warning)
            pm.register(plugin, name=info.qualified)
            pm.check_pending()
            _collect(pm, plugin, info, registry)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the others
            info.error = _one_line(exc)
            info.registers = {}
            if plugin is not None and pm.is_registered(plugin):
                pm.unregister(plugin)
            if strict:
                raise PluginError(f"plugin '{info.name}'{_from(info)} failed to load: {info.error}") from exc
    _resolve_bare_names(registry)
    _check_methods(registry, strict)
    # the built-in families first: a model_type two plugins describe means the built-in description
    builtin = {p.prefix for p in registry.plugins if p.builtin}
    families = sorted(registry.qualified["architectures"].items(),
                      key=lambda item: item[0].partition(":")[0] not in builtin)
    use_architectures(family for _, family in families)
    return registry


def _from(info: PluginInfo) -> str:
    return f" (distribution {info.distribution} {info.version})" if info.distribution else ""


def _resolve_bare_names(registry: Registry) -> None:
    """Fill the tables by bare name: each name means its built-in component, else the first loaded."""
    builtin = {p.prefix for p in registry.plugins if p.builtin}
    for kind, _ in KINDS.values():
        table = getattr(registry, kind)
        for name, owners in registry.owners[kind].items():
            owners.sort(key=lambda q: q.partition(":")[0] not in builtin)  # stable: else the first loaded
            table[name] = registry.qualified[kind][owners[0]]


def _method_parts(registry: Registry, qualified: str, method: Method) -> Method:
    """``method`` with its parts named as the registry resolves them: a bare part name means the method's own
    distribution's component where it registers one; the names are then given as :meth:`Registry.display`
    gives them, so that every later lookup finds the same components."""
    prefix = qualified.partition(":")[0]
    names = {}
    for kind, field_name in (("criteria", "criterion"), ("granularities", "granularity"), ("schedules", "schedule")):
        part = getattr(method, field_name)
        own = f"{prefix}:{part}"
        target = own if own in registry.qualified[kind] else registry.qualify(kind, part, ambiguous="quiet")
        names[field_name] = registry.display(kind, target)
    return replace(method, name=registry.display("methods", qualified), **names)


def _check_methods(registry: Registry, strict: bool) -> None:
    """Set aside methods that name a criterion, granularity or schedule nobody registered, or give their
    granularity parameters it rejects: they are reported (``plugins``, warnings), the rest work."""
    for qualified, method in list(registry.qualified["methods"].items()):
        name = method.name
        prefix = qualified.partition(":")[0]
        owner = next((p for p in registry.plugins if p.prefix == prefix and name in p.registers.get("methods", [])),
                     None)
        try:
            method = _method_parts(registry, qualified, method)
            registry.lookup("granularities", method.granularity, ambiguous="quiet").create(method.granularity_params)
            registry.qualified["methods"][qualified] = method
        except Exception as exc:  # noqa: BLE001 - a plugin's bad method must not break the others
            why = f"{exc} (method from plugin '{owner.name if owner else '?'}'{_from(owner) if owner else ''})"
            del registry.qualified["methods"][qualified]
            registry.owners["methods"][name].remove(qualified)
            if not registry.owners["methods"][name]:
                del registry.owners["methods"][name]
            registry.broken_methods[registry.display("methods", qualified) if name in registry.owners["methods"]
                                    else name] = why
            if owner is not None:
                owner.registers["methods"] = [m for m in owner.registers["methods"] if m != name]
                owner.warnings.append(f"method '{name}' skipped: {exc}")
            if strict:
                raise PluginError(f"method '{name}' can't run: {why}") from exc
    registry.methods.clear()
    _resolve_bare_names(registry)


_REGISTRY: Registry | None = None


def reset_registry() -> None:
    """Forget the process-wide registry: the next :func:`get_registry` loads the plugins again (e.g.
    after installing one into this process's path)."""
    global _REGISTRY
    _REGISTRY = None
    use_architectures([])  # the next family lookup loads the plugins again too


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = load_registry()
    return _REGISTRY
