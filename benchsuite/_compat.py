"""The flat module paths of benchsuite before its layers (``benchsuite.pipeline``, ``benchsuite.corpora``, ...),
kept importable: each old path is the module that now holds its code, the same module object, so
``from benchsuite.structure import decoder_layers`` and monkeypatching by the old path keep working. A path
whose module was split in two resolves its names in each part in turn.

``benchsuite.api``, ``benchsuite.models``, ``benchsuite.host``, ``benchsuite.testing`` and ``benchsuite.cli`` are
real modules or packages at their old paths and need nothing here. Old paths other than ``benchsuite.structure``
and ``benchsuite.runner`` (public: the plugin guide and the example plugin use them) warn once with the new one.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

#: old flat module -> the module(s) holding its code now (the first takes attribute writes)
MOVED: dict[str, tuple[str, ...]] = {
    "atomic": ("util.atomic",), "names": ("util.names",), "progress": ("util.progress",),
    "structure": ("pruning.structure",), "scoring": ("pruning.scoring",), "sparsity": ("pruning.sparsity",),
    "calibration": ("pruning.calibration",),
    "columns": ("api.columns",), "metrics": ("api.metrics",), "profiles": ("api.profiles",),
    "hookspecs": ("api.hookspecs",),
    "corpora": ("data.corpora",), "assets": ("data.assets",), "cache": ("data.cache",),
    "instruct": ("data.instruct",),
    "zeroshot": ("evaluation.zeroshot",),
    "evaluate": ("evaluation.latency", "evaluation.perplexity", "evaluation.size"),
    "memory": ("evaluation.memory",), "stats": ("evaluation.stats",),
    "plan": ("running.plan",), "pipeline": ("running.pipeline",), "runner": ("running.runner",),
    "finetune": ("running.finetune",), "records": ("running.records",), "estimate": ("running.estimate",),
    "cluster": ("running.cluster",), "regression": ("running.regression",),
    "report": ("reporting.tables",), "compare": ("reporting.compare",), "figures": ("reporting.figures",),
    "html_report": ("reporting.html",),
}
#: old paths in use by plugin code we know of (docs/plugins.md, examples/): no deprecation warning
PUBLIC = {"structure", "runner"}


class _Facade(types.ModuleType):
    """An old path whose code now lives in several modules: attributes are looked up in each in turn."""

    def __init__(self, name: str, parts: list[types.ModuleType]) -> None:
        super().__init__(name, parts[0].__doc__)
        self.__dict__["_parts"] = parts

    def __getattr__(self, attr: str) -> Any:
        for part in self.__dict__["_parts"]:
            if hasattr(part, attr):
                return getattr(part, attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")

    def __setattr__(self, attr: str, value: Any) -> None:
        for part in self.__dict__["_parts"]:
            if hasattr(part, attr):
                setattr(part, attr, value)
                return
        setattr(self.__dict__["_parts"][0], attr, value)


class _Alias(importlib.abc.Loader):
    def __init__(self, old: str) -> None:
        self.old = old

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new = [f"benchsuite.{path}" for path in MOVED[self.old]]
        if self.old not in PUBLIC:
            warnings.warn(f"benchsuite.{self.old} is now {' and '.join(new)}: import it from there",
                          DeprecationWarning, stacklevel=2)
        parts = [importlib.import_module(name) for name in new]
        if len(parts) == 1:
            self._spec = parts[0].__spec__
            return parts[0]
        self._spec = None
        return _Facade(spec.name, parts)

    def exec_module(self, module: types.ModuleType) -> None:
        if self._spec is not None:  # the import system set __spec__ to the old name's; give the module its own back
            module.__spec__ = self._spec


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        package, _, leaf = fullname.rpartition(".")
        if package != "benchsuite" or leaf not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(leaf))


def install() -> None:
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())
