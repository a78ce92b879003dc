"""N:M and unstructured granularities: exact masks, every criterion, LoRA-safe, Wanda's formula."""

from __future__ import annotations

import pytest
import torch

from benchsuite.api import PruneContext
from benchsuite.api.model import PROJECTIONS, decoder_layers
from benchsuite.pruning.sparsity import MaskedDelta, check_nm, nm_mask, unstructured_mask
from benchsuite.running.finetune import LoRAConfig, attach_lora, merge_lora, train_lora
from benchsuite_plugins.baselines import Magnitude, Random
from benchsuite_plugins.granularities import NM, Structured, Unstructured
from benchsuite_plugins.llm_pruner import Taylor
from benchsuite_plugins.loraprune import LoRAGuided
from benchsuite_plugins.schedules import Iterative, OneShot, Sequential
from benchsuite_plugins.wanda import Wanda
from tests.conftest import tiny_llama

DATA = torch.randint(0, 128, (16, 16), generator=torch.Generator().manual_seed(0))
LORA = LoRAConfig(r=4, alpha=8, dropout=0.0, lr=1e-2)


def ctx(steps=0):
    def batches():
        while True:
            yield from DATA.split(4)

    def finetune(model, n, before_step=None, after_step=None, desc=""):
        return train_lora(model, batches(), n, LORA, 0, before_step, after_step).summary()

    return PruneContext(seed=0, device=torch.device("cpu"), profile={},
                        calibration_batches=lambda: iter(DATA[:8].split(4)), finetune=finetune, train_steps=steps)


def weights(model):
    return [layer.get_submodule(p).weight for layer in decoder_layers(model) for p in PROJECTIONS]


def test_nm_mask_is_exact_and_keeps_the_highest():
    scores = torch.tensor([[4.0, 1, 3, 2, 0, 9, 8, 7]])
    keep = nm_mask(scores, 2, 4)
    assert keep.tolist() == [[True, False, True, False, False, True, True, False]]
    g = torch.Generator().manual_seed(0)
    big = torch.rand(64, 96, generator=g)
    keep = nm_mask(big, 2, 4)
    assert check_nm(big * keep, 2, 4) and keep.float().mean() == 0.5
    with pytest.raises(ValueError, match="multiple of M"):
        nm_mask(torch.rand(2, 6), 2, 4)


def test_unstructured_per_row_and_per_matrix():
    scores = torch.rand(8, 20, generator=torch.Generator().manual_seed(1))
    keep = unstructured_mask(scores, 0.25, per_row=True)
    assert (keep.sum(1) == 15).all()
    keep = unstructured_mask(scores, 0.25, per_row=False)
    assert int((~keep).sum()) == 40 and scores[~keep].max() <= scores[keep].min()


@pytest.mark.parametrize("make", [lambda: Magnitude(p=1), Random, lambda: Taylor(order="element1"),
                                  lambda: Taylor(order="element2"), Wanda], ids=["magnitude", "random", "taylor1",
                                                                          "taylor2", "wanda"])
def test_every_criterion_feeds_the_same_selection(make):
    model = tiny_llama(6, 2)
    crit = make()
    outcome = OneShot().run(model, crit, NM(n=2, m=4), 0.5, list(range(8)), ctx())
    assert all(check_nm(w, 2, 4) for w in weights(outcome.model))
    checks = NM(n=2, m=4).after_merge(outcome.model, outcome.groups, outcome.masks)
    assert checks["sparsity"] == pytest.approx(0.5) and "nm_verified" in checks


