"""Does LoRAPrune beat LLM-Pruner once the recovery budget grows? A sweep over LoRA steps, with seeds.

LoRAPrune, LLM-Pruner and random+LoRA (the floor) on the default model (SmolLM2-135M) at 50% and 20%
(structured, matched parameter counts), at 40, 200, 1,000 and 2,000 LoRA steps of the ``quick`` batch
(2 x 128 tokens; the same recovery data, tokens and order for every method at one seed), 3 seeds at 40 and 200
steps and 2 at the larger budgets. The records go to ``results/reference`` (40 steps: the ``quick`` profile,
with its zero-shot tasks, beside the default benchmark's records; the others: ``quick-stepsN``, perplexity only).

This is hours of CPU. Points run cheapest first (a budget's 50% seeds, then its 20% seeds, then the next
budget), and every run is a record of its own: stop it any time, run it again, and it goes on where it stopped
(finished runs are skipped). ``--render`` measures nothing: it reads the records that exist and rewrites the
docs/loraprune.md section between ``<!-- budget-sweep -->`` markers (a table per ratio, ``benchsuite compare``'s paired
differences, and where the two methods cross: between which budgets, or, where none is measured, where the last
two budgets' log-log line would put it, labelled as the extrapolation it is) and ``docs/figures/budget-sweep.png``.

    python benchmarks/budget_sweep.py                       # run (or resume) the sweep
    python benchmarks/budget_sweep.py --budgets 40,200      # only these budgets
    python benchmarks/budget_sweep.py --render --readme docs/loraprune.md
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

METHODS = ["loraprune", "llm-pruner", "random+lora"]
RATIOS = [0.5, 0.2]
BUDGETS = {40: [0, 1, 2], 200: [0, 1, 2], 1000: [0, 1], 2000: [0, 1]}
PROFILE_STEPS = 40  # the quick profile's own budget
BLOCK = "budget-sweep"  # the docs block this script owns (docs/loraprune.md)


def profile_name(steps: int) -> str:
    return "quick" if steps == PROFILE_STEPS else f"quick-steps{steps}"


def plan(budgets: list[int]) -> list[tuple[int, float, list[int]]]:
    """(steps, ratio, seeds) in the order they run: cheapest budget first, 50% before 20%."""
    return [(steps, ratio, BUDGETS[steps]) for steps in sorted(budgets) for ratio in RATIOS]


def run(results: Path, budgets: list[int]) -> None:
    from benchsuite.running.runner import Runner, RunRequest

    for steps, ratio, seeds in plan(budgets):
        print(f"budget sweep: {steps} steps, ratio {ratio}, seeds {seeds}", flush=True)
        request = RunRequest(methods=METHODS, ratios=[ratio], seeds=seeds, profile="quick", results=results,
                             train_steps=None if steps == PROFILE_STEPS else steps,
                             tasks=None if steps == PROFILE_STEPS else [])
        Runner(request).run()


def collect(results: Path) -> dict[tuple[int, float, str], list[dict]]:
    """(steps, ratio, method) -> the finished records of the sweep's settings, one per seed."""
    from benchsuite.running.records import latest_attempts, scan

    records, _ = scan(results)
    out: dict[tuple[int, float, str], list[dict]] = {}
    for r in latest_attempts(records):
        if r.get("status") != "ok" or r.get("model") != "smollm2-135m":
            continue
        method = r.get("variant") or r["method"]
        steps = next((s for s in BUDGETS if profile_name(s) == r.get("profile")), None)
        granularity = (r.get("granularity") or {}).get("label")
        if steps is None or method not in METHODS or granularity != "structured" or r.get("ratio") not in RATIOS:
            continue
        if (r.get("config") or {}).get("allocation"):  # another allocation than the sweep's uniform one (issue 35)
            continue
        if r["seed"] not in BUDGETS[steps]:
            continue
        out.setdefault((steps, r["ratio"], method), []).append(r)
    return out


def _cell(runs: list[dict], key: str = "ppl_wiki") -> str:
    values = [r["metrics"][key] for r in runs]
    if not values:
        return "-"
    # below 100 a whole number hides the spread between seeds (38.7 and 38.2 would read "38 ± 0"): one decimal
    digits = 1 if statistics.mean(values) < 100 else 0
    if len(values) == 1:
        r = runs[0]["metrics"]
        return f"{values[0]:,.{digits}f} [{r[f'{key}_lo']:,.{digits}f}, {r[f'{key}_hi']:,.{digits}f}] (n 1)"
    return f"{statistics.mean(values):,.{digits}f} ± {statistics.stdev(values):,.{digits}f} (n {len(values)})"


