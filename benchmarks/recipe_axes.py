"""The recipe axes' evidence (issue 35), paired and seeded: OWL against uniform allocation, global against uniform
ranking, and distillation and full fine-tuning against LoRA, on the default model's committed records.

It measures nothing: the records are made by ``benchsuite run`` (the commands are in results/reference/REFERENCE.md,
each at seeds 0 and 1); this script reads them from ``results/reference`` and writes, into the ``recipe-axes`` block
of docs/results.md, one table per comparison: each arm's wiki perplexity (mean ± sd over seeds; one seed: its 95%
interval), and ``benchsuite compare``'s paired difference per seed (the same windows, wiki and c4) with a verdict
over the seeds. A direction "holds" only where every seed's paired interval excludes zero on the same side; a record
that is missing leaves its cell "-" (the verdict says how many seeds it rests on); seeds that gave the same run (a
method that draws no data) are shown as one run, "identical".

    python benchmarks/recipe_axes.py                        # print the tables
    python benchmarks/recipe_axes.py --docs docs/results.md # rewrite the docs block
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from budget_sweep import _cell  # noqa: E402  (the sweep's cell: mean ± sd over seeds, or one seed's interval)

BLOCK = "recipe-axes"  # the docs block this script owns (docs/results.md)
MODEL, PROFILE = "smollm2-135m", "quick"
SEEDS = [0, 1]


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: the record's variant (method plus recovery) and its allocation."""

    label: str
    variant: str
    allocation: str = "uniform"


@dataclass(frozen=True)
class Row:
    """A method at a ratio: the baseline arm and the arms compared with it."""

    method: str
    ratio: float
    granularity: str
    baseline: Arm
    others: tuple[Arm, ...]


@dataclass(frozen=True)
class Comparison:
    title: str
    rows: tuple[Row, ...]


def _allocation_rows(allocation: str, label: str, cases: list[tuple[str, float, str]]) -> tuple[Row, ...]:
    return tuple(Row(m, ratio, gran, Arm("uniform", m), (Arm(label, m, allocation),)) for m, ratio, gran in cases)


def _recovery_row(method: str, lora_variant: str) -> Row:
    return Row(method, 0.5, "structured", Arm("LoRA", lora_variant),
               (Arm("distill", f"{method}+distill"), Arm("full", f"{method}+full")))


COMPARISONS = (
    Comparison("OWL against uniform (`--allocation owl`, m = 5, lambda = 0.08)", _allocation_rows("owl", "OWL", [
        ("wanda", 0.5, "unstructured/row"), ("wanda", 0.6, "unstructured/row"), ("wanda", 0.7, "unstructured/row"),
        ("magnitude", 0.5, "unstructured"), ("magnitude", 0.6, "unstructured"), ("magnitude", 0.7, "unstructured"),
        ("llm-pruner", 0.5, "structured")])),
    Comparison("Global ranking against uniform (`--allocation global`), LLM-Pruner with LoRA",
               _allocation_rows("global", "global", [("llm-pruner", 0.2, "structured"),
                                                       ("llm-pruner", 0.5, "structured")])),
    Comparison("Distillation and full fine-tuning against LoRA, at the same 40 steps of 2 x 128 tokens",
               (_recovery_row("llm-pruner", "llm-pruner"), _recovery_row("magnitude-l2", "magnitude-l2+lora"))),
)


def collect(results: Path) -> dict[tuple[str, str, float, str, int], dict]:
    """(variant, allocation, ratio, granularity, seed) -> the newest finished record of the default model's
    ``quick`` profile (where several settings of one run exist, e.g. another metric selection, the newest)."""
    from benchsuite.running.records import latest_attempts, scan

    records, _ = scan(results)
    out: dict[tuple, dict] = {}
    for r in latest_attempts(records):
        if r.get("status") != "ok" or r.get("model") != MODEL or r.get("profile") != PROFILE:
            continue
        allocation = ((r.get("config") or {}).get("allocation") or {}).get("name", "uniform")
        key = (r.get("variant") or r["method"], allocation, r.get("ratio"),
               (r.get("granularity") or {}).get("label"), r.get("seed"))
        if key not in out or r.get("finished_at", "") > out[key].get("finished_at", ""):
            out[key] = r
    return out


def _runs(records: dict, row: Row, arm: Arm) -> list[dict]:
    return [records[k] for seed in SEEDS
            if (k := (arm.variant, arm.allocation, row.ratio, row.granularity, seed)) in records]


