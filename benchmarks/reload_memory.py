"""Peak memory of reloading a pruned checkpoint: the full-size skeleton (benchsuite before the meta-device
reload) against the meta-device skeleton of :func:`benchsuite.models.checkpoint.load_model_dir`.

A random LLaMA (hidden 1024, 8 layers, 16 heads over 4 kv heads, intermediate 2816, float32) has half its
heads and MLP channels removed (magnitude scores), and is saved with :func:`~benchsuite.models.checkpoint.save_pruned`.
Each reload (and, for scale, the load of the dense checkpoint before pruning: ``dense``) then runs in a
fresh Python process, imports done first, under :class:`~benchsuite.evaluation.memory.PeakMemory` (RSS sampled every
2 ms, above the level before the load), and the pruned reload's logits are compared with the saved model's.

    .tox/py/bin/python benchmarks/reload_memory.py [--hidden 1024 --layers 8 --ratio 0.5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def legacy_load(path: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """benchsuite's reload before the meta skeleton: the full-size model, reshaped, then the state dict copied in."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from benchsuite.pruning.structure import WIDTHS_KEY, reshape_to_widths

    config = AutoConfig.from_pretrained(path)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    reshape_to_widths(model, getattr(config, WIDTHS_KEY))
    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model.eval()


def child(path: Path, mode: str) -> None:
    """Reload ``path`` in this (fresh) process and print the peak and the logits' checksum as JSON."""
    import transformers

    from benchsuite.evaluation.memory import PeakMemory, release_free_memory
    from benchsuite.models.checkpoint import load_model_dir

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    import accelerate  # noqa: F401 - imports are not the load's memory: done before measuring
    import safetensors.torch  # noqa: F401

    from benchsuite.testing import tiny_llama

    tiny_llama(layers=1)  # imports the LLaMA modeling code (the model is dropped at once)
    release_free_memory()
    with PeakMemory("cpu", interval_s=0.002) as mem:
        model = legacy_load(path) if mode == "legacy" else load_model_dir(path / "dense" if mode == "dense" else path)
    if mode == "dense":  # the full model: no logits to compare
        print(json.dumps({"mode": mode, "peak_mb": mem.result()["peak_mb"], "noise": mem.result()["noise_reasons"],
                          "params_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}))
        return
    ids = torch.load(path / "probe_ids.pt")
    with torch.no_grad():
        logits = model(ids).logits
    expected = torch.load(path / "probe_logits.pt")
    print(json.dumps({"mode": mode, "peak_mb": mem.result()["peak_mb"], "noise": mem.result()["noise_reasons"],
                      "max_abs_diff": float((logits - expected).abs().max()),
                      "params_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}))


def build(path: Path, hidden: int, layers: int, ratio: float) -> dict[str, int]:
    from benchsuite.api.model import decoder_layers
    from benchsuite.models.checkpoint import save_pruned
    from benchsuite.pruning.structure import attention_group, mlp_group, prune_counts, remove_units, select_units
    from benchsuite.testing import tiny_llama

    model = tiny_llama(16, 4, layers, hidden_size=hidden, intermediate_size=int(hidden * 2.75), weight_std=0.02)
    full = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(path / "dense")
    groups = []
    for i, layer in enumerate(decoder_layers(model)):
        groups += [attention_group(layer, i, "heads"), mlp_group(layer, i)]
    scores = []
    for group in groups:
        layer = decoder_layers(model)[group.layer]
        member = group.members[0]
        weight = layer.get_submodule(member.module).weight.detach()
        scores.append(weight.abs().sum(1)[member.index].sum(1))
    masks = [select_units(g, s, n) for g, s, n in zip(groups, scores, prune_counts(groups, ratio))]
    remove_units(model, groups, masks)
    ids = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(0))
    save_pruned(model, path)
    torch.save(ids, path / "probe_ids.pt")
    with torch.no_grad():
        torch.save(model(ids).logits, path / "probe_logits.pt")
    pruned = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"full_bytes": full, "pruned_bytes": pruned}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1])
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        sizes = build(path, args.hidden, args.layers, args.ratio)
        print(json.dumps({"hidden": args.hidden, "layers": args.layers, "ratio": args.ratio,
                          "full_mb": round(sizes["full_bytes"] / 2**20, 1),
                          "pruned_mb": round(sizes["pruned_bytes"] / 2**20, 1)}))
        for _ in range(args.repeats):
            for mode in ("legacy", "meta", "dense"):
                out = subprocess.run([sys.executable, __file__, "--child", str(path), mode], check=True,
                                     capture_output=True, text=True)
                print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
