"""Plugins that share a name: distribution-qualified names, the built-in as the bare name's meaning, strict mode."""

from __future__ import annotations

import json

import pytest

from benchsuite import ConfigError
from benchsuite.host import PluginError, load_registry
from benchsuite.running.plan import plan_methods
from tests.test_plugins import make_distribution

# A third-party FLAP: its own criterion named like the built-in FLAP's, its own method named like the built-in.
# The two distributions score the weights in opposite orders, so that each one's masks are its own.
THIRD_PARTY_FLAP = '''
from benchsuite import Criterion, Method, hookimpl

BENCHSUITE_API = "2.0"
SIGN = {sign}


class Fluctuation(Criterion):
    name = "fluctuation"
    description = "not FLAP's: |w| ordered by SIGN"

    def element_scores(self, key, module):
        return SIGN * module.weight.detach().abs()


@hookimpl
def benchsuite_register_criteria(register):
    register(Fluctuation)


@hookimpl
def benchsuite_register_methods(register):
    register(Method("flap", "fluctuation", description="a third-party flap"))
'''


@pytest.fixture
def two_flaps(tmp_path, monkeypatch):
    """Two throwaway distributions, each with an entry point ``flap``, a criterion ``fluctuation`` and a method
    ``flap``: the built-in FLAP's names, all three."""
    root = tmp_path / "site"
    for dist, module, sign in (("benchsuite-flap", "bflap_plugin", 1.0), ("flap-plus", "flapplus_plugin", -1.0)):
        make_distribution(root, dist, {"flap": module}, {module: THIRD_PARTY_FLAP.format(sign=sign)})
    monkeypatch.syspath_prepend(str(root))
    return root


def test_two_distributions_with_a_builtins_names_coexist(two_flaps):
    registry = load_registry(strict=True)  # strict: nothing about a shared name is a loading error
    flaps = [p for p in registry.plugins if p.name == "flap"]
    assert sorted(p.qualified for p in flaps) == ["benchsuite-flap:flap", "benchsuite:flap", "flap-plus:flap"]
    assert all(p.error is None for p in flaps)
    assert registry.owners["methods"]["flap"] == ["benchsuite:flap", "benchsuite-flap:flap", "flap-plus:flap"]
    # the bare names mean the built-ins; the others are there by DIST:NAME
    assert registry.methods["flap"].criterion == "fluctuation"
    assert registry.criteria["fluctuation"].__module__ == "benchsuite_plugins.flap"
    theirs = registry.lookup("methods", "benchsuite-flap:flap")
    assert (theirs.name, theirs.criterion) == ("benchsuite-flap:flap", "benchsuite-flap:fluctuation")
    assert registry.lookup("criteria", theirs.criterion).__module__ == "bflap_plugin"
    assert registry.lookup("criteria", "flap-plus:fluctuation").__module__ == "flapplus_plugin"
    # a method's other parts, which its distribution doesn't register, are the built-ins
    assert (theirs.granularity, theirs.schedule) == ("structured", "one-shot")


def test_a_bare_shared_name_warns_once_and_strict_mode_refuses_it(two_flaps, capsys):
    registry = load_registry(strict=False)
    plans = plan_methods(["flap", "flap"], registry)
    assert [p.components["method"] for p in plans] == ["benchsuite:flap"] * 2
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert all(q in warnings[0] for q in ("benchsuite:flap", "benchsuite-flap:flap", "flap-plus:flap"))

    strict = load_registry(strict=True)
    with pytest.raises(ConfigError) as err:
        plan_methods(["flap"], strict)
    message = str(err.value)
    assert "\n" not in message
    assert all(q in message for q in ("benchsuite:flap", "benchsuite-flap:flap", "flap-plus:flap"))
    # an unambiguous bare name is fine in strict mode
    assert plan_methods(["flap-lora"], strict)[0].components["method"] == "benchsuite:flap-lora"


def test_plugin_qualified_names(two_flaps):
    registry = load_registry(strict=True)
    # PLUGIN:NAME works where the plugin's name is unique among those registering NAME ...
    assert registry.qualify("granularities", "granularities:structured") == "benchsuite:structured"
    # ... and three plugins are named flap here
    with pytest.raises(ConfigError, match="plugins named 'flap' in several distributions"):
        registry.qualify("methods", "flap:flap")
    with pytest.raises(ConfigError, match="did you mean"):
        registry.qualify("methods", "benchsuite-flap:flapp")
    # names holding ':' of their own are still bare names
    assert registry.qualify("methods", "magnitude-2:4") == "benchsuite:magnitude-2:4"
    assert registry.qualify("methods", "benchsuite:magnitude-2:4") == "benchsuite:magnitude-2:4"


