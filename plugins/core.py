"""Built-in plugin: the structured, N:M and unstructured granularities; one-shot and iterative schedules."""

from benchsuite import hookimpl
from benchsuite.granularities import NM, Structured, Unstructured
from benchsuite.schedules import Iterative, OneShot


@hookimpl
def benchsuite_register_granularities(register):
    register(Structured)
    register(NM)
    register(Unstructured)


@hookimpl
def benchsuite_register_schedules(register):
    register(OneShot)
    register(Iterative)