def test_wanda_equals_slow_reference():
    model = tiny_llama(4, 4)
    crit = Wanda()
    crit.prepare(model, ctx())
    layer = decoder_layers(model)[1]
    inputs = []
    handle = layer.mlp.down_proj.register_forward_pre_hook(lambda m, a: inputs.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for batch in DATA[:8].split(4):
            model(batch)
    handle.remove()
    x = torch.cat(inputs)
    norms = torch.stack([x[:, j].norm() for j in range(x.shape[1])])
    w = layer.mlp.down_proj.weight
    expected = torch.stack([torch.stack([w[i, j].abs() * norms[j] for j in range(w.shape[1])])
                            for i in range(w.shape[0])])
    got = crit.element_scores("layers.1.mlp.down_proj", layer.mlp.down_proj)
    assert torch.allclose(got, expected.detach(), rtol=1e-4)


def test_masked_delta_matches_autograd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, generator=g, requires_grad=True)
    a = torch.randn(2, 8, generator=g, requires_grad=True)
    b = torch.randn(6, 2, generator=g, requires_grad=True)
    mask = torch.rand(6, 8, generator=g) > 0.5
    ours = MaskedDelta.apply(x, a, b, mask, 0.7)
    ours.square().sum().backward()
    grads = [t.grad.clone() for t in (x, a, b)]
    for t in (x, a, b):
        t.grad = None
    reference = torch.nn.functional.linear(x, (b @ a) * 0.7 * mask)
    reference.square().sum().backward()
    assert torch.allclose(ours, reference, atol=1e-5)
    for got, t in zip(grads, (x, a, b)):
        assert torch.allclose(got, t.grad, atol=1e-4)


@pytest.mark.parametrize("granularity", [NM(n=2, m=4), Unstructured(per_row=True)], ids=["2:4", "unstructured"])
def test_lora_fine_tuned_and_merged_model_stays_sparse(granularity):
    model = attach_lora(tiny_llama(6, 2), LORA)
    outcome = Iterative(prune_freq=2).run(model, LoRAGuided(), granularity, 0.5, list(range(8)), ctx(steps=8))
    # pruned elements contribute nothing through the LoRA path either: masked logits == merged logits
    with torch.no_grad():
        lora_logits = outcome.model(DATA[:2]).logits
    merged = merge_lora(outcome.model)
    checks = granularity.after_merge(merged, outcome.groups, outcome.masks)
    with torch.no_grad():
        assert torch.allclose(merged(DATA[:2]).logits, lora_logits, atol=1e-4)
    assert checks["min_sparsity"] >= 0.5 - 1e-6
    if isinstance(granularity, NM):
        assert all(check_nm(w, 2, 4) for w in weights(merged))


def test_sequential_scores_each_layer_through_the_pruned_layers_before_it():
    """Wanda's reference loop: layer 0 sees the dense inputs, later layers inputs through pruned layers."""
    ctx = PruneContext(seed=0, device=torch.device("cpu"), profile={},
                       calibration_batches=lambda: iter(DATA[:8].split(4)))
    gran = NM(n=2, m=4)
    layers = [0, 1, 2, 3]
    once = OneShot().run(tiny_llama(6, 2), Wanda(), gran, 0.5, layers, ctx)
    seq = Sequential().run(tiny_llama(6, 2), Wanda(), gran, 0.5, layers, ctx)
    same = [torch.equal(a, b) for a, b in zip(once.masks, seq.masks)]
    first = [g.layer == 0 for g in once.groups]
    assert all(s for s, f in zip(same, first) if f), "layer 0 must see the same (dense) inputs"
    assert not all(s for s, f in zip(same, first) if not f), "later layers must see pruned inputs"
    assert seq.log["calibration_passes"] == 4
    # a criterion that ignores the data gives the same masks either way, and the same counts
    a = OneShot().run(tiny_llama(6, 2), Magnitude(), Structured(), 0.5, layers, ctx)
    b = Sequential().run(tiny_llama(6, 2), Magnitude(), Structured(), 0.5, layers, ctx)
    assert all(torch.equal(x, y) for x, y in zip(a.masks, b.masks))


def test_layer_inputs_are_those_of_a_whole_model_pass_bit_for_bit():
    """LayerInputs (captured once, moved on layer by layer) hand every layer what a full forward pass does."""
    from benchsuite import LayerInputs

    model = tiny_llama(6, 2).eval()  # GQA
    batches = list(DATA[:8].split(4))
    seen: dict[int, list[torch.Tensor]] = {}
    handles = [layer.register_forward_pre_hook(lambda _m, args, i=i: seen.setdefault(i, []).append(args[0]))
               for i, layer in enumerate(decoder_layers(model))]
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for h in handles:
        h.remove()
    kept = LayerInputs(model, batches, "cpu", start=1)
    assert len(kept) == 2 and kept.index == 1 and kept.tokens == DATA[:8].numel()
    for index in range(1, len(decoder_layers(model))):
        hidden = [args[0] if args else kwargs["hidden_states"] for args, kwargs in kept.cached]
        assert all(torch.equal(a, b) for a, b in zip(hidden, seen[index])), f"layer {index}"
        kept.advance()


