"""The plugin host: entry points from installed distributions, isolation of broken plugins."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchsuite import Criterion, hookimpl
from benchsuite.host import KINDS, STRICT_ENV, PluginError, load_registry, reset_registry
from tests.conftest import bench

BUILTIN = {"granularities", "schedules", "baselines", "models"}


def make_distribution(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """Write an installed distribution (dist-info with entry points, plus modules) under ``root``."""
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"  # the folder's name escapes '-' (as a wheel's does)
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
    # another plugin's method named like a built-in one coexists with it: the bare name means the built-in
    assert info["twice"].error is None and registry.owners["methods"]["random"] == ["benchsuite:random", "twice:random"]
    assert registry.methods["random"] is registry.qualified["methods"]["benchsuite:random"]


@pytest.fixture
def cli_with(monkeypatch):
    """Run the command line in this process with extra distributions on sys.path (and the process-wide
    registry loaded again with them, and again without them afterwards)."""
    def use(root: Path, strict: bool = False):
        monkeypatch.syspath_prepend(str(root))
        monkeypatch.setenv(STRICT_ENV, "1" if strict else "0")
        reset_registry()  # the command loads the plugins again, as a new process would
        return bench

    yield use
    monkeypatch.undo()
    reset_registry()


def test_plugins_command_lists_failures(third_party, cli_with):
    bench = cli_with(third_party)
    listed = {p["name"]: p for p in json.loads(bench("plugins", "--format", "json").stdout)}
    assert listed["broken"]["error"] and listed["extra"]["registers"]["criteria"] == ["ones"]
    text = bench("plugins").stdout
    assert "FAILED, skipped" in text and "baselines" in text


def test_example_package_installs_with_pip_and_is_found(tmp_path, monkeypatch):
    """The plugin guide's example, pip-installed for real, is listed and its method runs in a plan."""
    example = Path(__file__).parent.parent / "examples" / "benchsuite-squared"
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(example)], check=True, capture_output=True)
    monkeypatch.syspath_prepend(str(target))
    from benchsuite.running.runner import plan_methods

    registry = load_registry(strict=True)
    assert plan_methods(["squared-weight"], registry)[0].criterion.name == "squared-weight"
    assert [(p.distribution, p.api) for p in registry.plugins if p.name == "squared"] == [("benchsuite-squared", "2.0")]


BAD_METHOD_PLUGIN = '''
from benchsuite import Method, hookimpl

@hookimpl
def benchsuite_register_methods(register):
    register(Method("hex-prune", "magnitude", granularity="hexagonal"))
    register(Method("nm-bad", "magnitude", granularity="nm", granularity_params={"n": 4, "m": 2}))
    register(Method("fine-prune", "magnitude"))
'''


def test_a_method_naming_an_unknown_granularity_is_set_aside(tmp_path, cli_with):
    root = make_distribution(tmp_path, "bench-badmethod", {"badmethod": "bad_method_plugin"},
                             {"bad_method_plugin": BAD_METHOD_PLUGIN})
    bench = cli_with(root)
    result = bench("methods")  # `methods` used to crash with a KeyError
    assert result.returncode == 0, result.stderr
    assert "fine-prune" in result.stdout and "hex-prune" not in result.stdout
    assert "method 'hex-prune' skipped: unknown granularity 'hexagonal'" in result.stderr
    assert "method 'nm-bad' skipped" in result.stderr
    run = bench("run", "--methods", "hex-prune", "--results", tmp_path / "r")
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode == 2 and "method 'hex-prune' can't run: unknown granularity 'hexagonal'" in last
    assert "plugin 'badmethod'" in last
    strict = cli_with(root, strict=True)("methods")
    assert strict.returncode == 2 and "hex-prune" in strict.stderr


