"""Distillation recovery: the loss is KL(teacher || student) at temperature T times T^2 (a direct computation), and a
run with --recovery distill trains LoRA on the dense model's logits, recorded as such and kept apart from LoRA."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F

from benchsuite.running.finetune import distill_loss
from tests.conftest import bench
from tests.test_cli import smoke


def test_distill_loss_is_the_tempered_kl_times_t_squared():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    for t in (1.0, 2.0):
        expected = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                            reduction="none").sum(-1).mean() * t * t
        assert distill_loss(student, teacher, t).item() == pytest.approx(expected.item(), rel=1e-6)
    assert distill_loss(teacher, teacher, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_a_run_with_distill_recovery(tmp_path, tiny_model_dir, offline):
    results = tmp_path / "results"
    result = bench("run", "--model", str(tiny_model_dir), "--methods", "magnitude-l2", "--ratios", "0.5",
                   "--recovery", "distill", "--results", str(results), *smoke(offline), "--metrics", "perplexity",
                   "--view", "full")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(next(results.rglob("magnitude-l2_distill/*.json")).read_text())
    assert record["recovery"]["distill_temperature"] == 1.0 and record["lora"]["distill_alpha"] == 0.0
    assert record["recovery_setup"]["label"] == "LoRA distill"
    assert "KL(dense || pruned)" in record["recovery_log"]["loss"] and record["recovery_log"]["steps"] == 4
    assert "LoRA distill" in result.stdout
    lora = bench("run", "--model", str(tiny_model_dir), "--methods", "magnitude-l2", "--ratios", "0.5",
                 "--recovery", "lora", "--results", str(results), *smoke(offline), "--metrics", "perplexity")
    assert lora.returncode == 0
    ppl = {r.get("variant"): r["metrics"]["ppl_text"] if "ppl_text" in r["metrics"] else None
           for r in (json.loads(p.read_text()) for p in results.rglob("*.json"))}
    assert ppl["magnitude-l2+distill"] != ppl["magnitude-l2+lora"]  # another loss, another model
    shown = bench("report", "--results", str(results), "--recovery", "distill")
    assert "LoRA distill" in shown.stdout and not re.search(r"\| LoRA +\|", shown.stdout)
