"""Full fine-tuning recovery (``--recovery full``): every remaining weight trains, weights that pruning set to zero
stay zero (N:M and unstructured), recorded as such and kept apart from LoRA; refused for methods that prune with
LoRA."""

from __future__ import annotations

import itertools
import json

import torch

from benchsuite.running.finetune import LoRAConfig, train_lora
from benchsuite.testing import tiny_model
from tests.conftest import bench
from tests.test_cli import smoke


def test_full_fine_tuning_trains_every_weight_and_keeps_pruned_zeros():
    model = tiny_model("llama", 6, 2, 2).train()
    mlp = model.model.layers[0].mlp
    with torch.no_grad():  # an unstructured pattern and a 2:4 one
        mlp.up_proj.weight[:, ::3] = 0
        mlp.down_proj.weight.view(-1, 4)[:, :2] = 0
    zeros = {name: p.detach() == 0 for name, p in model.named_parameters() if p.dim() == 2}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    batches = (torch.randint(0, 256, (2, 16), generator=gen) for _ in itertools.count())
    log = train_lora(model, batches, 3, LoRAConfig(full=True, lr=1e-3))
    assert log.steps == 3 and log.summary()["weights_with_kept_zeros"] == 2
    for name, p in model.named_parameters():
        assert not p.requires_grad  # handed back frozen, as after LoRA
        assert not torch.equal(p.detach(), before[name]), f"{name} did not train"
        if name in zeros and zeros[name].any():
            assert (p.detach()[zeros[name]] == 0).all(), f"{name}: a pruned weight came back"
            assert (p.detach()[~zeros[name]] != 0).all()


def test_a_run_with_full_recovery(tmp_path, tiny_model_dir, offline):
    results = tmp_path / "results"
    common = ("--model", str(tiny_model_dir), "--ratios", "0.5", "--results", str(results), *smoke(offline),
              "--metrics", "perplexity")
    result = bench("run", "--methods", "magnitude-l2,magnitude-2:4", "--recovery", "full", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    records = {r["variant"]: r for r in (json.loads(p.read_text()) for p in results.rglob("*.json"))
               if r.get("variant")}
    structured, nm = records["magnitude-l2+full"], records["magnitude-2:4+full"]
    for record in (structured, nm):
        assert record["status"] == "ok", record.get("error")
        assert record["recovery"] == {"full": True, "lr": 1e-5}
        assert record["recovery_setup"]["label"] == "full" and "every remaining weight" in \
            record["recovery_setup"]["trains"]
        assert record["recovery_log"]["steps"] == 4 and record["metrics"]["weight_grad_mb"] > 0
        assert record["metrics"]["peak_mem_recover_mb"] is not None
    assert nm["recovery_log"]["weights_with_kept_zeros"] > 0  # the 2:4 pattern survives (the merge check too)
    assert "full" in bench("report", "--results", str(results), "--recovery", "full").stdout
    refused = bench("run", "--methods", "loraprune", "--recovery", "full", *common)
    assert refused.returncode != 0 and "can't run with --recovery full (for methods that prune without LoRA)" in \
        refused.stderr


def test_recovery_settings_are_parsed_recorded_and_refused_with_the_accepted_ones():
    import pytest

    from benchsuite.api import ConfigError
    from benchsuite.host import get_registry
    from benchsuite.running.plan import parse_recovery, plan_methods

    registry = get_registry()
    full, written, qualified = parse_recovery("full:lr=2e-5", registry)
    assert (full.name, full.lr, written, qualified) == ("full", 2e-5, "+full:lr=2e-5", "benchsuite:full")
    distill = parse_recovery("distill:temperature=2,lm_weight=0.5", registry)[0]
    assert distill.training(None) == {"distill_temperature": 2, "distill_alpha": 0.5}
    [full] = plan_methods(["magnitude-l2"], registry, [0.5], recovery="full:lr=2e-5")
    assert full.key == "magnitude-l2+full:lr=2e-5" and full.method.recovery == {"full": True, "lr": 2e-5}
    assert full.lora()[0].full and full.lora()[0].lr == 2e-5 and full.recovery_label() == "full"
    assert full.components["recovery"] == "benchsuite:full"
    [suffixed] = plan_methods(["llm-pruner+lora:r=16"], registry, [0.5])
    assert suffixed.key == "llm-pruner+lora:r=16" and suffixed.lora()[0].r == 16
    [own] = plan_methods(["llm-pruner"], registry, [0.5], recovery="lora")  # its own LoRA: its name and settings
    assert own.key == "llm-pruner" and own.method.recovery == plan_methods(["llm-pruner"], registry, [0.5])[0] \
        .method.recovery
    [distill] = plan_methods(["llm-pruner"], registry, [0.5], recovery="distill:temperature=2")
    assert distill.lora()[0].distill_temperature == 2 and distill.lora()[0].lr == 1e-4  # its own LoRA, distilled
    with pytest.raises(ConfigError, match="recovery 'full' has no parameter 'r'; it accepts: lr, weight_decay"):
        plan_methods(["magnitude-l2"], registry, [0.5], recovery="full:r=4")
    with pytest.raises(ConfigError, match="ful.*did you mean.*full"):
        plan_methods(["magnitude-l2"], registry, [0.5], recovery="ful")
    with pytest.raises(ConfigError, match="temperature must be positive"):
        plan_methods(["magnitude-l2"], registry, [0.5], recovery="distill:temperature=0")


THIRD_PARTY = """
from benchsuite import Recovery, hookimpl

BENCHSUITE_API = "2.4"


class WideLoRA(Recovery):
    \"\"\"LoRA of rank 32 at a lower learning rate, distilled from the dense model at temperature 2.\"\"\"

    name = "wide-distill"
    trains = "lora"
    r: int = 32

    def training(self, own):
        return dict(own or {}) | {"r": self.r, "lr": 5e-5, "distill_temperature": 2.0, "distill_alpha": 0.0}


@hookimpl
def benchsuite_register_recoveries(register):
    register(WideLoRA)
"""


def test_a_third_party_recovery_in_a_single_file_runs_and_is_recorded(tmp_path, tiny_model_dir, offline):
    plugin = tmp_path / "wide_recovery.py"
    plugin.write_text(THIRD_PARTY)
    results = tmp_path / "results"
    result = bench("run", "--plugin", str(plugin), "--model", str(tiny_model_dir), "--methods", "magnitude-l2",
                   "--ratios", "0.5", "--recovery", "wide-distill:r=16", "--results", str(results), *smoke(offline),
                   "--metrics", "perplexity")
    assert result.returncode == 0, result.stderr[-3000:]
    record = next(r for r in (json.loads(p.read_text()) for p in results.rglob("*.json")) if r.get("variant"))
    assert record["variant"] == "magnitude-l2+wide-distill:r=16"
    assert record["recovery"] == {"r": 16, "lr": 5e-5, "distill_temperature": 2.0, "distill_alpha": 0.0}
    assert record["recovery_setup"]["label"] == "wide-distill"
    assert record["recovery_setup"]["recovery"] == {"name": "wide_recovery:wide-distill", "params": {"r": 16}}
    assert record["components"]["recovery"] == "wide_recovery:wide-distill"
    assert "KL(dense || pruned)" in record["recovery_log"]["loss"]
    assert list(record["config"]["plugin_files"]) == ["wide_recovery"]  # the file's digest defines the result
