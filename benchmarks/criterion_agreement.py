"""How closely does LoRAPrune's LoRA-guided importance agree with LLM-Pruner's full-gradient Taylor
importance on the same model and calibration data? (Diagnoses why one criterion prunes better.)

For every prunable group of the pruned layers it compares the two score vectors: Spearman rank
correlation, and the overlap of the units each would prune at --ratio. The LoRA-guided scores are
taken (a) from the calibration batches at LoRA initialisation (B = 0, so G = dB A: a rank-r sketch
of the true gradient), and (b) as the moving average after --steps LoRA training steps. A second
table does the same for element scores (what N:M and unstructured pruning use): Spearman over the
elements of each projection, and the overlap of the 2:4 selections.

    python benchmarks/criterion_agreement.py [--steps 20] [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from tabulate import tabulate

from benchsuite import RunningScores
from benchsuite.api import PruneContext
from benchsuite.api.model import decoder_layers
from benchsuite.data.tokens import batches, calibration_samples
from benchsuite.host import get_registry
from benchsuite.models.checkpoint import load_model_dir, load_tokenizer
from benchsuite.models.resolve import resolve_model
from benchsuite.pruning.structure import parse_layers
from benchsuite.running.finetune import LoRAConfig, attach_lora, cycle_batches, train_lora
from benchsuite_plugins.granularities import Structured
from benchsuite_plugins.llm_pruner import Taylor
from benchsuite_plugins.loraprune import LoRAGuided


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def agreement(gran, groups, reference, other, ratio):
    keep_ref = gran.select(groups, reference, ratio)
    keep_other = gran.select(groups, other, ratio)
    rows = {}
    for kind in ("attention", "mlp"):
        idx = [i for i, g in enumerate(groups) if g.kind == kind]
        rho = [spearman(reference[i], other[i]) for i in idx]
        overlap = [float(((~keep_ref[i]) & (~keep_other[i])).sum() / max(int((~keep_ref[i]).sum()), 1)) for i in idx]
        rows[kind] = (statistics.mean(rho), statistics.mean(overlap))
    return rows


def element_agreement(gran_layers, dense_scores, other_scores):
    """Mean Spearman over elements (subsampled) and overlap of the 2:4-pruned elements."""
    from benchsuite.pruning.sparsity import nm_mask

    rho, overlap = [], []
    g = torch.Generator().manual_seed(0)
    for key in gran_layers:
        a, b = dense_scores[key].flatten(), other_scores[key].flatten()
        pick = torch.randperm(a.numel(), generator=g)[:50_000]
        rho.append(spearman(a[pick], b[pick]))
        pruned_a = ~nm_mask(dense_scores[key], 2, 4)
        pruned_b = ~nm_mask(other_scores[key], 2, 4)
        overlap.append(float((pruned_a & pruned_b).sum() / pruned_a.sum()))
    return statistics.mean(rho), statistics.mean(overlap)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()
    path = resolve_model(args.model, get_registry()).path
    tokenizer = load_tokenizer(path)
    samples = calibration_samples(tokenizer, "wiki", 10, 64, seed=0)
    ctx = PruneContext(seed=0, device=torch.device("cpu"), profile={}, calibration_batches=lambda: batches(samples, 2))
    gran = Structured()

    dense = load_model_dir(path)
    groups = gran.units(dense, parse_layers("llm-pruner", len(decoder_layers(dense))))
    taylor = Taylor()
    taylor.prepare(dense, ctx)
    reference = gran.score(taylor, dense, groups)
    layers = decoder_layers(dense)
    keys = [f"layers.{g.layer}.{path}" for g in groups if g.kind == "mlp"
            for path in ("self_attn.q_proj", "mlp.down_proj")]
    module_of = {k: layers[int(k.split(".")[1])].get_submodule(k.split(".", 2)[2]) for k in keys}
    taylor_elements = {k: taylor.element_scores(k, module_of[k]) for k in keys}
    magnitude_elements = {k: module_of[k].weight.detach().abs() for k in keys}
    taylor.release()

    model = attach_lora(dense, LoRAConfig())
    lora = LoRAGuided()
    lora.prepare(model, ctx)  # one-shot: calibration gradients at B = 0
    at_init = gran.score(lora, model, groups)
    lora_layers = decoder_layers(model)

    def lora_elements():
        return {k: lora.element_scores(k, lora_layers[int(k.split(".")[1])].get_submodule(k.split(".", 2)[2]))
                for k in keys}

    elements_at_init = lora_elements()
    model.zero_grad(set_to_none=True)
    data = cycle_batches(tokenizer, "wiki,c4", 128, 2, seed=0)
    lora.release()  # the calibration gradients: from here on the live training gradients count
    running = RunningScores(lora, gran, groups)  # what the iterative schedule keeps
    train_lora(model, data, args.steps, LoRAConfig(), before_step=lambda s, m: running.observe(m))
    averaged = running.scores(model)
    magnitude = gran.score(get_registry().criteria["magnitude"](p=2), model, groups)
    lora.prepare(model, ctx)  # calibration gradients again, now with trained A and B
    elements_trained = lora_elements()

    rows = []
    for label, scores in (("LoRA-guided, calibration at init (B=0)", at_init),
                          (f"LoRA-guided, moving average over {args.steps} LoRA steps", averaged),
                          ("L2 magnitude (for scale)", magnitude)):
        result = agreement(gran, groups, reference, scores, args.ratio)
        rows.append([label, *(f"{v:.2f}" for kind in ("attention", "mlp") for v in result[kind])])
    print(tabulate(rows, headers=["scores compared with Taylor (full gradients)", "heads: Spearman",
                                  f"heads: overlap of pruned @{args.ratio:g}", "channels: Spearman",
                                  f"channels: overlap of pruned @{args.ratio:g}"], tablefmt="github"))
    print()
    rows = []
    for label, scores in (("LoRA-guided |G_est * W|, at init (B=0)", elements_at_init),
                          (f"LoRA-guided |G_est * W|, after {args.steps} LoRA steps", elements_trained),
                          ("|W| (magnitude, for scale)", magnitude_elements)):
        rho, overlap = element_agreement(keys, taylor_elements, scores)
        rows.append([label, f"{rho:.2f}", f"{overlap:.2f}"])
    print(tabulate(rows, headers=["element scores compared with |W * dL/dW| (q_proj, down_proj)", "Spearman",
                                  "overlap of 2:4-pruned elements"], tablefmt="github"))


if __name__ == "__main__":
    main()
