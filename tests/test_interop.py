"""llama.cpp opens the suite's GGUF exports of the real default model, dense and structurally pruned, and generates
the tokens transformers generates; on a tiny checkpoint of every family with a llama.cpp layout, dense, 2:4 and
(Llama layout) structured, it computes transformers' logits. ``tox -e interop`` (llama-cpp-python is built from
source there); skipped where llama_cpp is not installed."""

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


# -- every family llama.cpp has a layout for: tiny random checkpoints, dense, 2:4 and (Llama layout) structured ----
#: family -> config overrides: Mistral without its window (llama.cpp's Llama graph has none), Qwen3-MoE renormalising
#: its top-k weights (as llama.cpp's graph does, and as Qwen3-30B-A3B); Gemma 2/3 keep their 16-token windows
FAMILIES = {"llama": {}, "mistral": {"sliding_window": None}, "qwen2": {}, "qwen3": {}, "gemma2": {}, "gemma3": {},
            "granite": {}, "olmo2": {}, "phi3": {}, "mixtral": {}, "qwen3-moe": {"norm_topk_prob": True}}
VOCAB = 264  # the offline tokenizer's 260 tokens, one merged token (benchsuite.testing.add_a_merge), and room
LAYERS = 6  # Gemma 3's pattern: five sliding-window layers, then a global one
LENGTH = 48  # three times Gemma's 16-token window: the sliding layers see a window, not the whole sequence


def _pruned(family: str, granularity, folder: Path) -> Path:
    from benchsuite.models.checkpoint import save_pruned
    from benchsuite.testing import offline_tokenizer, tiny_model

    model = tiny_model(family, 6, 2, LAYERS, config=FAMILIES[family], vocab_size=VOCAB)
    groups = granularity.units(model, list(range(LAYERS)))
    gen = torch.Generator().manual_seed(1)
    if getattr(granularity, "n", None):  # 2:4: element scores
        from benchsuite.api.model import decoder_layers

        layers = decoder_layers(model)
        scores = [torch.rand(layers[g.layer].get_submodule(g.members[0].module).weight.shape, generator=gen)
                  for g in groups]
    else:
        scores = [torch.rand(g.size, generator=gen) for g in groups]
    masks = granularity.select(groups, scores, 0.5)
    granularity.apply_masks(model, groups, masks)
    return save_pruned(granularity.finalize(model, groups, masks), folder, tokenizer=offline_tokenizer())


def _cases():
    for family in FAMILIES:
        yield family, "dense"
        yield family, "2:4"
        if family in ("llama", "mistral", "qwen2"):  # llama.cpp's deci: the Llama layout with per-layer widths
            yield family, "structured"


@pytest.mark.parametrize(("family", "shape"), list(_cases()))
def test_llama_cpp_computes_what_transformers_computes_for_every_family(family, shape, tmp_path):
    from benchsuite.models.checkpoint import load_model_dir
    from benchsuite.models.gguf_file import write_gguf
    from benchsuite.testing import add_a_merge, save_tiny_model
    from benchsuite_plugins.granularities import NM, Structured

    if shape == "dense":
        folder = save_tiny_model(tmp_path / "model", 6, 2, LAYERS, family=family, config=FAMILIES[family],
                                 vocab_size=VOCAB)
    else:
        folder = _pruned(family, NM(n=2, m=4) if shape == "2:4" else Structured(), tmp_path / "model")
    gguf = write_gguf(add_a_merge(folder), tmp_path / "model.gguf")
    tokens = torch.randint(0, 256, (1, LENGTH), generator=torch.Generator().manual_seed(0))
    model = load_model_dir(folder).eval()
    with torch.no_grad():
        want = model(tokens).logits[0].numpy()
    llm = open_llama_cpp(gguf)
    try:
        llm.eval(tokens[0].tolist())
        got = np.asarray(llm.scores[:LENGTH])
    finally:
        llm.close()
    diff = float(np.abs(got - want).max())
    scale = float(np.abs(want).max())
    # ggml computes GELU from a float16 table (Gemma's MLP): 2-4e-3 on logits of about 14; SiLU families agree
    # within 1e-4 of the logits' scale
    tolerance = (5e-4 if family.startswith("gemma") else 1e-4) * max(scale, 1.0)
    assert diff <= tolerance, f"{family} {shape}: llama.cpp's logits differ by {diff} (scale {scale})"
