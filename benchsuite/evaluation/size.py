"""The size of a model: parameters and FLOPs per token."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchsuite.api.model import input_device


def count_params(model: nn.Module) -> int:
    """Unique parameters (tied embedding/head counted once)."""
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def flops_per_token(model: nn.Module, seq_len: int) -> dict[str, Any]:
    """FLOPs of one forward over ``seq_len`` tokens divided by ``seq_len``, counted by torch's
    FlopCounterMode with eager attention (so the full L x L score and value products count)."""
    device = input_device(model)
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    switch = previous not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        ids = torch.zeros(1, seq_len, dtype=torch.long, device=device)
        with FlopCounterMode(display=False) as counter:
            model(ids)
        total = counter.get_total_flops()
    finally:
        if switch:
            model.set_attn_implementation(previous)
    return {"flops_per_token": total / seq_len, "seq_len": seq_len,
            "method": "torch FlopCounterMode, one forward of 1 x seq_len, eager attention"}
