"""Depth pruning (plugins/depth.py): the ``layers`` granularity, ShortGPT's block influence and the depth
baselines, on tiny GQA models: formulas, removal against running the kept blocks by hand, save/reload, the
KV cache after renumbering, the parameter-matched block count, conformance and an end-to-end run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchsuite.models.checkpoint import load_model_dir, save_pruned
from benchsuite.testing import assert_conforms, calibration_tokens, make_context, tiny_llama
from benchsuite_plugins.depth import REMOVED_KEY, BlockInfluence, DepthOrder, Layers, remove_layers
from benchsuite_plugins.schedules import OneShot
from tests.conftest import bench


def gqa(layers: int = 8, seed: int = 0):
    return tiny_llama(heads=4, kv_heads=2, layers=layers, seed=seed)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def manual_logits(model, ids: torch.Tensor, blocks: list[int]) -> torch.Tensor:
    """Embeddings -> the given decoder blocks, one after the other -> final norm -> head, by hand."""
    inner = model.model
    with torch.no_grad():
        h = inner.embed_tokens(ids)
        positions = torch.arange(ids.shape[1])[None]
        rope = inner.rotary_emb(h, positions)
        mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)[None, None]
        for i in blocks:
            out = inner.layers[i](h, attention_mask=mask, position_ids=positions, position_embeddings=rope)
            h = out[0] if isinstance(out, tuple) else out
        return model.lm_head(inner.norm(h))


@pytest.mark.parametrize(("distance", "tokens"), [("cosine", "all"), ("angular", "last")])
def test_block_influence_formula(distance, tokens):
    model = gqa()
    with torch.no_grad():
        model.model.norm.weight.fill_(1.0)  # then hidden_states[-1] has the direction of the last block's output
    ids = calibration_tokens(4, 24, seed=3)
    criterion = BlockInfluence.create({"distance": distance, "tokens": tokens})
    criterion.prepare(model, make_context(0, ids, batch_size=2))
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True, use_cache=False).hidden_states
    groups = Layers().units(model, list(range(8)))
    for group in groups:
        a, b = hs[group.layer].double(), hs[group.layer + 1].double()
        if tokens == "last":
            a, b = a[:, -1], b[:, -1]
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
        expected = (torch.arccos(cos) / math.pi).mean() if distance == "angular" else (1 - cos).mean()
        got = criterion.group_scores(group, model.model.layers[group.layer])
        assert got.shape == (1,)
        assert float(got) == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
    assert criterion.stats()["tokens_per_block"] == (4 if tokens == "last" else 4 * 24)


def test_one_shot_removes_lowest_influence_blocks_exactly():
    model = gqa()
    ids = calibration_tokens(2, 20, seed=5)
    reference = gqa()
    criterion = BlockInfluence.create()
    granularity = Layers()
    outcome = OneShot().run(model, criterion, granularity, 0.25, list(range(8)), make_context(0, ids))
    bi = torch.tensor([float(s) for s in _scores(ids)])
    gone = sorted(torch.argsort(bi)[:2].tolist())  # 0.25 of 8 blocks: the two lowest BI
    assert [g.layer for g, m in zip(outcome.groups, outcome.masks) if not bool(m.all())] == gone
    kept = [i for i in range(8) if i not in gone]
    pruned = outcome.model
    assert len(pruned.model.layers) == 6 and pruned.config.num_hidden_layers == 6
    assert getattr(pruned.config, REMOVED_KEY) == gone
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == list(range(6))
    attn = pruned.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features) == (4 * attn.head_dim, 2 * attn.head_dim)
    torch.testing.assert_close(logits(pruned, ids), manual_logits(reference, ids, kept), rtol=1e-5, atol=1e-5)
    assert granularity.after_merge(pruned, outcome.groups, outcome.masks) == {
        "num_hidden_layers": 6, "layers_removed": gone,
        "params_removed": 2 * sum(p.numel() for p in reference.model.layers[0].parameters())}


def _scores(ids):
    model = gqa()
    criterion = BlockInfluence.create()
    criterion.prepare(model, make_context(0, ids))
    return [criterion.group_scores(g, None) for g in Layers().units(model, list(range(8)))]


def test_masking_skips_blocks_like_removal():
    model, ids = gqa(), calibration_tokens(2, 16, seed=1)
    granularity = Layers()
    groups = granularity.units(model, list(range(8)))
    masks = [torch.tensor([i not in (2, 5)]) for i in range(8)]
    granularity.apply_masks(model, groups, masks)
    masked = logits(model, ids)
    granularity.apply_masks(model, groups, [torch.tensor([True])] * 8)  # reversible
    torch.testing.assert_close(logits(model, ids), logits(gqa(), ids))
    granularity.apply_masks(model, groups, masks)
    final = granularity.finalize(model, groups, masks)
    torch.testing.assert_close(logits(final, ids), masked, rtol=1e-5, atol=1e-5)
    assert not final.model.layers[0]._forward_hooks  # no hook left behind


def test_save_and_reload_with_fewer_layers(tmp_path):
    model, ids = gqa(), calibration_tokens(2, 16, seed=2)
    remove_layers(model, [1, 6])
    remove_layers(model, [0])  # a second removal: original indices accumulate
    assert getattr(model.config, REMOVED_KEY) == [0, 1, 6]
    expected = logits(model, ids)
    save_pruned(model, tmp_path / "m", provenance={"removed": [0, 1, 6]})
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["num_hidden_layers"] == 5 and config[REMOVED_KEY] == [0, 1, 6]
    reloaded = load_model_dir(tmp_path / "m")
    assert len(reloaded.model.layers) == 5
    torch.testing.assert_close(logits(reloaded, ids), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits(reloaded, ids), manual_logits(gqa(), ids, [2, 3, 4, 5, 7]),
                               rtol=1e-5, atol=1e-5)


def test_generation_with_kv_cache_after_removal():
    model = gqa()
    remove_layers(model, [0, 3, 4])
    prompt = calibration_tokens(1, 10, seed=4)
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True,
                                   pad_token_id=model.config.pad_token_id)
        ids = prompt
        for _ in range(6):  # greedy without a cache
            nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    assert torch.equal(generated[:, : ids.shape[1]], ids)


def test_layer_types_follow_removal():
    model = gqa()
    model.config.layer_types = ["full_attention"] * 7 + ["sliding_attention"]
    remove_layers(model, [0, 1])
    assert model.config.layer_types == ["full_attention"] * 5 + ["sliding_attention"]
    with pytest.raises(ValueError, match="leaves none"):
        remove_layers(model, list(range(6)))


@pytest.mark.parametrize(("ratio", "blocks"), [(0.2, 2), (0.3, 2), (0.32, 3), (0.5, 4), (0.05, 0)])
def test_ratio_of_params_picks_the_closest_block_count(ratio, blocks):
    """The planner's unit ratio (``ratio * projection weights / block params``) -> the block count whose removed
    parameters come closest to ``ratio`` of the projection weights."""
    model = gqa(layers=8)
    granularity = Layers()
    groups = granularity.units(model, list(range(8)))
    per_block = granularity.unit_params(model, groups)
    assert per_block == [sum(p.numel() for p in model.model.layers[0].parameters())] * 8
    projections = sum(m.weight.numel() for name, m in model.model.layers.named_modules() if name.endswith("proj"))
    unit = ratio * projections / sum(per_block)
    masks = granularity.select(groups, [torch.tensor([float(i)]) for i in range(8)], unit)
    removed = sum(int((~m).sum()) for m in masks)
    best = min(range(8), key=lambda k: (abs(k * per_block[0] - ratio * projections), k))
    assert removed == blocks == best
    assert [bool(m.all()) for m in masks] == [i >= removed for i in range(8)]  # lowest scores go


def test_select_keeps_previous_removals_and_one_block():
    granularity = Layers()
    groups = granularity.units(gqa(layers=4), [0, 1, 2, 3])
    scores = [torch.tensor([s]) for s in (0.1, 0.2, 0.3, 0.4)]
    previous = [torch.tensor([i != 3]) for i in range(4)]
    masks = granularity.select(groups, scores, 0.5, previous)
    assert [bool(m.all()) for m in masks] == [False, True, True, False]
    assert granularity.max_ratio(groups) == 0.75
    assert sum(int((~m).sum()) for m in granularity.select(groups, scores, 0.99)) == 3


def test_depth_order_and_structured_refusal():
    model = gqa()
    groups = Layers().units(model, list(range(7)))
    masks = Layers().select(groups, Layers().score(DepthOrder.create(), model, groups), 3 / 7)
    assert [g.layer for g, m in zip(groups, masks) if not bool(m.all())] == [4, 5, 6]
    from benchsuite.api import ConfigError
    from benchsuite_plugins.granularities import Structured

    structured = Structured()
    with pytest.raises(ConfigError, match="granularity 'layers'"):
        structured.score(DepthOrder.create(), model, structured.units(model, [0]))


def test_conformance():
    assert_conforms(BlockInfluence, models=["gqa"], repeat=False)
    report = assert_conforms(DepthOrder, granularities=["layers"], models=["gqa"], repeat=False)
    assert report.passed


def test_cli_run_with_lora_recovery(tmp_path, offline, tiny_model_dir):
    text = offline["corpora"][0]
    result = bench("run", "--methods", "shortgpt+lora,depth-random", "--model", tiny_model_dir, "--ratios", "0.25",
                   "--profile", "smoke", "--tasks", "none", "--corpora", text, "--recovery-data", text,
                   "--calibration-data", text, "--results", tmp_path / "results")
    assert result.returncode == 0, result.stderr
    records = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("*.json")]
    by_method = {r["method"]: r for r in records if "metrics" in r}
    assert {"dense", "shortgpt", "depth-random"} <= set(by_method)
    dense, short, rand = by_method["dense"], by_method["shortgpt"], by_method["depth-random"]
    assert short["status"] == "ok" and rand["status"] == "ok"
    assert short["recovery_setup"]["label"] == "LoRA" and short["recovery_log"]["steps"] > 0
    assert "recovery_log" not in rand
    assert short["pruned_units"]["total"] == {"layer": {"pruned": 2, "of": 8}}
    assert short["checks"]["num_hidden_layers"] == 6 and len(short["checks"]["layers_removed"]) == 2
    per_block = sum(p.numel() for p in tiny_llama(heads=6, kv_heads=2).model.layers[0].parameters())
    for record in (short, rand):  # 0.25 of the projection weights: two of eight blocks
        assert record["metrics"]["params"] == dense["metrics"]["params"] - 2 * per_block
        assert record["checks"]["params_removed"] == 2 * per_block
        assert math.isfinite(record["metrics"]["ppl_text"])


def test_reload_with_fewer_layers_and_per_layer_widths(tmp_path):
    """Width pruning of some blocks, then depth pruning: the saved widths follow the remaining blocks."""
    from benchsuite_plugins.granularities import Structured

    model, ids = gqa(), calibration_tokens(2, 16, seed=6)
    structured = Structured()
    groups = structured.units(model, [2, 5])
    masks = [torch.arange(g.size) % 2 == 0 for g in groups]  # half of each group (one q head per kv group)
    structured.finalize(model, groups, masks)
    remove_layers(model, [1, 2])  # block 2 was narrowed, block 5 (now 3) too
    expected = logits(model, ids)
    save_pruned(model, tmp_path / "m")
    widths = json.loads((tmp_path / "m" / "config.json").read_text())["benchsuite_layer_widths"]
    assert len(widths) == 6 and widths[3]["num_heads"] == 2 and widths[1]["num_heads"] == 4
    reloaded = load_model_dir(tmp_path / "m")
    torch.testing.assert_close(logits(reloaded, ids), expected, rtol=1e-5, atol=1e-5)


def test_block_magnitude_and_random_scores():
    """depth-magnitude: a block scores sum |W| over its seven projections; depth-random: one seeded draw per block."""
    from benchsuite_plugins.baselines import Magnitude, Random

    model = gqa()
    granularity = Layers()
    groups = granularity.units(model, list(range(8)))
    scores = granularity.score(Magnitude.create({"p": 1}), model, groups)
    for group, score in zip(groups, scores):
        block = model.model.layers[group.layer]
        expected = sum(m.weight.abs().sum() for name, m in block.named_modules() if name.endswith("proj"))
        torch.testing.assert_close(score, expected.reshape(1).float(), rtol=1e-5, atol=0)
    draws = []
    for seed in (0, 0, 1):
        criterion = Random.create()
        criterion.prepare(model, make_context(seed))
        draws.append(torch.cat(granularity.score(criterion, model, groups)))
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
