"""``--gradient-checkpointing``: LoRA training recomputes the decoder layers' activations in the backward pass.
The gradients (and so the trained adapters) are those of the plain backward; what is kept for the backward
shrinks; the run records that it was on."""

from __future__ import annotations

import itertools

import torch

from benchsuite.api.model import decoder_layers
from benchsuite.running.finetune import LoRAConfig, attach_lora, checkpointing, lora_parameters, train_lora
from benchsuite.running.runner import Runner, RunRequest
from tests.conftest import tiny_llama

TOKENS = torch.randint(0, 200, (2, 48), generator=torch.Generator().manual_seed(0))


def _train(enabled: bool):
    model = attach_lora(tiny_llama(6, 2), LoRAConfig(dropout=0.1, lr=1e-2))  # dropout: replayed identically
    calls = []
    # on a part of the layer (the recomputation runs the layer's forward, not its hooks), before it runs (a
    # recomputation stops early, once it has what the backward needs: a post-hook may not run)
    decoder_layers(model)[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    with checkpointing(model, enabled):
        log = train_lora(model, itertools.repeat(TOKENS), 3, LoRAConfig(dropout=0.1, lr=1e-2), seed=0)
    return log, [p.detach().clone() for p in lora_parameters(model)], len(calls), model


def test_same_training_with_layer_forwards_recomputed():
    plain, plain_params, plain_calls, _ = _train(False)
    ckpt, ckpt_params, ckpt_calls, model = _train(True)
    assert plain_calls == 3 and ckpt_calls == 6  # each step's layer forward runs again in the backward
    assert torch.allclose(torch.tensor(plain.losses), torch.tensor(ckpt.losses), rtol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain_params, ckpt_params))
    base = model.get_base_model()  # switched off again after training, the embedding hook it needs removed
    on = base.is_activation_checkpointing if hasattr(base, "is_activation_checkpointing") else \
        base.is_gradient_checkpointing
    assert not on and not getattr(base, "_require_grads_hooks", None)
    with torch.no_grad():
        assert not model(input_ids=TOKENS).logits.requires_grad


def _saved_bytes(enabled: bool) -> int:
    """Bytes autograd keeps for the backward of one training forward, outside checkpointed regions
    (a checkpoint's own hooks take over inside it: it keeps only its inputs)."""
    model = attach_lora(tiny_llama(6, 2), LoRAConfig())
    model.train()
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with checkpointing(model, enabled), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=TOKENS, labels=TOKENS, use_cache=False).loss.backward()
    return sum(saved)


def test_keeps_far_fewer_activations():
    plain, ckpt = _saved_bytes(False), _saved_bytes(True)
    assert ckpt < 0.3 * plain, (plain, ckpt)


def test_cli_flag_is_recorded(tiny_model_dir, offline, tmp_path):
    request = RunRequest(methods=["magnitude-l2+lora"], model=str(tiny_model_dir), ratios=[0.2], profile="smoke",
                         results=tmp_path, device="cpu", gradient_checkpointing=True, **offline)
    records = Runner(request, log=lambda _: None).run()
    pruned = records[-1]
    assert pruned["status"] == "ok", pruned.get("error")
    assert pruned["config"]["gradient_checkpointing"] is True
    assert "gradient_checkpointing" not in records[0]["config"]  # the dense run does not train
    assert pruned["recovery_log"]["gradient_checkpointing"] is True
