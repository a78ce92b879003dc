"""The ``compressed-tensors`` export: a 2:4 sparse model in compressed-tensors' ``sparse-24-bitmask`` format.

What reads it: the compressed-tensors package (0.14, the last release with this compressor; ``tests/test_export.py``
reads the export back through it). vLLM removed its 2:4 sparse kernels and llm-compressor its sparse compression in
March 2026 (vllm-project/vllm#36799, vllm-project/llm-compressor#2452), so the format no longer promises sparse
serving; it stores a 2:4 model in about 0.63x the space of the dense one.

Every projection weight of a decoder layer whose every block of 4 consecutive inputs has at most 2 non-zeros is
stored as three tensors, as compressed-tensors' ``Sparse24BitMaskCompressor`` writes them: ``<module>.shape``
(the dense shape, int64, 2 x 1), ``<module>.compressed`` (rows x cols/2, the kept values in their order) and
``<module>.bitmask`` (rows x ceil(cols/8) uint8, the keep mask packed little-endian along each row). Every other
tensor is stored as it is. ``config.json`` is the plain Llama config with a ``quantization_config`` naming the
format; the layers not compressed are listed in its ``ignore``.

Only models whose shapes are plain Llama ones fit (N:M pruning; not structured widths): anything else is a
:class:`~benchsuite.api.errors.ConfigError` naming the first weight that is not 2:4, before anything is written.
Written by benchsuite itself (the format is a few tensors); ``tests/test_export.py`` reads it back through the
compressed-tensors package (0.14, the last release with this compressor).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchsuite.api.errors import ConfigError

FORMAT = "sparse-24-bitmask"
#: the compressed-tensors release whose format this is (it names the version in config.json)
VERSION = "0.14.0"
_PROJECTION = re.compile(r"^model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$")


def is_24(weight: torch.Tensor) -> bool:
    """Whether every block of 4 consecutive inputs of every row has at most 2 non-zeros."""
    return weight.dim() == 2 and weight.shape[1] % 4 == 0 and \
        int((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1).max()) <= 2


def keep_mask(weight: torch.Tensor) -> torch.Tensor:
    """Exactly 2 kept positions per block of 4: the non-zeros, then (in a block with fewer) the first zeros."""
    rows, cols = weight.shape
    blocks = (weight.reshape(rows, cols // 4, 4) != 0).to(torch.int8) * 4 + torch.arange(3, -1, -1, dtype=torch.int8)
    keep = torch.zeros(rows, cols // 4, 4, dtype=torch.bool)
    keep.scatter_(-1, blocks.topk(2, dim=-1).indices, True)
    return keep.reshape(rows, cols)


def compress(name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """A 2:4 weight as the three tensors of the format."""
    rows, cols = weight.shape
    keep = keep_mask(weight)
    prefix = name.removesuffix(".weight")
    bitmask = torch.from_numpy(np.packbits(keep.numpy(), axis=-1, bitorder="little"))
    return {f"{prefix}.shape": torch.tensor([rows, cols], dtype=torch.int64).reshape(-1, 1),
            f"{prefix}.compressed": weight[keep].reshape(rows, cols // 2).contiguous(),
            f"{prefix}.bitmask": bitmask}


def decompress(tensors: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """The dense weight of ``prefix`` back from its three tensors (the inverse of :func:`compress`)."""
    rows, cols = tensors[f"{prefix}.shape"].flatten().tolist()
    bits = np.unpackbits(tensors[f"{prefix}.bitmask"].numpy(), axis=-1, count=cols, bitorder="little")
    keep = torch.from_numpy(bits.astype(bool))
    dense = torch.zeros(rows, cols, dtype=tensors[f"{prefix}.compressed"].dtype)
    dense[keep] = tensors[f"{prefix}.compressed"].flatten()
    return dense


def write_sparse24(source: Path, out: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Write ``source``'s weights into ``out/model.safetensors`` in the format and ``out/config.json`` from the
    plain Llama ``config``; return the summary written into the config (compressed and ignored modules)."""
    from safetensors.torch import save_file

    from benchsuite.models.checkpoint import read_safetensors

    tensors = {name: t for file in sorted(Path(source).glob("*.safetensors")) for name, t in read_safetensors(file)}
    projections = sorted(n for n in tensors if _PROJECTION.match(n))
    not_24 = [n for n in projections if not is_24(tensors[n])]
    if not projections or len(not_24) == len(projections):
        first = not_24[0] if not_24 else "(no decoder projection weights)"
        raise ConfigError(f"{source}: compressed-tensors' {FORMAT} holds 2:4 sparse models, and {first} is not "
                          "2:4 (more than 2 non-zeros in a block of 4 inputs): use --format hf or gguf")
    written: dict[str, torch.Tensor] = {}
    zeros = total = 0
    for name, tensor in tensors.items():
        if tensor.is_floating_point():
            zeros += int((tensor == 0).sum())
            total += tensor.numel()
        if name in projections and name not in not_24:
            written.update(compress(name, tensor))
        else:
            written[name] = tensor.contiguous()
    save_file(written, str(Path(out) / "model.safetensors"), metadata={"format": "pt"})
    ignore = ["lm_head", *(n.removesuffix(".weight") for n in not_24)]
    sparsity = {"format": FORMAT, "targets": ["Linear"], "ignore": ignore, "global_sparsity": zeros / total,
                "sparsity_structure": "2:4", "registry_requires_subclass": False}
    # as compressed-tensors' ModelCompressor.update_config writes it for a model with sparsity and no quantization
    config = dict(config, quantization_config={"quant_method": "compressed-tensors", "version": VERSION,
                                               "sparsity_config": sparsity, "transform_config": {}})
    (Path(out) / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return {"compressed": len(projections) - len(not_24), "ignored": ignore, "global_sparsity": zeros / total}
