"""LoRAPrune: the formulas themselves, checked against autograd and slow reference computations."""

from __future__ import annotations

import pytest
import torch

from benchsuite import RunningScores
from benchsuite.api import PruneContext, combine
from benchsuite.api.model import decoder_layers
from benchsuite.pruning.structure import model_widths
from benchsuite.running.finetune import (
    LoRAConfig,
    attach_lora,
    frozen_parameters,
    lora_parameters,
    merge_lora,
    train_lora,
)
from benchsuite_plugins.granularities import Structured
from benchsuite_plugins.loraprune import LoRAGuided, estimated_gradient, lora_factors
from benchsuite_plugins.schedules import Iterative, cubic_ratio
from tests.conftest import tiny_llama

LORA = LoRAConfig(r=4, alpha=8, dropout=0.0, lr=1e-2)


def lora_model(heads=6, kv=2, seed=0):
    model = attach_lora(tiny_llama(heads, kv, seed=seed), LORA)
    with torch.no_grad():  # peft starts B at zero; give it values so every term of the estimate counts
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model


def backward(model, tokens):
    model.zero_grad(set_to_none=True)
    model(input_ids=tokens, labels=tokens).loss.backward()


def test_estimate_is_the_one_step_expansion():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 10, generator=g), torch.randn(7, 4, generator=g)
    da, db = torch.randn(4, 10, generator=g), torch.randn(7, 4, generator=g)
    definition = -((b - db) @ (a - da) - b @ a)
    assert torch.allclose(estimated_gradient(a, b, da, db), definition, atol=1e-5)
    # B = 0 (peft's start): the estimate is dB @ A alone
    assert torch.allclose(estimated_gradient(a, torch.zeros(7, 4), None, db), db @ a)


def test_lora_gradients_match_autograd_and_element_scores(tokens):
    """dA, dB from peft equal s B^T dW and s dW A^T for the true dL/dW (autograd on a copy whose W0
    requires grad), and the criterion's element score is |G_est * (W0 + s B A)| from exactly those."""
    model = lora_model()
    module = decoder_layers(model)[1].self_attn.q_proj
    base = module.get_base_layer()
    base.weight.requires_grad_(True)  # only in this test, to get the true gradient
    backward(model, tokens)
    a, b, s, _ = lora_factors(module)
    true_grad = base.weight.grad
    assert torch.allclose(a.grad, s * b.detach().t() @ true_grad, atol=1e-6)
    assert torch.allclose(b.grad, s * true_grad @ a.detach().t(), atol=1e-6)
    expected = ((b.grad @ a + b @ a.grad - b.grad @ a.grad) * (base.weight + s * b @ a)).abs().detach()
    assert torch.allclose(LoRAGuided().element_scores("layers.1.self_attn.q_proj", module), expected, atol=1e-6)


@pytest.mark.parametrize("heads, kv", [(4, 4), (6, 2)])
def test_group_scores_equal_slow_reference(tokens, heads, kv):
    model = lora_model(heads, kv)
    backward(model, tokens)
    layer = decoder_layers(model)[2]
    crit = LoRAGuided()
    hd = 96 // heads
    rep = heads // kv

    def importance(path):
        return crit.element_scores("", layer.get_submodule(path))

    # attention: per q head, sum over its q rows and o columns (+ its own k/v rows without GQA)
    per_module = []
    for path, dim in [("self_attn.q_proj", 0), ("self_attn.k_proj", 0), ("self_attn.v_proj", 0),
                      ("self_attn.o_proj", 1)]:
        if rep > 1 and path in ("self_attn.k_proj", "self_attn.v_proj"):
            continue  # shared by several q heads: not part of a removable q-head unit
        imp = importance(path)
        vec = torch.tensor([float((imp[h * hd:(h + 1) * hd] if dim == 0 else imp[:, h * hd:(h + 1) * hd]).sum())
                            for h in range(heads)])
        per_module.append(vec / vec.norm())
    attn_ref = sum(per_module)
    channels = importance("mlp.gate_proj").shape[0]
    mlp_ref = sum(v / v.norm() for v in (importance("mlp.gate_proj").sum(1), importance("mlp.up_proj").sum(1),
                                         importance("mlp.down_proj").sum(0)))
    groups = Structured().units(model, [2])
    got = Structured().score(crit, model, groups)
    assert torch.allclose(got[0], attn_ref, rtol=1e-4) and got[1].shape == (channels,)
    assert torch.allclose(got[1], mlp_ref, rtol=1e-4)
    assert torch.allclose(combine([torch.ones(2), 3 * torch.ones(2)], "sum", True), torch.full((2,), 2 ** 0.5))


