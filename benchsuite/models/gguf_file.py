"""The ``gguf`` format of a saved model: one file that llama.cpp loads (float32, nothing quantized).

A model whose layers all have the config's widths (dense, N:M, unstructured, depth pruning) is written as the
llama.cpp architecture its family names (:attr:`Architecture.gguf`: ``llama`` for Llama and Mistral, as
llama.cpp's own converter writes them, ``qwen2``, ``qwen3``, ``gemma2``, ``gemma3``, ``granite``, ``olmo2``,
``phi3``, ``qwen3moe``; Mixtral is ``llama`` with experts). What differs between transformers' layout and
llama.cpp's is in one small table, :data:`LAYOUTS`: whether q/k rows are permuted to GGML's interleaved RoPE,
whether norms are stored as ``1 + w`` (Gemma), and the family's own metadata (Granite's multipliers, Gemma's
soft-capping, sliding-window pattern and local RoPE base, the experts' counts). What llama.cpp would compute
differently is refused with the reason before anything is written: a sliding window where the llama.cpp graph has
none, a RoPE scaling, an attention scale other than the one llama.cpp derives, unnormalised top-k routing.

A structurally pruned model of a family with the plain Llama layout (Llama, Mistral, Qwen2:
:attr:`Architecture.gguf_per_layer`) is written as ``deci``, llama.cpp's Llama with per-layer widths
(Nemotron-NAS): ``deci.attention.head_count``, ``deci.attention.head_count_kv`` and ``deci.feed_forward_length``
are arrays with one value per layer, which llama.cpp reads with ``get_key_or_arr`` and uses layer by layer
(``n_head(il)``, ``n_head_kv(il)``, ``n_ff(il)``); the model's own family is kept in ``general.description``.
Other families' llama.cpp graphs take one head count and width for all layers, so their structured models are
refused (use ``--format hf``). Biases (Qwen2's q/k/v, FLAP's compensation) go in as the optional ``.bias``
tensors.

Where llama.cpp applies RoPE to interleaved pairs (``llama``, ``deci``, ``granite``), query and key projections
are permuted from transformers' rotate-half layout, per layer with that layer's head counts (the reference
converter assumes one head count for all layers). The tokenizer is written as a BPE vocabulary from
``tokenizer.json`` (tokens by id, merges, special tokens); the pre-tokenizer is named where the model is known
(``smollm``), else ``default``. SentencePiece-style vocabularies (byte fallback, as Gemma's) are refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
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
    if model.get("byte_fallback"):
        raise ConfigError(f"{folder}: a SentencePiece-style vocabulary (BPE with byte fallback, as Gemma's); the gguf "
                          "export writes byte-level BPE vocabularies only; use --format hf")
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
    if not merges:  # llama.cpp requires the key, and gguf writes no empty arrays
        raise ConfigError(f"{folder}: a BPE vocabulary without merges (one token per byte) can't be written as GGUF; "
                          "use --format hf")
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


def _rope(config: Any, layer_type: str = "full_attention") -> dict[str, Any]:
    """The RoPE parameters of ``layer_type``'s layers (Gemma 3 keeps one set per layer type)."""
    rope = getattr(config, "rope_parameters", None) or {}
    if layer_type in rope and isinstance(rope[layer_type], dict):
        rope = rope[layer_type]
    if not rope.get("rope_theta") and getattr(config, "rope_theta", None):
        rope = {**rope, "rope_theta": config.rope_theta}
    return rope


def _sliding(config: Any) -> list[bool]:
    """Which layers attend within a sliding window shorter than the model's context."""
    n = config.num_hidden_layers
    window = getattr(config, "sliding_window", None)
    if not window or window >= config.max_position_embeddings:
        return [False] * n
    types = getattr(config, "layer_types", None)
    if types:
        return [t == "sliding_attention" for t in types]
    return [bool(getattr(config, "use_sliding_window", True))] * n


def _no_window(writer: Any, config: Any, refuse: Callable[[str], None]) -> None:
    if any(_sliding(config)):
        refuse(f"its layers attend within a sliding window of {config.sliding_window} tokens, which llama.cpp's "
               "graph for this family does not")


