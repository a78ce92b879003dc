"""Comparison tables from stored records: markdown (tabulate), CSV, or JSON."""

from __future__ import annotations

import io
import json
from typing import Any

import pandas as pd
from tabulate import tabulate

from benchsuite.api.columns import STANDARD_COLUMNS, Column, perplexity_column
from benchsuite.reporting.flips import with_flips
from benchsuite.running.records import settings_hash

#: the built-in layout (see :mod:`benchsuite.api.columns`); a record's ``metric_columns`` add the columns of
#: plugin metrics after these
COLUMNS: list[Column] = list(STANDARD_COLUMNS)


def flat(record: dict[str, Any]) -> dict[str, Any]:
    """One record as stored, minus internal keys; ``metrics`` stays a flat mapping."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def recovery_label(record: dict[str, Any]) -> str:
    """``-`` (dense), ``none``, ``LoRA`` (after pruning) or ``LoRA, during`` (while pruning)."""
    if record.get("method") == "dense":
        return "-"
    setup = record.get("recovery_setup")
    if isinstance(setup, dict) and setup.get("label"):
        return str(setup["label"])
    return "none" if not record.get("recovery") else "LoRA"  # records from before the label existed


def model_labels(records: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(model name, weights digest) -> the name shown: the name, or ``name@digest`` where models of
    one name (e.g. two local folders called ``model``) have different weights."""
    digests: dict[str, set[str]] = {}
    for r in records:
        digests.setdefault(str(r.get("model")), set()).add(str(r.get("weights_sha256")))
    return {(name, d): name if len(ds) == 1 else f"{name}@{d[:8]}" for name, ds in digests.items() for d in ds}


def settings_labels(records: list[dict[str, Any]], keys: list[tuple]) -> dict[int, str]:
    """Record index -> a short label of what sets its settings apart, for rows that would otherwise look
    the same (e.g. one run with zero-shot tasks and one without); empty where nothing differs."""
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for key, r in zip(keys, records):
        groups.setdefault(key, {})[settings_hash(r.get("config") or {})] = r.get("config") or {}
    labels: dict[int, str] = {}
    for i, (key, r) in enumerate(zip(keys, records)):
        variants = groups[key]
        if len(variants) < 2:
            continue
        flat_configs = {h: _flatten(c) for h, c in variants.items()}
        differ = sorted(k for k in set().union(*flat_configs.values())
                        if len({json.dumps(f.get(k), default=str) for f in flat_configs.values()}) > 1)
        mine = settings_hash(r.get("config") or {})
        shown = ", ".join(f"{k}={_short(flat_configs[mine].get(k))}" for k in differ[:3])
        labels[i] = f"{mine[:6]} {shown}" + (", ..." if len(differ) > 3 else "")
    return labels


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if k == "seed" and not prefix:
            continue
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(value: Any) -> str:
    if isinstance(value, list):
        text = ",".join(str(v) for v in value) if value else "none"
    else:
        text = "-" if value is None else str(value)  # a setting the other runs have and this one has not
    return text if len(text) <= 24 else text[:12] + "..." + text[-8:]


def frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (model, profile, method, granularity, recovery, ratio, settings), metrics averaged over
    the seeds that succeeded."""
    names = model_labels(records)
    rows, keys = [], []
    for r in records:
        row = {"model": names[(str(r.get("model")), str(r.get("weights_sha256")))], "profile": r.get("profile"),
               "method": r.get("method"), "recovery": recovery_label(r),
               "ratio": r.get("ratio", 0.0), "seed": r.get("seed"), "status": r.get("status"),
               "granularity": (r.get("granularity") or {}).get("label")
               or (r.get("granularity") or {}).get("name", "-"),
               "error": r.get("error"), "_settings": settings_hash(r.get("config") or {})}
        row.update({k: v for k, v in (r.get("metrics") or {}).items() if k not in row})
        rows.append(row)
        keys.append(tuple(row[k] for k in ("model", "profile", "method", "granularity", "recovery", "ratio")))
    if not rows:
        return pd.DataFrame()
    labels = settings_labels(records, keys)
    for i, row in enumerate(rows):
        row["settings"] = labels.get(i, "")
    df = pd.DataFrame(rows)
    df["_dense"] = df["method"] != "dense"
    keys = ["model", "profile", "_dense", "method", "granularity", "recovery", "ratio", "_settings", "settings"]
    ok = df[df["status"] == "ok"]
    metric_cols = [c for c in ok.columns if c not in (*keys, *_ROW_KEYS) and pd.api.types.is_numeric_dtype(ok[c])]
    counts = df.groupby(keys, sort=False).agg(
        seeds=("seed", lambda s: ",".join(str(x) for x in sorted(set(s)))),
        runs=("status", "size"), failed=("status", lambda s: int((s != "ok").sum())))
    if not ok.empty:
        grouped = ok.groupby(keys, sort=False)
        spread = [c for c in metric_cols if not c.endswith(_INTERVAL_SUFFIXES)]
        out = counts.join(grouped[metric_cols].mean()).join(grouped.size().rename("n"))
        out = out.join(grouped[spread].std(ddof=1).add_suffix("_sd"))
    else:
        out = counts.reindex(columns=[*counts.columns, "n", *metric_cols])
    out["n"] = out["n"].fillna(0).astype(int)
    out = out.reset_index().sort_values(
        ["model", "profile", "_dense", "granularity", "recovery", "method", "ratio", "settings"], kind="stable")
    return out.drop(columns=["_dense", "_settings"])


_ROW_KEYS = ("seed", "status", "error")
#: metric keys ending so are the bounds of another metric's interval (``ppl_wiki_lo``), not metrics
_INTERVAL_SUFFIXES = ("_lo", "_hi", "_sd", "_noisy", "_iqr_ms")


#: which metric columns each view shows (``all``: every column that has a value); ``compact`` (what ``benchsuite
#: run`` prints: it fits 120 columns for the default run) shows wiki perplexity with its interval, the KL
#: divergence to the dense model on wiki (the column that separates methods with the tightest intervals), the share
#: of parameters left and the speedup's value, and no seeds column unless runs were averaged over seeds
VIEWS = {"all": None, **{view: [c.key for c in COLUMNS if view in c.views] for view in ("ppl", "zeroshot")},
         "compact": ["ppl_wiki", "kl_wiki", "params_ratio", "speedup"]}


def _number(row: Any, key: str) -> float | None:
    value = row.get(key)
    return None if value is None or pd.isna(value) else float(value)


def cell(row: Any, column: Column, interval: bool = True) -> str:
    """A metric with its uncertainty, compactly: perplexity ``27.97 ±3%`` (half the 95% interval, relative),
    accuracy ``38.6 ±4.2`` (points), speedup ``1.12x (1.05-1.20)``, latency ``180.2 (noisy)`` where its
    spread or the machine's load made it untrustworthy; ``(sd X, n)`` follows where seeds were averaged.
    How each part is shown is the column's declaration (:class:`benchsuite.api.columns.Column`)."""
    key = column.key
    value = _number(row, key)
    if value is None:
        return "-"
    text = column.text(value)
    lo, hi = _number(row, f"{key}_lo"), _number(row, f"{key}_hi")
    if interval and lo is not None and hi is not None:
        if column.interval == "relative" and value:
            text += f" ±{50 * (hi - lo) / value:.0f}%"
        elif column.interval == "points":
            text += f" ±{column.number((hi - lo) / 2)}"
        else:
            text += f" ({column.number(lo)}-{column.number(hi)})"
    if column.noisy and (_number(row, column.noisy) or 0) > 0:
        text += " (noisy)"
    sd = _number(row, f"{key}_sd")
    if sd is not None and row.get("n", 1) > 1 and column.sd:
        text += f" (sd {column.text(sd)})"
    return text


def separates(df: pd.DataFrame, key: str) -> bool | None:
    """Whether any two rows of ``df`` differ beyond their 95% intervals on ``key`` (one's interval entirely above
    the other's); None where fewer than two rows have an interval (nothing to tell)."""
    if f"{key}_lo" not in df.columns or f"{key}_hi" not in df.columns:
        return None
    bounds = [(float(lo), float(hi)) for lo, hi in zip(df[f"{key}_lo"], df[f"{key}_hi"])
              if not (pd.isna(lo) or pd.isna(hi))]
    if len(bounds) < 2:
        return None
    return max(lo for lo, _ in bounds) > min(hi for _, hi in bounds)


def unseparated(df: pd.DataFrame, columns: list[Column]) -> list[Column]:
    """The ``columns`` on which no two rows differ beyond their 95% intervals (views that can tell nothing apart
    at these sample sizes; a paired comparison, ``benchsuite compare``, may still)."""
    return [c for c in columns if separates(df, c.key) is False]


def declared_columns(records: list[dict[str, Any]]) -> list[Column]:
    """The columns the records' metrics declared (``metric_columns``), first declaration of a key wins;
    a malformed declaration (from another version, say) is left out."""
    out: dict[str, Column] = {}
    for record in records:
        for data in record.get("metric_columns") or []:
            try:
                column = Column.from_dict(data)
            except (TypeError, ValueError, AttributeError):
                continue
            out.setdefault(column.key, column)
    return list(out.values())


