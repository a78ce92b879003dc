"""How much latency moves between identical models, quiet and under a concurrent CPU load.

For the default model (SmolLM2-135M) and a tiny random LLaMA (the tests' model), measures with
``benchsuite.evaluation.latency.latency``, interleaved against the dense model:
- the dense model against itself (the speedup should be 1 and its interval contain 1),
- the default model with half of its MLP channels removed against the dense model,
first on the machine as it is (after waiting, up to --wait seconds, for other work to stop) and then
with two busy-loop processes running. Prints median, IQR/median, speedup with its interval, the
machine's load and whether the measurement was flagged.

    python benchmarks/latency_noise.py [--repeats 20] [--batch 1] [--length 128] [--busy 2] [--wait 120]
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time
from contextlib import contextmanager

import torch
from tabulate import tabulate
from transformers import LlamaConfig, LlamaForCausalLM

from benchsuite.api.model import decoder_layers
from benchsuite.data.assets import default_model_dir
from benchsuite.evaluation.latency import MachineLoad, latency
from benchsuite.models.checkpoint import load_model_dir
from benchsuite.pruning.structure import slice_linear, sync_attributes


def tiny_llama() -> LlamaForCausalLM:
    """As tests/conftest.py's tiny_llama (4 layers, hidden 96, vocabulary 128)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=96, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=256,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def half_mlp(model: torch.nn.Module) -> torch.nn.Module:
    """A copy with the first half of every layer's MLP channels kept (the rest removed)."""
    pruned = copy.deepcopy(model)
    for layer in decoder_layers(pruned):
        keep = torch.arange(layer.mlp.gate_proj.out_features // 2)
        slice_linear(layer.mlp.gate_proj, 0, keep)
        slice_linear(layer.mlp.up_proj, 0, keep)
        slice_linear(layer.mlp.down_proj, 1, keep)
        sync_attributes(layer)
    return pruned


@contextmanager
def busy(n: int):
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def wait_quiet(limit_s: float, max_other_pct: float = 10.0) -> dict:
    """Sample the machine's load for 1 s at a time until other processes use < max_other_pct of it."""
    deadline = time.monotonic() + limit_s
    while True:
        with MachineLoad() as load:
            time.sleep(1.0)
        if load.load["busy_other_pct"] < max_other_pct or time.monotonic() > deadline:
            return load.load


def row(scenario: str, label: str, r: dict) -> list:
    return [scenario, label, r["latency_ms"], f"{r['iqr_ms'] / r['latency_ms']:.1%}", r.get("reference_ms"),
            f"{r['reference_iqr_ms'] / r['reference_ms']:.1%}" if "reference_ms" in r else "",
            f"{r['speedup']:.3f} [{r['speedup_lo']:.3f}, {r['speedup_hi']:.3f}]" if "speedup" in r else "",
            r["load"]["busy_other_pct"], r["load"]["loadavg_1m"], r["noisy"], "; ".join(r["noise_reasons"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes for the loaded measurements (0: none)")
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for a quiet machine")
    args = parser.parse_args()

    dense = load_model_dir(default_model_dir())
    pruned = half_mlp(dense)
    tiny = tiny_llama()
    rows = []

    def measure(scenario: str) -> None:
        cases = [("tiny vs itself", tiny, tiny), ("dense vs itself", dense, dense),
                 ("half MLP vs dense", pruned, dense)]
        for label, model, reference in cases:
            latency(model, args.batch, args.length, 2, reference=reference)  # warm caches and allocator
            r = latency(model, args.batch, args.length, args.repeats, reference=reference)
            rows.append(row(scenario, label, r))
            print(tabulate([rows[-1]], tablefmt="plain"), flush=True)

    before = wait_quiet(args.wait)
    measure(f"as is (others {before['busy_other_pct']:.0f}% before)")
    if args.busy:
        with busy(args.busy):
            measure(f"{args.busy} busy processes")
    print(f"\n{torch.get_num_threads()} torch threads, batch {args.batch} x {args.length} tokens, "
          f"{args.repeats} interleaved repeats")
    print(tabulate(rows, headers=["machine", "comparison", "median ms", "IQR/med", "ref ms", "ref IQR/med",
                                  "speedup [95%]", "others %", "load 1m", "noisy", "reasons"]))


if __name__ == "__main__":
    main()
