"""The structured engine: coupled groups, masks equal physical removal, save/reload."""

from __future__ import annotations

import json

import pytest
import torch

from benchsuite.api import ConfigError
from benchsuite.api.model import decoder_layers
from benchsuite.models.checkpoint import load_model_dir, save_pruned
from benchsuite.pruning.structure import model_widths, parse_layers, prune_counts, select_units
from benchsuite_plugins.granularities import Structured
from tests.conftest import tiny_llama


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def _random_masks(groups, ratio, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = [torch.rand(grp.size, generator=g) for grp in groups]
    return Structured().select(groups, scores, ratio)


@pytest.mark.parametrize("attention", ["heads", "kv-groups"])
def test_masked_equals_removed(tiny, tokens, attention):
    gran = Structured(attention=attention)
    groups = gran.units(tiny, [0, 1, 2, 3])
    masks = _random_masks(groups, 0.5)
    dense = _logits(tiny, tokens)
    gran.apply_masks(tiny, groups, masks)
    masked = _logits(tiny, tokens)
    assert not torch.allclose(masked, dense, atol=1e-3), "masking must change the model"
    pruned = gran.finalize(tiny, groups, masks)
    assert torch.allclose(_logits(pruned, tokens), masked, atol=1e-5)
    before = sum(g.size for g in groups)
    assert sum(int(m.sum()) for m in masks) < before


def test_gqa_heads_stay_consistent():
    model = tiny_llama(num_heads=6, num_kv_heads=2)
    gran = Structured(attention="heads")
    groups = gran.units(model, [1])
    attn = next(g for g in groups if g.kind == "attention")
    assert attn.blocks == 2 and attn.size == 6
    # prune the lowest head in each kv group even if scores favour one group
    scores = [torch.tensor([0.0, 0.1, 0.2, 5.0, 6.0, 7.0]) if g.kind == "attention"
              else torch.rand(g.size) for g in groups]
    masks = gran.select(groups, scores, 0.34)
    assert masks[0].tolist() == [False, True, True, False, True, True]
    gran.finalize(model, groups, masks)
    w = model_widths(model)[1]
    assert (w.num_heads, w.num_kv_heads) == (4, 2)
    assert decoder_layers(model)[1].self_attn.num_key_value_groups == 2


def test_kv_group_removal_takes_its_query_heads():
    model = tiny_llama(num_heads=6, num_kv_heads=2)
    gran = Structured(attention="kv-groups", mlp=False)
    groups = gran.units(model, [0])
    masks = gran.select(groups, [torch.tensor([1.0, 0.0])], 0.5)
    q_before = decoder_layers(model)[0].self_attn.q_proj.weight[:48].clone()
    gran.finalize(model, groups, masks)
    layer = decoder_layers(model)[0]
    assert model_widths(model)[0].num_heads == 3 and model_widths(model)[0].num_kv_heads == 1
    assert torch.equal(layer.self_attn.q_proj.weight, q_before)  # kv head 1 (lower score) goes with q heads 3..5
    assert layer.self_attn.o_proj.weight.shape == (96, 48)


def test_coupled_groups_cover_the_same_units(tiny):
    for group in Structured().units(tiny, [0]):
        widths = {m.index.shape[0] for m in group.members}
        assert widths == {group.size}
        layer = decoder_layers(tiny)[0]
        for m in group.members:
            w = layer.get_submodule(m.module).weight
            assert m.index.max() < w.shape[m.dim]


def test_select_keeps_one_per_block_and_is_cumulative():
    model = tiny_llama(num_heads=6, num_kv_heads=2)
    group = Structured().units(model, [0])[0]
    assert prune_counts([group], 0.99) == [2]  # one unit per block stays
    keep = select_units(group, torch.arange(6.0), 2)
    assert keep.reshape(2, 3).sum(1).tolist() == [1, 1]
    first = select_units(group, torch.tensor([0.0, 9, 9, 0, 9, 9]), 1)
    second = select_units(group, torch.tensor([9.0, 0, 9, 9, 0, 9]), 1, previous=first)
    assert not (second & ~first).any(), "a pruned unit came back"


def test_ratio_is_met_across_layers_by_carrying_rounding():
    model = tiny_llama(num_heads=6, num_kv_heads=2, layers=4)
    groups = Structured().units(model, [0, 1, 2, 3])
    counts = prune_counts(groups, 0.5)
    attention = [n for g, n in zip(groups, counts) if g.kind == "attention"]
    assert attention == [2, 1, 2, 1]  # 3 heads per kv group: 1.5 on average
    mlp = [n for g, n in zip(groups, counts) if g.kind == "mlp"]
    assert mlp == [64] * 4
    masks = Structured().select(groups, [torch.rand(g.size) for g in groups], 0.5)
    pruned_heads = sum(int((~m).sum()) for g, m in zip(groups, masks) if g.kind == "attention")
    assert pruned_heads == 12  # 50% of 24


@pytest.mark.parametrize("ratios", [[0.1, 0.2, 0.3, 0.4, 0.45, 0.5], [0.05 * k for k in range(1, 19)]])
def test_cumulative_selection_never_overshoots(ratios):
    """Pruning events at rising ratios (an iterative schedule) end with the same per-layer counts
    as pruning once: the target in total and within one unit of the ratio in every layer."""
    model = tiny_llama(num_heads=6, num_kv_heads=2, layers=8)
    gran = Structured()
    groups = gran.units(model, list(range(8)))
    generator = torch.Generator().manual_seed(0)
    masks = None
    for ratio in ratios:
        masks = gran.select(groups, [torch.rand(g.size, generator=generator) for g in groups], ratio, masks)
        for kind, per_block, blocks in (("attention", 3, 2), ("mlp", 128, 1)):
            per_layer = [int((~m).sum()) // blocks for g, m in zip(groups, masks) if g.kind == kind]
            ideal = min(ratio * per_block, per_block - 1)  # one unit per block always stays
            assert all(abs(n - ideal) < 1 for n in per_layer), (ratio, kind, per_layer)
            assert sum(per_layer) == round(ideal * 8), (ratio, kind, per_layer)


def test_save_and_reload_identical(tiny, tokens, tmp_path):
    gran = Structured()
    groups = gran.units(tiny, [1, 2])
    pruned = gran.finalize(tiny, groups, _random_masks(groups, 0.4, seed=3))
    expected = _logits(pruned, tokens)
    save_pruned(pruned, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert len(config["benchsuite_layer_widths"]) == 8
    reloaded = load_model_dir(tmp_path / "m")
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    assert torch.equal(_logits(reloaded, tokens), expected)
    assert model_widths(reloaded) == model_widths(pruned)


def test_parse_layers():
    assert parse_layers("default", 32) == list(range(4, 30))
    assert parse_layers("default", 30) == list(range(4, 28))
    assert parse_layers("loraprune", 32) == list(range(3, 31))
    assert parse_layers("loraprune", 4) == [0, 1, 2]  # the reference floors 0.1 * layers
    assert parse_layers("loraprune", 30) == list(range(3, 29))
    assert parse_layers("loraprune", 19) == list(range(1, 18))  # round() would freeze 2
    assert parse_layers("all", 3) == [0, 1, 2]
    assert parse_layers("1:3", 5) == [1, 2]
    assert parse_layers("0,-1", 5) == [0, 4]
    with pytest.raises(ConfigError):
        parse_layers("x", 4)


def test_layout_check_names_the_reason():
    with pytest.raises(ConfigError, match="LLaMA-family"):
        Structured().check_model(torch.nn.Sequential(torch.nn.Linear(2, 2)))
