"""The memory claim at scale: LoRAPrune's vs LLM-Pruner's pruning phase on randomly initialised Llama
models of growing size (LoRAPrune, Table 6: -52.6% GPU memory against LLM-Pruner at LLaMA-7B).

For each size, a fresh model (no weights to download: the memory does not depend on their values) is
built on the device, then each criterion's pruning phase runs as the suite runs it, measured with
``PeakMemory`` (CUDA: the allocator's peak; CPU: sampled RSS) above the loaded model:

- LLM-Pruner: ``Taylor(order="element1").prepare`` (backward into every pretrained weight over the
  calibration samples: 10 x 64 tokens, the paper's recipe) and scoring every layer.
- LoRAPrune: LoRA attached (r 8, the paper's targets), ``steps`` optimizer steps of LoRA training with
  the running LoRA-guided score of every layer's groups updated after each backward (what the
  ``iterative`` schedule does between pruning events), at micro-batch ``batch`` x ``length``.

Each row reports the two phases' peaks above the model, their gradient bytes (LLM-Pruner: every
pretrained weight's; LoRAPrune: the LoRA adapters' only, the pretrained weights get none) and the
ratios LoRAPrune / LLM-Pruner: of the peak above the model, of the gradient bytes, and of the total
(model + peak), which is what the paper's -52.6% compares.

Usage::

    python benchmarks/memory_scaling.py --sizes 135m,360m,1b --device cpu --json cpu.json   # minutes on CPU
    python benchmarks/memory_scaling.py --sizes 135m,1b,3b,7b --device cuda --dtype bfloat16 --json out.json
    python benchmarks/memory_scaling.py --plot docs/figures/memory-scaling.png cpu.json out.json  # README figure
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchsuite import PAPER_LORA, PruneContext, RunningScores
from benchsuite.api.model import decoder_layers
from benchsuite.evaluation.memory import PeakMemory, tensor_bytes
from benchsuite.running.finetune import LoRAConfig, attach_lora, train_lora
from benchsuite_plugins.granularities import Structured
from benchsuite_plugins.llm_pruner import Taylor
from benchsuite_plugins.loraprune import LoRAGuided

#: Llama shapes (hidden, intermediate, layers, heads, kv heads): SmolLM2-135M/360M, a 1B (TinyLlama),
#: Llama-3.2-3B and LLaMA-7B
SIZES = {
    "135m": (576, 1536, 30, 9, 3),
    "360m": (960, 2560, 32, 15, 5),
    "1b": (2048, 5632, 22, 32, 4),
    "3b": (3072, 8192, 28, 24, 8),
    "7b": (4096, 11008, 32, 32, 32),
}
VOCAB = 32000


def build(size: str, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    hidden, inter, layers, heads, kv = SIZES[size]
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                         tie_word_embeddings=False)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def llm_pruner_phase(size, device, dtype, samples, length) -> dict:
    model = build(size, device, dtype)
    tokens = torch.randint(0, VOCAB, (samples, length), generator=torch.Generator().manual_seed(0))
    ctx = PruneContext(seed=0, device=device, profile={}, calibration_batches=lambda: iter(tokens.split(2)))
    criterion, granularity = Taylor(order="element1"), Structured()
    groups = granularity.units(model, list(range(len(decoder_layers(model)))))
    start = time.perf_counter()
    with PeakMemory(device) as mem:
        criterion.prepare(model, ctx)
        granularity.score(criterion, model, groups)
        criterion.release()
    out = {"peak_mb": mem.result()["peak_mb"], "weight_grad_mb": ctx.notes["weight_grad_bytes"] / 2**20,
           "seconds": round(time.perf_counter() - start, 2), "memory": mem.result()["method"]}
    del model, criterion
    free(device)
    return out


def loraprune_phase(size, device, dtype, steps, batch, length) -> dict:
    model = build(size, device, dtype)
    config = LoRAConfig(**PAPER_LORA)
    model = attach_lora(model, config)
    granularity = Structured()
    groups = granularity.units(model, list(range(len(decoder_layers(model)))))
    running = RunningScores(LoRAGuided(), granularity, groups)
    data = iter(torch.randint(0, VOCAB, (steps * batch, length), generator=torch.Generator().manual_seed(0))
                .split(batch))
    frozen_grads, lora_grads = [], []
    start = time.perf_counter()
    with PeakMemory(device) as mem:
        def observe(step, model):
            frozen_grads.append(tensor_bytes(p.grad for n, p in model.named_parameters() if "lora_" not in n))
            lora_grads.append(tensor_bytes(p.grad for n, p in model.named_parameters() if "lora_" in n))
            running.observe(model)

        train_lora(model, data, steps, config, before_step=observe, desc="LoRAPrune phase")
        running.scores(model)
    out = {"peak_mb": mem.result()["peak_mb"], "weight_grad_mb": max(frozen_grads, default=0) / 2**20,
           "lora_grad_mb": max(lora_grads, default=0) / 2**20,
           "seconds": round(time.perf_counter() - start, 2), "memory": mem.result()["method"]}
    model = running = None  # noqa: F841 - dropped before the next size is built
    free(device)
    return out


#: LoRAPrune, Table 6: LLaMA-7B, total GPU memory of LoRAPrune's pruning against LLM-Pruner's
PAPER = {"params": 6.74e9, "change_pct": -52.6}


def plot(paths: list[str], out: str) -> None:
    """The README's figure: the total-memory change (model + pruning phase) of LoRAPrune against LLM-Pruner,
    and the ratio of the phases' peaks above the model, against model size, one line per measured series
    (device, dtype), with the paper's point at LLaMA-7B."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (total, above) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for path in paths:
        with open(path) as fh:
            data = json.load(fh)
        rows = sorted(data["rows"], key=lambda r: r["params"])
        where = data.get("gpu") or "CPU"
        label = f"{where}, {rows[0]['dtype']}"
        x = [r["params"] / 1e9 for r in rows]
        total.plot(x, [100 * (r["total_ratio"] - 1) for r in rows], marker="o", label=label)
        above.plot(x, [r["peak_ratio"] for r in rows], marker="o", label=label)
        for r, xi in zip(rows, x):
            total.annotate(r["size"], (xi, 100 * (r["total_ratio"] - 1)), textcoords="offset points",
                           xytext=(4, 4), fontsize=8)
    total.scatter([PAPER["params"] / 1e9], [PAPER["change_pct"]], marker="*", s=160, color="black", zorder=5,
                  label="paper (LLaMA-7B, GPU)")
    total.set(xscale="log", xlabel="parameters (billions)", ylabel="LoRAPrune vs LLM-Pruner: total memory (%)",
              title="model + pruning-phase peak")
    above.set(xscale="log", xlabel="parameters (billions)", ylabel="LoRAPrune peak / LLM-Pruner peak",
              title="pruning-phase peak above the loaded model", ylim=(0, None))
    ticks = [0.1, 0.3, 1, 3, 7]
    for ax in (total, above):
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plot", metavar="PNG", help="draw the stored JSON results given as arguments into PNG "
                        "(measures nothing)")
    parser.add_argument("results", nargs="*", help="with --plot: JSON files written by --json")
    parser.add_argument("--sizes", default="135m,360m", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--steps", type=int, default=3, help="LoRAPrune optimizer steps measured")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--samples", type=int, default=10, help="LLM-Pruner calibration samples (of --length)")
    parser.add_argument("--json", help="write the rows here as JSON")
    args = parser.parse_args()
    if args.plot:
        if not args.results:
            parser.error("--plot draws stored results: give the JSON files written by --json")
        plot(args.results, args.plot)
        return
    device = torch.device(args.device)
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    rows = []
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        model = build(size, device, dtype)
        params = sum(p.numel() for p in model.parameters())
        weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        del model
        free(device)
        taylor = llm_pruner_phase(size, device, dtype, args.samples, args.length)
        lora = loraprune_phase(size, device, dtype, args.steps, args.batch, args.length)
        row = {"size": size, "params": params, "dtype": str(dtype).replace("torch.", ""), "device": str(device),
               "weights_mb": round(weights_mb), "llm_pruner": taylor, "loraprune": lora,
               "peak_ratio": lora["peak_mb"] / taylor["peak_mb"],
               "grad_ratio": (lora["weight_grad_mb"] + lora["lora_grad_mb"]) / taylor["weight_grad_mb"],
               "total_ratio": (weights_mb + lora["peak_mb"]) / (weights_mb + taylor["peak_mb"])}
        rows.append(row)
        print(f"{size:>5} {params / 1e9:6.2f}B {row['dtype']:>8}  weights {weights_mb:8.0f} MB | LLM-Pruner +"
              f"{taylor['peak_mb']:8.0f} MB (W-grad {taylor['weight_grad_mb']:7.0f}) | "
              f"LoRAPrune +{lora['peak_mb']:7.0f} MB"
              f" (W-grad {lora['weight_grad_mb']:.0f}, LoRA grad {lora['lora_grad_mb']:.1f}) | above the model "
              f"{row['peak_ratio']:.2f}x, gradients {row['grad_ratio']:.4f}x, "
              f"in total {row['total_ratio']:.2f}x ({100 * (row['total_ratio'] - 1):+.1f}%)", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "torch": torch.__version__,
                       "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}, fh, indent=2)


if __name__ == "__main__":
    main()
