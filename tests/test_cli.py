"""The command line as a user runs it (through ``benchsuite.cli.main`` in this process): one-line errors
with exit code 2 and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import bench


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A model without the LLaMA layout."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from benchsuite.testing import offline_tokenizer

    tok = offline_tokenizer()
    path = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tok))).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("args, message", [
    (["--methods", "magnitude-l3"], "unknown method 'magnitude-l3'; did you mean magnitude-l2"),
    (["--methods", "random_lora"], "unknown method 'random_lora'; did you mean random+lora?"),
    (["--model", "smolm2-135m"], "did you mean smollm2-135m"),
    (["--model", "llama-7b"], "cannot get huggyllama/llama-7b ('llama-7b') from the Hugging Face hub"),
    (["--ratios", "1.5"], "ratio 1.5 is outside (0, 1)"),
    (["--profile", "papr"], "unknown profile 'papr'; did you mean paper"),
    (["--methods", "wanda-2:4", "--ratios", "0.2"], "fixes the ratio at 0.5"),
    (["--granularity", "2:2"], "0 < N < M"),
    (["--granularity", "unstructred"], "did you mean unstructured"),
    (["--tasks", "piqa,hellaswg"], "hellaswag"),
    (["--limit", "0"], "positive number of examples"),
    (["--ratios", ""], "--ratios is empty"),
    (["--seeds", ""], "--seeds is empty"),
    (["--seeds", "99999999999999999999"], "seed 99999999999999999999 is outside"),
    (["--methods", "loraprune+none"], "can't run with --recovery none"),
    (["--recovery-data", "missing.jsonl", "--profile", "smoke"], "does not exist"),
    (["--device", "tpu"], "--device tpu: benchsuite runs on cpu, cuda[:N] or mps; here you can use auto, cpu"),
    (["--device", "meta"], "--device meta: benchsuite runs on cpu"),
    (["--device", "cuda:7"], "--device cuda:7: torch sees no such device here"),
    (["--results", "/proc/benchsuite-test"], "records can't be written there"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    result = bench("run", "--results", str(tmp_path / "r"), *args)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("benchsuite: error: ") and message in last
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name, content, message", [
    ("binary.txt", bytes(range(256)) * 4, "is not UTF-8 text (byte 128)"),
    ("nul.txt", b"text\x00with a NUL byte", "looks binary"),
    ("numbers.jsonl", b'{"text": "fine"}\n{"text": 5}\n', "numbers.jsonl:2: field 'text' is a int, not a string"),
    ("list.jsonl", b'["a", "b"]\n', "list.jsonl:1: a list, not an object"),
    ("alpaca.jsonl", b'{"instruction": "hi", "output": null}\n', "field 'output' is a NoneType"),
])
@pytest.mark.parametrize("option", ["--corpora", "--recovery-data"])
def test_bad_corpus_files_fail_before_the_model_loads(tmp_path, name, content, message, option):
    (tmp_path / name).write_bytes(content)
    result = bench("run", "--results", str(tmp_path / "r"), "--model", str(tmp_path / "no-model-here"),
                   option, str(tmp_path / name), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("benchsuite: error: " + ("recovery data: " if option == "--recovery-data" else ""))
    assert message in last and name in last


def test_unusable_results_and_model_folders_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("x")
    result = bench("run", "--results", str(tmp_path / "a-file"))
    assert result.returncode == 2 and "a-file is not a directory" in result.stderr.strip().splitlines()[-1]
    for content, message in [("{not json", "can't be read as JSON"), ('["a list"]', "not a transformers model config"),
                             ('{"model_type": "llama", "hidden_size": "wide"}', "can't be loaded")]:
        model = tmp_path / "model"
        model.mkdir(exist_ok=True)
        (model / "config.json").write_text(content)
        result = bench("run", "--model", str(model), "--results", str(tmp_path / "r"), "--profile", "smoke")
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and last.startswith("benchsuite: error: ") and message in last, result.stderr
    result = bench("run", "--model", str(tmp_path / "a-file"), "--results", str(tmp_path / "r"))
    assert result.returncode == 2 and "is a file; give a checkpoint folder" in result.stderr.strip().splitlines()[-1]
    monkeypatch.setenv("BENCHSUITE_CACHE", str(tmp_path / "a-file"))
    result = bench("run", "--results", str(tmp_path / "r"), "--profile", "smoke")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and "the benchsuite cache" in last and "BENCHSUITE_CACHE" in last, result.stderr
    assert not (tmp_path / "r").exists()


def test_llama_7b_error_says_what_works(tmp_path):
    last = bench("run", "--model", "llama-7b", "--results", str(tmp_path)).stderr.strip().splitlines()[-1]
    assert "smollm2-135m" in last and "local directory" in last


def test_unsupported_layout(tmp_path, gpt2_dir):
    result = bench("run", "--model", str(gpt2_dir), "--methods", "random", "--profile", "smoke",
                   "--results", str(tmp_path / "r"), "--tasks", "none")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "model_type 'gpt2': no plugin describes this model family" in last and "llama (llama)" in last
    assert "docs/plugins.md#describing-a-new-family" in last
    assert not (tmp_path / "r").exists()


def smoke(offline: dict) -> list[str]:
    """The options of a smoke run that needs no download (the ``offline`` fixture's fields)."""
    return ["--profile", "smoke", "--tasks", "none", "--corpora", ",".join(offline["corpora"]),
            "--recovery-data", offline["recovery_data"], "--calibration-data", offline["calibration_data"]]


def test_run_report_and_reload(tmp_path, tiny_model_dir, offline):
    results = tmp_path / "results"
    result = bench("run", "--model", str(tiny_model_dir), "--methods", "magnitude-l2", "--ratios", "0.5",
                   "--results", str(results), "--save-models", *smoke(offline))
    assert result.returncode == 0, result.stderr
    assert "| dense" in result.stdout and "magnitude-l2" in result.stdout
    assert list(results.rglob("table.md"))
    rows = json.loads(bench("report", "--results", str(results), "--format", "json").stdout)
    pruned = next(r for r in rows if r["method"] == "magnitude-l2")
    csv = bench("report", "--results", str(results), "--format", "csv").stdout
    assert csv.splitlines()[0].startswith("model,profile,method")
    # the saved pruned model reloads with the recorded parameter count
    from benchsuite.models.checkpoint import load_model_dir

    assert sum(p.numel() for p in load_model_dir(pruned["model_path"]).parameters()) == pruned["metrics"]["params"]


def test_listing_commands():
    assert "llama-7b" in bench("models").stdout
    methods = json.loads(bench("methods", "--format", "json").stdout)
    assert {"magnitude-l1", "magnitude-l2", "random"} <= set(methods["methods"])
    help_text = bench("run", "--help").stdout
    for option in ("--methods", "--model", "--ratios", "--seeds", "--profile", "--results", "--rerun"):
        assert option in help_text


def test_report_filters_and_views(tmp_path, tiny_model_dir, offline):
    results = tmp_path / "results"
    assert bench("run", "--model", str(tiny_model_dir), "--methods", "random,magnitude-2:4", "--ratios", "0.5",
                 "--results", str(results), *smoke(offline)).returncode == 0
    ppl = bench("report", "--results", str(results), "--granularity", "2:4", "--view", "ppl").stdout
    assert "magnitude-2:4" in ppl and "| random" not in ppl and "| dense" in ppl and "PIQA" not in ppl
    only_random = bench("report", "--results", str(results), "--methods", "random", "--ratios", "0.5").stdout
    assert "| random" in only_random and "magnitude-2:4" not in only_random


def test_own_corpus_files_and_unknown_corpus(tmp_path, tiny_model_dir, offline):
    text = tmp_path / "mytext.txt"
    text.write_text("\n\n".join(f"Document {i}: the quick brown fox jumps over the lazy dog. " * 20
                                for i in range(30)))
    results = tmp_path / "results"
    result = bench("run", "--model", str(tiny_model_dir), "--methods", "random", "--ratios", "0.5", "--results",
                   str(results), *smoke(offline | {"corpora": [*offline["corpora"], str(text)]}))
    assert result.returncode == 0, result.stderr
    assert "PPL mytext" in result.stdout and "PPL text" in result.stdout and "PPL c4" not in result.stdout
    rows = json.loads(bench("report", "--results", str(results), "--format", "json").stdout)
    assert all("ppl_mytext" in r["metrics"] for r in rows) and rows[0]["profile"].startswith("smoke-text-mytext-")
    bad = bench("run", "--model", str(tiny_model_dir), "--methods", "random", "--profile", "smoke",
                "--results", str(tmp_path / "r2"), "--tasks", "none", "--corpora", "wikk")
    assert bad.returncode == 2 and "wiki" in bad.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "r2").exists()


