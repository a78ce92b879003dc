"""The README is a front page and the docs site is what ``tox -e docs`` builds: the generated pages are current,
every page is in the site's navigation, every link between them resolves (file and heading), and the README's
example plugin runs as it says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from benchsuite.cli import cli_reference, docs_index
from tests.conftest import bench

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PAGES = sorted((ROOT / "docs").glob("*.md"))


def test_the_readme_is_a_front_page_with_the_two_commands():
    assert len(README.splitlines()) <= 200, "the README is a front page: move the rest into docs/"
    blocks = re.findall(r"^```bash\n(.*?)^```", README, re.M | re.S)
    assert blocks[0].strip() == "pip install -e . && benchsuite run"
    assert blocks[1].strip() == "tox"


def test_the_generated_pages_are_current():
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == cli_reference(), \
        "run: benchsuite docs --update docs"
    assert (ROOT / "docs" / "index.md").read_text(encoding="utf-8") == docs_index(README), \
        "run: benchsuite docs --update docs"
    assert (ROOT / "docs" / "changelog.md").read_text(encoding="utf-8") == (ROOT / "CHANGELOG.md").read_text(
        encoding="utf-8"), "run: benchsuite docs --update docs"


def _nav_files(entries) -> list[str]:
    out = []
    for entry in entries:
        for value in (entry.values() if isinstance(entry, dict) else [entry]):
            out += _nav_files(value) if isinstance(value, list) else [value]
    return out


def test_every_page_is_in_the_navigation():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_files(config["nav"])
    assert sorted(nav) == sorted(p.name for p in PAGES), "add the page to mkdocs.yml's nav (or remove it)"
    assert config["strict"] is True


def _slug(heading: str) -> str:
    """Python-Markdown's toc anchor of a heading (what GitHub makes of ours too)."""
    text = re.sub(r"`|\*\*", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[\s]+", "-", text)


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: p.name)
def test_every_link_resolves(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        where = (page.parent / file) if file else page
        if not where.exists():
            broken.append(target)
        elif anchor and where.suffix == ".md" and anchor not in _anchors(where):
            broken.append(target)
    assert not broken, f"{page.name}: links that go nowhere: {broken}"


def test_the_readmes_plugin_runs_as_it_says(tmp_path, tiny_model_dir, offline):
    code = re.search(r'^```python title="squared_weight.py"\n(.*?)^```', README, re.M | re.S).group(1)
    plugin = tmp_path / "squared_weight.py"
    plugin.write_text(code)
    command = re.search(r"^benchsuite run --plugin squared_weight.py (.*)$", README, re.M).group(1).split()
    results = tmp_path / "results"
    result = bench("run", "--plugin", str(plugin), *command, "--model", str(tiny_model_dir), "--results",
                   str(results), "--profile", "smoke", "--tasks", "none", "--corpora", ",".join(offline["corpora"]),
                   "--recovery-data", offline["recovery_data"], "--calibration-data", offline["calibration_data"])
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in results.rglob("*.json")]
    assert {r.get("variant") for r in records if r["status"] == "ok"} >= {"squared-weight", "magnitude-l2"}


#: code spans that name a file of this repository (a placeholder or a glob is not a file name)
_PATH = re.compile(r"^(?:benchsuite|plugins|benchmarks|tests|docs|examples|results/reference|\.ci)/[\w./-]*[\w/]$")
#: code spans that name a module or a name in one (``benchsuite.api.experts``, ``benchsuite.testing.tiny_model``)
_MODULE = re.compile(r"^benchsuite(?:_plugins)?(?:\.\w+)+$")


def _spans(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))


def _resolves(dotted: str) -> bool:
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: p.name)
def test_every_file_and_module_the_docs_name_exists(page):
    spans = _spans(page)
    files = [s for s in spans if _PATH.match(s) and not (ROOT / s).exists()]
    assert not files, f"{page.name} names files that do not exist: {files}"
    modules = [s for s in spans if _MODULE.match(s) and not _resolves(s)]
    assert not modules, f"{page.name} names modules or names that do not exist: {modules}"
