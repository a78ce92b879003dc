"""Built-in plugin: the structured, N:M and unstructured granularities; one-shot, sequential and iterative schedules."""

from benchsuite import hookimpl
from benchsuite.granularities import NM, Structured, Unstructured
from benchsuite.schedules import Iterative, OneShot, Sequential


@hookimpl
def benchsuite_register_granularities(register):
    register(Structured)
    register(NM)
    register(Unstructured)


@hookimpl
def benchsuite_register_schedules(register):
    register(OneShot)
    register(Sequential)
    register(Iterative)
