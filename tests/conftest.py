"""Shared fixtures, built on :mod:`benchsuite.testing`: tiny random LLaMA models (with and without GQA), a
checkpoint folder with the offline tokenizer, small offline corpora. None of them needs the network;
``default_model_dir`` (the real default model) is for tests marked ``slow``."""

from __future__ import annotations

import contextlib
import gc
import io
import os
from dataclasses import dataclass

import pytest
import torch

from benchsuite import testing

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def tiny_llama(num_heads: int = 4, num_kv_heads: int = 2, layers: int = 8, seed: int = 0):
    """:func:`benchsuite.testing.tiny_llama` with this suite's defaults (GQA: 4 query heads over 2 kv heads)."""
    return testing.tiny_llama(num_heads, num_kv_heads, layers, seed)


@pytest.fixture(params=[(4, 4), (6, 2)], ids=["mha", "gqa"])
def tiny(request):
    heads, kv = request.param
    return tiny_llama(heads, kv)


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def default_model_dir():
    """The real default model (SmolLM2-135M), fetched and converted once into the cache (tests marked slow)."""
    from benchsuite.data.assets import default_model_dir as fetch

    return fetch()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random GQA LLaMA (6 query heads over 2 kv heads, 8 layers) saved as a checkpoint folder,
    with the offline byte-level tokenizer."""
    return testing.save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), heads=6, kv_heads=2, layers=8)


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory):
    """A small offline ``.txt`` corpus (perplexity corpus and LoRA recovery data for smoke runs)."""
    return testing.write_corpus(tmp_path_factory.mktemp("corpus") / "text.txt")


@pytest.fixture(scope="session", autouse=True)
def _frozen_imports():
    """The runner collects garbage before every measured phase (``benchsuite.evaluation.memory``); with torch,
    transformers and peft loaded a full collection takes about 0.2 s. What exists once they are imported is frozen
    (never collected, ``gc.freeze``), so that a collection takes microseconds."""
    import peft  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    import benchsuite.running.runner  # noqa: F401

    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def _one_torch_thread(request):
    """Tiny models run fastest on one torch thread, and two threads on a 2-core machine shared with other work
    stall at every barrier (tens of times slower); tests marked ``slow`` (the real model) keep torch's default."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class CliResult:
    """What ``benchsuite ...`` returned and printed (the shape of ``subprocess.CompletedProcess``)."""

    returncode: int
    stdout: str
    stderr: str


def benchmark_script(name: str):
    """``benchmarks/NAME.py`` as a module (registered under its name: its dataclasses, and the scripts it imports
    from its own folder, are looked up by name)."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).parent.parent / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def bench(*args: str, cwd: str | os.PathLike | None = None) -> CliResult:
    """Run ``benchsuite ARGS`` in this process through :func:`benchsuite.cli.main`, capturing its output."""
    from benchsuite.cli import main

    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse: --help, or a usage error
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    finally:
        os.chdir(here)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def offline(text_corpus, monkeypatch) -> dict:
    """``RunRequest`` fields for a smoke run that needs no download: perplexity, calibration and LoRA recovery on
    the offline text corpus, no zero-shot tasks. The latency's machine-load window is shortened from 0.5 s (the
    tests using this fixture don't check latency; tests/test_latency.py does, with the real window)."""
    from benchsuite.evaluation.latency import MachineLoad

    monkeypatch.setattr(MachineLoad, "MIN_WINDOW_S", 0.02)
    text = str(text_corpus)
    return {"corpora": [text], "recovery_data": text, "calibration_data": text, "tasks": []}
