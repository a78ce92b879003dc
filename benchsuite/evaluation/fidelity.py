"""How far a pruned model's predictions moved from the dense model's, on the same windows.

Per predicted token: the KL divergence of the next-token distributions, KL(dense || pruned) in nats, and whether the
two models' most likely next tokens agree (top-1 agreement). Perplexity only says how likely the text is; these say
how much of the dense model's behaviour survived, which Dutta et al. ("Accuracy is not all you need", 2024) show
tracks the answers a compressed model changes ("flips"). Both are paired by construction (the dense model is run on
the same windows in the same pass), so their intervals are tight; bootstrap over windows, as perplexity's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from benchsuite.api.model import input_device
from benchsuite.data.tokens import with_bos
from benchsuite.evaluation.stats import mean_interval
from benchsuite.util.progress import track


@torch.inference_mode()
def distance_to_dense(model: nn.Module, dense: nn.Module, windows: torch.Tensor, batch_size: int = 4,
                      desc: str = "distance to dense", bos: int | None = None) -> dict[str, Any]:
    """Mean KL(dense || model) per predicted token and top-1 agreement over ``windows``, each with a 95% bootstrap
    interval over windows (every window scores the same number of tokens: the mean of the windows' means is the
    mean over tokens). ``bos`` as :func:`~benchsuite.evaluation.perplexity.perplexity`: context only."""
    window_kl: list[float] = []
    window_agree: list[float] = []
    skip = 0 if bos is None else 1
    for start in track(range(0, len(windows), batch_size), desc):
        batch = with_bos(windows[start:start + batch_size], bos)
        ref = dense(batch.to(input_device(dense)), use_cache=False).logits[:, skip:-1].float().log_softmax(-1)
        out = model(batch.to(input_device(model)), use_cache=False).logits[:, skip:-1].float().log_softmax(-1)
        out = out.to(ref.device)
        kl = (ref.exp() * (ref - out)).sum(-1)  # [windows, tokens]: KL(P_dense || P_model) of each prediction
        agree = (ref.argmax(-1) == out.argmax(-1)).double()
        window_kl.extend(kl.double().mean(1).tolist())
        window_agree.extend(agree.mean(1).tolist())
        del ref, out
    if not window_kl:
        raise ValueError(f"{desc}: no window to compare on")
    kl_mean, agree_mean = math.fsum(window_kl) / len(window_kl), math.fsum(window_agree) / len(window_agree)
    if not math.isfinite(kl_mean):
        raise FloatingPointError(f"{desc}: the KL divergence to the dense model is {kl_mean!r}")
    kl_lo, kl_hi = mean_interval(window_kl)
    agree_lo, agree_hi = mean_interval(window_agree)
    return {"kl": kl_mean, "kl_lo": kl_lo, "kl_hi": kl_hi, "top1": agree_mean, "top1_lo": agree_lo,
            "top1_hi": agree_hi, "windows": len(window_kl), "tokens_per_window": windows.shape[1] - 1,
            "kl_unit": "nats per predicted token, KL(dense || pruned)",
            "ci": "95% percentile bootstrap over windows (2,000 resamples, fixed seed)",
            "window_kl": [round(x, 6) for x in window_kl], "window_top1": [round(x, 6) for x in window_agree]}