ALL_HOOKS_PLUGIN = '''
"""A third-party plugin implementing every hook (tests/test_plugins.py installs it with pip)."""
from typing import Literal

import torch

from benchsuite import (Allocation, Architecture, Corpus, Criterion, Method, Metric, MetricResult, ModelSpec,
                        Recovery, Schedule, checked_scores, hookimpl)
from benchsuite_plugins.granularities import Structured

BENCHSUITE_API = "2.4"


class Shifted(Criterion):
    name = "shifted"
    needs = frozenset({"calibration"})
    shift: float = 1.0
    power: Literal[1, 2] = 1

    def setup(self):
        self._seen = 0

    def prepare(self, model, ctx):
        self._seen = sum(len(b) for b in ctx.calibration_batches())

    def element_scores(self, key, module):
        from benchsuite import base_linear
        return base_linear(module).weight.detach().float().abs() ** self.power + self.shift

    def stats(self):
        return {"calibration_samples": self._seen}


class MlpOnly(Structured):
    name = "mlp-only"
    attention: Literal["heads", "kv-groups", "none"] = "none"


class Twice(Schedule):
    """Prune half the target, then the rest: scored twice."""
    name = "twice"

    def run(self, model, criterion, granularity, ratio, layers, ctx):
        from benchsuite import PruneOutcome
        criterion.prepare(model, ctx)
        groups = granularity.units(model, layers)
        masks = granularity.select(groups, checked_scores(criterion, granularity, model, groups), ratio / 2)
        granularity.apply_masks(model, groups, masks)
        masks = granularity.select(groups, checked_scores(criterion, granularity, model, groups), ratio, masks)
        criterion.release()
        return PruneOutcome(granularity.finalize(model, groups, masks), groups, masks, {"passes": 2})


@hookimpl
def benchsuite_register_criteria(register):
    register(Shifted)


@hookimpl
def benchsuite_register_granularities(register):
    register(MlpOnly)


@hookimpl
def benchsuite_register_schedules(register):
    register(Twice)


@hookimpl
def benchsuite_register_methods(register):
    register(Method("shifted-twice", "shifted", granularity="mlp-only", schedule="twice",
                    criterion_params={"shift": 0.5}, layers="all"))


@hookimpl
def benchsuite_register_models(register):
    register(ModelSpec("tiny-local", "/nonexistent/tiny", "a local folder", aliases=("tiny",)))


class Zeros(Metric):
    name = "zeros"
    phase = "efficiency"

    def measure(self, model, ctx):
        return MetricResult({"zeros": sum(int((p == 0).sum()) for p in model.parameters())})


class Numbers(Corpus):
    name = "numbers"

    def documents(self):
        return [f"document {i}" for i in range(50)]


@hookimpl
def benchsuite_register_metrics(register):
    register(Zeros)


@hookimpl
def benchsuite_register_corpora(register):
    register(Numbers())


@hookimpl
def benchsuite_register_architectures(register):
    register(Architecture("helium-local", ("helium",), "Helium: the Llama layout", config_class="HeliumConfig",
                          model_class="HeliumForCausalLM"))


class FirstLight(Allocation):
    name = "first-light"

    def layer_ratios(self, layers, ratio, sizes, scores):
        raw = {layer: ratio * (0.5 if i == 0 else 1.0) for i, layer in enumerate(layers)}
        mean = sum(raw[l] * sizes[l] for l in layers) / sum(sizes[l] for l in layers)
        return {layer: r - mean + ratio for layer, r in raw.items()}


@hookimpl
def benchsuite_register_allocations(register):
    register(FirstLight)


class SlowLoRA(Recovery):
    name = "slow-lora"

    def training(self, own):
        return dict(own or {}) | {"lr": 1e-5}


@hookimpl
def benchsuite_register_recoveries(register):
    register(SlowLoRA)
'''


def pip_install(tmp_path: Path, name: str, modules: dict[str, str]) -> Path:
    """Build and pip-install a distribution whose modules are entry points of the ``benchsuite`` group."""
    src = tmp_path / f"{name}-src"
    src.mkdir()
    for module, code in modules.items():
        (src / f"{module}.py").write_text(code)
    eps = "\n".join(f'{m.replace("_", "-")} = "{m}"' for m in modules)
    (src / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{name}"\nversion = "0.3.0"\n\n[project.entry-points.benchsuite]\n{eps}\n\n'
        f'[tool.setuptools]\npy-modules = {json.dumps(list(modules))}\n')
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(src)], check=True, capture_output=True)
    return target


def test_every_hook_registers_through_an_installed_distribution(tmp_path, monkeypatch):
    import torch

    from benchsuite import PruneContext
    from benchsuite.running.runner import plan_methods
    from tests.conftest import tiny_llama

    monkeypatch.syspath_prepend(str(pip_install(tmp_path, "bench-allhooks", {"allhooks_plugin": ALL_HOOKS_PLUGIN})))
    registry = load_registry(strict=True)
    info = next(p for p in registry.plugins if p.name == "allhooks-plugin")
    assert info.distribution == "bench-allhooks" and info.version == "0.3.0" and info.api == "2.4" and not info.warnings
    import allhooks_plugin

    implemented = {n for n in vars(allhooks_plugin) if n.startswith("benchsuite_register_")}
    assert implemented == set(KINDS), f"hooks without an installed-distribution test: {set(KINDS) - implemented}"
    assert {KINDS[h][0]: sorted(v) for h in KINDS for v in [info.registers.get(KINDS[h][0], [])]} == {
        "criteria": ["shifted"], "granularities": ["mlp-only"], "schedules": ["twice"],
        "methods": ["shifted-twice"], "models": ["tiny-local"], "metrics": ["zeros"], "corpora": ["numbers"],
        "architectures": ["helium-local"], "allocations": ["first-light"], "recoveries": ["slow-lora"]}
    from benchsuite.api.architecture import architecture_of

    assert architecture_of({"model_type": "helium"}).name == "helium-local"
    assert registry.lookup("models", "tiny").name == "tiny-local"
    plan = plan_methods(["shifted-twice"], registry, ratios=[0.5])[0]
    criterion, granularity, schedule = plan.build()
    assert criterion.params() == {"shift": 0.5, "power": 1}
    assert granularity.params() == {"attention": "none", "mlp": True}
    model = tiny_llama(6, 2)
    ctx = PruneContext(seed=0, device=torch.device("cpu"), profile={},
                       calibration_batches=lambda: iter([torch.zeros(3, 8, dtype=torch.long)]))
    outcome = schedule.run(model, criterion, granularity, 0.5, list(range(4)), ctx)
    assert outcome.log == {"passes": 2} and criterion.stats() == {"calibration_samples": 3}
    assert [g.kind for g in outcome.groups] == ["mlp"] * 4
    assert all(int((~m).sum()) == 64 for m in outcome.masks)  # half of 128 channels in every layer


