"""How much the suite adds to the model's own work, on the default model (or --model).

Measures, per optimizer step of LoRA fine-tuning at micro-batch x length:
- the forward + backward of the LoRA model (the model's own work),
- LoRAPrune's per-step scoring (``observe``: estimated gradient, importance, group sums, EMA),
- the masking hooks' cost on a forward,
and for LLM-Pruner the Taylor scoring against its backward. Also the peak memory of one LoRA-gradient
scoring step against one full-gradient (Taylor) step at the same batch and length.

    python benchmarks/overhead.py [--model smollm2-135m] [--batch 2] [--length 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tabulate import tabulate

from benchsuite import RunningScores
from benchsuite.api import PruneContext
from benchsuite.api.model import decoder_layers
from benchsuite.evaluation.memory import PeakMemory
from benchsuite.host import get_registry
from benchsuite.models.checkpoint import load_model_dir
from benchsuite.models.resolve import resolve_model
from benchsuite.pruning.structure import parse_layers
from benchsuite.running.finetune import LoRAConfig, attach_lora
from benchsuite_plugins.granularities import Structured
from benchsuite_plugins.llm_pruner import Taylor
from benchsuite_plugins.loraprune import LoRAGuided


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = resolve_model(args.model, get_registry()).path
    batch = torch.randint(0, 1000, (args.batch, args.length), generator=torch.Generator().manual_seed(0))
    rows = []

    model = attach_lora(load_model_dir(path), LoRAConfig())
    layers = parse_layers("loraprune", len(decoder_layers(model)))
    gran = Structured()
    groups = gran.units(model, layers)
    crit = LoRAGuided()

    def step():
        model.zero_grad(set_to_none=True)
        model(input_ids=batch, labels=batch).loss.backward()

    model.train()
    step()
    t_step = timed(step, args.repeats)
    running = RunningScores(crit, gran, groups)  # what the iterative schedule does after every backward
    t_observe = timed(lambda: running.observe(model), args.repeats)
    rows.append(["LoRA fwd+bwd (model)", f"{t_step * 1000:.0f}", "-"])
    rows.append(["LoRAPrune observe (suite)", f"{t_observe * 1000:.0f}", f"{100 * t_observe / t_step:.1f}%"])

    model.eval()
    with torch.no_grad():
        t_fwd = timed(lambda: model(batch), args.repeats)
        masks = gran.select(groups, gran.score(crit, model, groups), 0.5)
        gran.apply_masks(model, groups, masks)
        t_masked = timed(lambda: model(batch), args.repeats)
        gran.finalize(model, groups, [torch.ones_like(m) for m in masks])
    rows.append(["forward (model)", f"{t_fwd * 1000:.0f}", "-"])
    rows.append(["forward with mask hooks", f"{t_masked * 1000:.0f}", f"{100 * (t_masked / t_fwd - 1):+.1f}%"])

    # peak memory of one scoring step at the same batch and length, the model loaded before each phase
    ctx = PruneContext(seed=0, device=torch.device("cpu"), profile={}, calibration_batches=lambda: iter([batch]))
    model = None  # free it before loading fresh copies
    memory = []
    for label, dropout in (("LoRA-gradient step (LoRAPrune), LoRA dropout 0.05 (reference)", 0.05),
                           ("LoRA-gradient step (LoRAPrune), LoRA dropout 0", 0.0)):
        lora_model = attach_lora(load_model_dir(path), LoRAConfig(dropout=dropout))
        with PeakMemory() as mem:
            LoRAGuided().prepare(lora_model, ctx)
        memory.append([label, mem.result()["peak_mb"]])
        lora_model = None
    dense = load_model_dir(path)
    taylor = Taylor()
    with PeakMemory() as taylor_mem:
        start = time.perf_counter()
        taylor.prepare(dense, ctx)
        t_taylor_bwd = time.perf_counter() - start
        start = time.perf_counter()
        gran.score(taylor, dense, gran.units(dense, layers))
        t_taylor_score = time.perf_counter() - start
    memory.append(["full-gradient step (LLM-Pruner), incl. scoring", taylor_mem.result()["peak_mb"]])
    rows.append(["Taylor fwd+bwd, full gradients (model)", f"{t_taylor_bwd * 1000:.0f}", "-"])
    rows.append(["Taylor scoring (suite)", f"{t_taylor_score * 1000:.0f}",
                 f"{100 * t_taylor_score / t_taylor_bwd:.1f}%"])
    print(tabulate(rows, headers=["what", "ms", "suite overhead"], tablefmt="github"))
    print()
    print(tabulate(memory, headers=[f"peak memory above the loaded model, batch {args.batch} x {args.length}",
                                    "MB"], tablefmt="github"))
    print(f"\n{torch.get_num_threads()} threads; {taylor_mem.result()['method']}")


if __name__ == "__main__":
    main()
