"""SparseGPT (plugins/sparsegpt.py): the blocked, lazy solver against a direct OBS computation written here,
the least-squares optimum, reconstruction errors on the tiny model, Hessians through the pruned layers,
conformance, and a CLI run."""

from __future__ import annotations

import json

import pytest
import torch

from benchsuite import ConfigError, base_linear, decoder_layers
from benchsuite.testing import assert_conforms, make_context, tiny_llama
from benchsuite_plugins import sparsegpt as sg
from benchsuite_plugins.granularities import NM, Unstructured
from tests.conftest import bench

PATHS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
         "mlp.up_proj", "mlp.down_proj")


def problem(rows=6, cols=24, tokens=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    x = torch.randn(tokens, cols, generator=g, dtype=torch.float64) @ torch.randn(cols, cols, generator=g,
                                                                                  dtype=torch.float64)
    return w, x, 2.0 * x.t() @ x / tokens


def direct_obs(w, h, percdamp, keep=None, nm=None):
    """Unblocked OBS, column by column, with the inverse Hessian of the not yet processed columns kept explicitly
    (eliminating each column after use): pruned weights of column j become 0 and every row moves its error
    ``(w_j - q_j) / [H^-1]_jj`` onto the later columns through row j of H^-1. ``nm=(n_prune, m)``: the mask of
    each m columns is chosen when reached, per row the n_prune lowest w^2 / [H^-1]_kk of the current weights."""
    w, h = w.clone().double(), h.clone().double()
    cols = w.shape[1]
    h += percdamp * torch.diag(h).mean() * torch.eye(cols, dtype=h.dtype)
    hinv = torch.linalg.inv(h)
    diag = torch.empty(cols, dtype=h.dtype)  # [H^-1]_jj at the time column j is reached
    tmp = hinv.clone()
    for j in range(cols):
        diag[j] = tmp[j, j]
        tmp = tmp - torch.outer(tmp[:, j], tmp[j, :]) / tmp[j, j]
    keep = torch.ones_like(w, dtype=torch.bool) if keep is None else keep.clone()
    for j in range(cols):
        if nm is not None and j % nm[1] == 0:
            sal = w[:, j:j + nm[1]] ** 2 / diag[j:j + nm[1]]
            block = torch.ones_like(sal, dtype=torch.bool)
            block.scatter_(1, torch.topk(sal, nm[0], dim=1, largest=False).indices, False)
            keep[:, j:j + nm[1]] = block
        q = torch.where(keep[:, j], w[:, j], torch.zeros_like(w[:, j]))
        err = (w[:, j] - q) / hinv[j, j]
        w[:, j:] -= err[:, None] * hinv[j, j:][None, :]
        w[:, j] = q
        hinv = hinv - torch.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    return w, keep, diag


def error(w0, w, x):
    return float(((w0 - w) @ x.t()).square().sum())


@pytest.mark.parametrize("blocksize", [1, 5, 8, 24, 128])
def test_blocked_lazy_solver_equals_direct_obs_for_a_fixed_mask(blocksize):
    w, x, h = problem()
    keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(3)) > 0.5
    expected, _, _ = direct_obs(w, h, 0.01, keep=keep)
    got, mask, stats = sg.obs_prune(w.float(), h.float(), keep=keep, blocksize=blocksize, percdamp=0.01)
    assert torch.equal(mask, keep) and bool((got[~keep] == 0).all())
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)
    assert stats["dead_inputs"] == 0 and stats["obs_loss"] > 0


def test_pruning_leading_columns_reaches_the_least_squares_optimum():
    """Pruned weights that come before every kept one: sequential OBS is the exact least-squares solution."""
    w, x, h = problem()
    keep = torch.ones_like(w, dtype=torch.bool)
    keep[:, :10] = False
    got, _, _ = sg.obs_prune(w.float(), h.float(), keep=keep, blocksize=8, percdamp=0.0)
    target = x @ w.t()  # [tokens, rows]
    best = torch.zeros_like(w)
    best[:, 10:] = torch.linalg.lstsq(x[:, 10:], target).solution.t()
    torch.testing.assert_close(got.double(), best, rtol=1e-3, atol=1e-3)