def paired(records: dict, row: Row, arm: Arm) -> list[tuple[int, dict]]:
    """(seed, {metric: Difference}) of ``arm`` against the row's baseline, at every seed both have."""
    from benchsuite.reporting.compare import compare_runs

    out = []
    for seed in SEEDS:
        a = records.get((row.baseline.variant, row.baseline.allocation, row.ratio, row.granularity, seed))
        b = records.get((arm.variant, arm.allocation, row.ratio, row.granularity, seed))
        if a is not None and b is not None:
            out.append((seed, {d.metric: d for d in compare_runs(a, b, ["ppl_wiki", "ppl_c4"])}))
    return out


def verdict(diffs: list, baseline: str, label: str) -> str:
    """Which arm is lower at every seed, with its paired intervals excluding zero; that no seed's interval excludes
    zero; that the points agree but not every interval; or that the seeds disagree."""
    if not diffs:
        return "no paired seed"
    n = f"{len(diffs)} seed{'s' if len(diffs) > 1 else ''}"
    if all(d.hi is not None and d.hi < 0 for d in diffs):
        return f"{label} lower at {n}"
    if all(d.lo is not None and d.lo > 0 for d in diffs):
        return f"{baseline} lower at {n}"
    if all(d.lo is not None and d.lo <= 0 <= d.hi for d in diffs):
        return f"no paired difference at any seed ({n})"
    if all(d.diff < 0 for d in diffs) or all(d.diff > 0 for d in diffs):
        lower = label if diffs[0].diff < 0 else baseline
        return f"{lower} lower at {n}, not every interval excludes 0"
    return f"seeds disagree ({n})"


def _difference(d) -> str:
    from benchsuite.reporting.compare import format_difference

    text, ci = format_difference(d)
    return f"{text} {ci}{' *' if d.significant else ''}"


def _identical(runs: list[dict]) -> bool:
    """Whether the seeds gave the same run (a method that draws no data: magnitude pruning without recovery)."""
    return len(runs) > 1 and len({(r["metrics"]["ppl_wiki"], r["metrics"].get("ppl_c4")) for r in runs}) == 1


def _arm_cell(runs: list[dict]) -> str:
    return _cell(runs[:1]).replace("(n 1)", f"(n {len(runs)}, identical)") if _identical(runs) else _cell(runs)


def render(records: dict) -> str:
    lines = []
    for comparison in COMPARISONS:
        arms = [comparison.rows[0].baseline.label] + [a.label for a in comparison.rows[0].others]
        lines += [f"**{comparison.title}**: wiki perplexity (mean ± sd over seeds; one seed: its 95% interval) and "
                  "the paired differences, per seed, of each arm against the first (relative; 95% interval; "
                  "\\* marked significant)", "",
                  "| method | ratio | " + " | ".join(arms) + " | against | paired wiki, per seed | paired c4, per seed "
                  "| wiki over seeds |", "| --- | --- |" + " --- |" * (len(arms) + 4)]
        for row in comparison.rows:
            cells = [_arm_cell(_runs(records, row, a)) for a in (row.baseline, *row.others)]
            for i, arm in enumerate(row.others):
                pairs = paired(records, row, arm)
                per = {m: "; ".join(f"{seed}: {_difference(d[m])}" for seed, d in pairs) or "-"
                       for m in ("ppl_wiki", "ppl_c4")}
                lead = [row.method, f"{row.ratio:.0%}"] + cells if i == 0 else ["", ""] + [""] * len(cells)
                said = verdict([d["ppl_wiki"] for _, d in pairs], row.baseline.label, arm.label)
                if _identical(_runs(records, row, row.baseline)) and _identical(_runs(records, row, arm)):
                    said += "; the seeds gave the same runs (no data drawn)"
                lines.append("| " + " | ".join(lead) + f" | {arm.label} vs {row.baseline.label} | {per['ppl_wiki']} | "
                             f"{per['ppl_c4']} | {said} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results/reference"))
    parser.add_argument("--docs", type=Path, help="rewrite this page's recipe-axes block (docs/results.md)")
    args = parser.parse_args(argv)
    text = render(collect(args.results))
    print(text)
    if args.docs:
        from benchsuite.reporting.blocks import update_block

        update_block(args.docs, BLOCK, "\n" + text)


if __name__ == "__main__":
    main()
