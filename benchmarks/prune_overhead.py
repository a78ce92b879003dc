"""Does a change make pruning slower? The default run's prune stage at two commits, interleaved.

Runs ``benchsuite run`` with the default methods' criteria (LoRAPrune, LLM-Pruner, L2 magnitude) at 50% on the
default model and the ``quick`` profile from two source trees (git worktrees of the commits to compare), one after
the other, ``--repeats`` times each, alternating (A B A B ...), so that a machine whose speed drifts charges both
alike; only the parameter count is measured after pruning (the prune stage is what is compared). Reads each run's
prune-stage seconds from ``--timings`` and prints, per method, the median of each tree and their quotient.

    git worktree add /tmp/before <commit>; git worktree add /tmp/after <commit>
    python benchmarks/prune_overhead.py /tmp/before /tmp/after --repeats 3 --out benchmarks/results/prune_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

METHODS = "loraprune,llm-pruner,magnitude-l2"


def prune_seconds(tree: Path, threads: int, methods: str = METHODS) -> dict[str, float]:
    """One run of the matrix from ``tree``: method -> seconds of its prune stage."""
    with tempfile.TemporaryDirectory() as tmp:
        timings = Path(tmp) / "timings.json"
        env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        cmd = [sys.executable, "-m", "benchsuite", "run", "--methods", methods, "--ratios", "0.5", "--tasks", "none",
               "--metrics", "params", "--results", str(Path(tmp) / "results"), "--timings", str(timings), "-q"]
        subprocess.run(cmd, env=env, cwd=tree, check=True, stdout=subprocess.DEVNULL)
        runs = json.loads(timings.read_text())["runs"]
    return {name.split(" ")[0]: stages["prune"] for name, stages in runs.items() if "prune" in stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="source tree of the commit before the change")
    parser.add_argument("after", type=Path, help="source tree of the commit after it")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default=METHODS, help=f"comma-separated (default: {METHODS})")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    trees = {"before": args.before, "after": args.after}
    seen: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    for i in range(args.repeats):
        for name, tree in trees.items():
            for method, seconds in prune_seconds(tree, args.threads, args.methods).items():
                seen[name].setdefault(method, []).append(seconds)
            print(f"repeat {i + 1}/{args.repeats}, {name}: {json.dumps({m: v[-1] for m, v in seen[name].items()})}",
                  file=sys.stderr, flush=True)
    rows = {}
    for method in seen["before"]:
        before, after = statistics.median(seen["before"][method]), statistics.median(seen["after"][method])
        rows[method] = {"before_s": before, "after_s": after, "after/before": after / before,
                        "before_all": seen["before"][method], "after_all": seen["after"][method]}
        print(f"{method:14s} before {before:7.2f} s   after {after:7.2f} s   after/before {after / before:.3f}")
    if args.out:
        commits = {name: subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True
                                        ).stdout.strip() for name, tree in trees.items()}
        args.out.write_text(json.dumps({"commits": commits, "threads": args.threads, "repeats": args.repeats,
                                        "methods": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
