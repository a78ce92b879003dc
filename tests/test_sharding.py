"""Models larger than one GPU: loading with a device map (accelerate's hooks), pruning, LoRA recovery and
evaluation of a dispatched model, and the meta-device reload of a pruned checkpoint (peak about the pruned
size, never the full one).

On the CPU a model is dispatched with accelerate's hooks onto the CPU itself (an explicit device map): the hooks
are the same as on GPUs, and every result must equal the plain model's. Tests marked ``cuda`` need one GPU, and
split a model between it and the CPU (each module executed where the map puts it, nothing offloaded); tests marked
``two_gpus`` split one over two GPUs. They are skipped with the reason otherwise."""

from __future__ import annotations

import pytest
import torch

from benchsuite import testing
from benchsuite.api import ConfigError
from benchsuite.api.model import decoder_layers, input_device
from benchsuite.evaluation.memory import PeakMemory, release_free_memory
from benchsuite.evaluation.perplexity import perplexity
from benchsuite.models.checkpoint import (
    DEVICE_MAPS,
    device_map_of,
    load_model_dir,
    read_safetensors,
    resolve_device_map,
    save_pruned,
)
from benchsuite.pruning.structure import model_widths
from benchsuite.running.finetune import LoRAConfig, attach_lora, merge_lora
from benchsuite_plugins.baselines import Magnitude
from benchsuite_plugins.granularities import NM, Structured, Unstructured
from benchsuite_plugins.llm_pruner import Taylor
from benchsuite_plugins.schedules import OneShot
from benchsuite_plugins.wanda import Wanda

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2,
                              reason=f"needs 2 CUDA GPUs to split a model between them "
                                     f"(torch sees {torch.cuda.device_count()})")


def module_map(layers: int, device_of=lambda i: "cpu", ends: str = "cpu") -> dict[str, str]:
    """An explicit device map of a tiny LLaMA: decoder layer ``i`` on ``device_of(i)``, the rest on ``ends``
    (the tied embedding and head must stay together)."""
    return {"model.embed_tokens": ends, **{f"model.layers.{i}": device_of(i) for i in range(layers)},
            "model.norm": ends, "model.rotary_emb": ends, "lm_head": ends}


def hooked(model: torch.nn.Module) -> bool:
    return all(hasattr(layer, "_hf_hook") for layer in decoder_layers(model))


def windows(n: int = 4, length: int = 32) -> torch.Tensor:
    return torch.randint(0, 250, (n, length), generator=torch.Generator().manual_seed(3))


def prune(model, criterion, granularity, ratio=0.5, train_steps=0):
    """One-shot pruning of every layer, with LoRA attached and trained for ``train_steps`` (then merged)."""
    ctx = testing.make_context(0, train_steps=train_steps, lora=LoRAConfig(dropout=0.0, lr=1e-2))
    if train_steps:
        torch.manual_seed(0)  # LoRA's initialisation
        model = attach_lora(model, LoRAConfig(dropout=0.0, lr=1e-2))
    outcome = OneShot().run(model, criterion, granularity, ratio, list(range(len(decoder_layers(model)))), ctx)
    model = outcome.model
    log = None
    if train_steps:
        log = ctx.finetune(model, train_steps)
        model = merge_lora(model)
    return model, outcome, log


# -- CPU: hooks present, results identical -----------------------------------------------------------------
@pytest.mark.parametrize("criterion,granularity", [
    (Taylor, Structured), (Wanda, Unstructured), (Magnitude, lambda: NM(n=2, m=4))],
    ids=["taylor-structured", "wanda-unstructured", "magnitude-2:4"])
def test_dispatched_on_cpu_prunes_like_the_plain_model(tiny_model_dir, criterion, granularity):
    plain = load_model_dir(tiny_model_dir, dtype=torch.float64)
    sharded = load_model_dir(tiny_model_dir, dtype=torch.float64, device_map=module_map(8))
    assert hooked(sharded) and not hooked(plain)
    assert device_map_of(sharded) == module_map(8)
    assert input_device(sharded) == torch.device("cpu")
    results = []
    for model in (plain, sharded):
        pruned, outcome, _ = prune(model, criterion(), granularity())
        results.append((outcome.masks, perplexity(pruned, windows())["ppl"], model_widths(pruned)))
    (masks_a, ppl_a, widths_a), (masks_b, ppl_b, widths_b) = results
    assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(masks_a, masks_b))
    assert any(not bool(m.all()) for m in masks_a)  # something was pruned
    assert widths_a == widths_b
    assert ppl_b == pytest.approx(ppl_a, rel=1e-12)


