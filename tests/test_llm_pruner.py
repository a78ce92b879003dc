"""LLM-Pruner's Taylor importance, each variant against an independent computation."""

from __future__ import annotations

import pytest
import torch

from benchsuite import linear_modules
from benchsuite.api import PruneContext
from benchsuite.api.model import decoder_layers
from benchsuite_plugins.granularities import Structured
from benchsuite_plugins.llm_pruner import Taylor
from tests.conftest import tiny_llama

SAMPLES = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(3))


def ctx(batch_size=2):
    return PruneContext(seed=0, device=torch.device("cpu"), profile={},
                        calibration_batches=lambda: iter(SAMPLES.split(batch_size)))


def reference_grads(model, per_sample=False):
    """dL/dW of the mean per-sample loss (and the per-sample gradients), by plain autograd."""
    for p in model.parameters():
        p.requires_grad_(True)
    grads = []
    for sample in SAMPLES:
        model.zero_grad()
        model(input_ids=sample[None], labels=sample[None]).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for p in model.parameters():
        p.grad = None
        p.requires_grad_(False)
    mean = {n: sum(g[n] for g in grads) / len(grads) for n in grads[0]}
    return (mean, grads) if per_sample else mean


def slow_unit_scores(model, layer_index, element):
    """Per-unit scores of the attention (q heads + o columns) and MLP groups by explicit loops."""
    layer = decoder_layers(model)[layer_index]
    prefix = f"model.layers.{layer_index}."
    attn, mlp = layer.self_attn, layer.mlp
    hd, heads = attn.head_dim, attn.q_proj.out_features // attn.head_dim
    q = element(prefix + "self_attn.q_proj.weight", attn.q_proj.weight)
    o = element(prefix + "self_attn.o_proj.weight", attn.o_proj.weight)
    head_scores = torch.tensor([float(q[h * hd:(h + 1) * hd].sum() + o[:, h * hd:(h + 1) * hd].sum())
                                for h in range(heads)])
    gate = element(prefix + "mlp.gate_proj.weight", mlp.gate_proj.weight)
    up = element(prefix + "mlp.up_proj.weight", mlp.up_proj.weight)
    down = element(prefix + "mlp.down_proj.weight", mlp.down_proj.weight)
    channel_scores = torch.tensor([float(gate[c].sum() + up[c].sum() + down[:, c].sum())
                                   for c in range(gate.shape[0])])
    return head_scores, channel_scores


def scores_of(model, criterion, layer_index=1):
    criterion.prepare(model, ctx())
    gran = Structured()
    return gran.score(criterion, model, gran.units(model, [layer_index]))


def test_element1_equals_reference():
    model = tiny_llama(6, 2)
    grads = reference_grads(model)
    heads, channels = slow_unit_scores(model, 1, lambda n, w: (w * grads[n]).abs())
    got = scores_of(model, Taylor(order="element1"))
    assert torch.allclose(got[0], heads, rtol=1e-4) and torch.allclose(got[1], channels, rtol=1e-4)


def test_element2_adds_the_fisher_term():
    model = tiny_llama(6, 2)
    mean, per_sample = reference_grads(model, per_sample=True)
    fisher = {n: sum(g[n] ** 2 for g in per_sample) / len(per_sample) for n in mean}
    heads, channels = slow_unit_scores(model, 1, lambda n, w: (w * mean[n] - 0.5 * w * fisher[n] * w).abs())
    got = scores_of(model, Taylor(order="element2"))
    assert torch.allclose(got[0], heads, rtol=1e-4) and torch.allclose(got[1], channels, rtol=1e-4)


def test_vector_wise():
    model = tiny_llama(4, 4)
    grads = reference_grads(model)
    layer = decoder_layers(model)[1]
    hd = layer.self_attn.head_dim
    wg = {p: (layer.get_submodule(p).weight * grads[f"model.layers.1.{p}.weight"])
          for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")}
    # the reference's vector-wise salience: |sum of W*g| per output row (o_proj: per input column),
    # then summed over the head_dim rows of each head (not |sum| over the whole head block)
    def head(p, h):
        rows = wg[p][h * hd:(h + 1) * hd] if p != "self_attn.o_proj" else wg[p][:, h * hd:(h + 1) * hd].t()
        return float(rows.sum(1).abs().sum())

    expected = torch.tensor([sum(head(p, h) for p in wg) for h in range(4)])
    got = scores_of(model, Taylor(order="vector"))
    assert torch.allclose(got[0], expected, rtol=1e-4)
    block = torch.tensor([sum(float((wg[p][h * hd:(h + 1) * hd] if p != "self_attn.o_proj"
                                     else wg[p][:, h * hd:(h + 1) * hd]).sum().abs()) for p in wg) for h in range(4)])
    assert not torch.allclose(got[0], block, rtol=1e-2)  # the earlier |sum over the block| differs


def test_gradients_accumulate_over_batches():
    model = tiny_llama(6, 2)
    one, two = Taylor(), Taylor()
    one.prepare(model, ctx(batch_size=4))
    two.prepare(model, ctx(batch_size=1))
    for key, linear in linear_modules(model):  # the element scores |W * g| agree, so the gradients g do
        assert torch.allclose(one.element_scores(key, linear), two.element_scores(key, linear), atol=1e-6), key


@pytest.mark.parametrize("reduction", ["sum", "mean", "max", "prod"])
def test_reductions(reduction):
    model = tiny_llama(6, 2)
    grads = reference_grads(model)
    layer = decoder_layers(model)[1]
    per_module = [(layer.mlp.gate_proj.weight * grads["model.layers.1.mlp.gate_proj.weight"]).abs().sum(1),
                  (layer.mlp.up_proj.weight * grads["model.layers.1.mlp.up_proj.weight"]).abs().sum(1),
                  (layer.mlp.down_proj.weight * grads["model.layers.1.mlp.down_proj.weight"]).abs().sum(0)]
    stacked = torch.stack(per_module)
    expected = {"sum": stacked.sum(0), "mean": stacked.mean(0), "max": stacked.max(0).values,
                "prod": stacked.prod(0)}[reduction]
    got = scores_of(model, Taylor(order="element1", reduction=reduction))[1]
    assert torch.allclose(got, expected, rtol=1e-4)


def test_prepare_leaves_weights_frozen_and_reports_gradient_memory():
    model = tiny_llama(6, 2)
    for p in model.parameters():
        p.requires_grad_(False)
    c = ctx()
    Taylor().prepare(model, c)
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert c.notes["weight_grad_bytes"] == weight_bytes