def comparisons(runs: dict, steps: int, ratio: float) -> list[tuple[int, str, str, str, bool]]:
    """LoRAPrune against LLM-Pruner, paired per seed over the same evaluation windows (``benchsuite compare``)."""
    from benchsuite.reporting.compare import compare_runs, format_difference

    base = {r["seed"]: r for r in runs.get((steps, ratio, "llm-pruner"), [])}
    out = []
    for r in sorted(runs.get((steps, ratio, "loraprune"), []), key=lambda r: r["seed"]):
        if r["seed"] not in base:
            continue
        for d in compare_runs(base[r["seed"]], r, ["ppl_wiki", "ppl_c4"]):
            text, ci = format_difference(d)
            out.append((r["seed"], d.metric, text, ci, d.significant))
    return out


def _quotients(runs: dict, ratio: float) -> list[tuple[int, float]]:
    """(steps, LoRAPrune's mean wiki perplexity / LLM-Pruner's) at every budget where both have records."""
    out = []
    for steps in sorted(BUDGETS):
        ours = [r["metrics"]["ppl_wiki"] for r in runs.get((steps, ratio, "loraprune"), [])]
        theirs = [r["metrics"]["ppl_wiki"] for r in runs.get((steps, ratio, "llm-pruner"), [])]
        if ours and theirs:
            out.append((steps, statistics.mean(ours) / statistics.mean(theirs)))
    return out


def _meet(a: tuple[int, float], b: tuple[int, float]) -> float:
    """Where the line through two (steps, quotient) points, log-log, reaches a quotient of 1."""
    (sa, qa), (sb, qb) = a, b
    t = math.log(qa) / (math.log(qa) - math.log(qb))
    return math.exp(math.log(sa) + t * (math.log(sb) - math.log(sa)))


def _at(a: tuple[int, float], b: tuple[int, float], steps: int) -> float:
    """The quotient the line through two (steps, quotient) points, log-log, gives at ``steps``."""
    (sa, qa), (sb, qb) = a, b
    slope = (math.log(qb) - math.log(qa)) / (math.log(sb) - math.log(sa))
    return math.exp(math.log(qa) + slope * (math.log(steps) - math.log(sa)))


def crossing(runs: dict, ratio: float) -> str:
    """Where (if anywhere) LoRAPrune and LLM-Pruner cross, from the measured budgets, in one sentence."""
    q = _quotients(runs, ratio)
    if len(q) < 2:
        return "Crossing: fewer than two budgets measured for both methods."
    for a, b in zip(q, q[1:]):
        if (a[1] > 1) != (b[1] > 1):
            ahead = "LoRAPrune" if b[1] < 1 else "LLM-Pruner"
            return (f"Crossing: between {a[0]:,} and {b[0]:,} steps ({ahead} ahead from {b[0]:,}; about "
                    f"{_meet(a, b):,.0f} steps on the log-log line between them).")
    first, last = q[0], q[-1]
    leader, trailer = ("LLM-Pruner", "LoRAPrune") if last[1] > 1 else ("LoRAPrune", "LLM-Pruner")
    text = (f"Crossing: none measured; {leader} is ahead at every budget from {first[0]:,} to {last[0]:,} steps. ")
    a, b = q[-2], q[-1]
    if abs(math.log(b[1])) < abs(math.log(a[1])):
        text += (f"The quotient moved from {a[1]:.2f}x to {b[1]:.2f}x between the last two budgets; if it "
                 f"kept that log-log slope, {trailer} would draw level near {_meet(a, b):,.0f} steps "
                 "(an extrapolation from two points, not a measurement)")
        if len(q) >= 3 and abs(math.log(a[1])) < abs(math.log(q[-3][1])) and _meet(q[-3], a) < b[0]:
            text += (f"; the same line through the two budgets before ({q[-3][0]:,} and {a[0]:,}) put it near "
                     f"{_meet(q[-3], a):,.0f} steps, which {b[0]:,} steps did not bear out")
        return text + "."
    moved = "widened" if abs(math.log(b[1])) > abs(math.log(a[1])) else "did not narrow"
    text += f"The gap {moved} between the last two budgets ({a[1]:.2f}x, then {b[1]:.2f}x)"
    if len(q) >= 3 and abs(math.log(a[1])) < abs(math.log(q[-3][1])):  # the narrowing before it: refuted
        text += (f"; the log-log line through the two budgets before ({q[-3][0]:,} and {a[0]:,}), which met near "
                 f"{_meet(q[-3], a):,.0f} steps, gave {_at(q[-3], a, b[0]):.2f}x at {b[0]:,} steps, not the "
                 f"{b[1]:.2f}x measured")
    return text + "."


