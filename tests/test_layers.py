"""The package's layers: the import contracts hold and can fail, every layer says what it may import, and the
import paths of before the layers still work."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LAYERS = next(c for c in PYPROJECT["tool"]["importlinter"]["contracts"] if c["id"] == "layers")["layers"]


def lint_imports(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; "
                           "sys.exit(c())", str(config), "--no-cache"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def _config(layers: list[str]) -> str:
    quoted = ", ".join(f'"{layer}"' for layer in layers)
    return ('[tool.importlinter]\nroot_packages = ["benchsuite", "benchsuite_plugins"]\n\n'
            '[[tool.importlinter.contracts]]\nid = "layers"\nname = "layers"\ntype = "layers"\n'
            f'containers = ["benchsuite"]\nlayers = [{quoted}]\n')


def test_the_import_contracts_hold():
    result = lint_imports(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("swap", [("running", "reporting"), ("host | pruning", "api"), ("data", "host | pruning")])
def test_a_wrong_layer_order_breaks_the_contract(tmp_path, swap):
    """The contract is not vacuous: with two layers swapped, real imports break it."""
    layers = list(LAYERS)
    i, j = layers.index(swap[0]), layers.index(swap[1])
    layers[i], layers[j] = layers[j], layers[i]
    config = tmp_path / "pyproject.toml"
    config.write_text(_config(layers))
    result = lint_imports(config)
    assert result.returncode == 1 and "BROKEN" in result.stdout, result.stdout + result.stderr


def test_every_subpackage_says_what_it_holds_and_may_import():
    packages = [p.parent for p in (ROOT / "benchsuite").glob("*/__init__.py")]
    assert {p.name for p in packages} == {"api", "util", "pruning", "data", "evaluation", "models", "running",
                                          "reporting"}
    named = {name.strip() for layer in LAYERS for name in layer.split("|")}
    for package in packages:
        assert package.name in named, f"{package.name} is in no layer of the contract"
        doc = importlib.import_module(f"benchsuite.{package.name}").__doc__ or ""
        assert re.search(r"May import: ", doc), f"benchsuite.{package.name}'s docstring doesn't say what it may import"


def test_the_public_paths_of_before_still_work():
    import benchsuite.api as api
    import benchsuite.pruning.structure
    import benchsuite.structure
    from benchsuite.api import ConfigError, Criterion, Method, PruneContext, decoder_layers
    from benchsuite.models import load_model_dir
    from benchsuite.runner import Runner, RunRequest
    from benchsuite.testing import assert_conforms, tiny_llama

    assert benchsuite.structure is benchsuite.pruning.structure  # the same module: monkeypatching still works
    assert benchsuite.structure.decoder_layers is decoder_layers is benchsuite.decoder_layers
    assert api.Criterion is Criterion is benchsuite.Criterion and Method is benchsuite.Method
    assert ConfigError is benchsuite.ConfigError and PruneContext is benchsuite.PruneContext
    assert callable(load_model_dir) and callable(assert_conforms) and callable(tiny_llama)
    assert Runner.__module__ == "benchsuite.running.runner" and RunRequest.__module__ == "benchsuite.running.plan"
    for name in benchsuite.__all__:
        assert getattr(benchsuite, name) is not None


def test_old_flat_paths_import_the_new_modules_and_say_where_they_went():
    import benchsuite.running.pipeline

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sys.modules.pop("benchsuite.pipeline", None)
        old = importlib.import_module("benchsuite.pipeline")
    assert old is benchsuite.running.pipeline
    assert any("benchsuite.running.pipeline" in str(w.message) and w.category is DeprecationWarning for w in caught)
    # a module split in two finds each name in its part
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from benchsuite.evaluate import count_params, latency, perplexity
        from benchsuite.zeroshot import TASKS, evaluate_zeroshot
    assert {f.__module__ for f in (count_params, latency, perplexity)} == {
        "benchsuite.evaluation.size", "benchsuite.evaluation.latency", "benchsuite.evaluation.perplexity"}
    assert "boolq" in TASKS and evaluate_zeroshot.__module__ == "benchsuite.evaluation.zeroshot"
    assert importlib.import_module("benchsuite.evaluation.zeroshot").__spec__.name == "benchsuite.evaluation.zeroshot"
