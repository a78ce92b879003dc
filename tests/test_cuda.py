"""What needs a GPU: 2:4 sparse kernels, CUDA peak memory, the dtype a GPU gets, LLM-Pruner's gradients held in
the model's dtype, gradient checkpointing's memory, a whole run on CUDA. Tests marked ``cuda`` are skipped with a
reason without CUDA; those parametrized over ``device`` run their CPU case everywhere."""

from __future__ import annotations

import pytest
import torch

from benchsuite import testing
from benchsuite.evaluation.latency import semi_structured_linears, sparse_latency
from benchsuite.evaluation.memory import PeakMemory
from benchsuite.running.plan import pick_device
from benchsuite_plugins.baselines import Magnitude
from benchsuite_plugins.granularities import NM
from benchsuite_plugins.llm_pruner import Taylor
from benchsuite_plugins.schedules import OneShot

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=cuda)]


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


@cuda
def test_auto_dtype_on_the_gpu():
    device, dtype = pick_device("auto", "auto")
    assert device.type == "cuda"
    assert dtype == (torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("order", ["element1", "element2"])
def test_taylor_gradients_stay_in_the_model_dtype(device, order):
    """A bf16 model's weight gradients are bf16 (2 bytes each), plus for element2 one float32 Fisher accumulator
    per projection weight: what lets LLaMA-7B's LLM-Pruner fit one 80 GB GPU."""
    from benchsuite import linear_modules
    from benchsuite.api import PruneContext

    model = testing.tiny_llama(4, 2, 4, weight_std=0.02).to(device=device, dtype=torch.bfloat16)
    samples = torch.randint(0, 200, (4, 16), generator=torch.Generator().manual_seed(0))
    ctx = PruneContext(seed=0, device=torch.device(device), profile={},
                       calibration_batches=lambda: iter(samples.split(2)))
    taylor = Taylor(order=order)
    taylor.prepare(model, ctx)
    params = sum(p.numel() for p in model.parameters())
    projections = sum(m.weight.numel() for _, m in linear_modules(model))
    assert ctx.notes["weight_grad_bytes"] == 2 * params + (4 * projections if order == "element2" else 0)
    assert {g.dtype for g in taylor._grad.values()} == {torch.bfloat16}
    key, module = next(iter(linear_modules(model)))
    assert taylor.element_scores(key, module).dtype == torch.float32  # products taken in float32
    taylor.release()


@cuda
def test_gradient_checkpointing_lowers_the_cuda_peak():
    from benchsuite.running.finetune import LoRAConfig, attach_lora, checkpointing

    def peak(enabled: bool) -> int:
        model = attach_lora(testing.tiny_llama(4, 2, 8, hidden_size=256, intermediate_size=512,
                                               max_positions=1024).to("cuda"), LoRAConfig())
        model.train()
        ids = torch.randint(0, 200, (4, 1024), device="cuda")
        with checkpointing(model, enabled), PeakMemory("cuda") as mem:
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        return mem.result()["peak_mb"]

    plain, checkpointed = peak(False), peak(True)
    assert checkpointed < 0.6 * plain, (plain, checkpointed)


@cuda
def test_a_run_on_cuda_records_exact_memory(tiny_model_dir, text_corpus, tmp_path):
    from tests.conftest import bench

    text = str(text_corpus)
    result = bench("run", "--methods", "llm-pruner,loraprune", "--model", tiny_model_dir, "--ratios", "0.2",
                   "--profile", "smoke", "--tasks", "none", "--corpora", text, "--calibration-data", text,
                   "--recovery-data", text, "--results", tmp_path, "--device", "cuda", "--gradient-checkpointing")
    assert result.returncode == 0, result.stderr
    import json

    records = [json.loads(p.read_text()) for p in tmp_path.rglob("*.json") if "models" not in p.parts]
    pruned = [r for r in records if r["method"] != "dense"]
    assert len(pruned) == 2 and all(r["status"] == "ok" for r in records)
    for record in pruned:
        assert record["measurement"]["peak_mem_prune_mb"]["exact"] is True
        assert record["dtype"] in ("bfloat16", "float16")
        assert record["config"]["gradient_checkpointing"] is True


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_peak_memory_sums_the_gpus_in_use():
    held = torch.empty(2**20, dtype=torch.uint8, device="cuda:1")  # cuda:1 holds part of this process's model
    with PeakMemory("cuda:0") as mem:
        x = torch.empty(128 * 2**20, dtype=torch.uint8, device="cuda:0")
        y = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda:1")
        del x, y
    result = mem.result()
    assert result["peak_mb"] >= 192 and result["per_gpu_mb"]["cuda:1"] >= 64 and "2 GPUs" in result["method"]
    del held
