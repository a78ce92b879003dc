"""Shared fixtures: tiny random LLaMA models (with and without GQA)."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def tiny_llama(num_heads: int = 4, num_kv_heads: int = 2, layers: int = 4, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128, hidden_size=96, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, head_dim=96 // num_heads,
        max_position_embeddings=256, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    # random init is small: widen the weights so that pruning visibly changes the logits
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model


@pytest.fixture(params=[(4, 4), (6, 2)], ids=["mha", "gqa"])
def tiny(request) -> LlamaForCausalLM:
    heads, kv = request.param
    return tiny_llama(heads, kv)


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def default_model_dir():
    """The real default model (SmolLM2-135M), fetched and converted once into the cache."""
    from benchsuite.assets import default_model_dir as fetch

    return fetch()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir):
    """A tiny random GQA LLaMA saved as a checkpoint directory, with the real tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=96, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=6, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
