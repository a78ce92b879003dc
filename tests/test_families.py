"""Every built-in model family, on tiny random checkpoints made with its own transformers config class (6 query heads
over 2 key/value heads): structured masks equal removal, the saved model reloads in the suite, and the ``hf`` export
opens in plain transformers (benchsuite not importable) as *that* family with the suite's logits; N:M and
unstructured exports are plain checkpoints of the family. Families described as not prunable, and model types no
plugin describes, are refused before any work. Mixtures of experts (4 experts, 2 routed per token) are pruned by each
expert's channels and by whole experts with their router rows, and exported as their family's fused experts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from benchsuite.api import ConfigError
from benchsuite.api.architecture import Architecture, architecture_of, use_architectures
from benchsuite.api.model import decoder_layers
from benchsuite.host import get_registry
from benchsuite.models.checkpoint import load_model_dir, save_pruned
from benchsuite.models.export import export
from benchsuite.running.runner import Runner, RunRequest
from benchsuite.testing import add_a_merge, offline_tokenizer, save_tiny_model, tiny_model
from benchsuite_plugins.granularities import NM, Experts, Structured, Unstructured
from tests.test_export import NO_BENCHSUITE

MOE = ["mixtral", "qwen3-moe"]
PRUNABLE = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "granite", "olmo2", "phi3", *MOE]
LAYERS = 6

# plain transformers: any import of benchsuite fails, as where it is not installed; prints, per folder, the class it
# opened as and where its logits were written
OUTSIDE = NO_BENCHSUITE + textwrap.dedent('''
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokens = torch.tensor(json.loads(sys.argv[1]))
    found = {}
    for folder in sys.argv[2:]:
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
        AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        with torch.no_grad():
            torch.save(model(tokens).logits, folder + ".logits.pt")
        found[folder] = type(model).__name__
    found["modules"] = sorted(m for m in sys.modules if m.startswith("benchsuite"))
    print()
    print("RESULT", json.dumps(found))
''')


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def _tokens():
    return torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))


def _masks(granularity, groups, ratio=0.5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return granularity.select(groups, [torch.rand(g.size, generator=gen) for g in groups], ratio)


def _element_scores(model, groups, seed=1):
    gen = torch.Generator().manual_seed(seed)
    layers = decoder_layers(model)
    return [torch.rand(layers[g.layer].get_submodule(g.members[0].module).weight.shape, generator=gen) for g in groups]


@pytest.mark.parametrize("family", PRUNABLE)
def test_every_family_prunes_exactly_reloads_and_exports_as_itself(family, tmp_path):
    tokens = _tokens()
    arch = architecture_of(tiny_model(family, 6, 2, LAYERS))
    folders, want = [], {}
    structured = [(attention, Structured(attention=attention)) for attention in ("heads", "kv-groups")]
    if arch.experts:
        structured.append(("experts", Experts()))
    for attention, gran in structured:
        model = tiny_model(family, 6, 2, LAYERS)
        groups = gran.units(model, list(range(LAYERS)))
        masks = _masks(gran, groups)
        dense = _logits(model, tokens)
        gran.apply_masks(model, groups, masks)
        masked = _logits(model, tokens)
        assert (masked - dense).abs().max() > 1e-3, "masking must change the model"
        pruned = gran.finalize(model, groups, masks)
        removed = _logits(pruned, tokens)
        assert (removed - masked).abs().max() <= 1e-5, f"{family} {attention}: masked logits differ from removed ones"
        for path in arch.cut_with_heads:  # OLMo 2: the norms shrink with the heads
            q = pruned.model.layers[0].self_attn.q_proj.out_features
            k = pruned.model.layers[0].self_attn.k_proj.out_features
            width = pruned.model.layers[0].get_submodule(path).weight.shape[0]
            assert width == (q if arch.cut_with_heads[path] == "q" else k)
        if arch.experts and attention == "experts":  # every layer keeps the router's top-k experts; rows go along
            for layer in decoder_layers(pruned):
                assert len(layer.get_submodule(arch.experts)) == 2
                assert layer.get_submodule(arch.router).weight.shape[0] == 2
        elif arch.experts:  # every expert of a layer loses the same channels' count
            for layer in decoder_layers(pruned):
                widths = {e.gate_linear.out_features for e in layer.get_submodule(arch.experts)}
                assert len(widths) == 1 and widths.pop() < getattr(pruned.config, arch.experts_width)
        folder = save_pruned(pruned, tmp_path / f"structured-{attention}", tokenizer=offline_tokenizer())
        reloaded = load_model_dir(folder)
        assert type(reloaded).__name__ == arch.model_class
        assert torch.equal(_logits(reloaded, tokens), removed), f"{family} {attention}: the reload differs"
        folders.append(export(folder, "hf", tmp_path / f"structured-{attention}.hf"))
        want[str(folders[-1])] = (removed, f"Benchsuite{arch.model_class}")
    for name, gran in (("2:4", NM(n=2, m=4)), ("unstructured", Unstructured())):
        model = tiny_model(family, 6, 2, LAYERS)
        groups = gran.units(model, list(range(LAYERS)))
        masks = gran.select(groups, _element_scores(model, groups), 0.5)
        gran.apply_masks(model, groups, masks)
        pruned = gran.finalize(model, groups, masks)
        folder = save_pruned(pruned, tmp_path / name, tokenizer=offline_tokenizer())
        out = export(folder, "hf", tmp_path / f"{name}.hf")
        config = json.loads((out / "config.json").read_text())
        assert "auto_map" not in config and config["model_type"] == arch.model_types[0]
        assert not list(out.glob("*.py"))
        folders.append(out)
        want[str(out)] = (_logits(pruned, tokens), arch.model_class)
    structured = json.loads((folders[0] / "config.json").read_text())
    stem = family.replace("-", "_")
    assert structured["model_type"] == f"benchsuite_{stem}"
    assert (folders[0] / f"modeling_benchsuite_{stem}.py").is_file()

    result = subprocess.run([sys.executable, "-c", OUTSIDE, json.dumps(tokens.tolist()), *map(str, folders)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stdout[-2000:] + result.stderr[-2000:]
    found = json.loads(lines[-1][7:])
    assert found.pop("modules") == []
    for folder, (logits, class_name) in want.items():
        assert found[folder] == class_name, (folder, found[folder])
        got = torch.load(folder + ".logits.pt")
        assert (got - logits).abs().max().item() <= 1e-5, f"{folder}: plain transformers computes another model"


def test_a_norm_over_the_whole_projection_is_masked_as_it_computes_once_rows_are_removed():
    """OLMo 2 normalises q/k over the whole projection: zeroing a head's o_proj columns alone would leave the other
    heads normalised over the removed one too. The mask's hook computes the norm of the kept rows alone."""
    from transformers.models.olmo2.modeling_olmo2 import Olmo2RMSNorm

    from benchsuite.pruning.structure import _kept_rows_norm

    torch.manual_seed(0)
    norm = Olmo2RMSNorm(12, eps=1e-6)
    with torch.no_grad():
        norm.weight.add_(torch.randn(12))
    x = torch.randn(3, 5, 12)
    rows = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11])  # heads 0, 1 and 3 of head_dim 4 kept
    handle = norm.register_forward_hook(_kept_rows_norm(rows))
    masked = norm(x)
    handle.remove()
    kept = x[..., rows]
    expected = norm.weight[rows] * kept * torch.rsqrt(kept.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert torch.allclose(masked[..., rows], expected, atol=1e-6)
    assert torch.equal(masked[..., 4:8], torch.zeros(3, 5, 4))
    assert not torch.allclose(norm(x)[..., rows], expected, atol=1e-3), "the whole-width norm is another one"


def test_a_family_described_as_not_prunable_is_refused_before_any_work(tmp_path, text_corpus):
    """A plugin may describe a family as not prunable yet (``unsupported``, with its reason): a run is refused before
    anything is evaluated or written."""
    registry = get_registry()
    families = [f for f in registry.architectures.values() if f.name != "qwen3"]
    model_dir = save_tiny_model(tmp_path / "model", family="qwen3", layers=4)
    results = tmp_path / "results"
    request = RunRequest(methods=["magnitude-l2"], model=str(model_dir), ratios=[0.5], profile="smoke",
                         results=results, tasks=[], corpora=[str(text_corpus)], recovery_data=str(text_corpus),
                         calibration_data=str(text_corpus))
    use_architectures([Architecture("qwen3", ("qwen3",), unsupported="a reason of its own"), *families])
    try:
        with pytest.raises(ConfigError, match="can't be pruned by this version: a reason of its own"):
            Runner(request, log=lambda _: None).run()
    finally:
        use_architectures(registry.architectures.values())
    assert not list(results.rglob("*.json")), "nothing may be evaluated or written for a refused family"


def test_whole_experts_are_refused_on_a_family_without_experts(tmp_path, text_corpus):
    with pytest.raises(ConfigError, match="granularity 'experts' prunes mixtures of experts; llama models have none"):
        Experts().check_model(tiny_model("llama", 6, 2, 2))
    model_dir = save_tiny_model(tmp_path / "model", family="llama", layers=4)
    request = RunRequest(methods=["magnitude-l2"], model=str(model_dir), ratios=[0.5], profile="smoke",
                         results=tmp_path / "results", tasks=[], corpora=[str(text_corpus)],
                         recovery_data=str(text_corpus), calibration_data=str(text_corpus), granularity="experts")
    with pytest.raises(ConfigError, match="prunes mixtures of experts"):
        Runner(request, log=lambda _: None).run()
    assert not list((tmp_path / "results").rglob("*.json"))


def test_an_expert_is_masked_as_it_computes_once_removed():
    """Routing around an expert (its router logit -inf) gives every token the experts and weights the router
    computes once that expert and its row are gone, for a router that renormalises its top-k weights (Mixtral) and
    one that does not (Qwen3-MoE's norm_topk_prob False)."""
    from benchsuite.api.experts import mask_router, route

    torch.manual_seed(0)
    for normalize in (True, False):
        model = tiny_model("qwen3-moe", 6, 2, 1)
        router = model.model.layers[0].mlp.gate
        router.norm_topk_prob = normalize
        x = torch.randn(7, 96)
        keep = torch.tensor([True, False, True, True])
        handle = mask_router(router, keep)
        _, weights, index = router(x)
        handle.remove()
        logits = x @ router.weight[keep].t()
        probs = torch.softmax(logits, -1)
        top, top_index = torch.topk(probs, 2, -1)
        if normalize:
            top = top / top.sum(-1, keepdim=True)
        assert torch.equal(index, keep.nonzero().reshape(-1)[top_index])
        assert torch.allclose(weights, top, atol=1e-7)
        assert torch.allclose(route(router, router(x)[0])[1], router(x)[1])  # route() is the router's own rule


def test_an_undescribed_family_names_the_described_ones_and_the_guide(tmp_path):
    config = {"model_type": "gpt2"}
    with pytest.raises(ConfigError) as info:
        architecture_of(config)
    text = str(info.value)
    assert "no plugin describes" in text and "docs/plugins.md#describing-a-new-family" in text
    for family in PRUNABLE:
        assert f"{family} (" in text


def test_every_built_in_family_is_registered_like_a_plugin():
    registry = get_registry()
    assert set(PRUNABLE) <= set(registry.architectures)
    info = next(p for p in registry.plugins if p.name == "architectures")
    assert info.builtin and info.registers["architectures"] == sorted(PRUNABLE)


def test_the_guides_families_table_is_the_registered_one():
    from benchsuite.cli import families_table
    from benchsuite.reporting.blocks import read_block

    guide = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    assert read_block(guide, "families") == families_table(get_registry()), \
        "docs/plugins.md's families table is stale: benchsuite models --update docs/plugins.md"


def test_a_family_described_from_the_guide_prunes_and_exports_its_model(tmp_path, monkeypatch, text_corpus):
    """The guide's 'Describing a new family' example, installed as a distribution, makes SmolLM3 checkpoints prunable
    and exportable as SmolLM3."""
    import re

    from benchsuite.host import reset_registry
    from tests.test_plugins import pip_install

    guide = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    code = re.search(r'^```python title="benchsuite_smollm3\.py"\n(.*?)^```', guide, re.M | re.S).group(1)
    with pytest.raises(ConfigError, match="model_type 'smollm3': no plugin describes"):
        architecture_of({"model_type": "smollm3"})
    monkeypatch.syspath_prepend(str(pip_install(tmp_path, "benchsuite-smollm3", {"benchsuite_smollm3": code})))
    reset_registry()
    try:
        assert architecture_of({"model_type": "smollm3"}, prunable=True).model_class == "SmolLM3ForCausalLM"
        import transformers

        torch.manual_seed(0)
        config = transformers.SmolLM3Config(vocab_size=260, hidden_size=96, intermediate_size=128, num_hidden_layers=4,
                                            num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True,
                                            bos_token_id=257, eos_token_id=258, pad_token_id=259)
        model_dir = tmp_path / "smollm3"
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
        offline_tokenizer().save_pretrained(model_dir)
        request = RunRequest(methods=["llm-pruner"], model=str(model_dir), ratios=[0.5], profile="smoke",
                             results=tmp_path / "results", tasks=[], corpora=[str(text_corpus)],
                             recovery_data=str(text_corpus), calibration_data=str(text_corpus), save_models=True,
                             ratio_basis="units")
        records = Runner(request, log=lambda _: None).run()
        assert [r["status"] for r in records] == ["ok", "ok"], records[-1].get("error")
        record_file = Path(records[-1]["_path"])
        out = export(record_file, "hf", tmp_path / "export")
        config = json.loads((out / "config.json").read_text())
        assert config["model_type"] == "benchsuite_smollm3"
        assert config["architectures"] == ["BenchsuiteSmolLM3ForCausalLM"]
        code = (out / "modeling_benchsuite_smollm3.py").read_text()
        assert "from transformers import SmolLM3Config, SmolLM3ForCausalLM" in code
        tokens = _tokens()
        result = subprocess.run([sys.executable, "-c", OUTSIDE, json.dumps(tokens.tolist()), str(out)],
                                capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        found = json.loads([line for line in result.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])
        assert found[str(out)] == "BenchsuiteSmolLM3ForCausalLM"
        ours = load_model_dir(record_file.parent / "models" / record_file.stem)
        assert (torch.load(str(out) + ".logits.pt") - _logits(ours, tokens)).abs().max() <= 1e-5
    finally:
        monkeypatch.undo()
        reset_registry()
        get_registry()  # the process's families again, without the temporary plugin


#: family -> method -> why it is refused (a regular expression of the error)
_GLOBAL = "granularity 'structured-global' can't prune .* models: one threshold across layers gives each expert"
REFUSED_METHODS = {family: {"flap": _GLOBAL, "flap-lora": _GLOBAL, "flap-nobias": _GLOBAL} for family in MOE}


@pytest.mark.parametrize("family", PRUNABLE)
def test_every_built_in_method_runs_on_every_family(family, tmp_path, text_corpus):
    """Every registered method (each at its own granularity and schedule) prunes, recovers and evaluates a tiny
    checkpoint of every prunable family, or is refused before any work with the reason (FLAP's global threshold on
    a mixture of experts)."""
    refused = REFUSED_METHODS.get(family, {})
    methods = sorted(set(get_registry().methods) - set(refused))
    model_dir = save_tiny_model(tmp_path / family, family=family, layers=6)
    text = str(text_corpus)
    for method, reason in refused.items():  # refused before any work, with the reason
        request = RunRequest(methods=[method], model=str(model_dir), ratios=[0.5], profile="smoke",
                             results=tmp_path / "refused", tasks=[], corpora=[text], recovery_data=text,
                             calibration_data=text)
        with pytest.raises(ConfigError, match=reason):
            Runner(request, log=lambda _: None).run()
        assert not list((tmp_path / "refused").rglob("*.json"))
    request = RunRequest(methods=methods, model=str(model_dir), ratios=[0.5], ratio_basis="units", profile="smoke",
                         results=tmp_path / "results", tasks=[], corpora=[text], recovery_data=text,
                         calibration_data=text, metrics=["perplexity", "params"])
    records = Runner(request, log=lambda _: None).run()
    failed = {r["variant"]: r["error"] for r in records if r["status"] != "ok"}
    assert not failed, failed
    assert {r["variant"] for r in records[1:]} == set(methods)
    assert {r["architecture"]["name"] for r in records} == {family}  # the record says which description was used
    lora = next(r for r in records if r.get("variant") == "loraprune")["lora"]
    assert lora["wrapped"] == list(architecture_of(tiny_model(family, 6, 2, 1)).lora_targets)  # the family's names
    dense = records[0]["metrics"]["params"]
    for r in records[1:]:
        ppl = next(v for k, v in r["metrics"].items() if k.startswith("ppl_") and not k.endswith(("_lo", "_hi")))
        assert math.isfinite(ppl) and r["metrics"]["params"] <= dense, r["variant"]


def test_families_that_expect_bos_get_it_before_every_window_and_score_the_same_tokens(tmp_path, text_corpus):
    """Gemma's models are trained with BOS first (Gemma 3 270M: wiki perplexity 81 without it, 15 with it on the
    same tokens): perplexity puts it before every window as context only, and calibration and LoRA windows start
    with it; Llama-layout families get nothing."""
    import torch.nn.functional as F

    from benchsuite.api.architecture import bos_token
    from benchsuite.evaluation.perplexity import perplexity

    tokenizer = offline_tokenizer()
    windows = _tokens()
    gemma, llama = tiny_model("gemma3", 6, 2, 2), tiny_model("llama", 6, 2, 2)
    assert bos_token(gemma, tokenizer) == tokenizer.bos_token_id and bos_token(llama, tokenizer) is None
    got = perplexity(gemma, windows, bos=tokenizer.bos_token_id)
    with torch.no_grad():
        inputs = torch.cat([torch.full((2, 1), tokenizer.bos_token_id), windows], dim=1)
        logits = gemma(inputs).logits[:, 1:-1]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    assert got["tokens"] == 2 * 23 and got["nll"] == pytest.approx(nll.item(), rel=1e-6)
    assert got["nll"] != pytest.approx(perplexity(gemma, windows)["nll"], rel=1e-3)

    model_dir = save_tiny_model(tmp_path / "gemma3", family="gemma3", layers=4)
    text = str(text_corpus)
    request = RunRequest(methods=["llm-pruner"], model=str(model_dir), ratios=[0.5], profile="smoke",
                         results=tmp_path / "results", tasks=[], corpora=[text], recovery_data=text,
                         calibration_data=text, metrics=["perplexity", "params"], ratio_basis="units")
    records = Runner(request, log=lambda _: None).run()
    assert all(r["status"] == "ok" for r in records), records[-1].get("error")
    ppl = next(v for k, v in records[-1]["measurement"].items() if k.startswith("ppl_"))
    assert "before every window" in ppl["bos"] and "before every window" in records[-1]["recovery_setup"]["bos"]
    assert records[-1]["recovery_setup"]["tokens"] == 4 * 2 * 65  # the smoke profile's 4 steps of 2 x (64 + BOS)


def _nm_pruned(family, folder, config=None, granularity=None):
    model = tiny_model(family, 6, 2, 2, config=config)
    gran = granularity or NM(n=2, m=4)
    groups = gran.units(model, [0, 1])
    masks = gran.select(groups, _element_scores(model, groups) if isinstance(gran, NM) else
                        [torch.rand(g.size, generator=torch.Generator().manual_seed(1)) for g in groups], 0.5)
    gran.apply_masks(model, groups, masks)
    return save_pruned(gran.finalize(model, groups, masks), folder, tokenizer=offline_tokenizer())


def test_exports_llama_cpp_would_compute_differently_are_refused_with_the_reason(tmp_path):
    """GGUF refuses what llama.cpp's graph for the family would compute differently (tests/test_interop.py checks
    what it writes against llama.cpp itself), and compressed-tensors (read back on Llama only) other families,
    before writing anything; hf writes them all (above)."""
    cases = [("qwen3", None, Structured(), "it has per-layer widths .* one head count and width for all layers"),
             ("mistral", None, None, "sliding window of 16 tokens"),
             ("gemma2", {"query_pre_attn_scalar": 32}, None, "query_pre_attn_scalar 32"),
             ("qwen3-moe", {"norm_topk_prob": False}, None, "does not renormalise the top-k weights"),
             ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}, None,
              "RoPE type 'linear'")]
    for family, config, gran, reason in cases:
        folder = _nm_pruned(family, tmp_path / family, config, gran)
        with pytest.raises(ConfigError, match=f"this {family} model can't be written as GGUF: .*{reason}"):
            export(folder, "gguf", tmp_path / "out.gguf")
        assert not (tmp_path / "out.gguf").exists()
    with pytest.raises(ConfigError, match="a qwen3 model; the compressed-tensors export is tested on Llama"):
        export(tmp_path / "qwen3", "compressed-tensors", tmp_path / "out.ct")
    folder = _nm_pruned("qwen2", tmp_path / "qwen2")  # the offline tokenizer: one token per byte, no merges
    with pytest.raises(ConfigError, match="a BPE vocabulary without merges"):
        export(folder, "gguf", tmp_path / "out.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([c[0] for c in cases] + ["qwen2"])


def test_gguf_writes_each_familys_llama_cpp_layout(tmp_path):
    """Read back with gguf.GGUFReader: Gemma's norms stored as 1 + w, its sliding-window pattern and local RoPE base;
    Granite's multipliers and permuted q/k rows; a mixture of experts' experts stacked under llama.cpp's names."""
    import gguf
    import numpy as np

    from benchsuite.models.gguf_file import permute_rope, write_gguf

    def read(folder):
        reader = gguf.GGUFReader(write_gguf(add_a_merge(folder), folder.with_suffix(".gguf")))
        fields = {k: f.contents() for k, f in reader.fields.items()}
        return fields, {t.name: np.asarray(t.data) for t in reader.tensors}

    gemma = save_tiny_model(tmp_path / "gemma3", 6, 2, 6, family="gemma3")
    state = load_model_dir(gemma).state_dict()
    fields, tensors = read(gemma)
    assert fields["general.architecture"] == "gemma3"
    assert fields["gemma3.attention.sliding_window"] == 16
    assert fields["gemma3.attention.sliding_window_pattern"] == [True] * 5 + [False]
    assert fields["gemma3.rope.freq_base_swa"] == 10000.0 and fields["gemma3.rope.freq_base"] == 1e6
    for name, gguf_name in (("model.layers.1.input_layernorm.weight", "blk.1.attn_norm.weight"),
                            ("model.layers.1.self_attn.q_norm.weight", "blk.1.attn_q_norm.weight"),
                            ("model.norm.weight", "output_norm.weight")):
        assert np.array_equal(tensors[gguf_name], state[name].numpy() + 1.0), name
    assert np.array_equal(tensors["blk.1.attn_q.weight"], state["model.layers.1.self_attn.q_proj.weight"].numpy())

    granite = save_tiny_model(tmp_path / "granite", 6, 2, 2, family="granite")
    state = load_model_dir(granite).state_dict()
    fields, tensors = read(granite)
    assert (fields["granite.embedding_scale"], fields["granite.residual_scale"], fields["granite.attention.scale"],
            fields["granite.logit_scale"]) == (6.0, 0.5, np.float32(0.1), 4.0)
    assert np.array_equal(tensors["blk.0.attn_k.weight"],
                          permute_rope(state["model.layers.0.self_attn.k_proj.weight"].numpy(), 2))

    for family in ("mixtral", "qwen3-moe"):
        config = {"norm_topk_prob": True} if family == "qwen3-moe" else None
        saved = save_tiny_model(tmp_path / family, 6, 2, 2, family=family, config=config)  # the hub's layout
        pruned = _nm_pruned(family, tmp_path / f"{family}-2_4", config)  # the suite's (fused)
        model = load_model_dir(pruned)
        for folder in (saved, pruned):
            fields, tensors = read(folder)
            arch = fields["general.architecture"]
            assert (fields[f"{arch}.expert_count"], fields[f"{arch}.expert_used_count"]) == (4, 2)
        experts = decoder_layers(model)[1].mlp.experts
        for part, linear in (("gate", "gate_linear"), ("up", "up_linear"), ("down", "down_linear")):
            stacked = np.stack([getattr(e, linear).weight.detach().numpy() for e in experts])
            assert np.array_equal(tensors[f"blk.1.ffn_{part}_exps.weight"], stacked), (family, part)
        assert np.array_equal(tensors["blk.1.ffn_gate_inp.weight"],
                              decoder_layers(model)[1].mlp.gate.weight.detach().numpy())


def test_a_mixture_of_experts_with_dense_layers_is_refused_with_the_reason():
    import transformers

    from benchsuite.api.model import decoder_layers

    config = transformers.Qwen3MoeConfig(vocab_size=260, hidden_size=96, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=6, num_key_value_heads=2, head_dim=16, num_experts=4,
                                         num_experts_per_tok=2, moe_intermediate_size=64, mlp_only_layers=[0])
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(ConfigError, match="has layers without them .*mlp_only_layers"):
        decoder_layers(model)