API1_PLUGIN = '''
import torch
from benchsuite import Criterion, Method, hookimpl
from benchsuite.pruning.structure import base_linear


class OldStyle(Criterion):
    name = "old-style"
    def __init__(self, p: int = 2, reduction: str = "sum"):
        if p not in (1, 2):
            raise ValueError("p must be 1 or 2")
        self.p = p
        self.reduction = reduction
        self.calls = 0

    def element_scores(self, key, module):
        self.calls += 1
        return base_linear(module).weight.detach().float().abs() ** self.p


@hookimpl
def benchsuite_register_criteria(register):
    register(OldStyle)


@hookimpl
def benchsuite_register_methods(register):
    register(Method("old-style", "old-style", criterion_params={"p": 1}))
'''


def test_api1_plugins_keep_working_with_a_deprecation_warning(tmp_path, monkeypatch):
    from benchsuite import ConfigError
    from benchsuite.running.runner import plan_methods

    root = make_distribution(tmp_path, "bench-old", {"old": "old_plugin"}, {"old_plugin": API1_PLUGIN})
    monkeypatch.syspath_prepend(str(root))
    registry = load_registry(strict=True)  # deprecated is not broken
    info = next(p for p in registry.plugins if p.name == "old")
    assert info.error is None and info.registers == {"criteria": ["old-style"], "methods": ["old-style"]}
    assert info.api == "1" and any("declares no BENCHSUITE_API" in w for w in info.warnings)
    assert any("criterion 'old-style'" in w and "__init__" in w and "setup()" in w for w in info.warnings)
    criterion = plan_methods(["old-style"], registry)[0].build()[0]
    assert criterion.params() == {"p": 1, "reduction": "sum", "calls": 0}  # API 1: public attributes, as before
    with pytest.raises(ConfigError, match="has no parameter 'q'; it accepts: p, reduction"):
        registry.criteria["old-style"].create({"q": 1})


@pytest.mark.parametrize("declared, message", [
    ('"3.0"', "targets plugin API 3.0, but this benchsuite provides 2.4: upgrade benchsuite"),
    ('"2.7"', "targets plugin API 2.7, but this benchsuite provides 2.4"),
    ('"two"', "is not a version like"),
])
def test_a_plugin_for_another_api_is_refused_with_what_to_do(tmp_path, monkeypatch, declared, message):
    code = f"from benchsuite import hookimpl\nBENCHSUITE_API = {declared}\n"
    module = f"future_plugin_{abs(hash(declared))}"  # a fresh module per case (sys.modules caches imports)
    root = make_distribution(tmp_path, "bench-future", {"future": module}, {module: code})
    monkeypatch.syspath_prepend(str(root))
    registry = load_registry(strict=False)
    info = next(p for p in registry.plugins if p.name == "future")
    assert info.error and message in info.error
    with pytest.raises(PluginError, match=re.escape(message)):
        load_registry(strict=True)


def test_unknown_needs_fail_registration():
    class Needy(Criterion):
        name = "needy"
        needs = frozenset({"lora_grads"})

    class Plugin:
        BENCHSUITE_API = "2.0"

        @hookimpl
        def benchsuite_register_criteria(self, register):
            register(Needy)

    registry = load_registry(extra_plugins=[("needy", Plugin())], strict=False)
    info = next(p for p in registry.plugins if p.name == "needy")
    assert "needs ['lora_grads'] unknown; choose from calibration" in info.error


def test_an_optional_hook_from_a_newer_api_does_not_break_loading():
    class Newer:
        BENCHSUITE_API = "2.0"

        @hookimpl(optionalhook=True)
        def benchsuite_register_something_later(self, register):
            raise AssertionError("never called: no such hook here")

        @hookimpl
        def benchsuite_register_criteria(self, register):
            class Flat(Criterion):
                name = "flat-optional"

                def element_scores(self, key, module):
                    return module.weight.detach().abs()

            register(Flat)

    registry = load_registry(extra_plugins=[("newer", Newer())], strict=True)
    info = next(p for p in registry.plugins if p.name == "newer")
    assert info.error is None and info.registers == {"criteria": ["flat-optional"]}
