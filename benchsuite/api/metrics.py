"""Metrics: what is measured on each model, dense and pruned, registered by plugins through
``benchsuite_register_metrics`` (the built-ins are in ``plugins/metrics.py``).

A metric's :meth:`Metric.measure` returns :class:`MetricResult` ``values`` (numbers, recorded under the
record's ``metrics``) and ``details`` (how it was measured, recorded under ``measurement``); its
:meth:`Metric.columns` say how the values are shown in ``benchsuite report`` (records keep them, as
``metric_columns``, so a table renders without the plugin). Each field has one writer: two metrics that
produce the same field, or a metric that produces a field the runner writes itself (peak memory, times,
weight-gradient bytes: :data:`RUN_FIELDS`), fail the run.

Which metrics run: those with ``default = True`` (the built-ins), or the ones ``--metrics`` names
(``default`` stands for the default ones, e.g. ``--metrics default,energy``). A selection other than
:data:`STANDARD_METRICS` is part of the run's settings (``config["metrics"]``), so records measured
with other metrics are not taken for finished runs; the standard selection is left out of the settings,
so records from before metrics were plugins keep their settings hash.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from benchsuite.api.columns import Column
from benchsuite.api.components import Parametrized

if TYPE_CHECKING:
    from benchsuite.api.corpora import Corpus
    from benchsuite.api.profiles import Profile

#: the built-in metrics every record measured before metrics were plugins (their selection is not recorded)
STANDARD_METRICS = ("perplexity", "zeroshot", "params", "flops", "latency", "sparse-latency")

#: metric fields the runner writes itself (peak memory of each phase, times, weight-gradient bytes, units)
RUN_FIELDS = frozenset({
    "peak_mem_eval_mb", "peak_mem_prune_mb", "peak_mem_recover_mb", "peak_mem_mb", "prune_time_s",
    "recover_time_s", "total_time_s", "units_pruned", "weight_grad_mb",
})

Phase = Literal["evaluation", "efficiency"]


@dataclass
class MetricResult:
    """What one metric measured: ``values`` go to the record's ``metrics`` (numbers or None, finite),
    ``details`` to its ``measurement`` (anything JSON can hold: settings, per-example data)."""

    values: dict[str, float | int | None]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class MeasureContext:
    """What a metric may use besides the model."""

    device: torch.device
    dtype: torch.dtype
    #: the model's tokenizer (a transformers tokenizer)
    tokenizer: Any
    #: the run's budget: ``seq_len``, ``eval_windows``, ``eval_batch``, ``latency_batch``, ``latency_len``,
    #: ``latency_repeats``, ``task_batch`` ... (see :class:`benchsuite.api.profiles.Profile`)
    profile: Profile
    #: the run's seed (0 for the dense model)
    seed: int
    #: True while measuring the dense (unpruned) model
    dense: bool
    #: the perplexity corpora (the profile's, or ``--corpora``)
    corpora: list[Corpus]
    #: zero-shot tasks and examples per task (None: all)
    tasks: list[str]
    task_limit: int | None
    #: parameters of the dense model
    dense_params: int
    #: a fresh copy of the dense model, e.g. to time against interleaved, or None (when measuring the dense
    #: model itself, or when a second copy does not fit in memory); drop it when done
    reference: Callable[[], nn.Module | None] = lambda: None
    #: how lm-eval runs the tasks where the user said: ``include_path`` (a folder of task YAMLs), ``num_fewshot``
    #: (for lm-eval's own tasks), ``batch_size``
    task_options: dict[str, Any] = field(default_factory=dict)
    #: corpus name -> callbacks for the logits of this model on that corpus' perplexity windows, filled from the
    #: metrics' :meth:`Metric.observe` before a measurement; whoever runs the model over those windows (the
    #: ``perplexity`` metric) calls each with ``(first window index, logits)`` for every batch
    window_observers: dict[str, list[Callable[[int, torch.Tensor], None]]] = field(default_factory=dict)


class Metric(Parametrized, ABC):
    """An evaluation of a model: a quality measure (perplexity, a task family) or an efficiency measure
    (latency with some backend, energy). Parameters are declared like a criterion's; ``setup()`` may
    create state kept across the runs of one ``benchsuite run`` (e.g. tokenized data)."""

    #: runs when ``--metrics`` is not given (and for ``default`` in it)
    default: ClassVar[bool] = False
    #: ``evaluation`` metrics run first, under the evaluation's peak-memory measurement
    #: (``peak_mem_eval_mb``); ``efficiency`` metrics (counting, timing) run after it
    phase: ClassVar[Phase] = "evaluation"

    @classmethod
    def kind(cls) -> str:
        return "metric"

    def columns(self, ctx: MeasureContext) -> list[Column]:
        """The table columns of the values this metric produces (fields without a column are recorded
        but not shown). Default: none."""
        return []

    def prepare(self, ctx: MeasureContext) -> None:  # noqa: B027 - optional hook
        """Fetch or check what :meth:`measure` needs, before any run: a problem raised here (a
        ``ConfigError`` for the user's settings) stops the request before anything is written."""

    def observe(self, corpus: str, ctx: MeasureContext) -> Callable[[int, torch.Tensor], None] | None:
        """A callback to see this model's next-token logits on ``corpus``' perplexity windows while another metric
        runs the model over them, instead of a forward pass of your own: called with the first window's index and
        the logits of the scored positions (``[windows, tokens - 1, vocab]``, float32) for every batch, before
        :meth:`measure`. Asked before each measurement; default: None (nothing to observe)."""
        return None

    @abstractmethod
    def measure(self, model: nn.Module, ctx: MeasureContext) -> MetricResult:
        """Measure ``model`` (in eval mode; leave it as you found it)."""


def check_values(metric: str, values: Any) -> None:
    """Raise (naming the metric) unless ``values`` maps field names to finite numbers or None."""
    if not isinstance(values, dict):
        raise TypeError(f"metric '{metric}': values must be a dict of numbers, not {type(values).__name__}")
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"metric '{metric}': field name {key!r} is not a non-empty string")
        if key in RUN_FIELDS:
            raise ValueError(f"metric '{metric}': field '{key}' is written by the runner, not by a metric")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"metric '{metric}': field '{key}' is {value!r}, not a number")
        if not math.isfinite(value):
            raise FloatingPointError(f"metric '{metric}': field '{key}' is {value}, not a finite number")