def test_random_mask_lies_between_mask_only_and_least_squares():
    w, x, h = problem(seed=1)
    keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(5)) > 0.5
    got, _, _ = sg.obs_prune(w.float(), h.float(), keep=keep, blocksize=8, percdamp=0.0)
    best = torch.zeros_like(w)
    for r in range(w.shape[0]):  # per row: the kept columns' least-squares fit of the dense row's output
        cols = keep[r].nonzero().reshape(-1)
        best[r, cols] = torch.linalg.lstsq(x[:, cols], x @ w[r]).solution
    e_best, e_obs, e_mask = error(w, best, x), error(w, got.double(), x), error(w, w * keep, x)
    # never better than the optimum for the mask; better than keeping the kept weights as they were (for a random
    # mask, where most pruned weights come after kept ones that are already frozen, only a little)
    assert e_best <= e_obs * (1 + 1e-6) and e_obs < 0.99 * e_mask


def test_adaptive_masks_equal_the_direct_computation():
    w, x, h = problem(cols=32, seed=2)
    # 2:4 with lazy blocks of 8 columns: each window of 4 chosen from the weights updated so far
    expected, keep, _ = direct_obs(w, h, 0.01, nm=(2, 4))
    nm = NM.create({"n": 2, "m": 4})
    group = sg.GroupSet("m", 0, "weights", w.numel(), [])
    got, mask, _ = sg.obs_prune(w.float(), h.float(), select=sg._selector(nm, group, 0.5), window=4, blocksize=8)
    assert torch.equal(mask, keep)
    assert bool(((~mask).reshape(6, 8, 4).sum(-1) == 2).all())
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)
    # unstructured, one block: the half of the matrix with the lowest w^2 / [H^-1]_jj at the start
    _, _, diag = direct_obs(w, h, 0.01)
    saliency = (w ** 2 / diag).reshape(-1)
    keep = torch.ones(w.numel(), dtype=torch.bool)
    keep[torch.topk(saliency, w.numel() // 2, largest=False).indices] = False
    keep = keep.reshape(w.shape)
    un = Unstructured.create({})
    got, mask, _ = sg.obs_prune(w.float(), h.float(), select=sg._selector(un, group, 0.5), blocksize=32)
    assert torch.equal(mask, keep)
    torch.testing.assert_close(got.double(), direct_obs(w, h, 0.01, keep=keep)[0], rtol=1e-4, atol=1e-4)
    # blocks of 8 columns: every block loses exactly half of its weights
    _, mask, _ = sg.obs_prune(w.float(), h.float(), select=sg._selector(un, group, 0.5), blocksize=8)
    assert [int((~mask[:, i:i + 8]).sum()) for i in range(0, 32, 8)] == [24] * 4


def test_dead_inputs_and_bad_parameters():
    w, x, h = problem()
    h[3, :] = 0
    h[:, 3] = 0
    got, _, stats = sg.obs_prune(w.float(), h.float(), keep=torch.ones_like(w, dtype=torch.bool))
    assert stats["dead_inputs"] == 1 and bool((got[:, 3] == 0).all())
    with pytest.raises(ConfigError, match="blocksize"):
        sg.SparseGPTSchedule.create({"blocksize": 0})
    with pytest.raises(ConfigError, match="percdamp"):
        sg.SparseGPTSchedule.create({"percdamp": 1.5})
    model = tiny_llama(4, 2, layers=2)
    with pytest.raises(ConfigError, match="multiple of M=4"):
        sg.SparseGPTSchedule.create({"blocksize": 6}).run(model, sg.SparseGPT.create(), NM.create({}), 0.5, [1],
                                                          make_context(0))


def layer_inputs(model, tokens, layer):
    """The inputs of every projection of decoder layer ``layer`` on ``tokens`` (a full forward pass)."""
    seen = {}
    handles = [decoder_layers(model)[layer].get_submodule(p).register_forward_pre_hook(
        lambda m, a, p=p: seen.setdefault(p, []).append(a[0].reshape(-1, a[0].shape[-1]).double()))
        for p in PATHS]
    with torch.no_grad():
        model(input_ids=tokens)
    for handle in handles:
        handle.remove()
    return {p: torch.cat(v) for p, v in seen.items()}


@pytest.mark.parametrize("granularity", [NM.create({"n": 2, "m": 4}), Unstructured.create({})], ids=["2:4", "un"])
def test_tiny_model_reconstruction_beats_mask_only(granularity):
    tokens = make_context(0, samples=8, length=32).calibration_batches
    calib = torch.cat(list(tokens()))
    dense = tiny_llama(4, 2)
    x = layer_inputs(dense, calib, 2)  # a single pruned layer, all projections on its dense inputs
    w0 = {p: base_linear(decoder_layers(dense)[2].get_submodule(p)).weight.detach().double().clone() for p in PATHS}
    schedule = sg.SparseGPTSchedule.create({"blocksize": 32, "true_sequential": False})
    out = schedule.run(dense, sg.SparseGPT.create(), granularity, 0.5, [2], make_context(0, samples=8, length=32))
    for group, keep in zip(out.groups, out.masks):
        path = group.members[0].module
        w = base_linear(decoder_layers(out.model)[2].get_submodule(path)).weight.detach().double()
        if isinstance(granularity, NM):
            assert bool(((~keep).reshape(keep.shape[0], -1, 4).sum(-1) == 2).all())
        else:
            assert int((~keep).sum()) == keep.numel() // 2
        assert bool((w[~keep] == 0).all()) and bool((w[keep] != 0).all())
        magnitude = granularity.select([group], [w0[path].abs()], 0.5)[0]
        e_sgpt, e_mask = error(w0[path], w, x[path]), error(w0[path], w0[path] * keep, x[path])
        e_mag = error(w0[path], w0[path] * magnitude, x[path])
        assert e_sgpt < 0.9 * e_mask and e_sgpt < 0.9 * e_mag, (path, e_sgpt, e_mask, e_mag)
    assert out.log["mask_selection"] == "obs-adaptive" and out.log["layer_passes"] == 0


def test_other_criteria_keep_their_masks_and_get_reconstructed():
    from benchsuite_plugins.baselines import Magnitude

    ctx = make_context(0, samples=8, length=32)
    calib = torch.cat(list(ctx.calibration_batches()))
    dense = tiny_llama(4, 2)
    x = layer_inputs(dense, calib, 3)
    w0 = {p: base_linear(decoder_layers(dense)[3].get_submodule(p)).weight.detach().double().clone() for p in PATHS}
    granularity = Unstructured.create({"per_row": True})
    out = sg.SparseGPTSchedule.create({"true_sequential": False}).run(dense, Magnitude.create({"p": 1}), granularity,
                                                                      0.5, [3], ctx)
    for group, keep in zip(out.groups, out.masks):
        path = group.members[0].module
        assert torch.equal(keep, granularity.select([group], [w0[path].abs()], 0.5)[0])  # magnitude's mask
        w = base_linear(decoder_layers(out.model)[3].get_submodule(path)).weight.detach().double()
        assert error(w0[path], w, x[path]) < 0.9 * error(w0[path], w0[path] * keep, x[path])
    assert out.log["mask_selection"] == "criterion"


@pytest.mark.parametrize("true_sequential", [False, True])
def test_hessians_come_through_the_pruned_layers(monkeypatch, true_sequential):
    """Every Hessian the schedule builds is that of the inputs of a model whose earlier layers are the final
    pruned and updated ones, with the layer itself dense (default) or as pruned in the end (true-sequential: the
    earlier stages pruned; a stage's own pruning does not change its inputs); and differs from the dense model's."""
    import copy

    seen = []
    original = sg._hessians

    def spy(layer, paths, cached):
        out = original(layer, paths, cached)
        seen.append((layer, out))
        return out

    monkeypatch.setattr(sg, "_hessians", spy)
    ctx = make_context(0, samples=4, length=32)
    calib = torch.cat(list(ctx.calibration_batches()))
    model = tiny_llama(4, 2, layers=4)
    dense = copy.deepcopy(model)
    dense_inputs = {i: layer_inputs(model, calib, i) for i in (1, 2)}
    out = sg.SparseGPTSchedule.create({"true_sequential": true_sequential}).run(
        model, sg.SparseGPT.create(), NM.create({}), 0.5, [1, 2], ctx)
    layers = decoder_layers(out.model)
    expected_inputs = {}
    for i in (1, 2):
        probe = copy.deepcopy(out.model)
        if not true_sequential:  # layer i as it was while its Hessians were taken: dense
            decoder_layers(probe)[i].load_state_dict(decoder_layers(dense)[i].state_dict())
        expected_inputs[i] = layer_inputs(probe, calib, i)
    stages = ([["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
               ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]] if true_sequential else [sorted(PATHS)])
    assert [sorted(h) for _, h in seen] == stages * 2
    shared = seen[0][1]  # one Hessian for the projections reading the same input
    assert shared["self_attn.q_proj"] is shared["self_attn.k_proj"] is shared["self_attn.v_proj"]
    differs = []
    for layer, hessians in seen:
        index = next(i for i, m in enumerate(layers) if m is layer)
        for path, h in hessians.items():
            x = expected_inputs[index][path]
            torch.testing.assert_close(h.double(), 2 * x.t() @ x / len(x), rtol=1e-4, atol=1e-4)
            xd = dense_inputs[index][path]
            differs.append((index, path, not torch.allclose(h.double(), 2 * xd.t() @ xd / len(xd), rtol=1e-3)))
    # the first pruned layer sees the dense model's inputs (in stages: only its first stage); layer 2 never does
    same = sorted((i, p) for i, p, d in differs if not d)
    assert same == sorted((1, p) for p in (PATHS if not true_sequential else PATHS[:3]))


def test_conforms():
    report = assert_conforms(sg.SparseGPT, schedules=["sparsegpt"], granularities=["nm", "unstructured"],
                             models=["gqa"])
    assert not report.skipped and "gqa/nm/sparsegpt: masked weights are zero, 2:4 holds" in report.passed


def test_refuses_what_it_cannot_do():
    model = tiny_llama(4, 2, layers=2)
    from benchsuite.host import load_registry

    structured = load_registry().granularities["structured"].create({})
    with pytest.raises(NotImplementedError, match="sparsegpt schedule at an element-level granularity"):
        sg.SparseGPTSchedule.create({}).run(model, sg.SparseGPT.create(), structured, 0.5, [1], make_context(0))
    with pytest.raises(NotImplementedError, match="sparsegpt schedule"):
        sg.SparseGPT.create().element_scores("layers.1.mlp.up_proj", decoder_layers(model)[1].mlp.up_proj)


def test_cli_run_records_masks_of_the_updated_weights(tmp_path, tiny_model_dir, offline):
    results = tmp_path / "results"
    result = bench("run", "--model", str(tiny_model_dir), "--methods", "sparsegpt-2:4,sparsegpt+lora",
                   "--ratios", "0.5", "--results", str(results), "--profile", "smoke", "--tasks", "none",
                   "--corpora", offline["corpora"][0], "--recovery-data", offline["recovery_data"],
                   "--calibration-data", offline["calibration_data"])
    assert result.returncode == 0, result.stderr
    records = [json.loads(p.read_text()) for p in results.rglob("ratio-*.json")]
    runs = {r["variant"]: r for r in records}
    nm, lora = runs["sparsegpt-2:4"], runs["sparsegpt+lora"]
    assert nm["status"] == "ok" and lora["status"] == "ok", (nm["error"], lora["error"])
    assert nm["checks"]["nm_verified"] and nm["checks"]["sparsity"] == 0.5
    assert nm["prune_log"]["mask_selection"] == "obs-adaptive" and nm["calibration"]["used"]
    assert nm["pruned_units"]["total"]["weights"]["pruned"] * 2 == nm["pruned_units"]["total"]["weights"]["of"]
    # unstructured: half of each 128-column block over all rows; still exactly half after LoRA is merged
    assert lora["checks"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert lora["recovery_setup"]["steps"] == 4 and lora["checks"]["min_sparsity"] == pytest.approx(0.5, abs=1e-3)