def test_report_update_rewrites_marked_tables(tmp_path, tiny_model_dir, offline):
    results = tmp_path / "results"
    assert bench("run", "--model", str(tiny_model_dir), "--methods", "random,magnitude-l2+lora", "--ratios", "0.3",
                 "--results", str(results), *smoke(offline)).returncode == 0
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- benchsuite report --methods random --view ppl -->\nstale\n<!-- end report -->\nend\n")
    check = bench("report", "--results", str(results), "--update", str(doc), "--check")
    assert check.returncode == 1 and "stale" in doc.read_text()
    assert bench("report", "--results", str(results), "--update", str(doc)).returncode == 0
    text = doc.read_text()
    assert "stale" not in text and "| random" in text and "magnitude-l2" not in text and text.endswith("end\n")
    assert bench("report", "--results", str(results), "--update", str(doc), "--check").returncode == 0
    record = next(results.rglob("random/ratio-*.json"))
    data = json.loads(record.read_text())
    data["metrics"]["ppl_text"] += 1.0
    record.write_text(json.dumps(data))
    assert bench("report", "--results", str(results), "--update", str(doc), "--check").returncode == 1
    missing = bench("report", "--results", str(results), "--update", str(tmp_path / "none.md"))
    assert missing.returncode == 2 and "no such file" in missing.stderr.splitlines()[-1]
    doc.write_text("<!-- benchsuite report --colour red -->\n<!-- end report -->\n")
    bad = bench("report", "--results", str(results), "--update", str(doc))
    assert bad.returncode == 2 and "does not take" in bad.stderr.splitlines()[-1]


