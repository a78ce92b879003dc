"""llama.cpp opens the suite's GGUF exports of the real default model, dense and structurally pruned, and generates
the tokens transformers generates. ``tox -e interop`` (llama-cpp-python is built from source there); skipped
where llama_cpp is not installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (tox -e interop installs it)")

pytestmark = [pytest.mark.slow, pytest.mark.network]

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "Water boils at a temperature of"]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The dense default model and a structured magnitude-pruned one (50%), each as hf and as GGUF."""
    from benchsuite.models.export import export
    from benchsuite.models.gguf_file import write_gguf
    from benchsuite.running.runner import Runner, RunRequest

    root = tmp_path_factory.mktemp("interop")
    request = RunRequest(methods=["magnitude-l2"], model="smollm2-135m", ratios=[0.5], profile="smoke", tasks=[],
                         results=root / "results", save_models=True)
    runner = Runner(request, log=lambda _: None)
    records = runner.run()
    pruned = next(r for r in records if r["method"] == "magnitude-l2")
    assert pruned["status"] == "ok", pruned.get("error")
    dense_dir = runner.model_info.path
    write_gguf(dense_dir, root / "dense.gguf")
    return {"dense": (dense_dir, root / "dense.gguf"),
            "pruned": (Path(pruned["_path"]).parent / "models" / Path(pruned["_path"]).stem,
                       export(pruned["_path"], "gguf", root / "pruned.gguf"))}


def open_llama_cpp(gguf: Path):
    # a float32 KV cache (llama.cpp's default is float16, which moves logits by ~0.1 and flips near-ties)
    return llama_cpp.Llama(model_path=str(gguf), n_ctx=256, n_threads=2, logits_all=True, verbose=False, seed=0,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


def greedy_llama_cpp(llm, prompt: list[int]) -> list[int]:
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(NEW_TOKENS):
        token = int(llm.scores[llm.n_tokens - 1].argmax())
        out.append(token)
        llm.eval([token])
    return out


@pytest.mark.parametrize("which", ["dense", "pruned"])
def test_llama_cpp_generates_what_transformers_generates(exports, which):
    from benchsuite.models import load_model_dir, load_tokenizer

    folder, gguf = exports[which]
    model = load_model_dir(folder).eval()
    tokenizer = load_tokenizer(folder)
    llm = open_llama_cpp(gguf)
    try:
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            with torch.no_grad():  # greedy, never stopping at EOS (as the llama.cpp loop)
                seq = ids
                for _ in range(NEW_TOKENS):
                    seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], dim=1)
                want_logits = model(seq).logits[0].numpy()
            want = seq[0, ids.shape[1]:].tolist()
            got = greedy_llama_cpp(llm, ids[0].tolist())
            assert got == want, f"{which}: {prompt!r}: llama.cpp {got} != transformers {want}"
            llm.reset()
            llm.eval(seq[0].tolist())  # every position's logits along the same tokens
            diff = float(np.abs(np.asarray(llm.scores[: seq.shape[1]]) - want_logits).max())
            assert diff <= 2e-3, f"{which}: {prompt!r}: llama.cpp's logits differ by {diff}"
    finally:
        llm.close()