def test_lora_recovery_save_and_reload_of_a_dispatched_model(tiny_model_dir, tmp_path):
    plain = load_model_dir(tiny_model_dir, dtype=torch.float64)
    sharded = load_model_dir(tiny_model_dir, dtype=torch.float64, device_map=module_map(8))
    out = []
    for model in (plain, sharded):
        pruned, _, log = prune(model, Taylor(), Structured(), train_steps=3)
        assert log["steps"] == 3
        out.append((pruned, log["final_loss"]))
    (a, loss_a), (b, loss_b) = out
    assert loss_b == pytest.approx(loss_a, rel=1e-10)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-12), name
    ids = windows(2)
    with torch.no_grad():
        expected = b(ids).logits
    save_pruned(b, tmp_path / "pruned")
    reloaded = load_model_dir(tmp_path / "pruned", dtype=torch.float64, device_map=module_map(8))
    assert hooked(reloaded) and device_map_of(reloaded) == module_map(8)
    assert model_widths(reloaded) == model_widths(b)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, expected)


def test_meta_reload_gives_the_same_logits_without_the_full_size_model(tmp_path):
    """A pruned checkpoint is rebuilt on the meta device: its reload peak is about the pruned size. The old
    reload (the full-size model, then reshaped) peaked above the full size: this fails with it."""
    from benchsuite.pruning.structure import attention_group, mlp_group, prune_counts, remove_units, select_units

    model = testing.tiny_llama(8, 2, 4, hidden_size=512, intermediate_size=1536, weight_std=0.02)
    full = sum(p.numel() * p.element_size() for p in model.parameters())
    layers = decoder_layers(model)
    groups = [g for i, layer in enumerate(layers) for g in (attention_group(layer, i, "heads"), mlp_group(layer, i))]
    scores = [torch.randn(g.size, generator=torch.Generator().manual_seed(i)) for i, g in enumerate(groups)]
    masks = [select_units(g, s, n) for g, s, n in zip(groups, scores, prune_counts(groups, 0.5))]
    remove_units(model, groups, masks)
    pruned = sum(p.numel() * p.element_size() for p in model.parameters())
    ids = windows(2)
    with torch.no_grad():
        expected = model(ids).logits
    save_pruned(model, tmp_path / "pruned")
    del model
    load_model_dir(tmp_path / "pruned")  # imports and first-use caches are not the load's memory
    release_free_memory()
    with PeakMemory("cpu", interval_s=0.001) as mem:
        reloaded = load_model_dir(tmp_path / "pruned")
    peak = (mem.peak - mem.baseline)
    assert sum(p.numel() * p.element_size() for p in reloaded.parameters()) == pruned
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, expected)
    assert not reloaded.lm_head.weight.is_meta and reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    # about the pruned model's size (0.5 of the full here); the full-size skeleton alone was 1.0
    assert peak < 0.75 * full, (peak / 2**20, pruned / 2**20, full / 2**20)


def test_read_safetensors_matches_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7), "c": torch.zeros(0, 4),
               "d": torch.randn(2, 2, dtype=torch.float16), "e": torch.tensor([True, False])}
    save_file(tensors, tmp_path / "x.safetensors")
    read = dict(read_safetensors(tmp_path / "x.safetensors"))
    reference = load_file(tmp_path / "x.safetensors")
    assert read.keys() == reference.keys()
    for name, tensor in reference.items():
        assert read[name].dtype == tensor.dtype and torch.equal(read[name], tensor), name


def test_a_reload_refuses_a_checkpoint_that_does_not_match_its_widths(tmp_path):
    import json

    from benchsuite.pruning.structure import remove_units

    model = testing.tiny_llama(4, 2, 2)
    mlp = Structured().units(model, [0])[1]
    remove_units(model, [mlp], [torch.arange(mlp.size) % 2 == 0])
    save_pruned(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["benchsuite_layer_widths"][0]["intermediate_size"] += 2
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="does not match its recorded widths"):
        load_model_dir(tmp_path / "m")


