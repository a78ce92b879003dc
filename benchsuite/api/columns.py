"""Table columns of metrics: how a value stored in a record's ``metrics`` is shown in ``benchsuite report``.

A :class:`Column` is plain data (no torch), so that records carry the columns their metrics declared
(``metric_columns``) and the report renders a plugin's metric on a machine where the plugin is not
installed. :data:`STANDARD_COLUMNS` is the built-in table layout, in order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

#: report views (``benchsuite report --view``) other than ``all``, which shows every column
VIEWS = ("ppl", "zeroshot")

Interval = Literal["relative", "points", "range"]


@dataclass(frozen=True)
class Column:
    """One table column: the metric field ``key`` under ``header``.

    The cell is ``format(value * scale / divide) + suffix``. Where the record holds ``<key>_lo`` and ``<key>_hi`` (a 95%
    interval), ``interval`` says how it is shown: ``relative`` (``±N%`` of the value, half the interval),
    ``points`` (``±x``, half the interval, scaled and formatted like the value) or ``range`` (``(lo-hi)``).
    ``noisy`` names a metric field that, when above 0, marks the value ``(noisy)``; ``sd`` shows the
    seed-to-seed standard deviation where several seeds were averaged. ``views`` lists the report views
    besides ``all`` that show the column (``ppl``: perplexity and efficiency; ``zeroshot``: accuracies).
    """

    key: str
    header: str
    format: str = ".4g"
    scale: float = 1.0
    divide: float = 1.0
    suffix: str = ""
    interval: Interval = "range"
    noisy: str | None = None
    sd: bool = False
    views: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"column key {self.key!r} must be a non-empty string")
        if self.interval not in ("relative", "points", "range"):
            raise ValueError(f"column {self.key}: interval {self.interval!r} is not relative, points or range")
        unknown = sorted(set(self.views) - set(VIEWS))
        if unknown:
            raise ValueError(f"column {self.key}: views {unknown} unknown; choose from {', '.join(VIEWS)}")
        if not self.divide:
            raise ValueError(f"column {self.key}: divide must not be 0")
        self.number(1.0)  # a bad format spec fails here, not in the report

    def number(self, value: float) -> str:
        """``value`` scaled and formatted, without the suffix."""
        return f"{value * self.scale / self.divide:{self.format}}"

    def text(self, value: float) -> str:
        """The value as the table shows it (without its interval)."""
        return self.number(value) + self.suffix

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (stored in records as ``metric_columns``)."""
        out = asdict(self)
        out["views"] = list(self.views)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Column:
        """The column a record stored; unknown keys (from a newer benchsuite) are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "views" in values:
            values["views"] = tuple(v for v in values["views"] if v in VIEWS)
        return cls(**values)


def perplexity_column(label: str) -> Column:
    """The column of perplexity on a corpus (``ppl_<label>``)."""
    return Column(f"ppl_{label}", f"PPL {label}", ".2f", interval="relative", sd=True, views=("ppl", "zeroshot"))


#: zero-shot task -> header
TASK_HEADERS = {"boolq": "BoolQ", "piqa": "PIQA", "hellaswag": "HellaS", "winogrande": "WinoG", "arc_easy": "ARC-e",
                "arc_challenge": "ARC-c", "openbookqa": "OBQA", "avg": "avg acc"}


def accuracy_column(task: str) -> Column:
    """The column of a zero-shot accuracy (``acc_<task>``, ``acc_avg`` for the average), in points."""
    return Column(f"acc_{task}", TASK_HEADERS.get(task, task), ".1f", scale=100.0, interval="points",
                  sd=task == "avg", views=("zeroshot",))


_EFFICIENCY = ("ppl",)

#: The built-in table layout, in order. Perplexity on other corpora comes after ``ppl_c4``; columns that
#: records of plugin metrics declare come after these.
STANDARD_COLUMNS: tuple[Column, ...] = (
    perplexity_column("wiki"),
    perplexity_column("c4"),
    *(accuracy_column(task) for task in TASK_HEADERS),
    Column("params", "params (M)", ".1f", divide=1e6, views=_EFFICIENCY),
    Column("params_ratio", "params %", ".1f", scale=100.0, views=("ppl", "zeroshot")),
    Column("flops_per_token", "GFLOPs/tok", ".3f", divide=1e9, views=_EFFICIENCY),
    Column("latency_ms", "latency ms", ".1f", noisy="latency_noisy", views=_EFFICIENCY),
    Column("speedup", "speedup", ".2f", suffix="x", views=_EFFICIENCY),
    Column("latency_sparse_ms", "2:4 kernel ms", ".1f", noisy="latency_sparse_noisy", views=_EFFICIENCY),
    Column("peak_mem_prune_mb", "prune mem MB", ".0f", views=_EFFICIENCY),
    Column("peak_mem_recover_mb", "tune mem MB", ".0f", views=_EFFICIENCY),
    Column("weight_grad_mb", "W-grad MB", ".0f", views=_EFFICIENCY),
    Column("total_time_s", "prune+tune s", ".1f", views=_EFFICIENCY),
)

STANDARD = {c.key: c for c in STANDARD_COLUMNS}