def _gemma(writer: Any, config: Any, refuse: Callable[[str], None]) -> None:
    head_dim = config.head_dim
    scalar = getattr(config, "query_pre_attn_scalar", head_dim)
    # llama.cpp scales queries by 1/sqrt(head_dim), 1/sqrt(hidden/heads) for the 62- or 46-layer 27B models
    big = config.num_hidden_layers in (46, 62)
    if scalar != (config.hidden_size // config.num_attention_heads if big else head_dim):
        refuse(f"query_pre_attn_scalar {scalar}: llama.cpp scales queries by the head size for this model")
    if getattr(config, "hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        refuse(f"hidden activation {config.hidden_activation}: llama.cpp's Gemma uses GELU (tanh)")
    window, types = getattr(config, "sliding_window", None), getattr(config, "layer_types", None)
    if window and types:  # the window and which layers slide, as the config has them (a window as long as the
        # context changes nothing within it, in llama.cpp as in transformers)
        writer.add_sliding_window(int(window))
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in types])
        local = _rope(config, "sliding_attention")
        if local.get("rope_type", "default") not in ("default", None):
            refuse(f"RoPE type {local.get('rope_type')!r} on its sliding-window layers")
        writer.add_rope_freq_base_swa(float(local.get("rope_theta", 10000.0)))
    elif config.model_type == "gemma2":
        refuse("it has no sliding-window layers, which llama.cpp's Gemma 2 graph always has")
    for key, add in (("attn_logit_softcapping", writer.add_attn_logit_softcapping),
                     ("final_logit_softcapping", writer.add_final_logit_softcapping)):
        value = getattr(config, key, None)
        if value:
            add(float(value))
        elif key == "attn_logit_softcapping" and config.model_type == "gemma2":
            refuse("no attention logit soft-capping: llama.cpp's Gemma 2 always caps")


def _granite(writer: Any, config: Any, refuse: Callable[[str], None]) -> None:
    _no_window(writer, config, refuse)
    writer.add_embedding_scale(float(config.embedding_multiplier))
    writer.add_residual_scale(float(config.residual_multiplier))
    writer.add_attention_scale(float(config.attention_multiplier))
    writer.add_logit_scale(float(config.logits_scaling))


def _olmo2(writer: Any, config: Any, refuse: Callable[[str], None]) -> None:
    _no_window(writer, config, refuse)


def _experts(writer: Any, config: Any, refuse: Callable[[str], None]) -> None:
    _no_window(writer, config, refuse)
    count = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    if not count:
        return
    if getattr(config, "norm_topk_prob", True) is False:
        refuse("its router does not renormalise the top-k weights (norm_topk_prob false); llama.cpp's does")
    writer.add_expert_count(int(count))
    writer.add_expert_used_count(int(config.num_experts_per_tok))
    if getattr(config, "moe_intermediate_size", None):
        writer.add_expert_feed_forward_length(int(config.moe_intermediate_size))


@dataclass(frozen=True)
class Layout:
    """How llama.cpp's architecture ``arch`` differs from transformers' layout of the same model."""

    #: llama.cpp applies RoPE to interleaved pairs: q/k rows are permuted from transformers' rotate-half order
    permute: bool
    #: Gemma's norms multiply by ``1 + w``; llama.cpp's by the stored weight, so ``1 + w`` is stored
    norm_offset: bool = False
    #: the family's own metadata; calls ``refuse(reason)`` where llama.cpp would compute something else
    keys: Callable[[Any, Any, Callable[[str], None]], None] = field(default=_no_window)
    #: llama.cpp requires the output matrix (no fallback to the token embedding): tied embeddings are written twice
    output_required: bool = False


#: llama.cpp architecture name -> how to write it
LAYOUTS: dict[str, Layout] = {
    "llama": Layout(permute=True, keys=_experts),
    "qwen2": Layout(permute=False),
    "qwen3": Layout(permute=False),
    "qwen3moe": Layout(permute=False, keys=_experts),
    "gemma2": Layout(permute=False, norm_offset=True, keys=_gemma),
    "gemma3": Layout(permute=False, norm_offset=True, keys=_gemma),
    "granite": Layout(permute=True, keys=_granite),
    "olmo2": Layout(permute=False, keys=_olmo2, output_required=True),
    "phi3": Layout(permute=False),
}


#: one expert's Linear in the hub's per-expert layout (Mixtral's w1/w3/w2, Qwen3-MoE's gate/up/down_proj)
_EXPERT = re.compile(r"model\.layers\.(\d+)\.(?:block_sparse_moe|mlp)\.experts\.(\d+)\."
                     r"(w1|w3|w2|gate_proj|up_proj|down_proj)\.weight")
_EXPERT_PART = {"w1": "gate", "gate_proj": "gate", "w3": "up", "up_proj": "up", "w2": "down", "down_proj": "down"}


