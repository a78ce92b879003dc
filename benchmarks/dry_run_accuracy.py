"""How close ``benchsuite run --dry-run`` comes to the peaks a real run measures (issue 14: within 25% on the 135M
and 1B models).

For each size, ``benchsuite run`` runs in a fresh process (smoke profile, no zero-shot tasks, float32 on the CPU,
LoRAPrune and LLM-Pruner at ratio 0.2, and the dense evaluation), then the same request is estimated from the
model's config alone (`estimate_request`), and every phase's estimate is set against the
record's measured peak above the phase's start (``peak_mem_prune_mb``, ``peak_mem_recover_mb``,
``peak_mem_eval_mb``), with the parameters and FLOPs after pruning.

- ``135m``: the default model (SmolLM2-135M, the suite's cached checkpoint);
- ``1b``: a random Llama of TinyLlama's shape (``SIZES["1b"]`` of ``memory_scaling.py``: 2048 / 5632, 22 layers, 32
  heads over 4 kv heads, 32,000 tokens), written once as a checkpoint with the offline byte-level tokenizer (4.4 GB
  in float32). Its LLM-Pruner run needs about 12 GB of RAM.

Finished runs are kept in ``--work`` (``r<size>/``) and not run again (the runner skips finished records), so a
second call only re-estimates. Usage::

    python benchmarks/dry_run_accuracy.py --sizes 135m,1b --work /tmp/dry-run \
        --json benchmarks/results/dry_run_accuracy-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from memory_scaling import SIZES, VOCAB  # noqa: E402

from benchsuite.host import get_registry  # noqa: E402
from benchsuite.running.estimate import MB, estimate_request  # noqa: E402
from benchsuite.running.plan import RunRequest, plan_request  # noqa: E402
from benchsuite.running.records import scan  # noqa: E402

METHODS = ["loraprune", "llm-pruner"]
PHASES = {"prune": "peak_mem_prune_mb", "recover": "peak_mem_recover_mb", "eval": "peak_mem_eval_mb"}
TOLERANCE = 0.25


def random_checkpoint(size: str, path: Path) -> Path:
    """A random Llama of ``SIZES[size]`` saved in float32 with the offline tokenizer (once)."""
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return path
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchsuite.testing import offline_tokenizer

    hidden, inter, layers, heads, kv = SIZES[size]
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                         tie_word_embeddings=False, bos_token_id=257, eos_token_id=258, pad_token_id=259)
    torch.manual_seed(0)
    path.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(path)
    offline_tokenizer().save_pretrained(path)
    return path


def request(model: str, results: Path) -> RunRequest:
    return RunRequest(methods=METHODS, model=model, ratios=[0.2], profile="smoke", tasks=[], device="cpu",
                      dtype="float32", results=results)


def run_measured(model: str, results: Path) -> None:
    """``benchsuite run`` in its own process (runs finished before are kept)."""
    cmd = [sys.executable, "-m", "benchsuite", "run", "--model", model, "--methods", ",".join(METHODS), "--ratios",
           "0.2", "--profile", "smoke", "--tasks", "none", "--device", "cpu", "--dtype", "float32",
           "--results", str(results), "-q"]
    subprocess.run(cmd, check=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})


def compare(size: str, model: str, results: Path) -> dict:
    dry = estimate_request(plan_request(request(model, results), get_registry()))
    records, _ = scan(results)
    rows = []
    for run in dry.runs:
        key = "dense" if run.key == "dense" else run.key
        found = [r for r in records if r["status"] == "ok" and (r.get("variant") or r["method"]) == key
                 and (key == "dense" or r["ratio"] == run.ratio)]
        if not found:
            raise SystemExit(f"{size}: no finished record for {run.label} in {results}")
        record = found[-1]
        metrics = record["metrics"]
        for phase in run.phases:
            measured = metrics.get(PHASES[phase.name])
            how = record["measurement"].get(PHASES[phase.name], {})
            rows.append({"size": size, "run": run.label, "phase": phase.name,
                         "estimated_mb": round(phase.peak / MB, 1), "measured_mb": measured,
                         "ratio": round(phase.peak / MB / measured, 3) if measured else None,
                         "terms_mb": {k: round(v / MB, 1) for k, v in phase.terms.items()},
                         "measured_noisy": how.get("noisy"), "baseline_mb": how.get("baseline_mb")})
        rows.append({"size": size, "run": run.label, "phase": "params/flops",
                     "params_estimated": run.params_after, "params_measured": metrics.get("params"),
                     "flops_estimated": run.flops_per_token_after, "flops_measured": metrics.get("flops_per_token"),
                     "weight_grad_mb_measured": metrics.get("weight_grad_mb")})
    return {"size": size, "model": model, "shape": dry.shape.text(), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="135m,1b")
    parser.add_argument("--work", type=Path, default=Path("dry-run-accuracy"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-run", action="store_true", help="only compare with the records already in --work")
    args = parser.parse_args()
    out = []
    for size in args.sizes.split(","):
        model = "smollm2-135m" if size == "135m" else str(random_checkpoint(size, args.work / f"llama{size}"))
        results = args.work / f"r{size.removesuffix('m')}"
        if not args.no_run:
            run_measured(model, results)
        out.append(compare(size, model, results))
    print(f"{'size':5} {'run':30} {'phase':8} {'estimated MB':>12} {'measured MB':>12} {'est/meas':>9}")
    worst = 0.0
    for result in out:
        for row in result["rows"]:
            if "estimated_mb" in row:
                ratio = row["ratio"]
                worst = max(worst, abs(ratio - 1)) if ratio else worst
                flag = "" if ratio and abs(ratio - 1) <= TOLERANCE else "  <-- outside 25%"
                print(f"{row['size']:5} {row['run']:30} {row['phase']:8} {row['estimated_mb']:12,.0f} "
                      f"{row['measured_mb'] or 0:12,.0f} {ratio or 0:9.2f}{flag}")
            else:
                same = row["params_estimated"] == row["params_measured"]
                print(f"{row['size']:5} {row['run']:30} params {row['params_estimated']:,} estimated, "
                      f"{row['params_measured']:,} measured ({'equal' if same else 'DIFFERENT'})")
    print(f"largest deviation: {worst:.1%} (tolerance {TOLERANCE:.0%})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": platform.node(), "torch": torch.__version__,
                                         "cpus": os.cpu_count(), "largest_deviation": worst, "results": out},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
