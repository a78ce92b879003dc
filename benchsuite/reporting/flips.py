"""Flips: the zero-shot examples whose correctness a pruned model changed against the dense model's.

Dutta et al. ("Accuracy is not all you need", 2024) show that compressed models with the dense model's accuracy
still change many of its individual answers, correct to wrong and wrong to correct, which an accuracy difference
hides. Records keep each example's correctness (``measurement.zeroshot.tasks.<task>.correct``, with the documents'
ids), so flips are read from a pruned record and the dense record of the same model, profile and tasks, paired
per document: ``flips_<task>`` (the fraction of the task's examples whose correctness differs, with a bootstrap
interval over examples) and ``flips_avg`` (their mean over tasks, interval as the accuracy average's).
"""

from __future__ import annotations

from typing import Any

from benchsuite.api.columns import TASK_HEADERS, Column
from benchsuite.evaluation import stats
from benchsuite.evaluation.zeroshot import average_interval, task_doc_ids


def flip_column(task: str) -> Column:
    """The column of a task's flip rate (``flips_<task>``; ``flips_avg`` for the mean over tasks), in %."""
    header = "flips avg %" if task == "avg" else f"flips {TASK_HEADERS.get(task, task)} %"
    return Column(f"flips_{task}", header, ".1f", scale=100.0, interval="points",
                  views=("zeroshot",) if task == "avg" else ())  # per task: the full table (--view all)


def _tasks(record: dict[str, Any]) -> dict[str, Any]:
    zeroshot = (record.get("measurement") or {}).get("zeroshot") or {}
    tasks = zeroshot.get("tasks") if isinstance(zeroshot, dict) else None
    return tasks if isinstance(tasks, dict) else {}


def flips(dense: dict[str, Any], pruned: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """Metric values (``flips_<task>``, ``_lo``, ``_hi``, and ``flips_avg``) and per-task counts, for the tasks both
    records scored on the same documents; empty where there are none."""
    values: dict[str, float] = {}
    counts: dict[str, Any] = {}
    by_task: list[list[int]] = []
    reference = _tasks(dense)
    for task, entry in sorted(_tasks(pruned).items()):
        ref = reference.get(task)
        if not isinstance(ref, dict) or "correct" not in ref or "correct" not in entry:
            continue
        mine = dict(zip(task_doc_ids(entry), stats.decode_bits(entry["correct"])))
        theirs = dict(zip(task_doc_ids(ref), stats.decode_bits(ref["correct"])))
        if set(mine) != set(theirs):  # other documents (another --limit): not paired
            continue
        bits = [int(mine[d] != theirs[d]) for d in sorted(mine)]
        lo, hi = stats.mean_interval(bits)
        values |= {f"flips_{task}": sum(bits) / len(bits), f"flips_{task}_lo": lo, f"flips_{task}_hi": hi}
        counts[task] = {"examples": len(bits), "flips": sum(bits),
                        "to_wrong": sum(1 for d in mine if theirs[d] and not mine[d]),
                        "to_right": sum(1 for d in mine if mine[d] and not theirs[d]),
                        "bits": stats.encode_bits(bits), "documents": sorted(mine)}
        by_task.append(bits)
    if by_task:
        lo, hi = average_interval(by_task)
        values |= {"flips_avg": sum(sum(b) / len(b) for b in by_task) / len(by_task), "flips_avg_lo": lo,
                   "flips_avg_hi": hi}
    return values, counts


def with_flips(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` with each pruned record's flips against the dense record of its model (name and weights),
    profile and tasks added to its metrics, and each example's flip to ``measurement.flips`` (for paired comparisons;
    copies: the records on disk are not changed)."""
    dense: dict[tuple, dict[str, Any]] = {}
    for record in records:
        if record.get("method") == "dense" and record.get("status") == "ok" and _tasks(record):
            dense[(record.get("model"), record.get("weights_sha256"), record.get("profile"))] = record
    out = []
    for record in records:
        ref = dense.get((record.get("model"), record.get("weights_sha256"), record.get("profile")))
        if record.get("method") == "dense" or ref is None or not _tasks(record):
            out.append(record)
            continue
        values, counts = flips(ref, record)
        if not values:
            out.append(record)
            continue
        tasks = [key[6:] for key in values if not key.endswith(("_lo", "_hi"))]
        out.append(record | {"metrics": dict(record.get("metrics") or {}) | values,
                             "measurement": dict(record.get("measurement") or {}) | {"flips": counts},
                             "metric_columns": [*(record.get("metric_columns") or []),
                                                *(flip_column(t).as_dict() for t in tasks)]})
    return out
