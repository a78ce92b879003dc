"""What needs a GPU: 2:4 sparse kernels and CUDA peak memory. Skipped cleanly without CUDA."""

from __future__ import annotations

import pytest
import torch

from benchsuite import testing
from benchsuite.evaluate import semi_structured_linears, sparse_latency
from benchsuite.memory import PeakMemory
from benchsuite_plugins.baselines import Magnitude
from benchsuite_plugins.granularities import NM
from benchsuite_plugins.schedules import OneShot

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def two_four_model(device="cpu", dtype=torch.float32):
    # widths that the semi-structured kernels take (multiples of 64)
    model = testing.tiny_llama(4, 4, 8, hidden_size=128, intermediate_size=256,
                                weight_std=0.02).to(device=device, dtype=dtype)
    from benchsuite.api import PruneContext

    ctx = PruneContext(seed=0, device=torch.device(device), profile={}, calibration_batches=lambda: iter([]))
    return OneShot().run(model, Magnitude(p=1), NM(n=2, m=4), 0.5, list(range(8)), ctx).model


def test_cpu_reports_why_no_sparse_kernels_ran():
    model = two_four_model()
    assert len(semi_structured_linears(model)) == 56  # seven projections x eight layers, not the lm_head
    result = sparse_latency(model, 1, 32, 1)
    assert result["latency_ms"] is None and "CPU" in result["reason"]


@cuda
def test_semi_structured_kernels_on_gpu():
    model = two_four_model("cuda", torch.float16)
    dense_out = model(torch.arange(64, device="cuda")[None] % 128).logits
    result = sparse_latency(model, 1, 64, 3)
    if result["latency_ms"] is None:  # an older GPU without 2:4 support says why
        pytest.skip(result["reason"])
    assert result["converted_linears"] == 56 and "semi-structured" in result["kernels"]
    assert torch.allclose(model(torch.arange(64, device="cuda")[None] % 128).logits, dense_out)  # restored


@cuda
def test_cuda_peak_memory_counts_an_allocation():
    with PeakMemory("cuda") as mem:
        x = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
        del x
    assert mem.result()["peak_mb"] >= 256 and "cuda" in mem.result()["method"]
