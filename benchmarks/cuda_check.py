"""The suite's CUDA path end to end, in one short run: what CI (CPU only) can't check.

Builds a random GQA Llama whose shapes fit the 2:4 sparse kernels (hidden 512, 8 layers, 8 query
over 2 key/value heads, MLP 1408) and an offline text corpus (``benchsuite.testing``: no network),
then runs ``benchsuite run --device cuda`` (``--dtype auto``: bf16 where the GPU has it) for one
method of every family at the smoke profile, and checks each record: status ok, the dtype, peak
memory from the CUDA allocator, finite perplexities, and for 2:4 methods the latency through the
semi-structured sparse kernels. Prints one JSON summary; exits non-zero on any failed check.

    python benchmarks/cuda_check.py --out /tmp/cuda-check
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from benchsuite.cli import main as cli
from benchsuite.running.records import latest_attempts, scan
from benchsuite.testing import save_tiny_model, write_corpus

METHODS = "loraprune,llm-pruner,magnitude-l2,wanda-2:4,magnitude-2:4,loraprune-2:4"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="cuda-check")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of this script, without the GPU checks")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    if gpu and not torch.cuda.is_available():
        print("benchmarks/cuda_check.py needs a CUDA GPU (torch sees none)", file=sys.stderr)
        return 2
    out = Path(args.out)
    model = save_tiny_model(out / "model", heads=8, kv_heads=2, layers=8, hidden_size=512, intermediate_size=1408,
                            max_positions=512, weight_std=0.02)
    corpus = write_corpus(out / "corpus.txt", documents=400)
    code = cli(["run", "--model", str(model), "--methods", args.methods, "--ratios", "0.5", "--profile", "smoke",
                "--corpora", str(corpus), "--calibration-data", str(corpus), "--recovery-data", str(corpus),
                "--tasks", "none", "--device", args.device, "--dtype", args.dtype,
                "--results", str(out / "results")])
    records, problems = scan(out / "results")
    summary: dict = {"gpu": torch.cuda.get_device_name(0) if gpu else None, "torch": torch.__version__,
                     "run_exit": code, "problems": [str(p) for p in problems], "runs": []}
    failures = []
    for r in latest_attempts(records):
        m = r.get("metrics", {})
        how = r.get("measurement", {})
        row = {"method": r.get("variant") or r["method"], "status": r["status"], "error": r.get("error"),
               "dtype": r.get("dtype"), "ppl": {k: m[k] for k in m if k.startswith("ppl_") and "_" not in k[4:]},
               "params": m.get("params"), "latency_ms": m.get("latency_ms"), "speedup": m.get("speedup"),
               "latency_sparse_ms": m.get("latency_sparse_ms"),
               "sparse": {k: v for k, v in (how.get("latency_sparse_ms") or {}).items() if k in ("reason", "kernels")},
               "peak_mem_mb": {k: m.get(k) for k in ("peak_mem_prune_mb", "peak_mem_recover_mb", "peak_mem_eval_mb")},
               "memory_method": (how.get("peak_mem_eval_mb") or {}).get("method"),
               "weight_grad_mb": m.get("weight_grad_mb"), "total_time_s": m.get("total_time_s")}
        summary["runs"].append(row)
        name = row["method"]
        if r["status"] != "ok":
            failures.append(f"{name}: {r['status']}: {r.get('error')}")
            continue
        if gpu and "cuda" not in str(row["memory_method"]):
            failures.append(f"{name}: peak memory not from the CUDA allocator ({row['memory_method']})")
        if gpu and args.dtype == "auto" and torch.cuda.is_bf16_supported() and row["dtype"] != "bfloat16":
            failures.append(f"{name}: dtype {row['dtype']}, expected bfloat16 on this GPU")
        if not row["ppl"] or not all(math.isfinite(v) for v in row["ppl"].values()):
            failures.append(f"{name}: perplexities {row['ppl']}")
        if gpu and "2:4" in name and row["latency_sparse_ms"] is None:
            failures.append(f"{name}: no 2:4 kernel latency ({row['sparse'].get('reason')})")
        if "llm-pruner" not in name and row["weight_grad_mb"]:  # only LLM-Pruner takes weight gradients
            failures.append(f"{name}: {row['weight_grad_mb']} MB of pretrained-weight gradients")
    summary["failures"] = failures
    print(json.dumps(summary, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 1 if failures or code else 0


if __name__ == "__main__":
    sys.exit(main())
