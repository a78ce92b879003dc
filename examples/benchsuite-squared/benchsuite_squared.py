"""Example third-party plugin (see docs/plugins.md): one criterion and one method."""

import torch

from benchsuite import Criterion, Method, Reduction, base_linear, hookimpl

BENCHSUITE_API = "2.0"  # the plugin API this module is written for


class SquaredWeight(Criterion):
    """Higher score = more important: w^2 per element."""

    name = "squared-weight"
    description = "w^2 per element (example plugin)"

    reduction: Reduction = "sum"  # a parameter: how coupled modules combine (sum, mean, max, prod)

    def element_scores(self, key: str, module: torch.nn.Module) -> torch.Tensor:
        return base_linear(module).weight.detach().float() ** 2


@hookimpl
def benchsuite_register_criteria(register):
    register(SquaredWeight)


@hookimpl
def benchsuite_register_methods(register):
    register(Method("squared-weight", criterion="squared-weight", criterion_params={"reduction": "sum"},
                    description="example plugin: structured, one-shot"))
