"""benchsuite: a plugin-based benchmark suite for pruning large language models.

The plugin API (``Criterion``, ``Granularity``, ``Method`` ...) is imported on first use, so that the
command line starts, and answers Ctrl-C, before torch is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

__version__ = "0.1.0"

#: Decorate plugin functions with this: ``@hookimpl def benchsuite_register_criteria(register): ...``
hookimpl = pluggy.HookimplMarker("benchsuite")

_API = ("ConfigError", "Coupling", "Criterion", "Granularity", "GroupSet", "Method", "ModelSpec",
        "PruneContext", "PruneOutcome", "Schedule")

__all__ = [
    "ConfigError", "Coupling", "Criterion", "Granularity", "GroupSet", "Method", "ModelSpec",
    "PruneContext", "PruneOutcome", "Schedule", "hookimpl", "__version__",
]

if TYPE_CHECKING:
    from .api import (
        ConfigError,
        Coupling,
        Criterion,
        Granularity,
        GroupSet,
        Method,
        ModelSpec,
        PruneContext,
        PruneOutcome,
        Schedule,
    )


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'benchsuite' has no attribute '{name}'")
