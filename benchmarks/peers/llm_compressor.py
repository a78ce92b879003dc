"""The suite's SparseGPT and Wanda against llm-compressor's (``oneshot`` with ``SparseGPTModifier`` /
``WandaPruningModifier``) on the same work: SmolLM2-135M, float32 on the CPU, the same calibration tokens (the
suite's draw from its wiki corpus, the same sequences in the same order for both), 50% unstructured and 2:4, every
projection of every decoder layer (lm_head and embeddings dense on both sides).

For each job the two sides run one after the other (the order alternates from job to job), each in a fresh
process: load the model, then the pruning phase alone, timed and with its peak memory sampled by the suite's
PeakMemory. Both pruned models are then evaluated by the suite's perplexity (quick profile windows, wiki and c4,
bootstrap intervals; the paired change of peer against suite) and compared weight by weight (per layer: equal
keep/prune decisions, Jaccard of the pruned sets), and each side's output error on held-out tokens is measured
for a few layers (which side reconstructs better, where perplexities differ).

Calibrations: ``quick`` (the suite's quick profile: 10 x 64 tokens) and ``paper`` (128 x 2,048, the papers';
about an hour per job here on 2 cores).

    python benchmarks/peers/llm_compressor.py [--calibrations quick] [--jobs sparsegpt-2:4,...]   (tox -e peers)
    python benchmarks/peers/report.py --readme docs/peers.md      # the README section, from the JSON

llm-compressor pins transformers<=5.17 (the suite: 5.24); it is installed into a folder of its own (tox -e peers
does this) named by ``BENCHSUITE_PEERS_LLMCOMPRESSOR``, which only the peer's worker process puts on its path.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - the sibling module, also when run as a script

NAME = "llm_compressor"
VARIABLE = "BENCHSUITE_PEERS_LLMCOMPRESSOR"
INSTALL = ("pip install --no-deps --target DIR llmcompressor==0.14.0.1 compressed-tensors==0.19.0 "
           "transformers==5.17.0 huggingface_hub==1.33.0 accelerate==1.16.0 auto-round==0.15.1 loguru==0.7.3 "
           "nvidia-ml-py==13.615.71 httpx==0.29.0 httpcore==1.0.9")
#: job -> (suite method, llm-compressor modifier, mask structure)
JOBS = {
    "sparsegpt-50%": ("sparsegpt", "SparseGPTModifier", "0:0"),
    "sparsegpt-2:4": ("sparsegpt-2:4", "SparseGPTModifier", "2:4"),
    "wanda-50%": ("wanda", "WandaPruningModifier", "0:0"),
    "wanda-2:4": ("wanda-2:4", "WandaPruningModifier", "2:4"),
}
#: name -> (samples, tokens per sample)
CALIBRATIONS = {"quick": (10, 64), "paper": (128, 2048)}
SPARSITY = 0.5
BATCH = 2  # calibration sequences per forward pass, both sides (the quick profile's calib_batch)
ERROR_LAYERS = [0, 10, 20, 29]


# -- workers ---------------------------------------------------------------------------------------------------
def suite_worker(job: str, tokens: torch.Tensor, model_path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The suite's own path of a run (plan, load, pipeline.prune), with the given calibration tokens."""
    from benchsuite.host import get_registry
    from benchsuite.running.pipeline import Calibration, prune
    from benchsuite.running.plan import RunRequest, plan_model, plan_request

    class Given(Calibration):  # the parent's tokens, whatever the profile would draw
        def samples(self, corpus, samples, length, seed):
            return tokens

    method = JOBS[job][0]
    request = RunRequest(methods=[method], ratios=None if ":" in job else [SPARSITY], profile="quick",
                         tasks=[], metrics=["params"], device="cpu", dtype="float32")
    plan = plan_request(request, get_registry())
    model_plan = plan_model(plan)
    model_plan.dense = None
    spec = model_plan.runs[0]
    pruned = prune(plan, model_plan, spec, Given(model_plan.tokenizer))
    phase = {"seconds": round(pruned.seconds, 3), "memory": pruned.memory, "threads": torch.get_num_threads(),
             "method": method, "calibration_batch": plan.profile.calib_batch,
             "versions": common.versions("benchsuite", "torch", "transformers")}
    return pruned.model, phase