def test_moving_average_and_nan_skip(tokens):
    """The running score the iterative schedule keeps is LoRAPrune's EMA of the instant scores; a step
    with a non-finite LoRA gradient leaves it untouched and is counted."""
    model = lora_model()
    gran = Structured()
    groups = gran.units(model, [1])
    crit = LoRAGuided(beta=0.9)
    running = RunningScores(crit, gran, groups)
    expected = [torch.zeros(g.size) for g in groups]
    for step in range(3):
        backward(model, tokens[:, : 10 + 5 * step])
        now = gran.score(crit, model, groups)  # the instant scores: the criterion keeps no average itself
        running.observe(model)
        expected = [0.9 * e + 0.1 * n for e, n in zip(expected, now)]
    for got, want in zip(running.scores(model), expected):
        assert torch.allclose(got, want, atol=1e-6)
    a, _, _, _ = lora_factors(decoder_layers(model)[1].self_attn.q_proj)
    a.grad[0, 0] = float("nan")
    running.observe(model)
    assert running.stats() == {"observed_steps": 3, "skipped_nonfinite_steps": 1, "skipped_nonfinite_group_updates": 0}
    for got, want in zip(running.scores(model), expected):
        assert torch.allclose(got, want, atol=1e-6)


def test_cubic_schedule_values():
    assert [cubic_ratio(s, 100, 0.0, 0.5) for s in (0, 9)] == [0.0, 0.0]
    assert cubic_ratio(10, 100, 0.0, 0.5) == pytest.approx(0.0)
    assert cubic_ratio(50, 100, 0.0, 0.5) == pytest.approx(0.5 - 0.5 * 0.5 ** 3)
    assert cubic_ratio(30, 100, 0.1, 0.5) == pytest.approx(0.5 + (0.1 - 0.5) * 0.75 ** 3)
    assert cubic_ratio(90, 100, 0.0, 0.5) == cubic_ratio(99, 100, 0.0, 0.5) == 0.5
    assert cubic_ratio(0, 100, 0.5, 0.5) == 0.5  # one-shot setting


def test_masked_then_removed_then_merged(tokens):
    model = lora_model()
    gran = Structured()
    groups = gran.units(model, [0, 1, 2, 3])
    g = torch.Generator().manual_seed(1)
    masks = gran.select(groups, [torch.rand(x.size, generator=g) for x in groups], 0.5)
    gran.apply_masks(model, groups, masks)
    with torch.no_grad():
        masked = model(tokens).logits
    model = gran.finalize(model, groups, masks)
    with torch.no_grad():
        removed = model(tokens).logits
    # the same sums in another order: float32 rounding only (1.9e-5 at most on logits up to ~8 on an AMD EPYC)
    assert torch.allclose(removed, masked, atol=1e-4)
    merged = merge_lora(model)
    assert type(merged).__name__ == "LlamaForCausalLM" and not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        assert torch.allclose(merged(tokens).logits, removed, atol=1e-4)


def _ctx(steps):
    data = torch.randint(0, 128, (64, 16), generator=torch.Generator().manual_seed(0))

    def batches():
        while True:
            for i in range(0, 64, 4):
                yield data[i:i + 4]

    def finetune(model, n, before_step=None, after_step=None, desc=""):
        return train_lora(model, batches(), n, LORA, 0, before_step, after_step).summary()

    return PruneContext(seed=0, device=torch.device("cpu"), profile={}, calibration_batches=lambda: iter([data[:4]]),
                        finetune=finetune, train_steps=steps)


