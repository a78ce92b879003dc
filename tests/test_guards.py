"""Nothing wrong is recorded as "ok": non-finite scores and perplexities fail the run, a corpus too
short to evaluate is rejected before any run."""

from __future__ import annotations

import pytest
import torch

from benchsuite.api import ConfigError
from benchsuite.evaluation.perplexity import perplexity
from benchsuite.running.runner import Runner, RunRequest
from benchsuite_plugins.baselines import Magnitude
from tests.conftest import tiny_llama


def _request(model_dir, results, methods, **kw):
    return RunRequest(methods=list(methods), model=str(model_dir), ratios=kw.pop("ratios", None),
                      profile="smoke", results=results, ratio_basis="units", **kw)


def test_nan_scores_fail_the_run_at_every_granularity(tiny_model_dir, offline, tmp_path, monkeypatch):
    original = Magnitude.element_scores

    def nan_scores(self, key, module):
        scores = original(self, key, module).clone()
        scores[0, 0] = float("nan")
        return scores

    monkeypatch.setattr(Magnitude, "element_scores", nan_scores)
    records = Runner(_request(tiny_model_dir, tmp_path, ["magnitude-l2", "magnitude-2:4", "magnitude"], **offline),
                     log=lambda _: None).run()[1:]
    assert [r["granularity"]["label"] for r in records] == ["structured"] * 2 + ["2:4"] + ["unstructured"] * 2
    for record in records:  # they used to be "ok", with normal-looking perplexity
        assert record["status"] == "error", record["method"]
        assert "non-finite score" in record["error"] and "scoring" in record["error"]


def test_non_finite_perplexity_is_an_error():
    model = tiny_llama()
    windows = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    assert perplexity(model, windows)["tokens"] == 30
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="not a finite perplexity"):
        perplexity(model, windows)
    with pytest.raises(ValueError, match="no token to score"):
        perplexity(model, windows[:0])


@pytest.mark.parametrize("text", ["", "ten bytes.", "a few words\n\nand a few more words"])
def test_corpus_too_short_for_one_window_is_rejected_before_any_run(tiny_model_dir, offline, tmp_path, text):
    corpus = tmp_path / "short.txt"
    corpus.write_text(text)
    results = tmp_path / "results"
    with pytest.raises(ConfigError, match="short"):
        short = offline | {"corpora": [str(corpus)]}
        Runner(_request(tiny_model_dir, results, ["random"], **short), log=lambda _: None).run()
    assert not results.exists()


def _nan_batches():
    while True:
        yield torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))


def test_a_non_finite_training_loss_fails_the_run_naming_the_stage():
    from benchsuite.running.finetune import LoRAConfig, attach_lora, train_lora

    model = attach_lora(tiny_llama(), LoRAConfig())
    with torch.no_grad():
        model.get_input_embeddings().weight[5].fill_(float("inf"))
    batches = _nan_batches()
    with pytest.raises(FloatingPointError, match=r"LoRA recovery: the training loss is nan at optimizer step 1 of 3"):
        train_lora(model, batches, 3, LoRAConfig(), desc="LoRA recovery")
    # a recipe that skips such steps counts them
    log = train_lora(model, batches, 3, LoRAConfig(skip_nonfinite_steps=True), desc="LoRA recovery")
    assert log.skipped_nan == 3 and log.steps == 0


def test_a_group_whose_scores_overflow_keeps_its_running_score():
    from benchsuite import RunningScores
    from benchsuite.running.finetune import LoRAConfig, attach_lora
    from benchsuite_plugins.granularities import Structured
    from benchsuite_plugins.loraprune import LoRAGuided

    overflow = []

    class Overflowing(LoRAGuided):
        def element_scores(self, key, module):
            scores = super().element_scores(key, module)
            return scores.fill_(float("inf")) if key in overflow else scores

    model = attach_lora(tiny_llama(), LoRAConfig())
    batch = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=batch, labels=batch).loss.backward()
    granularity = Structured()
    groups = granularity.units(model, [0, 1])
    running = RunningScores(Overflowing(), granularity, groups)
    running.observe(model)
    before = [s.clone() for s in running.scores(model)]
    overflow.append("layers.1.mlp.down_proj")
    running.observe(model)
    assert running.stats() == {"observed_steps": 2, "skipped_nonfinite_steps": 0, "skipped_nonfinite_group_updates": 1}
    after = running.scores(model)
    changed = [not torch.equal(b, a) for b, a in zip(before, after)]
    assert changed == [g.name != "layers.1.mlp" for g in groups], [g.name for g in groups]
