"""The plugin host: entry points from installed distributions, isolation of broken plugins."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchsuite import Criterion, hookimpl, hookspecs
from benchsuite.host import KINDS, PluginError, load_registry

BUILTIN = {"granularities", "schedules", "baselines", "models"}


def make_distribution(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """Write an installed distribution (dist-info with entry points, plus modules) under ``root``."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[benchsuite]\n{lines}\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)
    return root


GOOD_PLUGIN = '''
import torch
from benchsuite import Criterion, Method, hookimpl

class Ones(Criterion):
    name = "ones"
    def element_scores(self, key, module):
        return torch.ones_like(module.weight)

@hookimpl
def benchsuite_register_criteria(register):
    register(Ones)

@hookimpl
def benchsuite_register_methods(register):
    register(Method("ones-structured", "ones"))
'''


TYPO_PLUGIN = """
from benchsuite import hookimpl

@hookimpl
def benchsuite_register_critera(register):
    pass
"""


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    root = make_distribution(tmp_path, "bench-extra", {
        "extra": "extra_plugin", "broken": "no_such_module_xyz", "typo": "typo_plugin",
    }, {"extra_plugin": GOOD_PLUGIN, "typo_plugin": TYPO_PLUGIN})
    monkeypatch.syspath_prepend(str(root))
    return root


def test_builtins_load_through_entry_points():
    registry = load_registry()
    loaded = {p.name: p for p in registry.plugins}
    assert BUILTIN <= set(loaded)
    assert all(loaded[n].distribution == "benchsuite" and loaded[n].error is None for n in BUILTIN)
    assert {"magnitude", "random"} <= set(registry.criteria)
    assert {"magnitude-l1", "magnitude-l2", "random"} <= set(registry.methods)
    assert "structured" in registry.granularities and "one-shot" in registry.schedules
    assert "smollm2-135m" in registry.models


def test_third_party_plugin_loads_and_broken_ones_are_isolated(third_party):
    registry = load_registry(strict=False)
    loaded = {p.name: p for p in registry.plugins}
    assert loaded["extra"].error is None and loaded["extra"].distribution == "bench-extra"
    assert loaded["extra"].registers == {"criteria": ["ones"], "methods": ["ones-structured"]}
    assert "ModuleNotFoundError" in loaded["broken"].error
    assert "benchsuite_register_critera" in loaded["typo"].error  # misspelt hook: an error, not silence
    assert BUILTIN <= {p.name for p in registry.plugins if not p.error}


def test_strict_mode_makes_failures_fatal(third_party):
    with pytest.raises(PluginError, match="broken"):
        load_registry(strict=True)


def test_plugin_raising_while_registering_registers_nothing():
    class Bad:
        @hookimpl
        def benchsuite_register_criteria(self, register):
            register(Criterion)  # no name -> rejected

    class Twice:
        @hookimpl
        def benchsuite_register_methods(self, register):
            from benchsuite import Method
            register(Method("random", "random"))

    registry = load_registry(extra_plugins=[("bad", Bad()), ("twice", Twice())], strict=False)
    info = {p.name: p for p in registry.plugins}
    assert info["bad"].error and info["bad"].registers == {}
    assert "already registered by plugin 'baselines'" in info["twice"].error


def test_every_hook_is_documented_and_known():
    specs = [name for name in dir(hookspecs) if name.startswith("benchsuite_")]
    assert sorted(specs) == sorted(KINDS)
    readme = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    for name in specs:
        assert getattr(hookspecs, name).__doc__.strip()
        assert name in readme, f"{name} missing from docs/plugins.md"


def test_plugins_command_lists_failures(third_party):
    env_path = f"{third_party}"
    out = subprocess.run([sys.executable, "-m", "benchsuite.cli", "plugins", "--json"], capture_output=True,
                         text=True, env=_env(PYTHONPATH=env_path, BENCHSUITE_STRICT_PLUGINS="0"), check=True).stdout
    listed = {p["name"]: p for p in json.loads(out)}
    assert listed["broken"]["error"] and listed["extra"]["registers"]["criteria"] == ["ones"]
    text = subprocess.run([sys.executable, "-m", "benchsuite.cli", "plugins"], capture_output=True, text=True,
                          env=_env(PYTHONPATH=env_path, BENCHSUITE_STRICT_PLUGINS="0"), check=True).stdout
    assert "FAILED, skipped" in text and "baselines" in text


def _env(**extra):
    import os

    env = dict(os.environ)
    env.update(extra)
    return env


def test_example_package_installs_with_pip_and_is_found(tmp_path):
    """The plugin guide's example, pip-installed for real, is listed and its method runs in a plan."""
    example = Path(__file__).parent.parent / "examples" / "benchsuite-squared"
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(example)], check=True, capture_output=True)
    code = ("from benchsuite.host import load_registry; from benchsuite.runner import plan_methods; "
            "r = load_registry(strict=True); p = plan_methods(['squared-weight'], r)[0]; "
            "print(p.criterion.name, [x.distribution for x in r.plugins if x.name == 'squared'][0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=_env(PYTHONPATH=str(target))).stdout.split()
    assert out == ["squared-weight", "benchsuite-squared"]


BAD_METHOD_PLUGIN = '''
from benchsuite import Method, hookimpl

@hookimpl
def benchsuite_register_methods(register):
    register(Method("hex-prune", "magnitude", granularity="hexagonal"))
    register(Method("nm-bad", "magnitude", granularity="nm", granularity_params={"n": 4, "m": 2}))
    register(Method("fine-prune", "magnitude"))
'''


def test_a_method_naming_an_unknown_granularity_is_set_aside(tmp_path):
    root = make_distribution(tmp_path, "bench-badmethod", {"badmethod": "bad_method_plugin"},
                             {"bad_method_plugin": BAD_METHOD_PLUGIN})
    env = _env(PYTHONPATH=str(root), BENCHSUITE_STRICT_PLUGINS="0")
    # `methods` used to crash with a KeyError
    result = subprocess.run([sys.executable, "-m", "benchsuite", "methods"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "fine-prune" in result.stdout and "hex-prune" not in result.stdout
    assert "method 'hex-prune' skipped: unknown granularity 'hexagonal'" in result.stderr
    assert "method 'nm-bad' skipped" in result.stderr
    run = subprocess.run([sys.executable, "-m", "benchsuite", "run", "--methods", "hex-prune", "--results",
                          str(tmp_path / "r")], capture_output=True, text=True, env=env)
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode == 2 and "method 'hex-prune' can't run: unknown granularity 'hexagonal'" in last
    assert "plugin 'badmethod'" in last
    strict = subprocess.run([sys.executable, "-m", "benchsuite", "methods"], capture_output=True, text=True,
                            env=env | {"BENCHSUITE_STRICT_PLUGINS": "1"})
    assert strict.returncode == 2 and "hex-prune" in strict.stderr
