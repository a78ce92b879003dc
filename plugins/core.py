"""Built-in plugin: the structured granularity, and the one-shot and iterative schedules."""

from benchsuite import hookimpl
from benchsuite.granularities import Structured
from benchsuite.schedules import Iterative, OneShot


@hookimpl
def benchsuite_register_granularities(register):
    register(Structured)


@hookimpl
def benchsuite_register_schedules(register):
    register(OneShot)
    register(Iterative)
