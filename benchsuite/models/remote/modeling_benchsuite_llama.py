"""A Llama whose layers have their own widths: what ``benchsuite export --format hf`` saves beside a structurally
pruned model, so that ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` opens it with
nothing but torch and transformers installed.

``config.json`` holds, besides the ordinary Llama settings:

- ``benchsuite_layer_widths``: per decoder layer, ``num_heads``, ``num_kv_heads`` and ``intermediate_size``
  (the uniform values of the config are the original model's);
- ``benchsuite_biases``: per decoder layer, the projections that have a bias (FLAP's compensation adds one
  to ``self_attn.o_proj`` and ``mlp.down_proj``), or null;
- ``benchsuite_cut_with_heads``: norms over the whole query (``q``) or key/value (``kv``) projection, whose width
  follows the layer's head counts (OLMo 2's ``q_norm``/``k_norm``), or null;
- ``benchsuite_projections``: the paths of q, k, v, o and gate, up, down in a decoder layer (a fused projection is
  named for each of its parts, as Phi-3's ``qkv_proj``), or null for the Llama names; for a mixture of experts, also
  ``experts`` and ``router``: the layer's fused experts module (``gate_up_proj`` ``[experts, 2 * width, hidden]``,
  ``down_proj`` ``[experts, hidden, width]``) and router (``weight`` ``[experts, hidden]``), which get the layer's
  ``num_experts`` and ``intermediate_size`` (each expert's width).

The classes subclass the installed transformers classes of the model's family (this file is written for each
family from the Llama one, with its classes in place of Llama's) and only reshape the projections: attention,
rotary embeddings, norms, the KV cache and generation are transformers' own.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

WIDTHS_KEY = "benchsuite_layer_widths"
BIASES_KEY = "benchsuite_biases"
CUT_KEY = "benchsuite_cut_with_heads"
PATHS_KEY = "benchsuite_projections"
#: the projections of a decoder layer, where config.json names none (the Llama layout)
DEFAULT_PATHS = {"attention": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"],
                 "mlp": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]}


class BenchsuiteLlamaConfig(LlamaConfig):
    model_type = "benchsuite_llama"


def _linear(old: nn.Linear, in_features: int, out_features: int, bias: bool) -> nn.Linear:
    new = nn.Linear(in_features, out_features, bias=bias)
    return new.to(device=old.weight.device, dtype=old.weight.dtype)


class BenchsuiteLlamaForCausalLM(LlamaForCausalLM):
    config_class = BenchsuiteLlamaConfig

    def __init__(self, config: BenchsuiteLlamaConfig) -> None:
        super().__init__(config)
        layers = self.model.layers
        widths = getattr(config, WIDTHS_KEY, None) or [None] * len(layers)
        biases = getattr(config, BIASES_KEY, None) or [[] for _ in layers]
        if len(widths) != len(layers) or len(biases) != len(layers):
            raise ValueError(f"config.json describes {len(widths)} layers' widths and {len(biases)} layers' biases "
                             f"for a model of {len(layers)} layers")
        paths = getattr(config, PATHS_KEY, None) or DEFAULT_PATHS
        q_path, k_path, v_path, o_path = paths["attention"]
        gate, up, down = paths["mlp"]
        experts_path, router_path = paths.get("experts"), paths.get("router")
        hidden = config.hidden_size
        for layer, width, with_bias in zip(layers, widths, biases):
            attn = layer.get_submodule(q_path.rpartition(".")[0])
            head_dim = attn.head_dim
            heads = width["num_heads"] if width else config.num_attention_heads
            kv_heads = width["num_kv_heads"] if width else config.num_key_value_heads
            inter = width["intermediate_size"] if width else config.intermediate_size
            q, kv = heads * head_dim, kv_heads * head_dim
            rows: dict[str, int] = {}  # the parts of a fused projection (Phi-3's qkv_proj, gate_up_proj) add up
            mlp_parts = () if experts_path else ((gate, inter), (up, inter))
            for path, size in ((q_path, q), (k_path, kv), (v_path, kv), *mlp_parts):
                rows[path] = rows.get(path, 0) + size
            shapes = {path: (hidden, size) for path, size in rows.items()} | {o_path: (q, hidden)}
            if not experts_path:
                shapes[down] = (inter, hidden)
            else:
                _reshape_experts(layer.get_submodule(experts_path), layer.get_submodule(router_path),
                                 width["num_experts"] if width else None, inter)
            for path, (fan_in, fan_out) in shapes.items():
                parent, _, name = path.rpartition(".")
                owner = layer.get_submodule(parent)
                old = getattr(owner, name)
                bias = old.bias is not None or path in with_bias
                if (old.in_features, old.out_features, old.bias is not None) != (fan_in, fan_out, bias):
                    setattr(owner, name, _linear(old, fan_in, fan_out, bias))
            for path, side in (getattr(config, CUT_KEY, None) or {}).items():
                norm = layer.get_submodule(path)
                size = q if side == "q" else kv
                if norm.weight.shape[0] != size:
                    norm.weight = nn.Parameter(torch.ones(size, dtype=norm.weight.dtype, device=norm.weight.device))
            attn.num_key_value_groups = heads // kv_heads if kv_heads else 1
            for name, value in (("num_heads", heads), ("num_key_value_heads", kv_heads)):
                if hasattr(attn, name):
                    setattr(attn, name, value)
            if q_path == k_path and heads != config.num_attention_heads:  # a fused split reads the config's count
                attn.config = copy.copy(attn.config)
                attn.config.num_attention_heads = heads
            if experts_path:
                continue
            mlp = layer.get_submodule(gate.rpartition(".")[0])
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = inter


def _reshape_experts(experts: nn.Module, router: nn.Module, count: int | None, inter: int) -> None:
    """A mixture of experts' fused experts and router at ``count`` experts of width ``inter``."""
    count = count if count is not None else experts.gate_up_proj.shape[0]
    hidden = experts.gate_up_proj.shape[2]
    for owner, name, shape in ((experts, "gate_up_proj", (count, 2 * inter, hidden)),
                               (experts, "down_proj", (count, hidden, inter)), (router, "weight", (count, hidden))):
        old = getattr(owner, name)
        if tuple(old.shape) != shape:
            setattr(owner, name, nn.Parameter(torch.empty(shape, dtype=old.dtype, device=old.device)))
    experts.num_experts = router.num_experts = count
    if hasattr(experts, "intermediate_dim"):
        experts.intermediate_dim = inter
