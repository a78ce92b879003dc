"""Built-in plugin: the structured granularity and the one-shot schedule."""

from benchsuite import hookimpl
from benchsuite.granularities import Structured
from benchsuite.schedules import OneShot


@hookimpl
def benchsuite_register_granularities(register):
    register(Structured)


@hookimpl
def benchsuite_register_schedules(register):
    register(OneShot)