def test_readme_and_docs_tables_are_the_committed_records():
    """Every table in the README and the docs is rendered from the reference records
    (`benchsuite report --results results/reference --update README.md docs/results.md ...`)."""
    from pathlib import Path

    from benchsuite.cli import update_tables

    root = Path(__file__).resolve().parent.parent
    total = 0
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        if "<!-- benchsuite report" not in text:
            continue
        new, count = update_tables(doc, root / "results" / "reference")
        total += count
        fix = f"run `benchsuite report --results results/reference --update {doc.relative_to(root)}`"
        assert new == text, fix
    assert total >= 8


def test_a_failed_run_makes_the_exit_status_1_after_the_others_finish(tmp_path, tiny_model_dir, offline, monkeypatch):
    from benchsuite.pruning import structure

    original = structure.remove_units

    def explode(model, groups, masks):
        if explode.armed:
            explode.armed = False
            raise RuntimeError("boom")
        return original(model, groups, masks)

    monkeypatch.setattr("benchsuite_plugins.granularities.remove_units", explode)
    results = tmp_path / "results"
    args = ["run", "--model", str(tiny_model_dir), "--methods", "magnitude-l2,random", "--ratios", "0.5",
            "--results", str(results), *smoke(offline)]
    explode.armed = True
    result = bench(*args)
    assert result.returncode == 1, result.stderr
    assert "1 run(s) of the matrix failed (magnitude-l2 ratio 0.5 seed 0)" in result.stderr.strip().splitlines()[-1]
    assert "| random " in result.stdout  # the table, with the runs that finished
    assert len(list(results.rglob("table.md"))) == 1
    explode.armed = True  # a sweep that expects failures keeps exit status 0
    result = bench(*args, "--allow-failures")
    assert result.returncode == 0, result.stderr
    assert "1 run(s) of the matrix failed" in result.stderr and "exit status 1" not in result.stderr
    assert bench(*args).returncode == 0  # retried, and it passes now


