"""Metrics of a (pruned) model: perplexity, parameters, FLOPs per token, latency.

Every function returns the value with a description of how it was measured.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm


@torch.inference_mode()
def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 4,
               desc: str = "perplexity") -> dict[str, Any]:
    """Token perplexity over non-overlapping windows: exp(mean NLL of every predicted token).

    Each window is scored independently (no context carried over); the first token of each window
    is context only. No BOS token is prepended.
    """
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in tqdm(range(0, len(windows), batch_size), desc=desc, unit="batch", leave=False):
        batch = windows[start:start + batch_size].to(device)
        logits = model(batch).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        total_nll += float(nll)
        total_tokens += batch[:, 1:].numel()
    if total_tokens == 0:
        raise ValueError(f"{desc}: no token to score (the corpus is shorter than one window)")
    mean = total_nll / total_tokens
    if not math.isfinite(mean) or mean > 700:  # exp() would overflow
        raise FloatingPointError(f"{desc}: the mean negative log-likelihood is {mean!r}, not a finite perplexity")
    return {"ppl": math.exp(mean), "nll": mean, "tokens": total_tokens, "windows": len(windows),
            "seq_len": windows.shape[1] if len(windows) else 0}


def count_params(model: nn.Module) -> int:
    """Unique parameters (tied embedding/head counted once)."""
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def flops_per_token(model: nn.Module, seq_len: int) -> dict[str, Any]:
    """FLOPs of one forward over ``seq_len`` tokens divided by ``seq_len``, counted by torch's
    FlopCounterMode with eager attention (so the full L x L score and value products count)."""
    device = next(model.parameters()).device
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


@torch.inference_mode()
def latency(model: nn.Module, batch_size: int, seq_len: int, repeats: int, warmup: int = 1) -> dict[str, Any]:
    """Median wall time of a full forward pass on a fixed batch (after warm-up)."""
    device = next(model.parameters()).device
    ids = torch.randint(0, 1000, (batch_size, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + repeats):
        sync()
        start = time.perf_counter()
        model(ids)
        sync()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return {"latency_ms": statistics.median(times), "min_ms": min(times), "repeats": repeats,
            "batch_size": batch_size, "seq_len": seq_len, "device": str(device),
            "threads": torch.get_num_threads(), "kernels": "dense"}


def semi_structured_linears(model: nn.Module) -> list[nn.Linear]:
    """Linear layers whose weights are exactly 2:4 sparse (candidates for sparse kernels)."""
    from .sparsity import check_nm

    out = []
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.in_features % 4 == 0 and module is not getattr(
                model, "lm_head", None):
            weight = module.weight.detach()
            if float((weight == 0).float().mean()) >= 0.5 and check_nm(weight, 2, 4):
                out.append(module)
    return out


@torch.inference_mode()
def sparse_latency(model: nn.Module, batch_size: int, seq_len: int, repeats: int) -> dict[str, Any]:
    """Latency with 2:4 weights converted to torch's semi-structured sparse tensors (CUDA only).

    Returns ``{"latency_ms": None, "reason": ...}`` where that can't run (CPU, no eligible weights,
    unsupported GPU or dtype); the weights are restored afterwards either way."""
    device = next(model.parameters()).device
    linears = semi_structured_linears(model)
    if not linears:
        return {"latency_ms": None, "reason": "no 2:4-sparse weights"}
    if device.type != "cuda":
        return {"latency_ms": None, "eligible_linears": len(linears),
                "reason": "CPU: no N:M kernels, the 2:4 model runs as a masked dense model"}
    from torch.sparse import to_sparse_semi_structured

    originals = []
    try:
        for module in linears:
            sparse = to_sparse_semi_structured(module.weight.detach())
            originals.append((module, module.weight))
            module.weight = nn.Parameter(sparse, requires_grad=False)
        result = latency(model, batch_size, seq_len, repeats)
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        return {"latency_ms": None, "eligible_linears": len(linears),
                "reason": f"semi-structured kernels unavailable: {type(exc).__name__}: {exc}"}
    finally:
        for module, weight in originals:
            module.weight = weight
    result["kernels"] = "torch semi-structured sparse (to_sparse_semi_structured)"
    result["converted_linears"] = len(originals)
    return result
