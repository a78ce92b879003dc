"""How far a pruned model's predictions moved from the dense model's, on the same windows.

Per predicted token: the KL divergence of the next-token distributions, KL(dense || pruned) in nats, and whether the
two models' most likely next tokens agree (top-1 agreement). Perplexity only says how likely the text is; these say
how much of the dense model's behaviour survived, which Dutta et al. ("Accuracy is not all you need", 2024) show
tracks the answers a compressed model changes ("flips"). Both are paired by construction (the dense model's
log-probabilities of the same windows), so their intervals are tight; bootstrap over windows, as perplexity's.

In a ``benchsuite run`` they cost no forward pass of their own: the dense model's log-probabilities are kept from
its perplexity pass (:class:`WindowDistances`' reference, float32 on the CPU: windows x tokens x vocabulary, 800 MB
for 32 windows of 128 tokens over SmolLM2's 49,152 tokens), and each pruned model's logits are read from its
perplexity pass (:meth:`benchsuite.api.metrics.Metric.observe`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from benchsuite.api.model import input_device
from benchsuite.data.tokens import with_bos
from benchsuite.evaluation.stats import mean_interval
from benchsuite.util.progress import track


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities (float32) from logits."""
    return logits.float().log_softmax(-1)


class WindowDistances:
    """KL(dense || model) and top-1 agreement per window, from the dense model's log-probabilities of the first
    windows (``reference``: ``[windows, tokens, vocab]``) and the model's logits on the same windows, given batch by
    batch (:meth:`add`, the signature of a perplexity observer): the model's forward pass can be the one perplexity
    makes anyway."""

    def __init__(self, reference: torch.Tensor) -> None:
        self.reference = reference
        self.kl: dict[int, float] = {}
        self.top1: dict[int, float] = {}

    def add(self, start: int, logits: torch.Tensor) -> None:
        """The model's logits of windows ``start, start + 1, ...`` (those past the reference's are ignored)."""
        count = min(len(logits), len(self.reference) - start)
        if count <= 0:
            return
        out = log_probs(logits[:count])
        ref = self.reference[start:start + count].to(out.device)
        kl = (ref.exp() * (ref - out)).sum(-1)  # [windows, tokens]: KL(P_dense || P_model) of each prediction
        agree = (ref.argmax(-1) == out.argmax(-1)).double()
        for i, (k, a) in enumerate(zip(kl.double().mean(1).tolist(), agree.mean(1).tolist())):
            self.kl[start + i], self.top1[start + i] = k, a

    @property
    def complete(self) -> bool:
        return len(self.kl) == len(self.reference)

    def summary(self, desc: str = "distance to dense") -> dict[str, Any]:
        """Means with 95% bootstrap intervals over windows (every window scores the same number of tokens: the
        mean of the windows' means is the mean over tokens), and the per-window values."""
        if not self.kl:
            raise ValueError(f"{desc}: no window to compare on")
        window_kl = [self.kl[i] for i in sorted(self.kl)]
        window_agree = [self.top1[i] for i in sorted(self.top1)]
        kl_mean, agree_mean = math.fsum(window_kl) / len(window_kl), math.fsum(window_agree) / len(window_agree)
        if not math.isfinite(kl_mean):
            raise FloatingPointError(f"{desc}: the KL divergence to the dense model is {kl_mean!r}")
        kl_lo, kl_hi = mean_interval(window_kl)
        agree_lo, agree_hi = mean_interval(window_agree)
        return {"kl": kl_mean, "kl_lo": kl_lo, "kl_hi": kl_hi, "top1": agree_mean, "top1_lo": agree_lo,
                "top1_hi": agree_hi, "windows": len(window_kl), "tokens_per_window": self.reference.shape[1],
                "kl_unit": "nats per predicted token, KL(dense || pruned)",
                "ci": "95% percentile bootstrap over windows (2,000 resamples, fixed seed)",
                "window_kl": [round(x, 6) for x in window_kl], "window_top1": [round(x, 6) for x in window_agree]}


@torch.inference_mode()
def window_logits(model: nn.Module, windows: torch.Tensor, batch_size: int = 4, bos: int | None = None,
                  desc: str = "logits") -> Iterator[tuple[int, torch.Tensor]]:
    """``(first window index, logits of the scored positions)`` of each batch, as perplexity sees them."""
    skip = 0 if bos is None else 1
    for start in track(range(0, len(windows), batch_size), desc):
        batch = with_bos(windows[start:start + batch_size], bos)
        yield start, model(batch.to(input_device(model)), use_cache=False).logits[:, skip:-1].float()


@torch.inference_mode()
def dense_reference(dense: nn.Module, windows: torch.Tensor, batch_size: int = 4, bos: int | None = None,
                    desc: str = "dense log-probabilities") -> torch.Tensor:
    """The dense model's log-probabilities of ``windows`` (``[windows, tokens, vocab]``, float32, on the CPU)."""
    return torch.cat([log_probs(logits).cpu() for _, logits in window_logits(dense, windows, batch_size, bos, desc)])


@torch.inference_mode()
def distance_to_dense(model: nn.Module, dense: nn.Module | torch.Tensor, windows: torch.Tensor, batch_size: int = 4,
                      desc: str = "distance to dense", bos: int | None = None) -> dict[str, Any]:
    """Mean KL(dense || model) per predicted token and top-1 agreement over ``windows``, each with a 95% bootstrap
    interval over windows. ``dense``: the dense model, or its log-probabilities of the windows
    (:func:`dense_reference`). ``bos`` as :func:`~benchsuite.evaluation.perplexity.perplexity`: context only."""
    reference = dense if isinstance(dense, torch.Tensor) else dense_reference(dense, windows, batch_size, bos)
    distances = WindowDistances(reference)
    for start, logits in window_logits(model, windows, batch_size, bos, desc):
        distances.add(start, logits)
    return distances.summary(desc)
