"""Built-in plugin: the allocations ``uniform`` (every layer at the target ratio), ``owl`` (outlier-weighted layerwise
sparsity, Yin et al., ICML 2024), ``global`` (one score threshold across layers) and ``profile`` (each layer's ratio
from a JSON file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch

from benchsuite import hookimpl
from benchsuite.api.allocation import Allocation

BENCHSUITE_API = "2.3"


class Uniform(Allocation):
    """Every layer at the target ratio (what every method does without ``--allocation``)."""

    name = "uniform"
    description = "every layer at the target ratio"

    def layer_ratios(self, layers, ratio, sizes, scores):
        return {layer: ratio for layer in layers}


class OWL(Allocation):
    """OWL: a layer's outlier ratio D is the fraction of its element scores above ``m`` times the layer's mean score
    (the paper's LOD, on the criterion's own scores: Wanda's |W| * ||X|| for Wanda, |W| for magnitude). The ratios
    are min-max scaled into a band of width ``2 * lam``, shifted so that the layers' densities average ``1 - target``,
    and each layer's sparsity is one minus its density: more outliers, less pruning. Where layers differ in size the
    shift makes the size-weighted mean the target."""

    name = "owl"
    description = "outlier-weighted layerwise sparsity (Yin et al. 2024): fewer removed where more outlier scores"
    needs_scores = True

    #: a score is an outlier above m times its layer's mean score (the paper: 5)
    m: float = 5.0
    #: the band the layers' ratios are spread over: target +- lam (the paper: 0.08)
    lam: float = 0.08

    def validate(self) -> None:
        if self.m <= 0 or not 0 <= self.lam < 0.5:
            raise ValueError("owl needs m > 0 and 0 <= lam < 0.5")

    def outlier_ratios(self, scores: dict[int, list[torch.Tensor]]) -> dict[int, float]:
        """D of every layer: the fraction of its scores (all its matrices together) above m times their mean."""
        out = {}
        for layer, tensors in scores.items():
            flat = torch.cat([s.detach().float().reshape(-1) for s in tensors])
            out[layer] = float((flat > self.m * flat.mean()).double().mean())
        return out

    def layer_ratios(self, layers, ratio, sizes, scores):
        outliers = self.outlier_ratios({layer: scores[layer] for layer in layers})
        low, high = min(outliers.values()), max(outliers.values())
        spread = {layer: (d - low) / (high - low) * 2 * self.lam if high > low else 0.0
                  for layer, d in outliers.items()}
        total = sum(sizes[layer] for layer in layers)
        mean = sum(spread[layer] * sizes[layer] for layer in layers) / total
        density = {layer: spread[layer] - mean + (1.0 - ratio) for layer in layers}
        return {layer: 1.0 - density[layer] for layer in layers}


class Global(Allocation):
    """Global ranking (LLM-Pruner's and Torch-Pruning's global pruning): one score threshold over the weights of all
    layers, each layer's ratio the fraction of its weights below it, so the target holds over all of them. Scores
    compare across layers only once put on a common scale: ``normalize`` divides each layer's scores by their mean
    (``mean``, the default), their L2 norm (``l2``), or nothing (``none``). No layer loses more than ``cap``."""

    name = "global"
    description = "one score threshold across layers (global ranking), per-layer normalisation: mean, l2 or none"
    needs_scores = True

    normalize: Literal["mean", "l2", "none"] = "mean"
    #: the largest ratio any layer gets
    cap: float = 0.95

    def validate(self) -> None:
        if not 0 < self.cap < 1:
            raise ValueError("cap must be in (0, 1)")

    def _sorted(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        flat = torch.cat([s.detach().float().reshape(-1) for s in tensors])
        if self.normalize == "mean":
            flat = flat / flat.mean().clamp_min(1e-30)
        elif self.normalize == "l2":
            flat = flat / flat.norm().clamp_min(1e-30)
        return torch.sort(flat.double()).values

    def layer_ratios(self, layers, ratio, sizes, scores):
        ranked = {layer: self._sorted(scores[layer]) for layer in layers}
        total = sum(sizes[layer] for layer in layers)

        def ratios_at(threshold: float) -> dict[int, float]:
            out = {}
            for layer in layers:
                below = int(torch.searchsorted(ranked[layer], torch.tensor([threshold], dtype=torch.float64))[0])
                out[layer] = min(below / ranked[layer].numel(), self.cap)
            return out

        def mean(r: dict[int, float]) -> float:
            return sum(r[layer] * sizes[layer] for layer in layers) / total

        if ratio > self.cap:
            raise ValueError(f"global: target {ratio} above cap {self.cap}")
        low = min(float(t[0]) for t in ranked.values())
        high = max(float(t[-1]) for t in ranked.values()) * 2 + 1.0
        for _ in range(200):  # the pruned fraction grows with the threshold: bisect to the target
            mid = (low + high) / 2
            if mean(ratios_at(mid)) < ratio:
                low = mid
            else:
                high = mid
        found = ratios_at(high)
        excess = mean(found) - ratio  # ties at the threshold: take the remainder evenly from the uncapped layers
        free = [layer for layer in layers if found[layer] < self.cap]
        weight = sum(sizes[layer] for layer in free)
        return {layer: found[layer] - (excess * total / weight if layer in free else 0.0) for layer in layers}


class Profile(Allocation):
    """Each layer's ratio from a JSON file: a list with one number per decoder layer of the model (or an object
    ``{"layer index": ratio}``). The numbers are relative: they are shifted so that their size-weighted mean is the
    target (a profile measured at one ratio serves at another)."""

    name = "profile"
    description = "each layer's ratio from a JSON file (file=PATH), shifted to average the target"

    file: str = ""

    def validate(self) -> None:
        if not self.file:
            raise ValueError("profile needs file=PATH (a JSON list of per-layer ratios)")

    def layer_ratios(self, layers, ratio, sizes, scores):
        try:
            data = json.loads(Path(self.file).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"allocation profile: can't read {self.file}: {exc}") from None
        given = ({int(k): float(v) for k, v in data.items()} if isinstance(data, dict)
                 else dict(enumerate(float(v) for v in data)))
        missing = [layer for layer in layers if layer not in given]
        if missing:
            raise ValueError(f"allocation profile {self.file}: no ratio for layers {missing}")
        total = sum(sizes[layer] for layer in layers)
        mean = sum(given[layer] * sizes[layer] for layer in layers) / total
        return {layer: given[layer] - mean + ratio for layer in layers}


@hookimpl
def benchsuite_register_allocations(register):
    register(Uniform)
    register(OWL)
    register(Global)
    register(Profile)