# -- device maps: checked, with clear errors ----------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("name", DEVICE_MAPS)
def test_a_device_map_without_gpus_is_a_config_error(tiny_model_dir, name):
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        load_model_dir(tiny_model_dir, device_map=name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_run_with_device_map_on_a_cpu_machine_fails_before_anything(tiny_model_dir, tmp_path):
    from tests.conftest import bench

    result = bench("run", "--methods", "magnitude-l2", "--model", tiny_model_dir, "--device-map", "auto",
                   "--results", tmp_path, "--profile", "smoke", "--tasks", "none")
    assert result.returncode != 0
    assert "--device-map auto" in result.stderr and "no CUDA GPU" in result.stderr
    assert not any(tmp_path.rglob("*.json"))


def test_device_map_problems_are_named():
    model = testing.tiny_llama(4, 2, 2)
    with pytest.raises(ConfigError, match="unknown"):
        resolve_device_map(model, "fastest", torch.float32)
    with pytest.raises(ConfigError, match="offloading is not supported"):
        resolve_device_map(model, module_map(2) | {"model.layers.1": "disk"}, torch.float32)
    with pytest.raises(ConfigError, match="places no module holding model.layers.1"):
        resolve_device_map(model, {k: v for k, v in module_map(2).items() if k != "model.layers.1"}, torch.float32)
    assert resolve_device_map(model, {"": "cpu"}, torch.float32) == {"": "cpu"}


def test_plan_checks_the_device_map():
    from benchsuite.running.plan import check_device_map

    check_device_map(None, torch.device("cpu"))
    with pytest.raises(ConfigError, match="unknown"):
        check_device_map("fast", torch.device("cpu"))
    if torch.cuda.is_available():
        with pytest.raises(ConfigError, match="give --device cuda"):
            check_device_map("auto", torch.device("cuda:0"))
        check_device_map("auto", torch.device("cuda"))
    else:
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            check_device_map("auto", torch.device("cpu"))


# -- GPUs -----------------------------------------------------------------------------------------------------
def _gpu_cpu_split(i: int) -> str:
    return "cuda:0" if i < 4 else "cpu"


@cuda
@pytest.mark.parametrize("criterion,granularity", [(Taylor, Structured), (Wanda, Unstructured)],
                         ids=["taylor-structured", "wanda-unstructured"])
def test_split_between_gpu_and_cpu_prunes_like_the_plain_model(tiny_model_dir, criterion, granularity):
    """Layers 0-3 (and embedding, head) on the GPU, layers 4-7 on the CPU: activations cross devices both ways,
    in calibration (forward and backward) and evaluation; float64, so the devices agree to rounding."""
    plain = load_model_dir(tiny_model_dir, dtype=torch.float64)
    placement = module_map(8, _gpu_cpu_split, ends="cuda:0")
    sharded = load_model_dir(tiny_model_dir, dtype=torch.float64, device_map=placement)
    assert hooked(sharded) and input_device(sharded) == torch.device("cuda:0")
    assert decoder_layers(sharded)[7].mlp.up_proj.weight.device.type == "cpu"
    results = []
    for model in (plain, sharded):
        pruned, outcome, _ = prune(model, criterion(), granularity())
        results.append(([m.cpu() for m in outcome.masks], perplexity(pruned, windows())["ppl"]))
    assert all(torch.equal(a, b) for a, b in zip(results[0][0], results[1][0]))
    assert results[1][1] == pytest.approx(results[0][1], rel=1e-9)


@cuda
def test_gpu_auto_map_prune_recover_save_reload(tiny_model_dir, tmp_path):
    model = load_model_dir(tiny_model_dir, device="cuda", device_map="auto")
    placement = device_map_of(model)
    assert placement and set(placement.values()) <= {f"cuda:{i}" for i in range(torch.cuda.device_count())}
    pruned, _, log = prune(model, Taylor(), Structured(), train_steps=2)
    assert log["steps"] == 2
    assert {p.device.type for p in pruned.parameters()} == {"cuda"}
    ids = windows(2).to(input_device(pruned))
    with torch.no_grad():
        expected = pruned(ids).logits
    save_pruned(pruned, tmp_path / "pruned")
    reloaded = load_model_dir(tmp_path / "pruned", device="cuda", device_map="auto")
    assert model_widths(reloaded) == model_widths(pruned)
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, expected, atol=1e-5)


