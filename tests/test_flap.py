"""FLAP (fluctuation metric, standardisation, global allocation at a parameter budget, bias compensation)
and Wanda-sp, each against an independent computation on tiny GQA models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchsuite import ConfigError, linear_modules, module_key, unit_sums
from benchsuite.api.model import PROJECTIONS, base_linear, decoder_layers
from benchsuite.host import load_registry
from benchsuite.models.checkpoint import load_model_dir, save_pruned
from benchsuite.pruning.structure import BIASES_KEY
from benchsuite.testing import assert_conforms, calibration_tokens, make_context, tiny_llama
from benchsuite_plugins.baselines import Magnitude
from benchsuite_plugins.flap import Fluctuation, GlobalStructured, WandaSP
from benchsuite_plugins.wanda import Wanda

TOKENS = calibration_tokens(6, 24, seed=3)
OUTPUTS = ("self_attn.o_proj", "mlp.down_proj")


def gqa(heads=8, kv_heads=2, layers=4, seed=0):
    return tiny_llama(heads, kv_heads, layers, seed)


def captured_inputs(model, paths=OUTPUTS):
    """Every calibration input of the given projections, by plain forward pre-hooks: key -> [tokens, width]."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [linear.register_forward_pre_hook(lambda _m, args, key=key: seen.setdefault(key, []).append(
        args[0].detach().reshape(-1, args[0].shape[-1]).double())) for key, linear in linear_modules(model, paths)]
    with torch.no_grad():
        for batch in TOKENS.split(2):
            model(batch)
    for handle in handles:
        handle.remove()
    return {key: torch.cat(xs) for key, xs in seen.items()}


def prune(model, criterion, granularity, ratio, layers=None):
    """One-shot by hand: prepare, units, score, select, finalize (what the one-shot schedule does)."""
    layers = list(range(len(decoder_layers(model)))) if layers is None else layers
    criterion.prepare(model, make_context(calibration=TOKENS))
    groups = granularity.units(model, layers)
    scores = granularity.score(criterion, model, groups)
    criterion.release()
    masks = granularity.select(groups, scores, ratio)
    return granularity.finalize(model, groups, masks), groups, masks, scores


def projection_params(model):
    return sum(lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0)
               for _, lin in linear_modules(model))


@pytest.mark.parametrize("metric", ["WIFV", "IFV", "WIFN"])
def test_fluctuation_metric_and_standardisation_match_a_direct_computation(metric):
    model = gqa()
    inputs = captured_inputs(model)
    crit = Fluctuation.create({"metric": metric})
    crit.prepare(model, make_context(calibration=TOKENS))
    gran = GlobalStructured()
    groups = gran.units(model, [1, 2])
    for group in groups:
        path = "self_attn.o_proj" if group.kind == "attention" else "mlp.down_proj"
        key = module_key(group.layer, path)
        x = inputs[key]
        weight = decoder_layers(model)[group.layer].get_submodule(path).weight.detach().double()
        if metric == "WIFN":
            raw = (weight.abs() * x.square().mean(0).sqrt()[None, :]).mean(0)
        else:
            raw = x.var(0, unbiased=True) * (weight.square().sum(0) if metric == "WIFV" else 1)
        raw = raw.square() if group.kind == "attention" else raw  # the reference squares the attention metric
        layer = decoder_layers(model)[group.layer]
        assert torch.allclose(crit.column_metric(key, layer.get_submodule(path)).double(), raw, rtol=1e-4)
        z = (raw - raw.mean()) / raw.std()
        width = raw.numel() // group.size
        expected = z.reshape(group.size, width).mean(1)  # a head: the mean of its head_dim columns
        assert torch.allclose(crit.group_scores(group, layer).double(), expected, atol=1e-5)
        assert torch.allclose(crit.input_means(key).double(), x.mean(0), atol=1e-5)


def test_wanda_sp_scores_are_wanda_element_scores_summed_over_each_units_output_columns():
    model = gqa()
    sp, wanda = WandaSP(), Wanda()
    ctx = make_context(calibration=TOKENS)
    sp.prepare(model, ctx)
    wanda.prepare(model, ctx)
    gran = GlobalStructured()
    layers = decoder_layers(model)
    for group in gran.units(model, [0, 3]):
        member = next(m for m in group.members if m.module in OUTPUTS)
        module = layers[group.layer].get_submodule(member.module)
        element = wanda.element_scores(module_key(group.layer, member.module), module)
        expected = torch.stack([element[:, member.index[u]].sum() for u in range(group.size)])
        got = sp.group_scores(group, layers[group.layer])
        assert torch.allclose(got, expected, rtol=1e-5)
        assert torch.allclose(got, unit_sums(element, member), rtol=1e-5)
    with pytest.raises(NotImplementedError, match="structured"):
        sp.element_scores("layers.0.self_attn.o_proj", layers[0].self_attn.o_proj)


