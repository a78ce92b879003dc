"""The ``gguf`` format of a saved model: one file that llama.cpp loads (float32, nothing quantized).

A Llama whose layers all have the config's widths (dense, N:M, unstructured, depth pruning) is written as the
``llama`` architecture. A structurally pruned one is written as ``deci``, llama.cpp's Llama with per-layer
widths (Nemotron-NAS): ``deci.attention.head_count``, ``deci.attention.head_count_kv`` and
``deci.feed_forward_length`` are arrays with one value per layer, which llama.cpp reads with
``get_key_or_arr`` and uses layer by layer (``n_head(il)``, ``n_head_kv(il)``, ``n_ff(il)``). Biases that
pruning added (FLAP's compensation) go in as the optional ``.bias`` tensors both architectures load.

Query and key projections are permuted from transformers' rotate-half layout to GGML's interleaved RoPE, per
layer with that layer's head counts (the reference converter assumes one head count for all layers). The
tokenizer is written as a BPE vocabulary from ``tokenizer.json`` (tokens by id, merges, special tokens); the
pre-tokenizer is named where the model is known (``smollm``), else ``default``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from benchsuite.api.architecture import architecture_of
from benchsuite.api.errors import ConfigError
from benchsuite.models.hf import read_config
from benchsuite.pruning.structure import WIDTHS_KEY

#: llama.cpp's name of a tokenizer's pre-tokenizer (``tokenizer.ggml.pre``), for the base models we know by name
KNOWN_PRE = {"smollm2": "smollm"}


def layer_widths(config: Any) -> list[dict[str, int]]:
    """Every layer's head counts and MLP width (the config's where it records none per layer)."""
    widths = getattr(config, WIDTHS_KEY, None)
    if widths:
        return [dict(w) for w in widths]
    return [{"num_heads": config.num_attention_heads, "num_kv_heads": config.num_key_value_heads,
             "intermediate_size": config.intermediate_size}] * config.num_hidden_layers


def permute_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """transformers' rotate-half q/k rows -> GGML's interleaved pairs (the rows of each head reordered)."""
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape))


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    from benchsuite.models.checkpoint import read_safetensors

    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        for name, tensor in read_safetensors(file):
            out[name] = tensor.float().numpy()
    if not out:
        raise ConfigError(f"{folder} has no .safetensors weights")
    return out


def _pre_tokenizer(folder: Path, config: Any) -> str:
    """llama.cpp's name for the model's pre-tokenizer: known for the models benchsuite ships, else ``default``."""
    card = folder / "benchsuite.json"
    known = " ".join([str(getattr(config, "_name_or_path", "") or ""), card.read_text() if card.is_file() else ""])
    return next((pre for name, pre in KNOWN_PRE.items() if name in known.lower()), "default")


def _vocab(writer: Any, folder: Path, config: Any) -> None:
    """A BPE vocabulary from tokenizer.json: tokens by id, token types, merges, special token ids."""
    import gguf

    file = folder / "tokenizer.json"
    if not file.is_file():
        raise ConfigError(f"{folder} has no tokenizer.json: the gguf export writes the vocabulary from it")
    data = json.loads(file.read_text())
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise ConfigError(f"{folder}: a {model.get('type')} tokenizer; the gguf export writes BPE vocabularies")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in data.get("added_tokens", [])}
    for content, token in added.items():
        vocab.setdefault(content, token["id"])
    size = max(config.vocab_size, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for content, index in vocab.items():
        tokens[index] = content
        special = added.get(content, {}).get("special", False)
        types[index] = gguf.TokenType.CONTROL if special else (
            gguf.TokenType.USER_DEFINED if content in added else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(folder, config))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("pad_token_id", writer.add_pad_token_id)):
        value = getattr(config, key, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            add(value)
    writer.add_add_bos_token(False)


def write_gguf(folder: Path, out: Path) -> Path:
    """The GGUF file of the saved (hf format) model in ``folder``, written to ``out``."""
    import gguf

    folder = Path(folder)
    config = read_config(folder)
    family = architecture_of(config, prunable=False)
    widths = layer_widths(config)
    per_layer = bool(getattr(config, WIDTHS_KEY, None))
    if family.gguf != "llama" or (per_layer and not family.gguf_per_layer):
        # the tensor names and metadata below are llama.cpp's llama/deci ones
        shape = "with per-layer widths " if per_layer else ""
        raise ConfigError(f"{folder}: a {family.name} model {shape}can't be written as GGUF by this version: the "
                          "GGUF writer knows llama.cpp's Llama layout only; use --format hf")
    arch = gguf.MODEL_ARCH.DECI if per_layer else gguf.MODEL_ARCH.LLAMA
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    n_layers = config.num_hidden_layers
    tensors = _tensors(folder)
    names = gguf.get_tensor_name_map(arch, n_layers)

    writer = gguf.GGUFWriter(str(out), arch_name)
    writer.add_name(Path(folder).name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(n_layers)
    heads = [w["num_heads"] for w in widths]
    kv_heads = [w["num_kv_heads"] for w in widths]
    ffn = [w["intermediate_size"] for w in widths]
    writer.add_head_count(heads if per_layer else heads[0])
    writer.add_head_count_kv(kv_heads if per_layer else kv_heads[0])
    writer.add_feed_forward_length(ffn if per_layer else ffn[0])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    writer.add_rope_freq_base(float(theta))
    if rope.get("rope_type", "default") not in ("default", None):
        raise ConfigError(f"{folder}: RoPE type {rope.get('rope_type')!r} is not written to GGUF by this exporter")
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    _vocab(writer, folder, config)

    tied = getattr(config, "tie_word_embeddings", False)
    for name, array in tensors.items():
        if tied and name == "lm_head.weight":
            continue  # llama.cpp uses the token embedding when there is no output tensor
        if name.startswith("model.layers."):
            layer = int(name.split(".")[2])
            if name.endswith("self_attn.q_proj.weight") or name.endswith("self_attn.q_proj.bias"):
                array = permute_rope(array, heads[layer])
            elif name.endswith("self_attn.k_proj.weight") or name.endswith("self_attn.k_proj.bias"):
                array = permute_rope(array, kv_heads[layer])
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ConfigError(f"{folder}: no GGUF name for tensor {name}")
        writer.add_tensor(target, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
