"""benchmarks/peers/: the agreement and reconstruction measures on tiny models, and the README section rendered
from the committed JSON (the peers themselves run in tox -e peers)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

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
    text = read_block((ROOT / "README.md").read_text(), report.BLOCK)
    assert text is not None and text.strip() == report.render(results).strip(), \
        "run: python benchmarks/peers/report.py --readme README.md"
    jobs = results["llm_compressor"]["jobs"]
    assert {j["job"] for j in jobs} >= {"sparsegpt-50%", "sparsegpt-2:4", "wanda-50%", "wanda-2:4"}
    for j in jobs:  # what the table states is what was measured
        assert j["time_ratio"] == j["suite"]["phase"]["seconds"] / j["peer"]["phase"]["seconds"]
