"""Built-in granularities. ``structured``: whole attention heads and MLP channels."""

from __future__ import annotations

import torch
from torch import nn

from .api import ConfigError, Criterion, Granularity, GroupSet
from .structure import (
    ATTENTION_MODES,
    Masker,
    attention_group,
    decoder_layers,
    mlp_group,
    prune_counts,
    remove_units,
    select_units,
)


class Structured(Granularity):
    """Coupled attention heads (GQA-aware) and MLP channels; physically removed at the end."""

    name = "structured"
    description = "attention heads (GQA-aware) and MLP channels, removed physically"

    def __init__(self, attention: str = "heads", mlp: bool = True) -> None:
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_MODES)}, not '{attention}'")
        if attention == "none" and not mlp:
            raise ValueError("nothing to prune: attention='none' and mlp=False")
        self.attention = attention
        self.mlp = mlp
        self._masker = Masker()

    def check_model(self, model: nn.Module) -> None:
        decoder_layers(model)  # raises ConfigError with the reason

    def units(self, model: nn.Module, layers: list[int]) -> list[GroupSet]:
        all_layers = decoder_layers(model)
        groups: list[GroupSet] = []
        for i in layers:
            group = attention_group(all_layers[i], i, self.attention)
            if group is not None:
                groups.append(group)
            if self.mlp:
                groups.append(mlp_group(all_layers[i], i))
        return groups

    def score(self, criterion: Criterion, model: nn.Module, groups: list[GroupSet]) -> list[torch.Tensor]:
        layers = decoder_layers(model)
        scores = []
        for group in groups:
            s = criterion.group_scores(group, layers[group.layer])
            if s.shape != (group.size,):
                raise ConfigError(f"criterion '{criterion.name}' returned shape {tuple(s.shape)} "
                                  f"for {group.name} with {group.size} units")
            scores.append(s)
        return scores

    def select(self, groups, scores, ratio, previous=None):
        previous = previous or [None] * len(groups)
        counts = prune_counts(groups, ratio)
        return [select_units(g, s, n, p) for g, s, n, p in zip(groups, scores, counts, previous)]

    def apply_masks(self, model, groups, masks) -> None:
        self._masker.apply(model, groups, masks)

    def finalize(self, model, groups, masks):
        self._masker.remove()
        return remove_units(model, groups, masks)
