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
    python benchmarks/loraprune_ablations.py --ablations lr --ratios 0.5 --methods loraprune --seeds 0
    python benchmarks/loraprune_ablations.py --render --docs docs/loraprune.md   # tables from the records only

``--render`` measures nothing: it reads the records that exist (the ablations' and the sweep's 2,000-step point)
and rewrites the docs/loraprune.md block between ``<!-- loraprune-ablations -->`` markers: per ratio, each
setting's wiki perplexity per method (mean ± sd over seeds; one seed: its 95% interval), LoRAPrune against
LLM-Pruner paired per seed (``benchsuite compare``: the same 64 windows), each method against its own 2,000-step
run paired per seed, and one sentence per ablation saying whether it closes, narrows, widens or reverses the gap.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from budget_sweep import _cell  # noqa: E402  (the sweep's cell: mean ± sd over seeds, or one seed's interval)

METHODS = ["loraprune", "llm-pruner", "random+lora"]
#: name -> (optimizer steps, micro-batches per step, learning-rate schedule, methods); every one 512,000 tokens
ABLATIONS = {
    "accum": (250, 8, None, METHODS),
    "momentum": (250, 8, None, ["loraprune:beta=0.99"]),  # after accum: the table shows it as accum's variant
    "lr": (2000, None, "linear", METHODS),
}
RATIOS = [0.5, 0.2]
SEEDS = [0, 1]
BLOCK = "loraprune-ablations"  # the docs block this script owns (docs/loraprune.md)
BASELINE = "quick-steps2000"  # the budget sweep's point the ablations change one setting of
#: ablation -> (its records' profile, what it changes, in words); the momentum runs are LoRAPrune's only
PROFILES = {"accum": ("quick-steps250-accum8", "250 steps of 16 x 128 tokens, 8 micro-batches accumulated"),
            "momentum": ("quick-steps250-accum8", "the same, LoRAPrune's moving average at beta 0.99"),
            "lr": ("quick-steps2000-lr-linear", "2,000 steps of 2 x 128 tokens, lr decayed linearly to 0")}


def order(ablations: list[str], ratios: list[float], seeds: list[int] = SEEDS) -> list[tuple[str, float, int]]:
    """(ablation, ratio, seed) in the order they run: 50% before 20%, seed 0 of every ablation before seed 1."""
    return [(name, ratio, seed) for ratio in ratios for seed in seeds for name in ablations]


def run(results: Path, ablations: list[str], ratios: list[float], only: list[str] | None = None,
        seeds: list[int] = SEEDS) -> None:
    from benchsuite.running.runner import Runner, RunRequest

    for name, ratio, seed in order(ablations, ratios, seeds):
        steps, accum, schedule, methods = ABLATIONS[name]
        methods = [m for m in methods if only is None or m.split(":")[0] in only]
        if not methods:
            continue
        print(f"loraprune ablations: {name}, ratio {ratio}, seed {seed}", flush=True)
        request = RunRequest(methods=methods, ratios=[ratio], seeds=[seed], profile="quick", results=results,
                             train_steps=steps, grad_accum=accum, lr_schedule=schedule, tasks=[])
        Runner(request).run()


def collect(results: Path) -> dict[tuple[str, float, str], list[dict]]:
    """(profile, ratio, variant) -> the finished records of the ablations' and the baseline's settings, one per
    seed, sorted by seed (the default model, structured, uniform allocation)."""
    from benchsuite.running.records import latest_attempts, scan

    profiles = {BASELINE} | {profile for profile, _ in PROFILES.values()}
    records, _ = scan(results)
    out: dict[tuple[str, float, str], dict[int, dict]] = {}
    for r in latest_attempts(records):
        if (r.get("status") != "ok" or r.get("model") != "smollm2-135m" or r.get("profile") not in profiles
                or (r.get("granularity") or {}).get("label") != "structured" or r.get("ratio") not in RATIOS
                or r.get("seed") not in SEEDS or (r.get("config") or {}).get("allocation")):
            continue
        seeds = out.setdefault((r["profile"], r["ratio"], r.get("variant") or r["method"]), {})
        if r["seed"] not in seeds or r.get("finished_at", "") > seeds[r["seed"]].get("finished_at", ""):
            seeds[r["seed"]] = r
    return {key: [seeds[s] for s in sorted(seeds)] for key, seeds in out.items()}