def test_calibrate_inside_layer_inputs_runs_only_the_current_layer():
    from benchsuite import LayerInputs, calibrate

    model = tiny_llama(6, 2).eval()
    ctx = PruneContext(seed=0, device=torch.device("cpu"), profile={},
                       calibration_batches=lambda: iter(DATA[:8].split(4)))
    full: dict[str, torch.Tensor] = {}
    calibrate(model, ctx, desc="full", inputs={"layers.2.mlp.down_proj": lambda k, x: full.setdefault(k, x),
                                                "layers.0.mlp.down_proj": lambda k, x: full.setdefault(k, x)})
    kept = LayerInputs(model, ctx.calibration_batches(), ctx.device)
    kept.advance(to=2)
    got: dict[str, list[torch.Tensor]] = {}
    with kept.active():
        stats = calibrate(model, ctx, desc="window", inputs={
            key: lambda k, x: got.setdefault(k, []).append(x) for key in ("layers.2.mlp.down_proj",
                                                                           "layers.0.mlp.down_proj")})
        calibrate(tiny_llama(6, 2), ctx, desc="another model: a whole pass", inputs={
            "layers.0.mlp.down_proj": lambda k, x: got.setdefault("other", []).append(x)})
    assert set(got) == {"layers.2.mlp.down_proj", "other"}  # layer 0 did not run: its inputs are kept
    assert torch.equal(got["layers.2.mlp.down_proj"][0], full["layers.2.mlp.down_proj"])
    assert stats == {"batches": 2, "samples": 8, "tokens": DATA[:8].numel()}


@pytest.mark.parametrize("criterion, granularity", [(Wanda, lambda: NM(n=2, m=4)),
                                                    (Wanda, lambda: Unstructured(per_row=True)),
                                                    ("wanda-sp", Structured)])
def test_sequential_on_kept_layer_inputs_gives_the_whole_pass_masks(criterion, granularity, monkeypatch):
    """layer_local criteria calibrate one layer on kept inputs and local granularities select one layer's
    masks: the masks are those of a whole-model pass and a selection over every group, bit for bit."""
    from benchsuite_plugins.flap import WandaSP

    cls = WandaSP if criterion == "wanda-sp" else criterion
    ctx = PruneContext(seed=0, device=torch.device("cpu"), profile={},
                       calibration_batches=lambda: iter(DATA[:8].split(4)))
    layers = [1, 2, 3]
    fast = Sequential().run(tiny_llama(6, 2), cls(), granularity(), 0.5, layers, ctx)
    gran = granularity()
    monkeypatch.setattr(cls, "layer_local", False)
    monkeypatch.setattr(type(gran), "local_selection", False)
    slow = Sequential().run(tiny_llama(6, 2), cls(), gran, 0.5, layers, ctx)
    assert len(fast.masks) == len(slow.masks)
    assert all(torch.equal(a, b) for a, b in zip(fast.masks, slow.masks))
    assert slow.log["whole_model_passes"] == 3
    assert fast.log["whole_model_passes"] == (1 if criterion == "wanda-sp" else 0)  # structured: scores all once
    assert fast.log["calibration_passes"] == slow.log["calibration_passes"] == 3


def test_lora_through_element_masks_keeps_a_half_precision_models_dtype():
    """peft keeps LoRA adapters in float32 on a bf16 model; the masked LoRA path must hand the next layer
    bf16 again (on CUDA, loraprune-2:4 failed with "expected mat1 and mat2 to have the same dtype")."""
    from benchsuite import testing
    from benchsuite.running.finetune import LoRAConfig, attach_lora
    from benchsuite_plugins.loraprune import LoRAGuided

    model = attach_lora(testing.tiny_llama(4, 2, 2).to(torch.bfloat16), LoRAConfig(dropout=0.0))
    assert next(p for n, p in model.named_parameters() if "lora_A" in n).dtype == torch.float32
    ctx = testing.make_context(train_steps=4)
    outcome = Iterative(prune_freq=1).run(model, LoRAGuided(), NM(n=2, m=4), 0.5, [0, 1], ctx)
    tokens = testing.calibration_tokens(2, 16)
    logits = outcome.model(tokens).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
