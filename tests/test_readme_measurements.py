"""The docs' measured tables outside ``benchsuite report`` are what their scripts render from the committed
results: the budget sweep (``benchmarks/budget_sweep.py --render``, from ``results/reference``; in
docs/loraprune.md), llama.cpp's speed (``benchmarks/llama_cpp_speed.py --render``, from its JSON; docs/export.md)
the default run's time (``benchmarks/default_run_time.py --render``, from its JSON; docs/results.md) and the
columns' minimal detectable differences (``benchmarks/detectable_differences.py``, from the records;
docs/methodology.md), LoRAPrune's ablations (``benchmarks/loraprune_ablations.py --render``; docs/loraprune.md) and
the recipe axes' seeded comparisons (``benchmarks/recipe_axes.py``; docs/results.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchsuite.reporting.blocks import read_block
from tests.conftest import benchmark_script

ROOT = Path(__file__).parent.parent
#: block -> the page it is on
PAGES = {"budget-sweep": "docs/loraprune.md", "llama-cpp-speed": "docs/export.md",
         "default-run-time": "docs/results.md", "detectable-differences": "docs/methodology.md",
         "loraprune-ablations": "docs/loraprune.md", "recipe-axes": "docs/results.md"}


def _block(name: str) -> str:
    text = read_block((ROOT / PAGES[name]).read_text(), name)
    assert text is not None, f"{PAGES[name]} has no <!-- {name} --> block"
    return text.strip()


@pytest.mark.parametrize("name, command", [
    ("budget_sweep", "python benchmarks/budget_sweep.py --render --readme docs/loraprune.md"),
    ("loraprune_ablations", "python benchmarks/loraprune_ablations.py --render --docs docs/loraprune.md")])
def test_loraprune_sections_are_rendered_from_the_records(name, command):
    script = benchmark_script(name)
    runs = script.collect(ROOT / "results" / "reference")
    assert runs, f"no records of {name} in results/reference"
    assert _block(script.BLOCK) == script.render(runs).strip(), f"run: {command}"


def test_recipe_axes_section_is_rendered_from_the_records():
    axes = benchmark_script("recipe_axes")
    records = axes.collect(ROOT / "results" / "reference")
    text = axes.render(records)
    assert _block(axes.BLOCK) == text.strip(), "run: python benchmarks/recipe_axes.py --docs docs/results.md"
    for comparison in axes.COMPARISONS:  # every arm of every comparison has its records, at every seed
        for row in comparison.rows:
            for arm in (row.baseline, *row.others):
                seeds = [r["seed"] for r in axes._runs(records, row, arm)]
                assert seeds == axes.SEEDS, f"{arm.variant} ({arm.allocation}) at {row.ratio}: seeds {seeds}"


def test_llama_cpp_table_is_rendered_from_its_json():
    speed = benchmark_script("llama_cpp_speed")
    result = json.loads((ROOT / "benchmarks" / "results" / "llama_cpp_speed.json").read_text())
    assert _block(speed.BLOCK) == speed.render(result).strip(), \
        ("run: python benchmarks/llama_cpp_speed.py --render benchmarks/results/llama_cpp_speed.json "
         "--readme docs/export.md")
    assert result["speedup_prompt"] > 1 and result["speedup_generation"] > 1  # a pruned model that is faster


def test_default_run_time_section_is_rendered_from_its_json():
    timing = benchmark_script("default_run_time")
    data = json.loads((ROOT / "benchmarks" / "results" / "default_run_time.json").read_text())
    assert _block(timing.BLOCK) == timing.render(data).strip(), \
        ("run: python benchmarks/default_run_time.py --render benchmarks/results/default_run_time.json "
         "--readme docs/results.md")
    # what it states holds together: every run of the README's default benchmark, each phase inside the whole
    assert len(data["records"]) == 9 and not [r for r in data["records"] if "differs" in r["reference"]]
    t = data["timings"]
    assert t["total_s"] <= data["run_wall_s"] and abs(sum(t["by_stage"].values()) - t["total_s"]) < 1e-6
    for record in data["records"]:
        tm = record["timings"]
        assert sum(tm["eval_metric_s"].values()) <= tm["eval_s"]
        assert t["runs"][_view_label(record)]["evaluate"] >= tm["eval_s"]


def _view_label(record: dict) -> str:
    """The progress view's label of a run (the runner's ``spec.label``) from the row of default_run_time's check."""
    if record["run"] == "dense":
        return "dense"
    variant, ratio = record["run"].split(" ratio=")
    return f"{variant} ratio={ratio} seed=0"


def test_detectable_differences_are_rendered_from_the_records():
    mdd = benchmark_script("detectable_differences")
    data = mdd.analyse(ROOT / "results" / "reference", "quick", 0.5, mdd.METHODS)
    saved = json.loads((ROOT / "benchmarks" / "results" / "detectable_differences.json").read_text())
    assert json.loads(json.dumps(data)) == saved, "the committed JSON is not what the records give (rerun the script)"
    assert _block(mdd.BLOCK) == mdd.markdown(data).strip(), \
        "run: python benchmarks/detectable_differences.py --out benchmarks/results/detectable_differences.json " \
        "--docs docs/methodology.md"
    columns = data["columns"]  # what the docs say of it
    assert columns["kl_wiki"]["pairs_apart"] == 5 and columns["acc_avg"]["pairs_apart"] == 0
    assert columns["acc_avg"]["mdd_unpaired"] > 0.1 > columns["top1_wiki"]["mdd_unpaired"]
