"""The hooks a benchsuite plugin can implement. Each receives a ``register`` callback.

Hooks are called with keyword arguments; implementations may accept fewer arguments than listed.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from benchsuite.api.allocation import Allocation
from benchsuite.api.architecture import Architecture
from benchsuite.api.components import Criterion, Granularity, Method, ModelSpec, Schedule
from benchsuite.api.corpora import Corpus
from benchsuite.api.metrics import Metric
from benchsuite.api.recovery import Recovery

hookspec = pluggy.HookspecMarker("benchsuite")


@hookspec
def benchsuite_register_criteria(register: Callable[[type[Criterion]], None]) -> None:
    """Register importance criteria: call ``register(CriterionSubclass)`` for each."""


@hookspec
def benchsuite_register_granularities(register: Callable[[type[Granularity]], None]) -> None:
    """Register granularities (what a pruned unit is): call ``register(GranularitySubclass)``."""


@hookspec
def benchsuite_register_schedules(register: Callable[[type[Schedule]], None]) -> None:
    """Register schedules (when pruning happens): call ``register(ScheduleSubclass)``."""


@hookspec
def benchsuite_register_methods(register: Callable[[Method], None]) -> None:
    """Register methods, named presets over criterion, granularity and schedule: ``register(Method(...))``."""


@hookspec
def benchsuite_register_models(register: Callable[[ModelSpec], None]) -> None:
    """Register model names and aliases: ``register(ModelSpec(name, source, ...))``."""


@hookspec
def benchsuite_register_metrics(register: Callable[[type[Metric]], None]) -> None:
    """Register metrics (evaluations recorded with every run, shown as table columns): ``register(MetricSubclass)``."""


@hookspec
def benchsuite_register_corpora(register: Callable[[Corpus], None]) -> None:
    """Register corpora for perplexity, calibration and recovery: call ``register(Corpus instance)`` for each."""


@hookspec
def benchsuite_register_architectures(register: Callable[[Architecture], None]) -> None:
    """Register model families (where a decoder keeps its layers and projections, what a pruned head takes with it,
    how it is exported): call ``register(Architecture instance)`` for each. Since plugin API 2.1."""


@hookspec
def benchsuite_register_allocations(register: Callable[[type[Allocation]], None]) -> None:
    """Register allocations (how a pruning ratio is spread over the layers): call ``register(AllocationSubclass)``
    for each. Since plugin API 2.3."""


@hookspec
def benchsuite_register_recoveries(register: Callable[[type[Recovery]], None]) -> None:
    """Register recoveries (what trains after pruning, and on what loss, at the profile's budget): call
    ``register(RecoverySubclass)`` for each. Since plugin API 2.4."""
