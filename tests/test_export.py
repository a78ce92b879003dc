"""``benchsuite export --format hf``: pruned models that plain transformers opens, without benchsuite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from benchsuite.models import load_model_dir
from benchsuite.running.runner import Runner, RunRequest
from benchsuite.testing import add_a_merge
from tests.conftest import bench

# transformers alone: any import of benchsuite fails, as in a virtualenv where it is not installed
NO_BENCHSUITE = textwrap.dedent('''
    import importlib.abc, json, sys
    class NoBenchsuite(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("benchsuite", "benchsuite_plugins", "tests"):
                raise ImportError(f"{name}: benchsuite is not installed here")
    sys.meta_path.insert(0, NoBenchsuite())
    sys.path = [p for p in sys.path if not p.rstrip("/").endswith("/main") and p not in ("", ".")]
''')
OUTSIDE = NO_BENCHSUITE + textwrap.dedent('''
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, tokens_file, out = sys.argv[1], sys.argv[2], sys.argv[3]
    tokens = torch.tensor(json.load(open(tokens_file)))
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        logits = model(tokens).logits
        prompt = tokens[:, :8]
        cached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
        ids = prompt
        for _ in range(12):  # greedy without a cache: the whole sequence every step
            ids = torch.cat([ids, model(ids, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    model.save_pretrained(folder + ".again")
    again = AutoModelForCausalLM.from_pretrained(folder + ".again", trust_remote_code=True, dtype=torch.float32)
    with torch.no_grad():
        round_trip = (again.eval()(tokens).logits - logits).abs().max().item()
    torch.save({"logits": logits, "cached": cached, "greedy": ids, "round_trip": round_trip,
                "class": type(model).__name__, "vocab": len(tokenizer),
                "modules": sorted(m for m in sys.modules if m.startswith("benchsuite"))}, out)
''')


def outside(folder: Path, tokens: torch.Tensor, tmp_path: Path) -> dict:
    tokens_file, out = tmp_path / "tokens.json", tmp_path / "out.pt"
    tokens_file.write_text(json.dumps(tokens.tolist()))
    result = subprocess.run([sys.executable, "-c", OUTSIDE, str(folder), str(tokens_file), str(out)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def saved(tiny_model_dir, tmp_path_factory, text_corpus_module):
    """Records and saved models of a structured LoRAPrune, FLAP (biases), depth pruning and magnitude 2:4 run."""
    results = tmp_path_factory.mktemp("results")
    text = str(text_corpus_module)
    request = RunRequest(methods=["loraprune", "flap", "shortgpt", "magnitude-2:4"], model=str(tiny_model_dir),
                         ratios=[0.5], profile="smoke", results=results, tasks=[], corpora=[text],
                         recovery_data=text, calibration_data=text, save_models=True)
    records = Runner(request, log=lambda _: None).run()
    return {r["method"]: r for r in records if r["method"] != "dense"}, results


@pytest.fixture(scope="module")
def text_corpus_module(tmp_path_factory):
    from benchsuite.testing import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus") / "text.txt")


@pytest.mark.parametrize("method,remote", [("loraprune", True), ("flap", True), ("shortgpt", False),
                                           ("magnitude-2:4", False)])
def test_exported_model_opens_in_plain_transformers(saved, method, remote, tmp_path):
    records, results = saved
    record = records[method]
    assert record["status"] == "ok", record.get("error")
    record_file = Path(record["_path"])
    out = tmp_path / "export"
    cli = bench("export", record_file, "--format", "hf", "-o", out)
    assert cli.returncode == 0, cli.stderr
    config = json.loads((out / "config.json").read_text())
    assert ("auto_map" in config) is remote and (out / "modeling_benchsuite_llama.py").is_file() is remote
    assert "benchsuite_layer_widths" not in config or remote
    if method == "flap":
        assert any(config["benchsuite_biases"])
    if method == "shortgpt":
        assert config["model_type"] == "llama" and config["num_hidden_layers"] < 8
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: \"transformers\"") and f"\"{method}\"" in card
    assert "benchsuite run --methods" in card and "95% interval" in card

    tokens = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    got = outside(out, tokens, tmp_path)
    assert got["modules"] == []
    assert got["class"] == ("BenchsuiteLlamaForCausalLM" if remote else "LlamaForCausalLM")
    ours = load_model_dir(record_file.parent / "models" / record_file.stem).eval()
    with torch.no_grad():
        want = ours(tokens).logits
    assert (got["logits"] - want).abs().max().item() <= 1e-5
    assert torch.equal(got["cached"], got["greedy"])  # the KV cache, per-layer widths and all
    assert got["round_trip"] <= 1e-6


def test_bad_input_is_one_line_and_leaves_nothing(saved, tmp_path, tiny_model_dir):
    records, results = saved
    record_file = Path(records["loraprune"]["_path"])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    for args, why in (([record_file, "-o", busy], "exists and is not an empty folder"),
                      ([tmp_path / "nothing"], "neither a saved model folder"),
                      ([record_file, "--format", "onnx"], "invalid choice"),
                      ([record_file, "--format", "gguf", "-o", tmp_path / "model.bin"], "ends in .gguf")):
        result = bench("export", *args)
        assert result.returncode == 2 and why in result.stderr, result.stderr
    dense = next(p for p in results.rglob("dense*.json"))
    result = bench("export", dense)
    assert result.returncode == 2 and "has no saved model" in result.stderr and "--save-models" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    assert not [p for p in record_file.parent.iterdir() if p.name.startswith(".")]


def test_the_saved_model_is_already_an_hf_folder(saved, tmp_path):
    """``--save-models`` writes the hf format: the saved folder itself opens in plain transformers, with its card."""
    records, _ = saved
    record_file = Path(records["loraprune"]["_path"])
    folder = record_file.parent / "models" / record_file.stem
    assert json.loads((folder / "config.json").read_text())["auto_map"]
    card = (folder / "README.md").read_text()
    assert "ppl_text" in card and "| params |" in card  # written again once the record was
    tokens = torch.randint(0, 200, (1, 16), generator=torch.Generator().manual_seed(1))
    got = outside(folder, tokens, tmp_path)
    with torch.no_grad():
        want = load_model_dir(folder).eval()(tokens).logits
    assert (got["logits"] - want).abs().max().item() <= 1e-5


@pytest.mark.network
@pytest.mark.slow
def test_lm_eval_cli_on_the_export_reproduces_the_record(tmp_path, text_corpus_module):
    """lm-eval's own command line on the exported folder gives the record's zero-shot numbers exactly."""
    from benchsuite.data.tasks import TASKS, include_dir
    from benchsuite.testing import save_tiny_model

    # byte-level tokens: the tasks' longest examples need more positions than the default tiny model's 256
    tiny_model_dir = save_tiny_model(tmp_path / "model", max_positions=2048)
    text = str(text_corpus_module)
    tasks, limit = ["piqa", "arc_easy"], 24
    request = RunRequest(methods=["loraprune"], model=str(tiny_model_dir), ratios=[0.5], profile="smoke",
                         results=tmp_path / "r", tasks=tasks, limit=limit, corpora=[text], recovery_data=text,
                         calibration_data=text, save_models=True)
    record = next(r for r in Runner(request, log=lambda _: None).run() if r["method"] == "loraprune")
    assert record["status"] == "ok", record.get("error")
    out = tmp_path / "export"
    assert bench("export", record["_path"], "-o", out).returncode == 0
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
               f"pretrained={out},trust_remote_code=True,dtype=float32", "--tasks",
               ",".join(TASKS[t].task_name for t in tasks), "--include_path", str(include_dir()), "--limit",
               str(limit), "--batch_size", "8", "--seed", "0", "--output_path", str(tmp_path / "lm_eval")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=os.environ | env)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(next((tmp_path / "lm_eval").rglob("results_*.json")).read_text())["results"]
    for task in tasks:
        spec = TASKS[task]
        assert scores[spec.task_name][f"{spec.metric},none"] == record["metrics"][f"acc_{task}"], task


@pytest.mark.parametrize("method", ["loraprune", "flap", "shortgpt", "magnitude-2:4"])
def test_gguf_export_reads_back_as_the_model(saved, method, tmp_path):
    """The GGUF file's metadata and tensors, read back with gguf.GGUFReader, are the saved model's."""
    import gguf

    from benchsuite.models.gguf_file import permute_rope
    from benchsuite.models.hf import read_config

    records, _ = saved
    record_file = Path(records[method]["_path"])
    folder = record_file.parent / "models" / record_file.stem
    out = tmp_path / "m.gguf"
    cli = bench("export", record_file, "--format", "gguf", "-o", out)  # the offline tokenizer has no merges
    assert cli.returncode != 0 and "a BPE vocabulary without merges" in cli.stderr and not out.exists()
    folder = add_a_merge(shutil.copytree(folder, tmp_path / "model"))  # GGUF vocabularies need merges
    cli = bench("export", folder, "--format", "gguf", "-o", out)
    assert cli.returncode == 0, cli.stderr
    reader = gguf.GGUFReader(out)
    fields = {name: field for name, field in reader.fields.items()}

    def value(key):
        field = fields[key]
        parts = [field.parts[i].tolist() for i in field.data]
        flat = [x[0] if isinstance(x, list) and len(x) == 1 else x for x in parts]
        return flat if field.types and field.types[0] == gguf.GGUFValueType.ARRAY else flat[0]

    config = read_config(folder)
    widths = getattr(config, "benchsuite_layer_widths", None)
    arch = "deci" if widths else "llama"
    assert bytes(value("general.architecture")).decode() == arch
    assert value(f"{arch}.block_count") == config.num_hidden_layers
    heads, kv_heads, ffn = value(f"{arch}.attention.head_count"), value(f"{arch}.attention.head_count_kv"), \
        value(f"{arch}.feed_forward_length")
    if widths:  # per-layer arrays, one value per layer
        assert heads == [w["num_heads"] for w in widths] and kv_heads == [w["num_kv_heads"] for w in widths]
        assert ffn == [w["intermediate_size"] for w in widths] and len(set(map(tuple, [heads, ffn]))) >= 1
        assert len(set(heads)) > 1 or len(set(ffn)) > 1  # the layers really differ
    else:
        assert (heads, kv_heads, ffn) == (config.num_attention_heads, config.num_key_value_heads,
                                          config.intermediate_size)
    assert value(f"{arch}.attention.key_length") == config.head_dim
    assert len(fields["tokenizer.ggml.tokens"].data) >= config.vocab_size

    from benchsuite.models.checkpoint import read_safetensors

    saved_tensors = {n: t.float().numpy() for f in sorted(folder.glob("*.safetensors")) for n, t in read_safetensors(f)}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.DECI if widths else gguf.MODEL_ARCH.LLAMA,
                                     config.num_hidden_layers)
    in_file = {t.name: t for t in reader.tensors}
    layer_heads = heads if widths else [heads] * config.num_hidden_layers
    layer_kv = kv_heads if widths else [kv_heads] * config.num_hidden_layers
    for name, array in saved_tensors.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            assert "output.weight" not in in_file
            continue
        tensor = in_file.pop(names.get_name(name, try_suffixes=(".weight", ".bias")))
        data = np.asarray(tensor.data).reshape(array.shape)
        if ".self_attn.q_proj." in name or ".self_attn.k_proj." in name:
            layer = int(name.split(".")[2])
            n = layer_heads[layer] if ".q_proj." in name else layer_kv[layer]
            array = permute_rope(array, n)
        assert np.array_equal(data, array), name
    assert not in_file  # nothing else in the file
    if method == "flap":
        assert any(name.endswith(".bias") for name in saved_tensors)


# compressed-tensors 0.14 (the last release with the sparse-24-bitmask compressor; it asks for transformers<5, so
# tox installs it without its dependencies into a folder of its own and names it in BENCHSUITE_COMPRESSED_TENSORS)
THROUGH_COMPRESSED_TENSORS = textwrap.dedent('''
    import sys
    import torch
    from compressed_tensors.compressors import ModelCompressor
    folder, out = sys.argv[1], sys.argv[2]
    compressor = ModelCompressor.from_pretrained(folder)
    dense = dict(compressor.sparsity_compressor.decompress(folder))
    torch.save({"state": dense, "format": compressor.sparsity_config.format,
                "structure": compressor.sparsity_config.sparsity_structure}, out)
''')


def _compressed_tensors_env() -> dict[str, str] | None:
    folder = os.environ.get("BENCHSUITE_COMPRESSED_TENSORS")
    if folder:
        return os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [folder, os.environ.get("PYTHONPATH")]))}
    try:
        import compressed_tensors.compressors  # noqa: F401
    except ImportError:
        return None
    return dict(os.environ)


def test_compressed_tensors_export_reads_back_through_the_package(saved, tmp_path):
    """A 2:4 model exported as sparse-24-bitmask: half the projection values and a bitmask on disk; compressed-tensors
    decompresses it to exactly the saved weights, and a plain Llama built from them gives the saved model's logits."""
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    from benchsuite.models.checkpoint import read_safetensors
    from benchsuite.models.hf import read_config
    from benchsuite.models.sparse24 import decompress

    records, _ = saved
    record_file = Path(records["magnitude-2:4"]["_path"])
    folder = record_file.parent / "models" / record_file.stem
    out = tmp_path / "ct"
    cli = bench("export", record_file, "--format", "compressed-tensors", "-o", out)
    assert cli.returncode == 0, cli.stderr
    config = json.loads((out / "config.json").read_text())
    sparsity = config["quantization_config"]["sparsity_config"]
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert sparsity["format"] == "sparse-24-bitmask" and sparsity["sparsity_structure"] == "2:4"
    assert sparsity["ignore"] == ["lm_head"] and 0.2 < sparsity["global_sparsity"] < 0.5
    assert "--format compressed-tensors" in (out / "README.md").read_text()
    assert (out / "tokenizer.json").is_file() or (out / "tokenizer_config.json").is_file()

    original = {n: t for f in sorted(folder.glob("*.safetensors")) for n, t in read_safetensors(f)}
    stored = load_file(out / "model.safetensors")
    projections = [n for n in original if "_proj.weight" in n]
    assert len(projections) == 7 * read_config(folder).num_hidden_layers
    for name in projections:
        prefix = name.removesuffix(".weight")
        assert name not in stored and stored[f"{prefix}.compressed"].shape == (original[name].shape[0],
                                                                               original[name].shape[1] // 2)
        assert stored[f"{prefix}.bitmask"].dtype == torch.uint8
        assert torch.equal(decompress(stored, prefix), original[name]), name
    assert (out / "model.safetensors").stat().st_size < sum(f.stat().st_size for f in folder.glob("*.safetensors"))

    env = _compressed_tensors_env()
    if env is None:
        pytest.skip("compressed-tensors 0.14 is not importable (tox sets BENCHSUITE_COMPRESSED_TENSORS)")
    result = subprocess.run([sys.executable, "-c", THROUGH_COMPRESSED_TENSORS, str(out), str(tmp_path / "d.pt")],
                            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    back = torch.load(tmp_path / "d.pt")
    assert back["format"] == "sparse-24-bitmask" and back["structure"] == "2:4"
    assert set(back["state"]) == set(original)
    for name, tensor in original.items():
        assert torch.equal(back["state"][name], tensor), name
    model = LlamaForCausalLM(read_config(folder)).eval()
    model.load_state_dict(back["state"], strict=False)
    model.tie_weights()
    tokens = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = load_model_dir(folder).eval()(tokens).logits
        assert (model(tokens).logits - want).abs().max().item() <= 1e-5


def test_compressed_tensors_refuses_what_is_not_2_4(saved, tmp_path, tiny_model_dir):
    records, _ = saved
    structured = bench("export", records["loraprune"]["_path"], "--format", "compressed-tensors", "-o", tmp_path / "a")
    assert structured.returncode == 2 and "per-layer widths" in structured.stderr, structured.stderr
    dense = bench("export", tiny_model_dir, "--format", "compressed-tensors", "-o", tmp_path / "b")
    assert dense.returncode == 2 and "is not 2:4" in dense.stderr and len(dense.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the half-written folders went, too