@pytest.mark.parametrize("init_ratio", [0.0, 0.5])
def test_iterative_prunes_without_pretrained_gradients(init_ratio):
    model = attach_lora(tiny_llama(6, 2), LORA)
    frozen = frozen_parameters(model)
    assert frozen and not any(p.requires_grad for p in frozen)
    seen = []

    class Watch(LoRAGuided):
        def usable_step(self, model):  # asked at every step, with the step's gradients present
            seen.append(sum(p.grad is not None for p in frozen_parameters(model)))
            seen.append(-sum(p.grad is None for p in lora_parameters(model)))
            return super().usable_step(model)

    ctx = _ctx(20)
    schedule = Iterative(init_ratio=init_ratio, prune_freq=5)
    outcome = schedule.run(model, Watch(), Structured(), 0.5, [1, 2], ctx)
    assert len(seen) == 2 * 20 and all(v == 0 for v in seen), "a pretrained weight got a gradient, or a LoRA one none"
    assert outcome.log["training_scores"]["observed_steps"] == 20
    events = outcome.log["prune_events"]
    assert events[-1]["ratio"] == 0.5 and len(events) >= 2
    if init_ratio == 0.5:  # the reference code never prunes in this setting
        assert events[0]["ratio"] == 0.5 and events[0]["step"] == 5
    widths = model_widths(outcome.model)
    assert widths[0].num_heads == 6 and widths[3].num_heads == 6  # outside the pruned layers
    # 1.5 of 3 heads per kv group: one layer loses 2, the other 1 (6 of 12 heads), in every setting
    assert sorted(w.num_heads for w in widths[1:3]) == [2, 4] and widths[1].num_kv_heads == 2
    assert [w.intermediate_size for w in widths[1:3]] == [64, 64]
    assert outcome.log["units_pruned"] == 6 + 128


@pytest.mark.parametrize("ratio", [0.2, 0.3, 0.5, 0.7])
@pytest.mark.parametrize("init_ratio", [0.0, 0.5])
def test_iterative_reaches_the_target_in_every_layer(ratio, init_ratio):
    """Cumulative masks over many pruning events must not drift above the target (they did: every
    layer ended at the rounded-up count)."""
    model = attach_lora(tiny_llama(6, 2, layers=6), LORA)
    layers = list(range(6))
    outcome = Iterative(init_ratio=init_ratio, prune_freq=1).run(model, LoRAGuided(), Structured(), ratio,
                                                                   layers, _ctx(24))
    assert len(outcome.log["prune_events"]) >= 10
    for kind, per_block, blocks in (("attention", 3, 2), ("mlp", 128, 1)):
        per_layer = [int((~m).sum()) // blocks for g, m in zip(outcome.groups, outcome.masks) if g.kind == kind]
        assert len(per_layer) == 6
        ideal = ratio * per_block
        assert all(abs(n - ideal) < 1 for n in per_layer), (kind, per_layer, ideal)  # every layer
        assert sum(per_layer) == min(round(ideal * 6), (per_block - 1) * 6), (kind, per_layer)  # the total


def test_oneshot_lora_scores_from_calibration():
    model = attach_lora(tiny_llama(6, 2), LORA)
    crit = LoRAGuided()
    ctx = _ctx(0)
    crit.prepare(model, ctx)
    scores = Structured().score(crit, model, Structured().units(model, [1]))
    assert all(torch.isfinite(s).all() and s.abs().sum() > 0 for s in scores)
    assert not any(p.grad is not None for p in frozen_parameters(model))


def test_the_target_is_reached_at_the_cool_down_whatever_prune_freq():
    """Audit (docs/loraprune-audit.md, row 5): with prune_freq 10 over 40 steps no multiple of 10 lies in the
    cool-down (steps 36-39), and the last units went after the last step, with no step to recover. They now go
    at step 36, as in the reference and the paper (the last 10% of the steps at the target)."""
    model = attach_lora(tiny_llama(6, 2), LORA)
    outcome = Iterative(prune_freq=10).run(model, LoRAGuided(), Structured(), 0.5, [1, 2], _ctx(40))
    events = outcome.log["prune_events"]
    assert [e["step"] for e in events] == [10, 20, 30, 36, 40]
    assert events[3]["ratio"] == 0.5 and events[3]["units_pruned"] == events[-1]["units_pruned"]
    assert outcome.log["units_pruned_after_training"] == 0
    assert outcome.log["steps_on_final_masks"] == 4
