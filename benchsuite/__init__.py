"""benchsuite: a plugin-based benchmark suite for pruning large language models.

Everything a plugin needs is importable from here (see docs/plugins.md). The names are imported on
first use, so that the command line starts, and answers Ctrl-C, before torch is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_LAZY: dict[str, str] = {
    **dict.fromkeys((
        "API_VERSION", "NEEDS", "REDUCTIONS", "ConfigError", "Coupling", "Criterion", "Granularity", "GroupSet",
        "Method", "ModelSpec", "Parametrized", "PruneContext", "PruneOutcome", "Reduction", "Schedule", "combine",
        "module_key", "unit_sums"), "benchsuite.api"),
    **dict.fromkeys(("PROJECTIONS", "base_linear", "decoder_layers", "linear_modules"), "benchsuite.structure"),
    "calibrate": "benchsuite.calibration",
    "RunningScores": "benchsuite.scoring",
    "checked_scores": "benchsuite.scoring",
    "tensor_bytes": "benchsuite.memory",
    "PAPER_LORA": "benchsuite.finetune",
    **dict.fromkeys(("Metric", "MetricResult", "MeasureContext"), "benchsuite.metrics"),
    "Column": "benchsuite.columns",
    **dict.fromkeys(("Corpus", "FileCorpus", "HubCorpus"), "benchsuite.corpora"),
}

__all__ = [
    "API_VERSION", "NEEDS", "PAPER_LORA", "PROJECTIONS", "REDUCTIONS", "ConfigError", "Coupling", "Criterion",
    "Granularity", "GroupSet", "Method", "ModelSpec", "Parametrized", "PruneContext", "PruneOutcome",
    "Reduction", "RunningScores", "Schedule", "__version__", "base_linear", "calibrate", "combine",
    "decoder_layers", "hookimpl", "linear_modules", "module_key", "tensor_bytes", "unit_sums", "checked_scores",
    "Metric", "MetricResult", "MeasureContext", "Column", "Corpus", "FileCorpus", "HubCorpus",
]

if TYPE_CHECKING:
    import pluggy

    #: Decorate plugin functions with this: ``@hookimpl def benchsuite_register_criteria(register): ...``
    hookimpl: pluggy.HookimplMarker
    from .api import (
        API_VERSION,
        NEEDS,
        REDUCTIONS,
        ConfigError,
        Coupling,
        Criterion,
        Granularity,
        GroupSet,
        Method,
        ModelSpec,
        Parametrized,
        PruneContext,
        PruneOutcome,
        Reduction,
        Schedule,
        combine,
        module_key,
        unit_sums,
    )
    from .calibration import calibrate
    from .columns import Column
    from .corpora import Corpus, FileCorpus, HubCorpus
    from .finetune import PAPER_LORA
    from .memory import tensor_bytes
    from .metrics import MeasureContext, Metric, MetricResult
    from .scoring import RunningScores, checked_scores
    from .structure import PROJECTIONS, base_linear, decoder_layers, linear_modules


def __getattr__(name: str) -> Any:
    if name == "hookimpl":  # made on first use too: `python -m benchsuite` imports nothing before its Ctrl-C guard
        import pluggy

        globals()["hookimpl"] = marker = pluggy.HookimplMarker("benchsuite")
        return marker
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'benchsuite' has no attribute '{name}'")
