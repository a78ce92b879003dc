"""Figures of stored records, drawn with matplotlib (Agg): quality vs ratio with interval bands, Pareto
views, the zero-shot heatmap and the pruning cost. The HTML report embeds them as SVG; ``benchsuite report
--format png|svg`` writes the same figure objects to files.

Output is deterministic: the same records give the same bytes (fixed SVG hash salt, no date in the
metadata, text kept as text in SVG).
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from benchsuite.api.columns import TASK_HEADERS
from benchsuite.reporting.flips import with_flips
from benchsuite.reporting.tables import _INTERVAL_SUFFIXES, frame
from benchsuite.running.records import slug

#: rcParams every figure is drawn under
STYLE = {
    "svg.hashsalt": "benchsuite",
    "svg.fonttype": "none",
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
#: the metadata written into files (no date, so the bytes depend on the records only)
SVG_METADATA = {"Date": None}
PNG_METADATA = {"Software": None}

#: cost axes of the Pareto views: metric, axis label
PARETO_COSTS = (("params", "parameters (M)", 1e6), ("latency_ms", "latency (ms)", 1.0),
                ("peak_mem_prune_mb", "pruning peak memory (MB)", 1.0))
_LINESTYLES = {"LoRA": "-", "none": "--", "LoRA, during": "-."}
_MARKERS = "osD^vP*Xh<>"


@dataclass
class Figure:
    """One figure: its file-name stem, its title, the matplotlib figure, and hover texts for SVG
    elements (gid -> text, shown as the element's ``<title>``)."""

    name: str
    title: str
    figure: Any
    group: str = ""
    hover: dict[str, str] = field(default_factory=dict)

    def svg(self) -> str:
        """The figure as an SVG element (no XML prolog), hover titles inserted."""
        buf = io.StringIO()
        with _plt().rc_context({**STYLE, "svg.hashsalt": f"benchsuite-{self.name}"}):  # ids unique per figure
            self.figure.savefig(buf, format="svg", metadata=SVG_METADATA, bbox_inches="tight")
        text = buf.getvalue()
        text = text[text.index("<svg"):]
        for gid, hover in self.hover.items():
            text = text.replace(f'<g id="{gid}">', f'<g id="{gid}"><title>{_escape(hover)}</title>', 1)
        return text

    def png(self, dpi: int = 150) -> bytes:
        buf = io.BytesIO()
        with _plt().rc_context(STYLE):
            self.figure.savefig(buf, format="png", metadata=PNG_METADATA, dpi=dpi, bbox_inches="tight")
        return buf.getvalue()

    def close(self) -> None:
        import matplotlib.pyplot as plt

        plt.close(self.figure)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def series_label(row: Any) -> str:
    parts = [str(row["method"]), str(row["granularity"])]
    if row["recovery"] not in ("-", None):
        parts.append(f"{row['recovery']} recovery" if row["recovery"] != "none" else "no recovery")
    if row.get("settings"):
        parts.append(str(row["settings"]))
    return " · ".join(parts)


def _value(row: Any, key: str) -> float | None:
    value = row.get(key)
    if value is None or pd.isna(value):
        return None
    return float(value)


def _has(df: pd.DataFrame, key: str) -> bool:
    return key in df.columns and df[key].notna().any()


def quality_metrics(df: pd.DataFrame) -> list[tuple[str, str, bool]]:
    """(metric, label, lower is better) for the perplexity corpora, the zero-shot average, and the paired distances
    to the dense model present: the average of the zero-shot flips, the KL divergence and top-1 agreement."""
    out = []
    corpora = [c for c in df.columns if c.startswith("ppl_") and not c.endswith(_INTERVAL_SUFFIXES)]
    order = {"ppl_wiki": 0, "ppl_c4": 1}
    for key in sorted(corpora, key=lambda c: (order.get(c, 2), c)):
        if _has(df, key):
            out.append((key, f"perplexity {key[4:]} (log)", True))
    if _has(df, "acc_avg"):
        out.append(("acc_avg", "zero-shot accuracy, average (%)", False))
    if _has(df, "flips_avg"):
        out.append(("flips_avg", "zero-shot flips against dense, average (%)", True))
    paired = sorted(c for c in df.columns if c.startswith(("kl_", "top1_")) and not c.endswith(_INTERVAL_SUFFIXES))
    for key in paired:
        if _has(df, key):
            kind, _, corpus = key.partition("_")
            out.append((key, f"KL to dense, {corpus} (log)", True) if kind == "kl" else
                       (key, f"top-1 agreement with dense, {corpus} (%)", False))
    return out


def _log_scale(key: str) -> bool:
    return key.startswith(("ppl_", "kl_"))


def tasks(df: pd.DataFrame) -> list[str]:
    known = [t for t in TASK_HEADERS if t != "avg"]
    found = [c[4:] for c in df.columns if c.startswith("acc_") and c != "acc_avg"
             and not c.endswith(_INTERVAL_SUFFIXES) and _has(df, c)]
    return [t for t in known if t in found] + sorted(t for t in found if t not in known)


def _scale(key: str) -> float:
    return 100.0 if key.startswith(("acc_", "flips_", "top1_")) else 1.0


def _colours(df: pd.DataFrame) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    methods = sorted({m for m in df["method"] if m != "dense"})
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def figures(records: list[dict[str, Any]]) -> list[Figure]:
    """Every figure of ``records``, per (model, profile): quality vs ratio, Pareto views, the zero-shot heatmaps
    (accuracy and flips per task), the pruning cost and the per-layer ratios of allocations, each where the records
    hold its data."""
    records = with_flips(records)
    df = frame(records)
    if df.empty:
        return []
    df = df[df["n"] > 0]
    groups = list(dict.fromkeys(zip(df["model"], df["profile"])))
    out: list[Figure] = []
    plt = _plt()
    with plt.rc_context(STYLE):
        for model, profile in groups:
            part = df[(df["model"] == model) & (df["profile"] == profile)].reset_index(drop=True)
            prefix = "" if len(groups) == 1 else f"{slug(model)}-{slug(profile)}-"
            where = f"{model} · {profile}"
            own = [r for r in records if (r.get("model"), r.get("profile")) == (model, profile)]
            made = [make(part, where) for make in (quality_vs_ratio, pareto, heatmap, flips_heatmap, pruning_cost)]
            for fig in [*made, layer_ratios(own, where)]:
                if fig is not None:
                    fig.name = prefix + fig.name
                    fig.group = where
                    if prefix:
                        fig.hover = {f"{prefix}{k}": v for k, v in fig.hover.items()}
                        _prefix_gids(fig, prefix)
                    out.append(fig)
    return out


def _prefix_gids(fig: Figure, prefix: str) -> None:
    for artist in fig.figure.findobj():
        gid = artist.get_gid() if hasattr(artist, "get_gid") else None
        if gid:
            artist.set_gid(prefix + gid)


def quality_vs_ratio(df: pd.DataFrame, where: str) -> Figure | None:
    """Rows: quality metrics; columns: granularities; one line per method and recovery with its 95%
    interval band, the dense model at ratio 0 (and as a dotted line)."""
    metrics = quality_metrics(df)
    pruned = df[df["method"] != "dense"]
    if not metrics or pruned.empty:
        return None
    plt = _plt()
    grans = list(dict.fromkeys(pruned["granularity"]))
    colours = _colours(df)
    dense = df[df["method"] == "dense"]
    fig, axes = plt.subplots(len(metrics), len(grans), figsize=(4.6 * len(grans) + 2.6, 3.0 * len(metrics)),
                             squeeze=False, sharex=True)
    handles: dict[str, Any] = {}
    for i, (key, label, _lower) in enumerate(metrics):
        scale = _scale(key)
        for j, gran in enumerate(grans):
            ax = axes[i][j]
            rows = pruned[pruned["granularity"] == gran]
            d = dense.iloc[0] if not dense.empty else None
            dv = _value(d, key) if d is not None else None
            if dv is not None:
                ax.axhline(dv * scale, color="black", linestyle=":", linewidth=1)
                h = ax.plot([0.0], [dv * scale], marker="*", color="black", markersize=9, linestyle="none",
                            label="dense")[0]
                handles.setdefault("dense", h)
            for label_, series in rows.groupby(
                    rows.apply(series_label, axis=1), sort=False):
                series = series.sort_values("ratio")
                first = series.iloc[0]
                xs = [float(x) for x in series["ratio"]]
                ys = [(_value(r, key) or math.nan) * scale for _, r in series.iterrows()]
                if all(math.isnan(y) for y in ys):
                    continue
                lo = [(_value(r, f"{key}_lo") or math.nan) * scale for _, r in series.iterrows()]
                hi = [(_value(r, f"{key}_hi") or math.nan) * scale for _, r in series.iterrows()]
                if dv is not None:
                    xs, ys = [0.0, *xs], [dv * scale, *ys]
                    lo = [(_value(d, f"{key}_lo") or dv) * scale, *lo]
                    hi = [(_value(d, f"{key}_hi") or dv) * scale, *hi]
                colour = colours.get(first["method"])
                h = ax.plot(xs, ys, color=colour, linestyle=_LINESTYLES.get(first["recovery"], "-"),
                            marker=_MARKERS[sorted(colours).index(first["method"]) % len(_MARKERS)],
                            markersize=4, linewidth=1.4, label=label_)[0]
                if not all(math.isnan(v) for v in lo[1:]):
                    ax.fill_between(xs, lo, hi, color=colour, alpha=0.12, linewidth=0)
                handles.setdefault(f"{first['method']} · {first['recovery']}", h)
            if _log_scale(key):
                ax.set_yscale("log")
            if i == 0:
                ax.set_title(f"{gran}")
            if j == 0:
                ax.set_ylabel(label)
            if i == len(metrics) - 1:
                ax.set_xlabel("pruning ratio (fraction of decoder weights removed)")
    fig.suptitle(f"Quality vs pruning ratio, 95% interval bands ({where})")
    fig.legend(list(handles.values()), [_legend(k) for k in handles], loc="center left",
               bbox_to_anchor=(1.0, 0.5), frameon=False, title="method · recovery")
    fig.tight_layout()
    return Figure("quality-vs-ratio", "Quality vs pruning ratio", fig)


def _legend(key: str) -> str:
    if key == "dense":
        return "dense"
    method, recovery = key.split(" · ", 1)
    return f"{method} · {'no recovery' if recovery == 'none' else recovery}"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (both minimised), by x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def pareto(df: pd.DataFrame, where: str) -> Figure | None:
    """Quality (rows: the first perplexity corpus, the zero-shot average) against parameters, latency and
    pruning peak memory; the points on the Pareto front are circled and joined."""
    found = quality_metrics(df)
    metrics = list(dict.fromkeys(found[:1] + [m for m in found if m[0] == "acc_avg"]))
    costs = [c for c in PARETO_COSTS if _has(df, c[0])]
    if not metrics or not costs:
        return None
    plt = _plt()
    colours = _colours(df)
    fig, axes = plt.subplots(len(metrics), len(costs), figsize=(4.2 * len(costs) + 2.6, 3.2 * len(metrics)),
                             squeeze=False)
    handles: dict[str, Any] = {}
    for i, (key, label, lower) in enumerate(metrics):
        scale = _scale(key)
        for j, (cost, cost_label, divide) in enumerate(costs):
            ax = axes[i][j]
            pts, rows = [], []
            for _, r in df.iterrows():
                x, y = _value(r, cost), _value(r, key)
                if x is None or y is None:
                    continue
                pts.append((x / divide, y * scale))
                rows.append(r)
            for (x, y), r in zip(pts, rows):
                dense = r["method"] == "dense"
                colour = "black" if dense else colours.get(r["method"])
                marker = "*" if dense else _MARKERS[sorted(colours).index(r["method"]) % len(_MARKERS)]
                filled = r["recovery"] != "none"
                h = ax.scatter([x], [y], marker=marker, s=60 if dense else 28, edgecolors=colour,
                               facecolors=colour if filled else "none", linewidths=1.0, zorder=3)
                handles.setdefault("dense" if dense else f"{r['method']} · {r['recovery']}", h)
            front = pareto_front([(x, y if lower else -y) for x, y in pts])
            if front:
                fx, fy = [pts[k][0] for k in front], [pts[k][1] for k in front]
                ax.step(fx, fy, where="post", color="grey", linewidth=1, zorder=2)
                h = ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="red", linewidths=1.2, zorder=4)
                handles.setdefault("Pareto front", h)
            if _log_scale(key):
                ax.set_yscale("log")
            ax.set_xlabel(cost_label)
            if j == 0:
                ax.set_ylabel(label)
    fig.suptitle(f"Pareto views: quality against cost; red circles mark the Pareto front ({where})\n"
                 "(hollow markers: no recovery)")
    fig.legend(list(handles.values()), [k if k in ("dense", "Pareto front") else _legend(k) for k in handles],
               loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return Figure("pareto", "Pareto views", fig)


def _row_label(r: Any) -> str:
    if r["method"] == "dense":
        return "dense"
    return f"{series_label(r)} · {r['ratio']:g}"


def heatmap(df: pd.DataFrame, where: str) -> Figure | None:
    """Per-task zero-shot accuracy, one row per method, ratio and recovery; hover a cell for its 95% interval. A
    task on which no two rows differ beyond their intervals is greyed (it tells nothing apart at these sizes)."""
    return _task_heatmap(df, where, "acc", "zero-shot-heatmap", "Zero-shot accuracy per task", "accuracy")


def flips_heatmap(df: pd.DataFrame, where: str) -> Figure | None:
    """Per-task flips: the share of each task's examples whose correctness changed against the dense model, one row
    per pruned method, ratio and recovery; greyed as the accuracy heatmap."""
    return _task_heatmap(df[df["method"] != "dense"], where, "flips", "zero-shot-flips",
                         "Zero-shot flips against dense per task", "flips")


def _task_heatmap(df: pd.DataFrame, where: str, prefix: str, name: str, title: str, what: str) -> Figure | None:
    from benchsuite.reporting.tables import separates

    names = [t for t in tasks(df) if _has(df, f"{prefix}_{t}")]
    rows = df[df[[f"{prefix}_{t}" for t in names]].notna().any(axis=1)] if names else df.iloc[0:0]
    if rows.empty:
        return None
    plt = _plt()
    from matplotlib.patches import Rectangle

    columns = names + (["avg"] if _has(df, f"{prefix}_avg") else [])
    flat = {task for task in columns if separates(rows, f"{prefix}_{task}") is False}
    fig, ax = plt.subplots(figsize=(1.0 * len(columns) + 4.5, 0.32 * len(rows) + 1.6))
    cmap = plt.get_cmap("viridis")
    hover = {}
    for i, (_, r) in enumerate(rows.iterrows()):
        for j, task in enumerate(columns):
            v = _value(r, f"{prefix}_{task}")
            if v is None:
                continue
            gid = f"{prefix}-heat-{i}-{j}"
            grey = task in flat
            ax.add_patch(Rectangle((j, i), 1, 1, facecolor="#e6e6e6" if grey else cmap(v), edgecolor="white",
                                   gid=gid))
            ax.text(j + 0.5, i + 0.5, f"{100 * v:.0f}", ha="center", va="center", fontsize=8,
                    color="#8a8a8a" if grey else ("white" if v < 0.6 else "black"))
            lo, hi = _value(r, f"{prefix}_{task}_lo"), _value(r, f"{prefix}_{task}_hi")
            interval = f", 95% interval {100 * lo:.1f}-{100 * hi:.1f}" if lo is not None and hi is not None else ""
            hover[gid] = f"{_row_label(r)}, {TASK_HEADERS.get(task, task)}: {100 * v:.1f}%{interval}" + (
                " (no two rows apart beyond their intervals on this task)" if grey else "")
    ax.set_xlim(0, len(columns))
    ax.set_ylim(len(rows), 0)
    ax.set_xticks([j + 0.5 for j in range(len(columns))],
                  [TASK_HEADERS.get(t, t) + (" *" if t in flat else "") for t in columns])
    ax.set_yticks([i + 0.5 for i in range(len(rows))], [_row_label(r) for _, r in rows.iterrows()])
    ax.grid(False)
    ax.tick_params(length=0)
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig.colorbar(ScalarMappable(Normalize(0, 100), cmap), ax=ax, label=f"{what} (%)", fraction=0.04)
    note = "\n* grey: no two rows differ beyond their 95% intervals" if flat else ""
    ax.set_title(f"{title} (%), hover a cell for its 95% interval ({where}){note}")
    fig.tight_layout()
    return Figure(name, title, fig, hover=hover)


def pruning_cost(df: pd.DataFrame, where: str) -> Figure | None:
    """Pruning time (and prune + tune), peak memory while pruning, and memory held by weight gradients."""
    pruned = df[df["method"] != "dense"]
    panels = [(keys, label) for keys, label in (
        (("prune_time_s", "total_time_s"), "time (s): pruning, and pruning + tuning"),
        (("peak_mem_prune_mb",), "pruning peak memory (MB)"),
        (("weight_grad_mb",), "weight-gradient memory (MB)"),
    ) if any(_has(pruned, k) for k in keys)]
    if pruned.empty or not panels:
        return None
    plt = _plt()
    colours = _colours(df)
    labels = [_row_label(r) for _, r in pruned.iterrows()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels) + 4.0, 0.3 * len(pruned) + 1.6),
                             squeeze=False, sharey=True)
    ys = list(range(len(pruned)))
    for ax, (keys, label) in zip(axes[0], panels):
        cs = [colours.get(m) for m in pruned["method"]]
        for k, key in reversed(list(enumerate(keys))):  # the total (pale) behind, its first part in front
            if not _has(pruned, key):
                continue
            vals = [_value(r, key) or 0.0 for _, r in pruned.iterrows()]
            ax.barh(ys, vals, color=cs, alpha=0.35 if k else 1.0, height=0.7, zorder=3 - k)
        ax.set_xlabel(label)
        ax.grid(axis="y", visible=False)
    axes[0][0].set_yticks(ys, labels)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"Pruning cost per run ({where}); time: solid = pruning, pale = pruning + tuning")
    fig.tight_layout()
    return Figure("pruning-cost", "Pruning cost", fig)