def test_a_full_results_disk_is_one_line_and_keeps_what_finished(tmp_path, tiny_model_dir, offline, monkeypatch):
    """Fault injection: the second record's write finds no space left (and a save of a model, too). One line names
    the folder and what was kept, the exit status is 1, finished records are intact and nothing partial is left;
    the same command then goes on where it stopped."""
    import errno
    import os

    from benchsuite.running import runner
    from benchsuite.util import atomic

    results = tmp_path / "results"
    args = ["run", "--model", str(tiny_model_dir), "--methods", "magnitude-l2,random", "--ratios", "0.5",
            "--results", str(results), *smoke(offline)]
    original = atomic.os.fsync
    calls = []

    def full_disk(fd):  # the first pruned run's record is written, and its flush to disk finds no space
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".ratio-0.5_seed-0." in name and not calls:
            calls.append(name)
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(fd)

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    result = bench(*args)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1, result.stderr
    assert last.startswith(f"benchsuite: error: --results {results}: can't write ratio-0.5_seed-0.")
    assert "(No space left on device); the 1 finished records there are intact" in last
    records = sorted(p.name for p in results.rglob("*.json"))
    assert len(records) == 1 and records[0].startswith("dense.")
    monkeypatch.setattr(atomic.os, "fsync", original)
    resumed = bench(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "done before, kept" in resumed.stderr and len(list(results.rglob("*.json"))) == 3
    assert not [p for p in results.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]

    def no_space(path):
        return runner.shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000)

    monkeypatch.setattr(runner.shutil, "disk_usage", no_space)  # checked before any work
    result = bench(*args[:-len(smoke(offline))], *smoke(offline), "--rerun", "--results", str(tmp_path / "r2"))
    assert result.returncode == 2 and "MB free, and the 3 runs to do write about" in result.stderr
    assert not (tmp_path / "r2").exists() or not list((tmp_path / "r2").rglob("*.json"))


def test_report_check_without_a_file_is_an_error(tmp_path):
    result = bench("report", "--results", str(tmp_path), "--check")
    assert result.returncode == 2 and "--check compares a file's tables with the records" in result.stderr


def test_the_default_runs_table_fits_120_columns_and_the_full_one_is_in_the_file(tmp_path, tiny_model_dir, offline):
    """The printed table is the compact view: the default run's reference records fit a 120-column terminal."""
    root = Path(__file__).parent.parent
    compact = bench("report", "--results", str(root / "results" / "reference"), "--model", "smollm2-135m",
                    "--profile", "quick", "--seeds", "0",
                    "--granularity", "structured", "--methods", "loraprune,llm-pruner,magnitude-l2,random",
                    "--allocation", "uniform", "--recovery", "lora,none", "--view", "compact").stdout
    assert "PPL wiki" in compact and "speedup" in compact and "latency ms" not in compact
    assert max(len(line) for line in compact.splitlines()) <= 120
    results = tmp_path / "results"
    run = bench("run", "--model", str(tiny_model_dir), "--methods", "random", "--ratios", "0.5", "--results",
                str(results), *smoke(offline))
    assert run.returncode == 0 and "latency ms" not in run.stdout and "params %" in run.stdout
    assert "latency ms" in next(results.rglob("table.md")).read_text()  # the file: every column
    full = bench("run", "--model", str(tiny_model_dir), "--methods", "random", "--ratios", "0.5", "--results",
                 str(results), *smoke(offline), "--view", "full")
    assert "latency ms" in full.stdout


def test_compare_takes_reports_filters():
    root = Path(__file__).parent.parent / "results" / "reference"
    args = ["compare", "--results", str(root), "--model", "smollm2-135m", "--baseline", "llm-pruner", "--methods",
            "loraprune", "--profile", "quick", "--metrics", "ppl_wiki"]
    every = bench(*args)
    one = bench(*args, "--ratios", "0.5", "--seeds", "0", "--granularity", "structured", "--recovery", "lora")
    assert every.returncode == one.returncode == 0, one.stderr
    assert one.stdout.startswith("1 paired run(s)") and not every.stdout.startswith("1 paired run(s)")


