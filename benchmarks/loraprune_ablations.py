"""Why does LoRAPrune stall where LLM-Pruner keeps improving? Two ablations at equal tokens (issue 36).

The budget sweep's 2,000-step point (``quick-steps2000``: 2,000 optimizer steps of 2 x 128 tokens, constant
learning rate, 512,000 recovery tokens) is changed in one setting at a time, for LoRAPrune, LLM-Pruner and
random+LoRA alike, on the default model at 50% structured (then 20%), seeds 0 and 1:

- ``tokens per decision``: the same 512,000 tokens, but 16 x 128 tokens per optimizer step (micro-batch 2 x 8
  accumulated micro-batches), so 250 optimizer steps: every LoRAPrune importance update and pruning event then
  rests on 8 times the tokens (``--train-steps 250 --grad-accum 8``, profile ``quick-steps250-accum8``);
- ``learning-rate decay``: the 2,000 steps with the reference's linear decay to 0 instead of a constant rate
  (``--train-steps 2000 --lr-schedule linear``, profile ``quick-steps2000-lr-linear``);
- ``momentum``: the tokens-per-decision setting with LoRAPrune's moving average at beta 0.99
  (``--methods loraprune:beta=0.99``): its window, about 1 / (1 - beta) = 100 optimizer steps of 2,048 tokens, is
  about 205,000 tokens, which is what the reference's beta 0.9 covers (10 optimizer steps of 128 examples; at
  about 160 tokens per LaMini example, an estimate: the data is not reachable here to measure). At beta 0.9 and
  2,048 tokens per step the window is 20,000 tokens, at the 2,000-step point's 256 tokens per step 2,600.

Every run is a record of its own under ``results/reference``: stop the script any time, start it again, and it
goes on where it stopped (finished runs are skipped). Runs go cheapest-to-read first: each ablation's 50% seed 0
for the three methods, then seed 1, then 20%.

    python benchmarks/loraprune_ablations.py                          # run (or resume) everything
    python benchmarks/loraprune_ablations.py --ablations accum --ratios 0.5
    python benchmarks/loraprune_ablations.py --ablations accum --ratios 0.5 --methods llm-pruner,random+lora
"""

from __future__ import annotations

import argparse
from pathlib import Path

METHODS = ["loraprune", "llm-pruner", "random+lora"]
#: name -> (optimizer steps, micro-batches per step, learning-rate schedule, methods); every one 512,000 tokens
ABLATIONS = {
    "accum": (250, 8, None, METHODS),
    "lr": (2000, None, "linear", METHODS),
    "momentum": (250, 8, None, ["loraprune:beta=0.99"]),
}
RATIOS = [0.5, 0.2]
SEEDS = [0, 1]


def order(ablations: list[str], ratios: list[float]) -> list[tuple[str, float, int]]:
    """(ablation, ratio, seed) in the order they run: 50% before 20%, seed 0 of every ablation before seed 1."""
    return [(name, ratio, seed) for ratio in ratios for seed in SEEDS for name in ablations]


def run(results: Path, ablations: list[str], ratios: list[float], only: list[str] | None = None) -> None:
    from benchsuite.running.runner import Runner, RunRequest

    for name, ratio, seed in order(ablations, ratios):
        steps, accum, schedule, methods = ABLATIONS[name]
        methods = [m for m in methods if only is None or m.split(":")[0] in only]
        if not methods:
            continue
        print(f"loraprune ablations: {name}, ratio {ratio}, seed {seed}", flush=True)
        request = RunRequest(methods=methods, ratios=[ratio], seeds=[seed], profile="quick", results=results,
                             train_steps=steps, grad_accum=accum, lr_schedule=schedule, tasks=[])
        Runner(request).run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results/reference"))
    parser.add_argument("--ablations", default=",".join(ABLATIONS), help="comma-separated: " + ", ".join(ABLATIONS))
    parser.add_argument("--ratios", default=",".join(str(r) for r in RATIOS))
    parser.add_argument("--methods", default=None,
                        help="comma-separated subset of " + ", ".join(METHODS) + " (two processes side by side)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.ablations.split(",") if n.strip()]
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        parser.error(f"unknown ablation(s) {unknown}; choose from {', '.join(ABLATIONS)}")
    only = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    if only and set(only) - set(METHODS):
        parser.error(f"unknown method(s) {sorted(set(only) - set(METHODS))}; choose from {', '.join(METHODS)}")
    run(args.results, names, [float(r) for r in args.ratios.split(",")], only)


if __name__ == "__main__":
    main()