def test_three_flaps_in_one_matrix_by_qualified_name(two_flaps, tmp_path, offline, tiny_model_dir, monkeypatch):
    from benchsuite.host import STRICT_ENV, reset_registry
    from tests.conftest import bench

    monkeypatch.setenv(STRICT_ENV, "1")
    reset_registry()
    text = offline["corpora"][0]
    try:
        listed = bench("plugins")
        assert listed.returncode == 0 and "FAILED" not in listed.stdout
        assert all(q in listed.stdout for q in ("benchsuite:flap", "benchsuite-flap:flap", "flap-plus:flap"))
        methods = bench("methods")
        assert "benchsuite-flap:flap" in methods.stdout and "flap-plus:fluctuation" in methods.stdout
        run = bench("run", "--methods", "benchsuite:flap,benchsuite-flap:flap,flap-plus:flap", "--model",
                    tiny_model_dir, "--ratios", "0.25", "--profile", "smoke", "--tasks", "none", "--corpora", text,
                    "--calibration-data", text, "--recovery-data", text, "--results", tmp_path / "r")
        assert run.returncode == 0, run.stderr
        assert "warning" not in run.stderr
        records = {r["method"]: r for r in (json.loads(p.read_text()) for p in (tmp_path / "r").rglob("*.json"))
                   if "metrics" in r}
        assert set(records) == {"dense", "flap", "benchsuite-flap:flap", "flap-plus:flap"}
        assert all(r["status"] == "ok" for r in records.values())
        builtin, a, b = records["flap"], records["benchsuite-flap:flap"], records["flap-plus:flap"]
        # the built-in's record names it as before (its settings hash is unchanged by the others' presence)
        assert builtin["config"]["method"] == "flap" and builtin["config"]["criterion"]["name"] == "fluctuation"
        assert builtin["components"] == {"method": "benchsuite:flap", "criterion": "benchsuite:fluctuation",
                                         "granularity": "benchsuite:structured-global",
                                         "schedule": "benchsuite:one-shot"}
        assert a["components"]["criterion"] == "benchsuite-flap:fluctuation"
        assert b["components"] == {"method": "flap-plus:flap", "criterion": "flap-plus:fluctuation",
                                   "granularity": "benchsuite:structured", "schedule": "benchsuite:one-shot"}
        # each ran its own criterion: three different sets of masks, three different settings
        assert len({r["pruned_units"]["mask_sha256"] for r in (builtin, a, b)}) == 3
        assert len({r["config_hash"] for r in (builtin, a, b)}) == 3
        table = bench("report", "--results", tmp_path / "r").stdout
        assert "benchsuite-flap:flap" in table and "flap-plus:flap" in table
        # in strict mode the bare name is refused, with the choices
        bare = bench("run", "--methods", "flap", "--model", tiny_model_dir, "--results", tmp_path / "r2")
        assert bare.returncode == 2 and "benchsuite-flap:flap" in bare.stderr.strip().splitlines()[-1]
    finally:
        reset_registry()


BROKEN_AT_IMPORT = '''
raise RuntimeError("first line of the reason\\n" + repr({"a dict": list(range(50))}))
'''


def test_loading_errors_are_one_line(tmp_path, monkeypatch):
    root = make_distribution(tmp_path / "site", "bench-broken", {"flap": "broken_plugin"},
                             {"broken_plugin": BROKEN_AT_IMPORT})
    monkeypatch.syspath_prepend(str(root))
    registry = load_registry(strict=False)
    broken = next(p for p in registry.plugins if p.distribution == "bench-broken")
    assert broken.error == "RuntimeError: first line of the reason"
    assert registry.lookup("methods", "flap").criterion == "fluctuation"  # the built-in flap still loads
    with pytest.raises(PluginError) as err:
        load_registry(strict=True)
    assert str(err.value) == ("plugin 'flap' (distribution bench-broken 0.1) failed to load: "
                              "RuntimeError: first line of the reason")

    class Same:
        pass

    registry = load_registry(extra_plugins=[("twin", Same()), ("twin", Same())], strict=False)
    twin = [p for p in registry.plugins if p.name == "twin"]
    assert twin[0].error is None and twin[1].error == "ValueError: another plugin is registered under the same name"