def test_global_allocation_spreads_the_ratio_over_layers_at_the_parameter_budget():
    model = gqa(layers=6)
    before = projection_params(model)
    gran = GlobalStructured.create({"compensate": True})
    crit = Fluctuation()
    crit.prepare(model, make_context(calibration=TOKENS))
    groups = gran.units(model, list(range(6)))
    unit = gran.unit_params(model, groups)
    scores = gran.score(crit, model, groups)
    masks = gran.select(groups, scores, 0.5)
    model = gran.finalize(model, groups, masks)
    mlp_ratios = {float((~m).float().mean()) for g, m in zip(groups, masks) if g.kind == "mlp"}
    assert len(mlp_ratios) > 2, "FLAP's standardised global threshold gives layers different ratios"
    # units below the threshold go, in every layer and module alike
    pruned = torch.cat([s[~m] for g, s, m in zip(groups, scores, masks) if g.kind == "mlp"])
    kept = torch.cat([s[m] for g, s, m in zip(groups, scores, masks) if g.kind == "mlp"])
    assert float(pruned.max()) <= float(kept.min()) + 1e-6
    target = 0.5 * sum(g.size * n for g, n in zip(groups, unit))
    removed = before - projection_params(model)  # the biases compensation added count against the budget
    assert abs(removed - target) <= max(g.blocks * n for g, n in zip(groups, unit))
    biased = {(i, p) for i, layer in enumerate(decoder_layers(model)) for p in PROJECTIONS
              if base_linear(layer.get_submodule(p)).bias is not None}
    assert biased == {(g.layer, OUTPUTS[g.kind == "mlp"]) for g, m in zip(groups, masks) if not bool(m.all())}
    assert {p for _, p in biased} == set(OUTPUTS)  # heads and channels both went somewhere


def test_per_kind_allocation_meets_each_kinds_budget():
    model = gqa(layers=6)
    gran = GlobalStructured.create({"allocation": "per-kind"})
    crit = Fluctuation()
    crit.prepare(model, make_context(calibration=TOKENS))
    groups = gran.units(model, list(range(6)))
    unit = gran.unit_params(model, groups)
    masks = gran.select(groups, gran.score(crit, model, groups), 0.4)
    for kind in ("attention", "mlp"):
        pick = [i for i, g in enumerate(groups) if g.kind == kind]
        removed = sum(int((~masks[i]).sum()) * unit[i] for i in pick)
        target = 0.4 * sum(groups[i].size * unit[i] for i in pick)
        assert abs(removed - target) <= max(groups[i].blocks * unit[i] for i in pick)


def test_gqa_heads_go_per_kv_group_lowest_first_and_one_stays():
    model = gqa(heads=8, kv_heads=2, layers=4)
    gran = GlobalStructured()
    crit = Fluctuation()
    crit.prepare(model, make_context(calibration=TOKENS))
    groups = gran.units(model, list(range(4)))
    scores = gran.score(crit, model, groups)
    masks = gran.select(groups, scores, 0.6)
    attention = [(g, s, m) for g, s, m in zip(groups, scores, masks) if g.kind == "attention"]
    assert any(int((~m).sum()) for _, _, m in attention)
    for group, score, keep in attention:
        assert group.blocks == 2
        blocks_keep, blocks_score = keep.reshape(2, 4), score.reshape(2, 4)
        counts = (~blocks_keep).sum(1)
        assert counts[0] == counts[1] and int(counts[0]) <= 3  # the same number from each kv group, one stays
        for k, s in zip(blocks_keep, blocks_score):
            if (~k).any() and k.any():
                assert float(s[~k].max()) <= float(s[k].min())  # the lowest heads of each kv group
    model = gran.finalize(model, groups, masks)
    for layer in decoder_layers(model):
        attn = layer.self_attn
        assert attn.q_proj.out_features == attn.num_key_value_groups * attn.k_proj.out_features


@pytest.mark.parametrize("compensate", [True, False])
def test_bias_compensation_makes_the_mean_error_on_calibration_tokens_zero(compensate):
    model = gqa(layers=3)
    dense = captured_inputs(model)
    weights = {key: lin.weight.detach().double().clone() for key, lin in linear_modules(model, OUTPUTS)}
    gran = GlobalStructured.create({"compensate": compensate})
    model, groups, masks, _ = prune(model, Fluctuation(), gran, 0.4)
    assert any(not bool(m.all()) for m in masks)
    for group, keep in zip(groups, masks):
        if bool(keep.all()):
            continue
        path = "self_attn.o_proj" if group.kind == "attention" else "mlp.down_proj"
        key = module_key(group.layer, path)
        member = next(m for m in group.members if m.module == path)
        kept_cols = member.index[keep].reshape(-1)
        x, weight = dense[key], weights[key]
        linear = decoder_layers(model)[group.layer].get_submodule(path)
        with torch.no_grad():
            pruned_out = linear.double()(x[:, kept_cols]).double()
            linear.float()
        error = x @ weight.T - pruned_out  # the removed columns' contribution, minus the bias
        removed_cols = member.index[~keep].reshape(-1)
        removed = x[:, removed_cols] @ weight[:, removed_cols].T
        if compensate:
            assert torch.allclose(error, removed - removed.mean(0), atol=1e-4)
            assert float(error.mean(0).abs().max()) < 1e-4 * float(removed.abs().max())
        else:
            assert linear.bias is None
            assert torch.allclose(error, removed, atol=1e-4)
            assert float(error.mean(0).abs().max()) > 1e-2 * float(removed.abs().max())