def _expert_tensors(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A mixture of experts' tensors under llama.cpp's names (``blk.L.ffn_{gate,up,down}_exps``, stacked over
    experts, and the router ``blk.L.ffn_gate_inp``), taken out of ``tensors``: from the fused 3-D parameters the
    suite saves (``gate_up_proj`` ``[experts, 2 * width, hidden]``, gate rows then up rows; ``down_proj``) or the
    hub's per-expert Linears."""
    out: dict[str, np.ndarray] = {}
    single: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    for name in list(tensors):
        match = _EXPERT.fullmatch(name)
        if match:
            layer, expert, part = match.groups()
            single.setdefault((layer, _EXPERT_PART[part]), {})[int(expert)] = tensors.pop(name)
            continue
        parts = name.split(".")
        if not name.startswith("model.layers.") or len(parts) < 5:
            continue
        layer, tail = parts[2], ".".join(parts[3:])
        if tail.endswith("experts.gate_up_proj"):
            array = tensors.pop(name)
            width = array.shape[1] // 2
            out[f"blk.{layer}.ffn_gate_exps.weight"] = array[:, :width]
            out[f"blk.{layer}.ffn_up_exps.weight"] = array[:, width:]
        elif tail.endswith("experts.down_proj"):
            out[f"blk.{layer}.ffn_down_exps.weight"] = tensors.pop(name)
        elif tail in ("mlp.gate.weight", "block_sparse_moe.gate.weight"):  # the router
            out[f"blk.{layer}.ffn_gate_inp.weight"] = tensors.pop(name)
    for (layer, part), experts in single.items():
        out[f"blk.{layer}.ffn_{part}_exps.weight"] = np.stack([experts[e] for e in sorted(experts)])
    return out


def write_gguf(folder: Path, out: Path) -> Path:
    """The GGUF file of the saved (hf format) model in ``folder``, written to ``out``."""
    import gguf

    folder = Path(folder)
    config = read_config(folder)
    family = architecture_of(config, prunable=False)
    widths = layer_widths(config)
    per_layer = bool(getattr(config, WIDTHS_KEY, None))

    def refuse(reason: str) -> None:
        raise ConfigError(f"{folder}: this {family.name} model can't be written as GGUF: {reason}; use --format hf")

    if family.gguf not in LAYOUTS:
        refuse("llama.cpp's layout of the family is not known to this exporter" if family.gguf is None else
               f"llama.cpp architecture {family.gguf!r} is not one this exporter writes ({', '.join(LAYOUTS)})")
    if per_layer and not family.gguf_per_layer:
        refuse("it has per-layer widths (structured pruning), and llama.cpp builds this family's graph with one "
               "head count and width for all layers (only the Llama layout has 'deci', with per-layer widths)")
    layout = LAYOUTS["llama"] if per_layer else LAYOUTS[family.gguf]
    arch = gguf.MODEL_ARCH.DECI if per_layer else next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == family.gguf)
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    n_layers = config.num_hidden_layers
    rope = _rope(config)
    if rope.get("rope_type", "default") not in ("default", None):
        refuse(f"RoPE type {rope.get('rope_type')!r} is not written to GGUF by this exporter")
    rotary = int(head_dim * float(rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))))
    tensors = _tensors(folder)
    names = gguf.get_tensor_name_map(arch, n_layers)

    writer = gguf.GGUFWriter(str(out), arch_name)
    try:
        writer.add_name(Path(folder).name)
        if arch_name != family.gguf:
            writer.add_description(f"a {family.name} model with per-layer widths, written as llama.cpp's {arch_name}")
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
        writer.add_rope_dimension_count(rotary)
        writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_vocab_size(config.vocab_size)
        (_no_window if per_layer else layout.keys)(writer, config, refuse)
        _vocab(writer, folder, config)

        tied = getattr(config, "tie_word_embeddings", False)
        if tied and layout.output_required and "lm_head.weight" not in tensors:
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
        experts = _expert_tensors(tensors) if family.experts else {}
        for target, array in experts.items():
            writer.add_tensor(target, np.ascontiguousarray(array, dtype=np.float32))
        for name, array in tensors.items():
            if tied and name == "lm_head.weight" and not layout.output_required:
                continue  # llama.cpp uses the token embedding when there is no output tensor
            if layout.norm_offset and name.endswith("norm.weight"):
                array = array + 1.0
            if layout.permute and name.startswith("model.layers."):
                layer = int(name.split(".")[2])
                if name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
                    array = permute_rope(array, heads[layer])
                elif name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
                    array = permute_rope(array, kv_heads[layer])
            target = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if target is None:
                refuse(f"no GGUF name for its tensor {name}")
            writer.add_tensor(target, np.ascontiguousarray(array, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return out
