"""Built-in plugin: the decoder families benchsuite prunes, described as a third-party family would be.

Each family was checked against the installed transformers classes (tests/test_families.py builds a tiny random
checkpoint of each with its own config class and prunes, saves, reloads and exports it). Phi-3's fused projections
are described by naming the fused module for each of its parts; mixtures of experts (Mixtral, Qwen3-MoE) by their
experts module (fused 3-D parameters, held as per-expert Linears while pruning) and router.
"""

from types import MappingProxyType

from benchsuite import Architecture, hookimpl

BENCHSUITE_API = "2.2"

@hookimpl
def benchsuite_register_architectures(register):
    register(Architecture(
        "llama", ("llama",), "Llama 1/2/3.x, SmolLM2, Vicuna: the Llama layout (GQA where the config has it)",
        gguf="llama", gguf_per_layer=True))
    register(Architecture(
        "mistral", ("mistral",), "Mistral: the Llama layout with a sliding attention window (a mask only)",
        config_class="MistralConfig", model_class="MistralForCausalLM", gguf="llama", gguf_per_layer=True))
    register(Architecture(
        "qwen2", ("qwen2",), "Qwen2/2.5: the Llama layout with q/k/v biases (cut with their rows)",
        config_class="Qwen2Config", model_class="Qwen2ForCausalLM", gguf="qwen2", gguf_per_layer=True))
    register(Architecture(
        "qwen3", ("qwen3",), "Qwen3: the Llama layout with q_norm/k_norm over head_dim, shared by every head (kept)",
        config_class="Qwen3Config", model_class="Qwen3ForCausalLM", kept=("self_attn.q_norm", "self_attn.k_norm"),
        gguf="qwen3"))
    register(Architecture(
        "gemma2", ("gemma2",), "Gemma 2: pre/post feed-forward norms, scaled embeddings, GELU-tanh MLP, logit "
        "soft-capping, query_pre_attn_scalar (none of them cut); windows start with BOS",
        config_class="Gemma2Config", model_class="Gemma2ForCausalLM", bos=True, gguf="gemma2"))
    register(Architecture(
        "gemma3", ("gemma3_text",), "Gemma 3 (text): Gemma 2's layout with q_norm/k_norm over head_dim (kept) and "
        "mixed sliding/global layers; windows start with BOS",
        config_class="Gemma3TextConfig", model_class="Gemma3ForCausalLM",
        kept=("self_attn.q_norm", "self_attn.k_norm"), bos=True, gguf="gemma3"))
    register(Architecture(
        "granite", ("granite",), "Granite: the Llama layout with embedding, residual, attention and logit multipliers "
        "(kept in the config)",
        config_class="GraniteConfig", model_class="GraniteForCausalLM", gguf="granite"))
    register(Architecture(
        "olmo2", ("olmo2",), "OLMo 2: post-norms, q_norm/k_norm over the whole projection (cut with the heads)",
        config_class="Olmo2Config", model_class="Olmo2ForCausalLM",
        cut_with_heads=MappingProxyType({"self_attn.q_norm": "q", "self_attn.k_norm": "kv"}), gguf="olmo2"))
    register(Architecture(
        "phi3", ("phi3",), "Phi-3/Phi-4 mini: fused qkv_proj (q heads, then k, then v rows) and gate_up_proj (gate, "
        "then up rows): a head or channel is a set of rows in each part",
        config_class="Phi3Config", model_class="Phi3ForCausalLM",
        attention=("self_attn.qkv_proj",) * 3 + ("self_attn.o_proj",),
        mlp=("mlp.gate_up_proj",) * 2 + ("mlp.down_proj",), gguf="phi3"))
    register(Architecture(
        "mixtral", ("mixtral",), "Mixtral: the Llama attention and a mixture of experts (router mlp.gate, experts as "
        "fused 3-D parameters; each expert's channels, or whole experts, are units)",
        config_class="MixtralConfig", model_class="MixtralForCausalLM", experts="mlp.experts", router="mlp.gate",
        experts_count="num_local_experts", experts_width="intermediate_size", gguf="llama"))
    register(Architecture(
        "qwen3-moe", ("qwen3_moe",), "Qwen3-MoE: Qwen3's attention (q_norm/k_norm kept) and a mixture of experts in "
        "every layer (router mlp.gate, experts as fused 3-D parameters)",
        config_class="Qwen3MoeConfig", model_class="Qwen3MoeForCausalLM", kept=("self_attn.q_norm", "self_attn.k_norm"),
        experts="mlp.experts", router="mlp.gate", experts_count="num_experts", experts_width="moe_intermediate_size",
        gguf="qwen3moe"))
