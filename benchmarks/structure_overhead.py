"""What the structured machinery costs per call on the default model, at one commit (run it from two source trees,
interleaved, to compare them): building the units of LoRAPrune's layers, applying masks (every pruning event of an
iterative schedule), removing the units and recording the widths (once per run), and attaching LoRA.

    PYTHONPATH=/tmp/before python benchmarks/structure_overhead.py     # prints one JSON line of medians (ms)
"""

from __future__ import annotations

import copy
import json
import statistics
import time

import torch


def main() -> None:
    from benchsuite.api.model import decoder_layers
    from benchsuite.data.assets import default_model_dir
    from benchsuite.models.checkpoint import load_model_dir
    from benchsuite.pruning.structure import parse_layers
    from benchsuite.running.finetune import LoRAConfig, attach_lora
    from benchsuite_plugins.granularities import Structured

    torch.set_num_threads(1)
    dense = load_model_dir(default_model_dir())
    layers = parse_layers("loraprune", len(decoder_layers(dense)))
    gran = Structured()
    gen = torch.Generator().manual_seed(0)

    def ms(fn, repeats: int) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    groups = gran.units(dense, layers)
    masks = gran.select(groups, [torch.rand(g.size, generator=gen) for g in groups], 0.5)
    out = {"units": ms(lambda: gran.units(dense, layers), 20),
           "apply_masks": ms(lambda: gran.apply_masks(dense, groups, masks), 20)}
    gran._masker.remove()
    copies = [copy.deepcopy(dense) for _ in range(3)]
    out["remove_units_and_record"] = ms(lambda: gran.finalize(copies.pop(), groups, masks), 3)
    out["attach_lora"] = ms(lambda: attach_lora(copy.deepcopy(dense), LoRAConfig()), 3) - ms(
        lambda: copy.deepcopy(dense), 3)
    print(json.dumps({k: round(v, 2) for k, v in out.items()}))


if __name__ == "__main__":
    main()