def peer_worker(job: str, tokens: torch.Tensor, model_path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """llm-compressor's oneshot on the same tokens: no shuffling, the same batch size."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.obcq import SparseGPTModifier
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from transformers import AutoModelForCausalLM

    _, modifier, structure = JOBS[job]
    cls = {"SparseGPTModifier": SparseGPTModifier, "WandaPruningModifier": WandaPruningModifier}[modifier]
    # SparseGPT's defaults are the reference's and the suite's: block 128, dampening 0.01 of the mean diagonal
    recipe = cls(sparsity=SPARSITY, mask_structure=structure, targets=[r"re:model\.layers\.\d+$"],
                 ignore=["re:.*lm_head"])
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()
    data = Dataset.from_dict({"input_ids": tokens.tolist(), "attention_mask": torch.ones_like(tokens).tolist()})

    def run() -> None:
        oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=len(tokens),
                max_seq_length=tokens.shape[1], shuffle_calibration_samples=False, batch_size=BATCH,
                pipeline="sequential")

    _, phase = common.timed_phase(run)
    phase |= {"modifier": modifier, "mask_structure": structure, "pipeline": "sequential",
              "versions": common.versions("llmcompressor", "compressed-tensors", "torch", "transformers")}
    return model, phase


def worker(args: argparse.Namespace) -> None:
    tokens = torch.load(args.tokens)
    fn = suite_worker if args.worker == "suite" else peer_worker
    model, phase = fn(args.job, tokens, Path(args.model_path))
    common.save_worker_output(model, Path(args.out), phase)


# -- the comparison --------------------------------------------------------------------------------------------
def compare(job: str, calibration: str, site: Path, path: Path, dense: torch.nn.Module, order: int,
            work: Path) -> dict[str, Any]:
    samples, length = CALIBRATIONS[calibration]
    tokens = common.calibration_tokens(path, samples, length)
    tokens_file = work / f"calib-{calibration}.pt"
    torch.save(tokens, tokens_file)
    sides = ["suite", "peer"] if order % 2 == 0 else ["peer", "suite"]
    phases = {}
    for side in sides:
        print(f"  {job} ({calibration}): {side} pruning", flush=True)
        phases[side] = common.run_worker(Path(__file__), side, job, tokens_file, work / side, path,
                                         site=site if side == "peer" else None)
    suite_model, peer_model = (common.load_weights(dense, work / side) for side in ("suite", "peer"))
    print(f"  {job} ({calibration}): evaluating both", flush=True)
    ppl = {side: common.evaluate(m, path) for side, m in (("suite", suite_model), ("peer", peer_model))}
    layers = common.element_agreement(dense, suite_model, peer_model)
    held_out = common.calibration_tokens(path, 8, 128, seed=1234, corpus="c4")  # not the calibration draw
    errors = common.held_out_error(dense, suite_model, peer_model, held_out, ERROR_LAYERS)
    s, p = phases["suite"], phases["peer"]
    return {
        "job": job, "calibration": {"name": calibration, "corpus": "wiki", "samples": samples, "length": length,
                                    "seed": 0, "tokens": samples * length},
        "order": sides,
        "suite": {"phase": s, "ppl": {k: _slim(v) for k, v in ppl["suite"].items()}},
        "peer": {"phase": p, "ppl": {k: _slim(v) for k, v in ppl["peer"].items()}},
        "time_ratio": s["seconds"] / p["seconds"],
        "memory_ratio": s["memory"]["peak_mb"] / p["memory"]["peak_mb"] if p["memory"]["peak_mb"] > 0 else None,
        "peer_vs_suite": {k: common.paired(ppl["suite"][k], ppl["peer"][k]) for k in ppl["suite"]},
        "agreement": {"equal_decisions": statistics.mean(r["equal_decisions"] for r in layers),
                      "jaccard": statistics.mean(r["jaccard"] for r in layers), "per_layer": layers},
        "held_out_error": errors,
    }


def _slim(ppl: dict[str, Any]) -> dict[str, Any]:
    return {k: ppl[k] for k in ("ppl", "ci_lo", "ci_hi", "tokens", "windows", "seq_len", "window_nll",
                                "window_tokens")}


def table(result: dict[str, Any]) -> str:
    return "\n".join([common.HEADER, *(common.job_row(r) for r in result["jobs"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, of {', '.join(JOBS)}")
    parser.add_argument("--calibrations", default="quick", help=f"comma-separated, of {', '.join(CALIBRATIONS)}")
    parser.add_argument("--worker", choices=("suite", "peer"), help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    jobs = [j for j in args.jobs.split(",") if j]
    calibrations = [c for c in args.calibrations.split(",") if c]
    bad = [j for j in jobs if j not in JOBS] + [c for c in calibrations if c not in CALIBRATIONS]
    if bad:
        raise SystemExit(f"unknown: {', '.join(bad)} (jobs: {', '.join(JOBS)}; calibrations: "
                         f"{', '.join(CALIBRATIONS)})")
    site = common.peer_site(VARIABLE, INSTALL)
    from benchsuite.models.checkpoint import load_model_dir

    path = common.model_path()
    dense = load_model_dir(path).eval()
    results = []
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        for i, (calibration, job) in enumerate((c, j) for c in calibrations for j in jobs):
            work = Path(tmp) / f"{job}-{calibration}".replace(":", "_")
            work.mkdir()
            results.append(compare(job, calibration, site, path, dense, i, work))
            print(table({"jobs": results[-1:]}).splitlines()[-1], flush=True)
    results = common.merged(NAME, results, key=lambda r: (r["job"], r["calibration"]["name"]),
                            order=lambda r: (list(CALIBRATIONS).index(r["calibration"]["name"]),
                                             list(JOBS).index(r["job"])))
    result = {"peer": "llm-compressor", "model": common.MODEL, "dtype": "float32", "device": "cpu",
              "sparsity": SPARSITY, "eval": common.EVAL, "machine": common.machine(), "jobs": results}
    js, md = common.write_result(NAME, result, table(result))
    print(table(result))
    print(f"wrote {js} and {md}")


if __name__ == "__main__":
    main()
