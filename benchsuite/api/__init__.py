"""The plugin API: what a plugin subclasses, registers and receives. Plugins import from here (or from
``benchsuite``), never from the layers above.

- :mod:`~benchsuite.api.components`: criteria, granularities, schedules, methods, model names, the
  context a criterion is given;
- :mod:`~benchsuite.api.architecture`: model families (where a decoder keeps its layers and projections);
- :mod:`~benchsuite.api.model`: walking a decoder (layers, projections);
- :mod:`~benchsuite.api.metrics`, :mod:`~benchsuite.api.columns`: metrics and how a table shows them;
- :mod:`~benchsuite.api.corpora`: the corpus base class; :mod:`~benchsuite.api.profiles`: the budgets;
- :mod:`~benchsuite.api.hookspecs`: the hooks; :mod:`~benchsuite.api.errors`: the user-facing errors.

May import: :mod:`benchsuite.util` only. The names are imported on first use (torch loads with them).
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module of this package that defines it (``benchsuite.api.X`` as before the layers)
_LAZY: dict[str, str] = {
    **dict.fromkeys((
        "API_VERSION", "NEEDS", "REDUCTIONS", "Coupling", "Criterion", "Granularity", "GroupSet", "Method",
        "ModelSpec", "Parametrized", "PruneContext", "PruneOutcome", "Reduction", "Schedule", "check_parameters",
        "combine", "module_key", "parameter_names", "parameter_types", "unit_sums", "unresolved_parameters"),
        "components"),
    **dict.fromkeys(("ConfigError", "AssetError"), "errors"),
    **dict.fromkeys(("ATTN", "MLP", "PROJECTIONS", "base_linear", "decoder_layers", "input_device", "layer_paths",
                     "linear_modules"),
                    "model"),
    **dict.fromkeys(("Corpus", "Part", "PARTS", "split_documents"), "corpora"),
    **dict.fromkeys(("Metric", "MetricResult", "MeasureContext"), "metrics"),
    "Column": "columns",
    **dict.fromkeys(("Architecture", "architecture_of"), "architecture"),
    "Allocation": "allocation",
    **dict.fromkeys(("Profile", "get_profile"), "profiles"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
