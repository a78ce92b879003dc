"""The plugin guide is checked against the code (datasette style): every hook with its signature and
parameters, every public name and member of the API, and the example package's code itself."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

import benchsuite
from benchsuite.api import hookspecs
from benchsuite.host import KINDS

ROOT = Path(__file__).parent.parent
GUIDE = (ROOT / "docs" / "plugins.md").read_text()

#: the classes whose public members a plugin author uses
API_CLASSES = ["Parametrized", "Criterion", "Granularity", "Schedule", "Method", "ModelSpec", "PruneContext",
               "PruneOutcome", "GroupSet", "Coupling", "RunningScores", "Metric", "Corpus"]


def hook_names() -> list[str]:
    return sorted(name for name in dir(hookspecs) if name.startswith("benchsuite_"))


def section(heading: str) -> str:
    """The text under a markdown heading, up to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", GUIDE, re.M)
    assert match, f"docs/plugins.md has no heading {heading!r}"
    level = len(match.group(1))
    rest = GUIDE[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def test_every_hook_is_known_to_the_host():
    assert hook_names() == sorted(KINDS)


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_is_documented_with_its_signature_and_parameters(name):
    spec = getattr(hookspecs, name)
    assert (spec.__doc__ or "").strip(), f"{name} has no docstring in hookspecs.py"
    params = list(inspect.signature(spec).parameters)
    body = section(f"`{name}({', '.join(params)})`")
    for param in params:
        assert re.search(rf"`{param}`\s*:", body), f"parameter {param} of {name} is not described"
    returned = KINDS[name][1].__name__
    assert f"`{returned}`" in body, f"{name}: the guide does not say that register takes a {returned}"


@pytest.mark.parametrize("name", sorted(set(benchsuite.__all__) - {"__version__"}))
def test_every_public_name_is_documented(name):
    assert f"`{name}`" in GUIDE or f"`{name}(" in GUIDE, f"benchsuite.{name} is not in docs/plugins.md"


def public_members(cls: type) -> list[str]:
    names = {n for n in vars(cls) if not n.startswith("_")}
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls)}
    return sorted(names)


@pytest.mark.parametrize("cls_name", API_CLASSES)
def test_every_public_member_is_documented(cls_name):
    if not hasattr(benchsuite, cls_name):
        pytest.fail(f"benchsuite.{cls_name} is not importable from benchsuite")
    cls = getattr(benchsuite, cls_name)
    missing = [m for m in public_members(cls) if not re.search(rf"`[^`]*\b{re.escape(m)}\b[^`]*`", GUIDE)
               and not re.search(rf"^\s+(def )?{re.escape(m)}\b", GUIDE, re.M)]
    assert not missing, f"{cls_name} members missing from docs/plugins.md: {missing}"


def test_the_guides_example_is_the_example_package():
    blocks = re.findall(r'^```\w+ title="(examples/[^"]+)"\n(.*?)^```', GUIDE, re.M | re.S)
    assert {path for path, _ in blocks} >= {"examples/benchsuite-squared/benchsuite_squared.py",
                                            "examples/benchsuite-squared/pyproject.toml"}
    for path, code in blocks:
        assert code == (ROOT / path).read_text(), f"the guide's copy of {path} differs from the file"


def test_the_guides_parameter_rules_hold():
    """What the Parameters section promises: typed fields checked at construction, state not recorded."""
    from typing import Literal

    from benchsuite import ConfigError, Criterion

    class Demo(Criterion):
        name = "demo"
        p: Literal[1, 2] = 2
        scale: float = 1.0

        def validate(self):
            if self.scale <= 0:
                raise ValueError("scale must be positive")

        def setup(self):
            self.calls = 0  # state

    assert Demo.create({"p": 1}).params() == {"p": 1, "scale": 1.0}
    for bad, message in (({"p": 3}, "p must be one of 1, 2"), ({"scale": "x"}, "scale must be float"),
                         ({"scale": -1.0}, "scale must be positive"), ({"q": 1}, "accepts: p, scale")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            Demo.create(bad)
