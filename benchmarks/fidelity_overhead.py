"""What the default ``fidelity`` metric costs a run: the perplexity pass over the first corpus' windows with and
without its observer, interleaved, on the default model (the same process, the same windows, one model).

``fidelity`` runs no forward pass of its own: on the dense model its observer keeps the log-probabilities of the first
32 windows (a log-softmax and a copy to the CPU per window), and on a pruned model it computes KL and top-1 agreement
from the logits perplexity computes anyway (a log-softmax, an exp and two reductions per window). This times both
observers against the bare pass, ``--repeats`` times in A B C order, and reports medians and the added seconds per
run; a default run has one dense and eight pruned measurements.

    python benchmarks/fidelity_overhead.py --out benchmarks/results/fidelity_overhead-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    import torch

    from benchsuite.api.profiles import get_profile
    from benchsuite.data.corpora import resolve_corpus
    from benchsuite.data.tokens import eval_windows
    from benchsuite.evaluation.fidelity import WindowDistances, log_probs
    from benchsuite.evaluation.perplexity import perplexity
    from benchsuite.host import get_registry
    from benchsuite.models import load_model_dir, load_tokenizer
    from benchsuite.models.resolve import resolve_model

    registry = get_registry()
    info = resolve_model(args.model, registry)
    model, tokenizer = load_model_dir(info.path).eval(), load_tokenizer(info.path)
    profile = get_profile("quick")
    windows = eval_windows(tokenizer, resolve_corpus(profile.corpora[0], registry), profile.seq_len,
                           profile.eval_windows)
    count = 32  # the metric's default
    captured: dict[int, torch.Tensor] = {}

    def capture(start, logits):
        for i in range(min(len(logits), count - start)):
            captured[start + i] = log_probs(logits[i]).cpu()

    perplexity(model, windows, profile.eval_batch, bos=None, observers=[capture])
    reference = torch.stack([captured[i] for i in range(count)])
    times: dict[str, list[float]] = {"bare": [], "dense (keeps log-probabilities)": [],
                                     "pruned (KL and top-1)": []}
    for _ in range(args.repeats):
        for name in times:
            captured.clear()
            observers = {"bare": [], "dense (keeps log-probabilities)": [capture],
                         "pruned (KL and top-1)": [WindowDistances(reference).add]}[name]
            start = time.perf_counter()
            perplexity(model, windows, profile.eval_batch, bos=None, observers=observers)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    added = {name: medians[name] - medians["bare"] for name in medians if name != "bare"}
    result = {"model": args.model, "windows": len(windows), "fidelity_windows": count, "repeats": args.repeats,
              "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
              "seconds": times, "median_s": medians, "added_s": added,
              "added_per_default_run_s": added["dense (keeps log-probabilities)"] + 8 * added["pruned (KL and top-1)"],
              "reference_mb": reference.numel() * 4 / 2**20}
    print(json.dumps({k: v for k, v in result.items() if k != "seconds"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