def table(records: list[dict[str, Any]], view: str = "all") -> tuple[pd.DataFrame, list[str], list[list[str]]]:
    """The comparison table as :func:`render` prints it: the frame, the headers and the rows of cells
    (empty frame and lists where there are no records). Pruned records get their flips against the dense model
    (:mod:`benchsuite.reporting.flips`)."""
    records = with_flips(records)
    df = frame(records)
    if df.empty:
        return df, [], []
    single = df["model"].nunique() == 1 and df["profile"].nunique() == 1
    with_settings = bool(df["settings"].astype(bool).any())
    compact = view == "compact"
    with_seeds = not compact or bool((df["n"] > 1).any())
    headers = ([] if single else ["model", "profile"]) + ["method", "granularity", "recovery", "ratio"] + (
        ["settings"] if with_settings else []) + (["seeds", "n"] if with_seeds else [])
    shown = VIEWS[view]
    extra_ppl = [c for c in df.columns if c.startswith("ppl_") and c not in ("ppl_wiki", "ppl_c4")
                 and not c.endswith(_INTERVAL_SUFFIXES)]
    columns = COLUMNS[:2] + [perplexity_column(c[4:]) for c in extra_ppl] + COLUMNS[2:]
    known = {c.key for c in columns}
    declared = [c for c in declared_columns(records) if c.key not in known]  # plugin metrics
    columns += declared
    if shown is not None:
        shown = shown + extra_ppl + [c.key for c in declared if view in c.views]
    present = [c for c in columns if c.key in df.columns and df[c.key].notna().any()
               and (shown is None or c.key in shown)]
    if compact:  # in the view's own order (the KL column next to perplexity)
        present.sort(key=lambda c: shown.index(c.key) if c.key in shown else len(shown))
    df.attrs["columns"] = present
    body = []
    for _, row in df.iterrows():
        dense = row["method"] == "dense"
        line = ([] if single else [row["model"], row["profile"]]) + [
            row["method"], "-" if dense else row["granularity"], row["recovery"],
            "-" if dense else f"{row['ratio']:g}"] + ([row["settings"] or "-"] if with_settings else []) + (
            [row["seeds"], str(row["n"])] if with_seeds else [])
        for column in present:
            line.append(cell(row, column, interval=not (compact and column.key == "speedup")))
        status = "ok" if not row["failed"] else f"{row['failed']}/{row['runs']} failed"
        body.append(line + [status])
    return df, headers + [c.header for c in present] + ["status"], body


def _tabulate(body: list[list[str]], headers: list[str], padding: int) -> str:
    """A github-style markdown table; ``padding``: the spaces tabulate adds to each header beyond one (2, its
    default; 0 for the compact view, to fit a terminal)."""
    import tabulate as module

    before = module.MIN_PADDING
    module.MIN_PADDING = padding
    try:
        return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
    finally:
        module.MIN_PADDING = before


def render(records: list[dict[str, Any]], fmt: str = "markdown", view: str = "all") -> str:
    if fmt == "json":
        return json.dumps([flat(r) for r in records], indent=2, default=str)
    df, headers, body = table(records, view)
    if df.empty:
        return "no results yet"
    if fmt == "csv":
        buf = io.StringIO()
        df.to_csv(buf, index=False)
        return buf.getvalue()
    text = _tabulate(body, headers, padding=0 if view == "compact" else 2)
    flat_columns = unseparated(df, df.attrs.get("columns", []))
    if flat_columns:
        text += ("\n\nNo two rows differ beyond their 95% intervals in: " +
                 ", ".join(c.header for c in flat_columns) + " (at these sample sizes; `benchsuite compare` pairs "
                 "the same examples and windows).")
    when = measured(records)
    if df["model"].nunique() == 1 and df["profile"].nunique() == 1:
        text = f"model: {df['model'].iloc[0]} · profile: {df['profile'].iloc[0]}" + (
            f"  \n{when}" if when else "") + f"\n\n{text}"  # (two spaces: a line break in markdown)
    elif when:
        text = f"{when}\n\n{text}"
    return text


def _machine(hardware: dict[str, Any]) -> str:
    device = str(hardware.get("device", "?"))
    if hardware.get("gpu"):
        return str(hardware["gpu"])
    if device == "cpu":
        threads = hardware.get("torch_threads")
        return f"CPU ({hardware.get('cpu_count', '?')} cores" + (
            f", {threads} torch thread{'s' if threads != 1 else ''})" if threads else ")")
    return device


def measured(records: list[dict[str, Any]]) -> str:
    """When and on what the records were measured: ``measured 2026-11-26 on CPU (2 cores, 2 torch threads)``, a
    range of dates and every machine where they differ (the tables state it: a time is a measurement, not a
    property)."""
    dates = sorted({str(r["started_at"])[:10] for r in records if r.get("started_at")})
    machines = sorted({_machine(r["hardware"]) for r in records if isinstance(r.get("hardware"), dict)})
    if not dates:
        return ""
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    return f"measured {when}" + (f" on {', '.join(machines)}" if machines else "")
