"""benchmarks/peers/: the agreement and reconstruction measures on tiny models, and the README section rendered
from the committed JSON (the peers themselves run in tox -e peers)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from benchsuite.reporting.blocks import read_block
from tests.conftest import tiny_llama

ROOT = Path(__file__).parent.parent
PEERS = ROOT / "benchmarks" / "peers"


def _module(name: str):
    sys.path.insert(0, str(PEERS))
    try:
        spec = importlib.util.spec_from_file_location(f"peers_{name}", PEERS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(PEERS))


def _pruned(model: torch.nn.Module, seed: int, fraction: float = 0.5) -> torch.nn.Module:
    import copy

    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in out.model.layers:
            for module in layer.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.mul_((torch.rand(module.weight.shape, generator=g) >= fraction).float())
    return out


def test_agreement_is_one_with_itself_and_counts_disagreements():
    common = _module("common")
    dense = tiny_llama(6, 2, layers=2)
    a, b = _pruned(dense, 0), _pruned(dense, 1)
    same = common.element_agreement(dense, a, a)
    assert all(r["equal_decisions"] == 1.0 and r["jaccard"] == 1.0 for r in same)
    rows = common.element_agreement(dense, a, b)
    # two independent random halves: about half the decisions agree, a third of the pruned union is shared
    assert all(0.4 < r["equal_decisions"] < 0.6 and 0.25 < r["jaccard"] < 0.42 for r in rows), rows
    assert all(abs(r["sparsity_suite"] - 0.5) < 0.05 and abs(r["sparsity_peer"] - 0.5) < 0.05 for r in rows)


def test_held_out_error_is_zero_for_the_dense_model_and_grows_with_pruning():
    common = _module("common")
    dense = tiny_llama(6, 2, layers=2).eval()
    tokens = torch.randint(0, dense.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    rows = common.held_out_error(dense, dense, _pruned(dense, 0, 0.8), tokens, [0, 1])
    assert all(r["suite"] == 0.0 and r["peer"] > 0.5 for r in rows), rows


def test_readme_section_is_rendered_from_the_json():
    report = _module("report")
    results = report.load()
    assert "llm_compressor" in results, "no benchmarks/results/peers/llm_compressor.json"
    text = read_block((ROOT / "docs" / "peers.md").read_text(), report.BLOCK)
    assert text is not None and text.strip() == report.render(results).strip(), \
        "run: python benchmarks/peers/report.py --readme docs/peers.md"
    jobs = results["llm_compressor"]["jobs"]
    assert {j["job"] for j in jobs} >= {"sparsegpt-50%", "sparsegpt-2:4", "wanda-50%", "wanda-2:4"}
    for j in jobs:  # what the table states is what was measured
        assert j["time_ratio"] == j["suite"]["phase"]["seconds"] / j["peer"]["phase"]["seconds"]


def _removed(dense: torch.nn.Module, heads: dict[int, list[int]], channels: dict[int, list[int]]) -> torch.nn.Module:
    """A copy of ``dense`` with the given query heads / MLP channels of some layers physically removed."""
    import copy

    from benchsuite.pruning.structure import attention_group, mlp_group, remove_units

    model = copy.deepcopy(dense)
    groups, masks = [], []
    for i, layer in enumerate(model.model.layers):
        for group, drop in ((attention_group(layer, i, "heads"), heads.get(i, [])),
                            (mlp_group(layer, i), channels.get(i, []))):
            keep = torch.ones(group.size, dtype=torch.bool)
            keep[drop] = False
            groups.append(group)
            masks.append(keep)
    return remove_units(model, groups, masks)


def test_torch_pruning_kept_units_are_read_back_from_the_removed_rows():
    tp = _module("torchpruning")
    dense = tiny_llama(6, 2, layers=3).eval()
    channels = dense.model.layers[0].mlp.gate_proj.out_features
    a = _removed(dense, {1: [0, 3]}, {1: [5, 7, 9], 2: [0]})
    kept = tp.kept_units(dense, a)
    assert kept[0] == {"heads": list(range(6)), "channels": list(range(channels))}
    assert kept[1]["heads"] == [1, 2, 4, 5]
    assert kept[1]["channels"] == [c for c in range(channels) if c not in (5, 7, 9)]
    assert kept[2]["channels"] == list(range(1, channels))
    # agreement over the pruned layers only (layer 0 is left out): b drops head 1 instead of 0, channel 8 for 9
    b = _removed(dense, {1: [1, 3]}, {1: [5, 7, 8], 2: [0]})
    agreement = tp.unit_agreement(dense, kept, tp.kept_units(dense, b))
    assert [r["layer"] for r in agreement["per_layer"]] == [1, 2]
    assert agreement["per_layer"][0]["heads"] == 4 / 6
    assert agreement["per_layer"][0]["channels"] == (channels - 2) / channels
    assert agreement["equal_decisions"] == (2 * 6 + 2 * channels - 4) / (2 * 6 + 2 * channels)
    assert tp.unit_agreement(dense, kept, kept)["equal_decisions"] == 1.0


def test_torch_pruning_probe_failures_are_described_with_what_was_measured():
    tp = _module("torchpruning")
    hang = {"status": "timeout", "seconds": 120.4, "attention": "eager", "groups_started": 3,
            "last_root": "model.layers.27.self_attn.k_proj", "root_width": 192, "deps_in_last_group": 30500,
            "max_index_in_last_group": 183167}
    text = tp.describe_probe(hang)
    assert "120 s" in text and "model.layers.27.self_attn.k_proj (192 channels)" in text and "183,167" in text
    assert tp.describe_probe({"status": "ok", "seconds": 1.25}) == "dependency graph built in 1.2 s"


def test_torch_pruning_unit_counts_are_per_key_value_group():
    tp = _module("torchpruning")
    dense = tiny_llama(6, 2, layers=3).eval()
    counts = tp.unit_counts(dense, _removed(dense, {1: [0, 3]}, {1: [5, 7, 9], 2: [0]}))
    assert counts == {"heads": {1: 1, 2: 0}, "channels": {1: 3, 2: 1}}


def test_torch_pruning_removes_the_asked_units_exactly(monkeypatch):
    """Its graph traced as the script traces it (eager, no KV cache) builds; one and two query heads per key/value
    group (the second leaves one per group, where its own GQA check misses) and MLP channels are removed as asked,
    and the logits are those of the same units removed by hand (sdpa)."""
    import copy

    if os.environ.get("BENCHSUITE_PEERS_TORCH_PRUNING"):
        monkeypatch.syspath_prepend(os.environ["BENCHSUITE_PEERS_TORCH_PRUNING"])
    pytest.importorskip("torch_pruning")
    tp = _module("torchpruning")
    dense = tiny_llama(6, 2, layers=3).eval()
    model = copy.deepcopy(dense)
    heads, channels = {0: 1, 2: 2}, {0: 5, 2: 30}
    tokens = torch.randint(0, dense.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    applied = tp.tp_prune(model, "GroupMagnitudeImportance", heads, channels, tokens)
    assert tp.unit_counts(dense, model) == {"heads": heads, "channels": channels}
    assert sorted(applied) == ["model.layers.2.self_attn.k_proj", "model.layers.2.self_attn.v_proj"]
    kept = tp.kept_units(dense, model)
    width = dense.config.intermediate_size
    by_hand = _removed(dense, {i: [h for h in range(6) if h not in k["heads"]] for i, k in enumerate(kept)},
                       {i: [c for c in range(width) if c not in k["channels"]] for i, k in enumerate(kept)})
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, by_hand(tokens).logits)