def render(runs: dict) -> str:
    lines = []
    for ratio in RATIOS:
        lines += [f"**{ratio:.0%} structured**, wiki perplexity (mean ± sd over seeds; one seed: its 95% interval)",
                  "", "| LoRA steps | " + " | ".join(METHODS) + " | LoRAPrune / LLM-Pruner | paired, per seed (wiki; "
                  "\\* significant) |", "| --- |" + " --- |" * (len(METHODS) + 2)]
        for steps in sorted(BUDGETS):
            cells = [_cell(runs.get((steps, ratio, m), [])) for m in METHODS]
            if all(c == "-" for c in cells):
                continue
            ours = [r["metrics"]["ppl_wiki"] for r in runs.get((steps, ratio, "loraprune"), [])]
            theirs = [r["metrics"]["ppl_wiki"] for r in runs.get((steps, ratio, "llm-pruner"), [])]
            quotient = f"{statistics.mean(ours) / statistics.mean(theirs):.2f}x" if ours and theirs else "-"
            paired = "; ".join(f"seed {seed}: {text} {ci}{' *' if significant else ''}"
                               for seed, metric, text, ci, significant in comparisons(runs, steps, ratio)
                               if metric == "ppl_wiki") or "-"
            lines.append(f"| {steps:,} | " + " | ".join(cells) + f" | {quotient} | {paired} |")
        lines += ["", crossing(runs, ratio), ""]
    return "\n".join(lines).rstrip() + "\n"


def figure(runs: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(RATIOS), figsize=(5 * len(RATIOS), 3.8))
    for ax, ratio in zip(axes, RATIOS):
        for method, style in zip(METHODS, ("o-", "s-", "^--")):
            steps = [s for s in sorted(BUDGETS) if runs.get((s, ratio, method))]
            if not steps:
                continue
            means, los, his = [], [], []
            for s in steps:
                rs = runs[(s, ratio, method)]
                means.append(math.exp(statistics.mean(math.log(r["metrics"]["ppl_wiki"]) for r in rs)))
                los.append(min(r["metrics"]["ppl_wiki_lo"] for r in rs))
                his.append(max(r["metrics"]["ppl_wiki_hi"] for r in rs))
            ax.errorbar(steps, means, yerr=[[m - lo for m, lo in zip(means, los)],
                                            [hi - m for m, hi in zip(means, his)]], fmt=style, capsize=3,
                        label=method)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(30, 2700)
        ax.set_xticks(sorted(BUDGETS), [f"{b:,}" for b in sorted(BUDGETS)])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}")  # 40, not 4 x 10^1
        low, high = ax.get_ylim()
        subs = (2.0, 5.0) if high / low > 10 else (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)  # labels must not collide
        ax.yaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=subs))
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.set_xlabel("LoRA steps (2 x 128 tokens each)")
        ax.set_ylabel("wiki perplexity")
        ax.set_title(f"SmolLM2-135M, {ratio:.0%} structured")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.text(0.01, 0.01, "geometric mean over seeds; bars: lowest to highest 95% interval bound of the seeds",
             fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results/reference"))
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)),
                        help="comma-separated LoRA step budgets to run (default: all)")
    parser.add_argument("--render", action="store_true", help="measure nothing: tables and figure from the records")
    parser.add_argument("--readme", type=Path, help="with --render: rewrite this page's budget-sweep section "
                        "(docs/loraprune.md)")
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/budget-sweep.png"))
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",") if b]
    unknown = [b for b in budgets if b not in BUDGETS]
    if unknown:
        raise SystemExit(f"--budgets: {unknown} not in the sweep ({', '.join(map(str, BUDGETS))})")
    if not args.render:
        run(args.results, budgets)
    runs = collect(args.results)
    text = render(runs)
    print(text)
    figure(runs, args.figure)
    if args.readme:
        from benchsuite.reporting.blocks import update_block

        update_block(args.readme, BLOCK, "\n" + text)


if __name__ == "__main__":
    main()