def test_compensation_needs_a_criterion_that_records_means():
    model = gqa(layers=2)
    gran = GlobalStructured.create({"compensate": True})
    with pytest.raises(ConfigError, match="input_means"):
        gran.score(Magnitude(), model, gran.units(model, [0, 1]))


def test_save_and_reload_keep_the_compensation_biases(tmp_path):
    model = gqa(layers=3)
    model, *_ = prune(model, Fluctuation(), GlobalStructured.create({"compensate": True}), 0.5)
    with torch.no_grad():
        expected = model(TOKENS).logits
    biased = [[p for p in PROJECTIONS if base_linear(layer.get_submodule(p)).bias is not None]
              for layer in decoder_layers(model)]
    save_pruned(model, tmp_path / "flap")
    config = json.loads((tmp_path / "flap" / "config.json").read_text())
    assert config[BIASES_KEY] == biased and {p for paths in biased for p in paths} == set(OUTPUTS)
    assert not config.get("attention_bias") and not config.get("mlp_bias")
    again = load_model_dir(tmp_path / "flap")
    with torch.no_grad():
        assert torch.equal(again(TOKENS).logits, expected)
    layer = decoder_layers(again)[0]
    assert layer.self_attn.q_proj.bias is None and layer.mlp.gate_proj.bias is None
    assert torch.equal(layer.mlp.down_proj.bias, decoder_layers(model)[0].mlp.down_proj.bias)


def test_conformance():
    assert_conforms(Fluctuation, granularities=["structured", ("structured-global", {"compensate": True})],
                    schedules=["one-shot", "iterative"], models=["gqa"], repeat=False)
    assert_conforms(WandaSP, granularities=["structured", "structured-global", "unstructured"],
                    schedules=["one-shot", "sequential"], models=["gqa"], repeat=False)
    assert_conforms(Magnitude, granularities=["structured-global"], schedules=["one-shot"], models=["mha"])


def test_methods_are_registered_with_paper_recipes():
    registry = load_registry()
    flap, sp = registry.methods["flap"], registry.methods["wanda-sp"]
    assert (flap.criterion, flap.granularity, flap.schedule, flap.layers, flap.recovery) == (
        "fluctuation", "structured-global", "one-shot", "all", None)
    assert dict(flap.granularity_params) == {"compensate": True}
    assert (sp.criterion, sp.granularity, sp.schedule, sp.layers, sp.recovery) == (
        "wanda-sp", "structured", "sequential", "all", None)
    assert registry.methods["flap-lora"].recovery and registry.methods["wanda-sp-lora"].recovery
    assert Fluctuation.calibration == ("wiki", 1024, 128) and WandaSP.calibration == ("c4", 128, 128)


def test_cli_runs_flap_and_wanda_sp_at_matched_parameters(tiny_model_dir, text_corpus, tmp_path):
    from benchsuite.running.runner import Runner, RunRequest

    text = str(text_corpus)
    request = RunRequest(methods=["flap", "wanda-sp", "flap-lora"], model=str(tiny_model_dir), ratios=[0.3],
                         profile="smoke", results=tmp_path / "results", tasks=[], corpora=[text],
                         recovery_data=text, calibration_data=text)
    records = Runner(request).run()
    dense, *pruned = records
    by_method = {r["method"]: r for r in pruned}
    assert all(r["status"] == "ok" for r in pruned), [r.get("error") for r in pruned]
    params = {m: r["metrics"]["params"] for m, r in by_method.items()}
    head = 2 * 16 * 96  # a query head's q rows and o columns (6 heads of 16 over 2 kv groups, hidden 96)
    assert abs(params["flap"] - params["wanda-sp"]) <= head + 3 * 96
    assert params["flap"] < dense["metrics"]["params"] * 0.8
    assert by_method["flap-lora"]["recovery_log"]
    for r in records:
        ppl = [v for k, v in r["metrics"].items() if k.startswith("ppl_") and not k.endswith(("_lo", "_hi"))]
        assert ppl and all(math.isfinite(v) and v > 1 for v in ppl), r["metrics"]
