"""Which columns of the default table can tell the default methods apart, and by how much they must differ.

For each column of a profile's evaluation, from the records of one invocation (seed 0 of each method at one
ratio, and the dense record): the number of units it averages over (windows, examples), and its **minimal
detectable difference** (MDD): the smallest true difference between two methods that a two-sided test at 5% finds
with 80% power, ``(1.96 + 0.84) x SE`` of the difference. Unpaired, as two rows' intervals are read side by side
(``SE = sqrt(var_a / n + var_b / n)``); paired, as ``benchsuite compare`` reads them (the same windows or examples:
``SE = sd(a_i - b_i) / sqrt(n)``). Variances are the records' own (per window: mean NLL, KL and top-1 agreement
per token; per example: correct or not), medians over the methods (unpaired) and over the method pairs (paired).
Then, for every pair of methods, whether the two rows' 95% intervals exclude each other.

    python benchmarks/detectable_differences.py --ratio 0.5 --out benchmarks/results/detectable_differences.json \
        --docs docs/methodology.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BLOCK = "detectable-differences"
Z = 1.96 + 0.8416  # two-sided 5% test, 80% power
#: the default run's methods (variants: the one-shot criteria with the same LoRA recovery)
METHODS = ["loraprune", "llm-pruner", "magnitude-l2+lora", "random+lora"]


def _pick(records: list[dict], variant: str, ratio: float | None, profile: str) -> dict:
    """The newest seed-0 record of ``variant`` (uniform allocation), one measured with fidelity where there is."""
    found = [r for r in records if r.get("variant", r.get("method")) == variant and r.get("profile") == profile
             and r.get("status") == "ok" and r.get("seed", 0) == 0 and (ratio is None or r.get("ratio") == ratio)
             and not r.get("allocation")]
    with_kl = [r for r in found if any(k.startswith("kl_") for k in r.get("metrics", {}))] or found
    if not with_kl:
        raise SystemExit(f"no record of {variant} at ratio {ratio} in profile {profile}")
    return max(with_kl, key=lambda r: r.get("finished_at") or "")


def _units(record: dict) -> dict[str, list[float]]:
    """Per-unit values of each column: windows (perplexity as mean NLL per token, KL, top-1) and examples."""
    from benchsuite.evaluation.stats import decode_bits

    out: dict[str, list[float]] = {}
    m = record.get("measurement", {})
    for key, detail in m.items():
        if key.startswith("ppl_") and isinstance(detail, dict) and "window_nll" in detail:
            nll = detail["window_nll"]
            nll = json.loads(nll) if isinstance(nll, str) else nll
            out[key] = [x / detail["window_tokens"] for x in nll]
        if key.startswith("kl_") and isinstance(detail, dict) and "window_kl" in detail:
            label = key[3:]
            out[key] = list(detail["window_kl"])
            out[f"top1_{label}"] = list(detail["window_top1"])
    tasks = (m.get("zeroshot") or {}).get("tasks", {})
    everything: list[float] = []
    for task, result in tasks.items():
        if result.get("correct"):
            bits = [float(b) for b in decode_bits(result["correct"])]
            out[f"acc_{task}"] = bits
            everything += bits
    if everything:
        out["acc_avg"] = everything
    return out


def _var(values: list[float]) -> float:
    return statistics.pvariance(values) if len(values) > 1 else 0.0


def analyse(results: Path, profile: str, ratio: float, methods: list[str]) -> dict[str, Any]:
    from benchsuite.cli import stored_records

    records = stored_records(results)
    picked = {m: _pick(records, m, ratio, profile) for m in methods}
    units = {m: _units(r) for m, r in picked.items()}
    columns = sorted(set.intersection(*(set(u) for u in units.values())),
                     key=lambda k: (not k.startswith("ppl_"), not k.startswith("kl_"), not k.startswith("top1_"), k))
    out: dict[str, Any] = {"profile": profile, "ratio": ratio, "methods": methods,
                           "records": {m: Path(r["_path"]).name for m, r in picked.items()}, "columns": {}}
    for key in columns:
        n = len(units[methods[0]][key])
        unpaired = [Z * math.sqrt(2 * _var(units[m][key]) / n) for m in methods]
        paired, apart, pairs = [], 0, []
        for a, b in itertools.combinations(methods, 2):
            diff = [x - y for x, y in zip(units[a][key], units[b][key])]
            paired.append(Z * statistics.pstdev(diff) / math.sqrt(n) if n > 1 else float("nan"))
            metric = picked[a]["metrics"], picked[b]["metrics"]
            lo_hi = [(mm.get(f"{key}_lo"), mm.get(f"{key}_hi")) for mm in metric]
            if None not in lo_hi[0] and None not in lo_hi[1]:
                excluded = lo_hi[0][1] < lo_hi[1][0] or lo_hi[1][1] < lo_hi[0][0]
                apart += excluded
                pairs.append({"pair": f"{a} / {b}", "intervals_exclude": bool(excluded)})
        out["columns"][key] = {"n": n, "mdd_unpaired": statistics.median(unpaired),
                               "mdd_paired": statistics.median(paired), "pairs_apart": apart,
                               "pairs": len(pairs), "pair_detail": pairs}
    return out


def _fmt(key: str, value: float) -> str:
    if key.startswith("ppl_"):  # a difference of mean NLL per token: a factor on perplexity
        return f"{100 * (math.exp(value) - 1):.1f}% of perplexity"
    if key.startswith(("acc_", "top1_")):
        return f"{100 * value:.1f} points"
    return f"{value:.3f} nats"


def markdown(data: dict[str, Any]) -> str:
    unit = {"ppl": "windows", "kl": "windows", "top1": "windows", "acc": "examples"}
    lines = [f"Profile `{data['profile']}`, ratio {data['ratio']:g}, seed 0 of {', '.join(data['methods'])} "
             f"(`python benchmarks/detectable_differences.py`; 80% power, two-sided 5%):", "",
             "| column | averaged over | MDD, unpaired (two rows) | MDD, paired (`compare`) | method pairs whose 95% "
             "intervals exclude each other |", "| --- | --- | --- | --- | --- |"]
    for key, c in data["columns"].items():
        lines.append(f"| `{key}` | {c['n']} {unit[key.split('_')[0]]} | {_fmt(key, c['mdd_unpaired'])} | "
                     f"{_fmt(key, c['mdd_paired'])} | {c['pairs_apart']} of {c['pairs']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "reference")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--docs", type=Path, help="rewrite the <!-- detectable-differences --> block of this file")
    parser.add_argument("--render", type=Path, help="render a JSON written earlier instead of measuring")
    args = parser.parse_args(argv)
    data = json.loads(args.render.read_text()) if args.render else analyse(
        args.results, args.profile, args.ratio, [m.strip() for m in args.methods.split(",") if m.strip()])
    if args.out:
        args.out.write_text(json.dumps(data, indent=1) + "\n")
    text = markdown(data)
    print(text)
    if args.docs:
        from benchsuite.reporting.blocks import replace_block

        args.docs.write_text(replace_block(args.docs.read_text(), BLOCK, text))


if __name__ == "__main__":
    main()
