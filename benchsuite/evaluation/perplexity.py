"""Perplexity over fixed token windows, with its bootstrap interval."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchsuite.api.model import input_device
from benchsuite.data.tokens import with_bos
from benchsuite.evaluation.stats import perplexity_interval
from benchsuite.util.progress import track


@torch.inference_mode()
def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 4,
               desc: str = "perplexity", bos: int | None = None,
               observers: Sequence[Callable[[int, torch.Tensor], None]] = ()) -> dict[str, Any]:
    """Token perplexity over non-overlapping windows: exp(mean NLL of every predicted token).

    Each window is scored independently (no context carried over); the first token of each window
    is context only. ``bos``, where given (families that expect it, :func:`~benchsuite.api.architecture.bos_token`),
    is put before every window as context: the same tokens are scored either way. ``observers`` are called with
    each batch's first window index and the logits of its scored positions (metrics that share this pass).
    """
    device = input_device(model)  # a model spread over devices (device_map): logits may come from another
    window_nll: list[float] = []
    for start in track(range(0, len(windows), batch_size), desc):
        batch = windows[start:start + batch_size]
        skip = 0 if bos is None else 1
        batch = with_bos(batch, bos).to(device)
        logits = model(batch, use_cache=False).logits[:, skip:-1].float()  # one pass: no KV cache to build
        for observe in observers:
            observe(start, logits)
        batch = batch[:, skip:]
        targets = batch[:, 1:].to(logits.device)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        window_nll.extend(nll.view(len(batch), -1).double().sum(dim=1).tolist())
    per_window = windows.shape[1] - 1 if len(windows) else 0
    total_tokens = per_window * len(windows)
    if total_tokens == 0:
        raise ValueError(f"{desc}: no token to score (the corpus is shorter than one window)")
    mean = math.fsum(window_nll) / total_tokens
    if not math.isfinite(mean) or mean > 700:  # exp() would overflow
        raise FloatingPointError(f"{desc}: the mean negative log-likelihood is {mean!r}, not a finite perplexity")
    lo, hi = perplexity_interval(window_nll, [per_window] * len(window_nll))
    return {"ppl": math.exp(mean), "nll": mean, "tokens": total_tokens, "windows": len(windows),
            "seq_len": windows.shape[1] if len(windows) else 0, "ci_lo": lo, "ci_hi": hi,
            "ci": "95% percentile bootstrap over windows (2,000 resamples, fixed seed)",
            "window_nll": [round(x, 4) for x in window_nll], "window_tokens": per_window}