def layer_ratios(records: list[dict[str, Any]], where: str) -> Figure | None:
    """Each layer's pruning ratio, one line per run whose allocation was not uniform (the records'
    ``allocation.layer_ratios``), the run's target dashed."""
    runs = [r for r in records if r.get("status") == "ok" and isinstance(r.get("allocation"), dict)
            and r["allocation"].get("layer_ratios")]
    if not runs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    cmap = plt.get_cmap("tab10")
    for i, r in enumerate(sorted(runs, key=lambda r: (str(r.get("variant")), r.get("ratio", 0), r.get("seed", 0)))):
        ratios = {int(k): float(v) for k, v in r["allocation"]["layer_ratios"].items()}
        layers = sorted(ratios)
        colour = cmap(i % 10)
        label = f"{r.get('variant')} · {r['allocation']['name']} · {r.get('ratio', 0):g} · seed {r.get('seed', 0)}"
        ax.plot(layers, [ratios[k] for k in layers], marker=".", color=colour, label=label)
        target = r["allocation"].get("target", (r.get("ratio_basis") or {}).get("unit_ratio", r.get("ratio", 0)))
        ax.axhline(target, color=colour, linestyle=":", linewidth=0.8)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("fraction of the layer's prunable units removed")
    ax.set_title(f"Per-layer ratios of the allocations ({where}); dotted: the run's unit ratio")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    fig.tight_layout()
    return Figure("layer-ratios", "Per-layer ratios of the allocations", fig)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)