def _setting(name: str) -> tuple[str, str, str]:
    """(profile, LoRAPrune's variant, what it changes) of an ablation, or of the baseline (``base``)."""
    if name == "base":
        return BASELINE, "loraprune", "2,000 steps of 2 x 128 tokens, constant lr (the sweep's point)"
    profile, words = PROFILES[name]
    return profile, ("loraprune:beta=0.99" if name == "momentum" else "loraprune"), words


def paired(a: list[dict], b: list[dict]) -> list[tuple[int, object]]:
    """(seed, wiki Difference of b against a) at every seed both have (``benchsuite compare``)."""
    from benchsuite.reporting.compare import compare_runs

    by_seed = {r["seed"]: r for r in a}
    return [(r["seed"], compare_runs(by_seed[r["seed"]], r, ["ppl_wiki"])[0]) for r in b if r["seed"] in by_seed]


def _pairs(pairs: list[tuple[int, object]]) -> str:
    from benchsuite.reporting.compare import format_difference

    return "; ".join(f"{seed}: {' '.join(format_difference(d))}{' *' if d.significant else ''}"
                     for seed, d in pairs) or "-"


def _quotient(ours: list[dict], theirs: list[dict]) -> float | None:
    if not ours or not theirs:
        return None
    return (statistics.mean(r["metrics"]["ppl_wiki"] for r in ours)
            / statistics.mean(r["metrics"]["ppl_wiki"] for r in theirs))


def answer(runs: dict, name: str, ratio: float) -> str | None:
    """Whether one ablation closes, narrows, widens or reverses LoRAPrune's gap to LLM-Pruner, in one sentence."""
    profile, variant, _ = _setting(name)
    ours, theirs = runs.get((profile, ratio, variant), []), runs.get((profile, ratio, "llm-pruner"), [])
    after = _quotient(ours, theirs)
    if after is None:
        return None
    seeds = {r["seed"] for r in ours} & {r["seed"] for r in theirs}  # the quotient before: at the same seeds
    before = _quotient(*([r for r in runs.get((BASELINE, ratio, m), []) if r["seed"] in seeds]
                         for m in ("loraprune", "llm-pruner")))
    diffs = [d for _, d in paired(theirs, ours)]
    n = f"{len(diffs)} seed{'s' if len(diffs) != 1 else ''}"
    if diffs and all(d.hi is not None and d.hi < 0 for d in diffs):
        verdict = f"reverses the gap: LoRAPrune lower than LLM-Pruner at {n}, every paired interval below 0"
    elif diffs and all(d.lo is not None and d.lo <= 0 <= d.hi for d in diffs):
        verdict = f"closes the gap: no paired interval excludes 0 ({n})"
    elif before is None:
        verdict = f"LoRAPrune / LLM-Pruner {after:.2f}x ({n}; no 2,000-step point to compare with)"
    else:
        moved = "narrows" if after < before else "widens" if after > before else "leaves"
        every = diffs and all(d.lo is not None and d.lo > 0 for d in diffs)
        verdict = (f"{moved} the gap: LoRAPrune / LLM-Pruner {before:.2f}x -> {after:.2f}x; LLM-Pruner lower at {n}"
                   + (", every paired interval above 0" if every else ", not every paired interval excluding 0"))
    if name == "momentum":  # what the momentum alone does: against beta 0.9 at the same batches and tokens
        beta09 = paired(runs.get((profile, ratio, "loraprune"), []), ours)
        if beta09:
            verdict += f"; against LoRAPrune at beta 0.9 (the accum row), paired: {_pairs(beta09)}"
    return f"- **{name}** ({_setting(name)[2]}) {verdict}."


def _has(runs: dict, name: str, ratio: float) -> bool:
    """Whether an ablation has a record at this ratio (the momentum setting: LoRAPrune's own)."""
    profile, variant, _ = _setting(name)
    variants = [variant] if name == "momentum" else [variant, *METHODS[1:]]
    return any(runs.get((profile, ratio, v)) for v in variants)


