"""The docs' measured tables outside ``benchsuite report`` are what their scripts render from the committed
results: the budget sweep (``benchmarks/budget_sweep.py --render``, from ``results/reference``; in
docs/loraprune.md), llama.cpp's speed (``benchmarks/llama_cpp_speed.py --render``, from its JSON; docs/export.md)
the default run's time (``benchmarks/default_run_time.py --render``, from its JSON; docs/results.md) and the
columns' minimal detectable differences (``benchmarks/detectable_differences.py``, from the records;
docs/methodology.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from benchsuite.reporting.blocks import read_block

ROOT = Path(__file__).parent.parent
#: block -> the page it is on
PAGES = {"budget-sweep": "docs/loraprune.md", "llama-cpp-speed": "docs/export.md",
         "default-run-time": "docs/results.md", "detectable-differences": "docs/methodology.md"}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _block(name: str) -> str:
    text = read_block((ROOT / PAGES[name]).read_text(), name)
    assert text is not None, f"{PAGES[name]} has no <!-- {name} --> block"
    return text.strip()


def test_budget_sweep_section_is_rendered_from_the_records():
    sweep = _script("budget_sweep")
    runs = sweep.collect(ROOT / "results" / "reference")
    assert runs, "no budget sweep records in results/reference"
    assert _block(sweep.BLOCK) == sweep.render(runs).strip(), \
        "run: python benchmarks/budget_sweep.py --render --readme docs/loraprune.md"


def test_llama_cpp_table_is_rendered_from_its_json():
    speed = _script("llama_cpp_speed")
    result = json.loads((ROOT / "benchmarks" / "results" / "llama_cpp_speed.json").read_text())
    assert _block(speed.BLOCK) == speed.render(result).strip(), \
        ("run: python benchmarks/llama_cpp_speed.py --render benchmarks/results/llama_cpp_speed.json "
         "--readme docs/export.md")
    assert result["speedup_prompt"] > 1 and result["speedup_generation"] > 1  # a pruned model that is faster


def test_default_run_time_section_is_rendered_from_its_json():
    timing = _script("default_run_time")
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
    mdd = _script("detectable_differences")
    data = mdd.analyse(ROOT / "results" / "reference", "quick", 0.5, mdd.METHODS)
    saved = json.loads((ROOT / "benchmarks" / "results" / "detectable_differences.json").read_text())
    assert json.loads(json.dumps(data)) == saved, "the committed JSON is not what the records give (rerun the script)"
    assert _block(mdd.BLOCK) == mdd.markdown(data).strip(), \
        "run: python benchmarks/detectable_differences.py --out benchmarks/results/detectable_differences.json " \
        "--docs docs/methodology.md"
    columns = data["columns"]  # what the docs say of it
    assert columns["kl_wiki"]["pairs_apart"] == 5 and columns["acc_avg"]["pairs_apart"] == 0
    assert columns["acc_avg"]["mdd_unpaired"] > 0.1 > columns["top1_wiki"]["mdd_unpaired"]