def test_a_method_with_two_names_has_one_and_the_old_one_says_it(capsys):
    from benchsuite.host import get_registry
    from benchsuite.running.plan import plan_methods

    assert "llm-pruner-notune" not in get_registry().methods
    plan = plan_methods(["llm-pruner-notune"], get_registry(), ratios=[0.5])[0]
    assert plan.key == "llm-pruner+none" and plan.method.recovery is None
    assert "method 'llm-pruner-notune' is now 'llm-pruner+none'" in capsys.readouterr().err


IDEA = '''
"""A criterion tried from one file: |w| ** 3 per element."""
from benchsuite import Criterion, Method, base_linear, hookimpl

BENCHSUITE_API = "2.1"


class Cubed(Criterion):
    name = "cubed"
    description = "|w| ** 3"

    def element_scores(self, key, module):
        return base_linear(module).weight.detach().float().abs() ** 3


@hookimpl
def benchsuite_register_criteria(register):
    register(Cubed)


@hookimpl
def benchsuite_register_methods(register):
    register(Method("cubed", "cubed"))
'''


def test_a_criterion_in_one_file_runs_with_plugin_and_records_name_the_file(tmp_path, tiny_model_dir, offline,
                                                                            monkeypatch):
    import hashlib

    idea = tmp_path / "my_idea.py"
    idea.write_text(IDEA)
    results = tmp_path / "results"
    args = ["run", "--model", str(tiny_model_dir), "--ratios", "0.5", "--results", str(results), *smoke(offline)]
    result = bench(*args, "--plugin", str(idea), "--methods", "cubed,magnitude-l2")
    assert result.returncode == 0, result.stderr
    cubed = json.loads(next((results).rglob("cubed/ratio-0.5_seed-0.*.json")).read_text())
    assert cubed["status"] == "ok" and cubed["criterion"]["name"] == "cubed"
    assert cubed["config"]["plugin_files"] == {"my_idea": {"file": str(idea.resolve()),
                                                            "sha256": hashlib.sha256(idea.read_bytes()).hexdigest()}}
    magnitude = json.loads(next(results.rglob("magnitude-l2/ratio-0.5_seed-0.*.json")).read_text())
    assert "plugin_files" not in magnitude["config"]  # a built-in method's record does not depend on the file
    idea.write_text(IDEA.replace("** 3", "** 4"))  # another idea in the same file: not taken for the finished run
    again = bench(*args, "--plugin", str(idea), "--methods", "cubed")
    assert again.returncode == 0, again.stderr
    digests = {json.loads(p.read_text())["config"]["plugin_files"]["my_idea"]["sha256"]
               for p in results.rglob("cubed/ratio-0.5_seed-0.*.json")}
    assert len(digests) == 2
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    monkeypatch.setenv("BENCHSUITE_STRICT_PLUGINS", "0")
    lenient = bench(*args, "--plugin", str(broken), "--methods", "magnitude-l2")
    assert lenient.returncode == 0 and "plugin 'broken' skipped: ModuleNotFoundError" in lenient.stderr
    monkeypatch.setenv("BENCHSUITE_STRICT_PLUGINS", "1")
    strict = bench(*args, "--plugin", str(broken), "--methods", "magnitude-l2")
    assert strict.returncode == 2 and "plugin 'broken'" in strict.stderr and "failed to load" in strict.stderr
    assert bench(*args, "--plugin", str(tmp_path / "missing.py")).returncode == 2


def test_quiet_and_verbose_work_after_every_command(tmp_path):
    root = Path(__file__).parent.parent
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- benchsuite report --methods random --view ppl -->\n<!-- end report -->\n")
    loud = bench("report", "--results", str(root / "results" / "reference"), "--update", str(doc))
    assert loud.returncode == 0 and "tables rewritten" in loud.stderr
    doc.write_text("<!-- benchsuite report --methods random --view ppl -->\n<!-- end report -->\n")
    quiet = bench("report", "--results", str(root / "results" / "reference"), "--update", str(doc), "-q")
    assert quiet.returncode == 0 and quiet.stderr == "" and "| random" in doc.read_text()
    assert bench("plugins", "-q").stdout.strip() and bench("models", "-v").returncode == 0
    error = bench("report", "--results", str(tmp_path), "--check", "-q")
    assert error.returncode == 2 and error.stderr.startswith("benchsuite: error: --check")