def render(runs: dict) -> str:
    lines = []
    for ratio in RATIOS:
        rows = [name for name in ABLATIONS if _has(runs, name, ratio)]
        if not rows:
            lines += [f"**{ratio:.0%} structured**: no ablation record yet.", ""]
            continue
        lines += [f"**{ratio:.0%} structured**, wiki perplexity (mean ± sd over seeds; one seed: its 95% interval); "
                  "paired: `benchsuite compare` per seed (relative; 95% interval; \\* marked significant)", "",
                  "| setting | loraprune | llm-pruner | random+lora | LoRAPrune / LLM-Pruner | LoRAPrune vs LLM-Pruner "
                  "| LoRAPrune vs its 2,000-step run | LLM-Pruner vs its 2,000-step run |",
                  "| --- |" + " --- |" * 7]
        base_ours = runs.get((BASELINE, ratio, "loraprune"), [])
        base_theirs = runs.get((BASELINE, ratio, "llm-pruner"), [])
        for name in ["base", *rows]:
            profile, variant, words = _setting(name)
            ours, theirs = runs.get((profile, ratio, variant), []), runs.get((profile, ratio, "llm-pruner"), [])
            if name == "momentum":  # LoRAPrune's setting: the one-shot methods are the accum row's
                cells, against = [_cell(ours), "(as accum)", "(as accum)"], [_pairs(paired(base_ours, ours)), "-"]
            else:
                cells = [_cell(ours), _cell(theirs), _cell(runs.get((profile, ratio, "random+lora"), []))]
                against = ["-", "-"] if name == "base" else [_pairs(paired(base_ours, ours)),
                                                             _pairs(paired(base_theirs, theirs))]
            q = _quotient(ours, theirs)
            label = "2,000 x 256 tokens, constant lr (the sweep)" if name == "base" else f"{name}: {words}"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {f'{q:.2f}x' if q else '-'} | "
                         f"{_pairs(paired(theirs, ours))} | " + " | ".join(against) + " |")
        lines.append("")
        said = [s for s in (answer(runs, name, ratio) for name in rows) if s]
        lines += said + ([""] if said else [])
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results/reference"))
    parser.add_argument("--ablations", default=",".join(ABLATIONS), help="comma-separated: " + ", ".join(ABLATIONS))
    parser.add_argument("--ratios", default=",".join(str(r) for r in RATIOS))
    parser.add_argument("--render", action="store_true", help="measure nothing: the docs tables from the records")
    parser.add_argument("--docs", type=Path, help="with --render: rewrite this page's loraprune-ablations block "
                        "(docs/loraprune.md)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated subset of " + ", ".join(METHODS) + " (two processes side by side)")
    parser.add_argument("--seeds", default=",".join(str(s) for s in SEEDS),
                        help="comma-separated subset of " + ", ".join(str(s) for s in SEEDS)
                        + " (e.g. one seed of every ablation in one process, the other in another)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.ablations.split(",") if n.strip()]
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        parser.error(f"unknown ablation(s) {unknown}; choose from {', '.join(ABLATIONS)}")
    only = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    if only and set(only) - set(METHODS):
        parser.error(f"unknown method(s) {sorted(set(only) - set(METHODS))}; choose from {', '.join(METHODS)}")
    seeds = [s.strip() for s in args.seeds.split(",") if s.strip()]
    if not all(s.isdigit() for s in seeds):
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    seeds = [int(s) for s in seeds]
    if set(seeds) - set(SEEDS):
        parser.error(f"unknown seed(s) {sorted(set(seeds) - set(SEEDS))}: the tables pair seeds "
                     f"{', '.join(str(s) for s in SEEDS)} with the sweep's")
    if args.render:
        text = render(collect(args.results))
        print(text)
        if args.docs:
            from benchsuite.reporting.blocks import update_block

            update_block(args.docs, BLOCK, "\n" + text)
        return
    run(args.results, names, [float(r) for r in args.ratios.split(",")], only, seeds)


if __name__ == "__main__":
    main()
