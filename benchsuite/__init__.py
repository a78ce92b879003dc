"""benchsuite: a plugin-based benchmark suite for pruning large language models.

Everything a plugin needs is importable from here (see docs/plugins.md). The names are imported on
first use, so that the command line starts, and answers Ctrl-C, before torch is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from benchsuite import _compat  # noqa: E402 - the flat module paths of before the layers keep working

_compat.install()


def _load_plugins() -> None:
    from benchsuite.host import get_registry

    get_registry()


# a model's family (benchsuite.api.architecture) is looked up among the plugins' descriptions: code that meets a
# model before anything loaded the plugins (a criterion used on its own, say) loads them then
from benchsuite.api import architecture as _architecture  # noqa: E402

_architecture.set_loader(_load_plugins)

#: public name -> the module that defines it
_LAZY: dict[str, str] = {
    **dict.fromkeys((
        "API_VERSION", "NEEDS", "REDUCTIONS", "ConfigError", "Coupling", "Criterion", "Granularity", "GroupSet",
        "Method", "ModelSpec", "Parametrized", "PruneContext", "PruneOutcome", "Reduction", "Schedule", "combine",
        "module_key", "unit_sums"), "benchsuite.api.components"),
    "ConfigError": "benchsuite.api.errors",
    **dict.fromkeys(("PROJECTIONS", "base_linear", "decoder_layers", "layer_paths", "linear_modules"),
                    "benchsuite.api.model"),
    **dict.fromkeys(("LayerInputs", "calibrate"), "benchsuite.pruning.calibration"),
    "RunningScores": "benchsuite.pruning.scoring",
    "checked_scores": "benchsuite.pruning.scoring",
    "tensor_bytes": "benchsuite.evaluation.memory",
    "PAPER_LORA": "benchsuite.running.finetune",
    **dict.fromkeys(("Metric", "MetricResult", "MeasureContext"), "benchsuite.api.metrics"),
    "Column": "benchsuite.api.columns",
    **dict.fromkeys(("Architecture", "architecture_of"), "benchsuite.api.architecture"),
    "Allocation": "benchsuite.api.allocation",
    "Recovery": "benchsuite.api.recovery",
    "Corpus": "benchsuite.api.corpora",
    **dict.fromkeys(("FileCorpus", "HubCorpus"), "benchsuite.data.corpora"),
}

__all__ = [
    "API_VERSION", "NEEDS", "PAPER_LORA", "PROJECTIONS", "REDUCTIONS", "ConfigError", "Coupling", "Criterion",
    "Granularity", "GroupSet", "LayerInputs", "Method", "ModelSpec", "Parametrized", "PruneContext", "PruneOutcome",
    "Reduction", "RunningScores", "Schedule", "__version__", "base_linear", "calibrate", "combine",
    "decoder_layers", "layer_paths", "hookimpl", "linear_modules", "module_key", "tensor_bytes", "unit_sums",
    "checked_scores",
    "Metric", "MetricResult", "MeasureContext", "Column", "Corpus", "FileCorpus", "HubCorpus", "Architecture",
    "architecture_of", "Allocation", "Recovery",
]

if TYPE_CHECKING:
    import pluggy

    #: Decorate plugin functions with this: ``@hookimpl def benchsuite_register_criteria(register): ...``
    hookimpl: pluggy.HookimplMarker
    from benchsuite.api.allocation import Allocation
    from benchsuite.api.architecture import Architecture, architecture_of
    from benchsuite.api.columns import Column
    from benchsuite.api.components import (
        API_VERSION,
        NEEDS,
        REDUCTIONS,
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
    from benchsuite.api.corpora import Corpus
    from benchsuite.api.errors import ConfigError
    from benchsuite.api.metrics import MeasureContext, Metric, MetricResult
    from benchsuite.api.model import PROJECTIONS, base_linear, decoder_layers, layer_paths, linear_modules
    from benchsuite.api.recovery import Recovery
    from benchsuite.data.corpora import FileCorpus, HubCorpus
    from benchsuite.evaluation.memory import tensor_bytes
    from benchsuite.pruning.calibration import LayerInputs, calibrate
    from benchsuite.pruning.scoring import RunningScores, checked_scores
    from benchsuite.running.finetune import PAPER_LORA


def __getattr__(name: str) -> Any:
    if name == "hookimpl":  # made on first use too: `python -m benchsuite` imports nothing before its Ctrl-C guard
        import pluggy

        globals()["hookimpl"] = marker = pluggy.HookimplMarker("benchsuite")
        return marker
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'benchsuite' has no attribute '{name}'")
