"""benchsuite: a plugin-based benchmark suite for pruning large language models."""

import pluggy

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

__version__ = "0.1.0"

#: Decorate plugin functions with this: ``@hookimpl def benchsuite_register_criteria(register): ...``
hookimpl = pluggy.HookimplMarker("benchsuite")

__all__ = [
    "ConfigError", "Coupling", "Criterion", "Granularity", "GroupSet", "Method", "ModelSpec",
    "PruneContext", "PruneOutcome", "Schedule", "hookimpl", "__version__",
]