@cuda
def test_a_run_with_device_map_records_it(tiny_model_dir, text_corpus, tmp_path):
    import json

    from tests.conftest import bench

    text = str(text_corpus)
    result = bench("run", "--methods", "llm-pruner", "--model", tiny_model_dir, "--ratios", "0.2", "--profile",
                   "smoke", "--tasks", "none", "--corpora", text, "--calibration-data", text, "--recovery-data", text,
                   "--results", tmp_path, "--device", "cuda", "--device-map", "auto", "--save-models")
    assert result.returncode == 0, result.stderr
    records = [json.loads(p.read_text()) for p in tmp_path.rglob("*.json")
               if "models" not in p.parts and p.name != "benchsuite.json"]
    assert records and all(r["status"] == "ok" for r in records)
    for record in records:
        assert record["hardware"]["device_map"]["requested"] == "auto"
        assert "model.layers.0" in record["hardware"]["device_map"]["modules"] or "" in \
            record["hardware"]["device_map"]["modules"]
    pruned = next(r for r in records if r["method"] != "dense")
    reloaded = load_model_dir(pruned["model_path"], device="cuda", device_map="auto")
    assert sum(p.numel() for p in reloaded.parameters()) == pruned["metrics"]["params"]


@two_gpus
def test_two_gpus_prune_recover_save_reload_in_place(tiny_model_dir, tmp_path):
    placement = module_map(8, lambda i: f"cuda:{i // 4}", ends="cuda:0")
    plain = load_model_dir(tiny_model_dir, dtype=torch.float64)
    model = load_model_dir(tiny_model_dir, dtype=torch.float64, device_map=placement)
    assert {str(p.device) for p in model.parameters()} == {"cuda:0", "cuda:1"}
    a, outcome_a, log_a = prune(plain, Taylor(), Structured(), train_steps=2)
    b, outcome_b, log_b = prune(model, Taylor(), Structured(), train_steps=2)
    assert all(torch.equal(x.cpu(), y.cpu()) for x, y in zip(outcome_a.masks, outcome_b.masks))
    assert log_b["final_loss"] == pytest.approx(log_a["final_loss"], rel=1e-9)
    assert str(decoder_layers(b)[7].self_attn.q_proj.weight.device) == "cuda:1"
    ids = windows(2)
    with torch.no_grad():
        expected = b(ids.to(input_device(b))).logits.cpu()
    assert torch.allclose(expected, a(ids).logits, atol=1e-9)
    save_pruned(b, tmp_path / "pruned")
    reloaded = load_model_dir(tmp_path / "pruned", dtype=torch.float64, device_map=placement)
    assert device_map_of(reloaded) == placement
    assert str(decoder_layers(reloaded)[7].mlp.down_proj.weight.device) == "cuda:1"
    with torch.no_grad():
        assert torch.allclose(reloaded(ids.to("cuda:0")).logits.cpu(), expected, rtol=0, atol=1e-12)


@two_gpus
def test_balanced_map_uses_both_gpus(tiny_model_dir):
    model = load_model_dir(tiny_model_dir, device="cuda", device_map="balanced")
    assert {"cuda:0", "cuda:1"} <= set(device_map_of(model).values())
    assert perplexity(model, windows())["ppl"] > 1


def test_a_run_on_a_dispatched_model_records_the_same_results(tiny_model_dir, offline, tmp_path):
    """The whole run (plan, dense evaluation, pruning with calibration, LoRA recovery, merge, evaluation) on a
    model dispatched with hooks (an explicit map, Python API): the metrics equal the plain run's, the map is
    recorded, and the settings (config_hash) are the same, so both read as the same experiment."""
    from benchsuite.running.runner import Runner, RunRequest

    records = {}
    for name, placement in (("plain", None), ("hooked", module_map(8))):
        request = RunRequest(methods=["llm-pruner"], model=str(tiny_model_dir), ratios=[0.5], profile="smoke",
                             results=tmp_path / name, device="cpu", dtype="float32", ratio_basis="units",
                             device_map=placement, **offline)
        records[name] = {r["method"]: r for r in Runner(request, log=lambda _: None).run()}
    plain, hooked_run = records["plain"], records["hooked"]
    assert all(r["status"] == "ok" for r in [*plain.values(), *hooked_run.values()])
    for method in ("dense", "llm-pruner"):
        a, b = plain[method], hooked_run[method]
        assert a["config_hash"] == b["config_hash"]
        ppl = [key for key in a["metrics"] if key.startswith("ppl")]
        assert ppl and all(b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-6) for key in ppl)
        assert b["hardware"]["device_map"] == {"requested": module_map(8), "modules": module_map(8)}
        assert "device_map" not in a["hardware"]
    assert hooked_run["llm-pruner"]["prune_log"]["device_map"] == module_map(8)
    losses = [r["llm-pruner"]["recovery_log"]["final_loss"] for r in (plain, hooked_run)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert hooked_run["llm-pruner"]["pruned_units"]["mask_sha256"] == plain["llm-pruner"]["pruned_units"]["mask_sha256"]
