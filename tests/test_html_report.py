"""``benchsuite report --format html|png|svg``: a self-contained, deterministic page whose figures match the
data and the PNG export; and (``test_html_report_in_chromium``) the page opened in a real browser."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import bench

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference" / "smollm2-135m" / "quick"
#: a few reference records: the dense model, two structured methods at two ratios (with zero-shot accuracy)
SUBSET = ["dense.2bbfc574.json", "llm-pruner", "random_lora"]
#: what those records draw: quality vs ratio, Pareto views, the zero-shot heatmaps (accuracy, flips), the pruning cost
FIGURES = ["quality-vs-ratio", "pareto", "zero-shot-heatmap", "zero-shot-flips", "pruning-cost"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("report")
    folder = tmp_path / "results" / "smollm2-135m" / "quick"
    folder.mkdir(parents=True)
    for name in SUBSET:
        src = REFERENCE / name
        if src.is_dir():  # seed 0 (the budget sweep stores more seeds beside it)
            (folder / name).mkdir()
            for record in src.glob("*_seed-0.*.json"):
                if "allocation" not in json.loads(record.read_text())["config"]:  # the default runs, not issue 35's
                    shutil.copy(record, folder / name / record.name)
        else:
            shutil.copy(src, folder / name)
    return tmp_path / "results"


def _html(results: Path, *extra: str):
    out = bench("report", "--results", str(results), "--format", "html", *extra)
    assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def built(results) -> dict[str, object]:
    """The report of ``results`` through the command line (``report.html``), and again through the API
    with its figure objects, which are then written as PNG files (drawn twice in all: each drawing of
    these figures takes about a second)."""
    from benchsuite.cli import stored_records
    from benchsuite.reporting.figures import figures
    from benchsuite.reporting.html import render_html, write_figures

    first = _html(results)
    records = stored_records(results)
    figs = figures(records)
    page, _ = render_html(records, figs=figs)
    write_figures(records, results / "png", "png", figs=figs)
    yield {"stderr": first.stderr, "page": page, "figs": figs, "png": results / "png"}
    for f in figs:
        f.close()


def test_html_is_self_contained_and_deterministic(results, built):
    page = (results / "report.html").read_text(encoding="utf-8")
    assert f"{len(FIGURES)} figures" in built["stderr"]
    # nothing to fetch: no external script, stylesheet, image or font
    assert not re.search(r"""<(script|link|img|iframe)[^>]*\b(src|href)\s*=""", page, re.I)
    assert not re.search(r"""\b(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page, re.I)
    assert "@import" not in page
    # the same records give the same bytes (drawn twice: by the command line, and by the fixture)
    assert built["page"].encode() == (results / "report.html").read_bytes()
    # one <svg> per figure, named as expected
    assert re.findall(r'<figure class="chart" id="fig-([^"]+)"', page) == FIGURES
    assert page.count("<svg") == len(FIGURES)
    assert f'data-figures="{len(FIGURES)}"' in page
    # the tables benchsuite report prints, sortable, and each run's provenance
    assert page.count('<table class="results"') == 3
    assert "llm-pruner" in page and "random" in page
    assert page.count("<details") == 5 and "54f35119fa1b" in page  # the LLM-Pruner 20% record's settings
    # the heatmap's hover texts carry the intervals
    assert re.search(r"<title>llm-pruner · structured · LoRA recovery · 0.2, BoolQ: 85.0%, 95% interval", page)


def test_columns_that_separate_nothing_are_greyed(results, built):
    """At 20 examples per task, no two rows' zero-shot intervals exclude each other on most tasks: those columns are
    greyed in the HTML tables and the heatmaps, and named under the markdown table; perplexity separates."""
    from benchsuite.cli import stored_records
    from benchsuite.reporting.tables import render, separates, table

    records = stored_records(results)
    df, _, _ = table(records, "zeroshot")
    flat = [c.key for c in df.attrs["columns"] if separates(df, c.key) is False]
    assert "acc_piqa" in flat and "ppl_wiki" not in flat and separates(df, "ppl_wiki") is True
    text = render(records, "markdown", view="zeroshot")
    assert "No two rows differ beyond their 95% intervals in: " in text and "PIQA" in text.split("No two rows")[1]
    assert "PPL wiki" not in text.split("No two rows")[1]
    page = built["page"]
    assert '<th class="nosep">PIQA</th>' in page and '<th class="nosep">PPL wiki</th>' not in page
    heat = next(f for f in built["figs"] if f.name == "zero-shot-heatmap")
    labels = [t.get_text() for t in heat.figure.axes[0].get_xticklabels()]
    assert "PIQA *" in labels and any("grey: no two rows" in ax.get_title() for ax in heat.figure.axes)
    flips = next(f for f in built["figs"] if f.name == "zero-shot-flips")
    assert "dense" not in [t.get_text() for t in flips.figure.axes[0].get_yticklabels()]


def test_figures_follow_the_data(results):
    from benchsuite.cli import stored_records
    from benchsuite.reporting.figures import figures

    records = stored_records(results)
    figs = figures(records)
    try:
        assert [f.name for f in figs] == FIGURES
        # quality vs ratio: a row per quality metric (wiki, c4, zero-shot average, its flips against the dense
        # model's answers, the KL divergence to its predictions and their top-1 agreement), one line per method
        quality = figs[0].figure
        assert [ax.get_ylabel() for ax in quality.axes if ax.get_ylabel()] == [
            "perplexity wiki (log)", "perplexity c4 (log)", "zero-shot accuracy, average (%)",
            "zero-shot flips against dense, average (%)", "KL to dense, wiki (log)",
            "top-1 agreement with dense, wiki (%)"]
        lines = [line for line in quality.axes[0].get_lines() if line.get_label() not in ("dense",)
                 and not line.get_label().startswith("_")]
        assert sorted(line.get_label() for line in lines) == [
            "llm-pruner · structured · LoRA recovery", "random · structured · LoRA recovery"]
        assert list(lines[0].get_xdata()) == [0.0, 0.2, 0.5]  # dense at ratio 0
    finally:
        for f in figs:
            f.close()
    # no zero-shot accuracy, no heatmap; no records, no figures
    for r in records:
        r["metrics"] = {k: v for k, v in r["metrics"].items() if not k.startswith("acc_")}
    figs = figures(records)
    assert [f.name for f in figs] == ["quality-vs-ratio", "pareto", "pruning-cost"]
    for f in figs:
        f.close()
    assert figures([]) == []


def test_pareto_front():
    from benchsuite.reporting.figures import pareto_front

    assert pareto_front([(1, 5), (2, 3), (3, 4), (4, 1), (2, 3.5)]) == [0, 1, 3]


def test_png_export_is_the_html_figures(results, built, tmp_path):
    from PIL import Image

    pngs = sorted(p.name for p in built["png"].iterdir())
    assert pngs == sorted(f"{name}.png" for name in FIGURES)
    for name in pngs:
        image = Image.open(built["png"] / name)
        assert image.width > 300 and image.height > 200
        assert len(image.convert("L").getcolors(1 << 16) or []) > 10  # not blank
    # the PNGs and the page's SVGs are drawn from the same figure objects: their titles and axis labels
    # are in the page
    page = built["page"]
    for fig in built["figs"]:
        svg = page[page.index(f'id="fig-{fig.name}"'):]
        svg = svg[:svg.index("</svg>")]
        texts = [fig.figure.get_suptitle()] + [t for ax in fig.figure.axes
                                                for t in (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) if t]
        lines = [line for t in texts for line in t.split("\n")]  # SVG text is one element per line
        assert lines and all(line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in svg
                             for line in lines), fig.name
    # the command line's png and svg export (of the dense record alone: two small figures, drawn fast)
    for fmt in ("png", "svg"):
        out = bench("report", "--results", str(results), "--format", fmt, "--methods", "nothing",
                    "-o", str(tmp_path / fmt))
        assert out.returncode == 0, out.stderr
        assert sorted(p.name for p in (tmp_path / fmt).iterdir()) == [f"pareto.{fmt}", f"zero-shot-heatmap.{fmt}"]
    assert (tmp_path / "svg" / "pareto.svg").read_text(encoding="utf-8").startswith("<svg")
    assert bench("report", "--results", str(results), "--format", "svg", "--methods", "nothing").returncode == 0
    assert (results / "figures" / "pareto.svg").is_file()  # the default folder


# --- a real browser --------------------------------------------------------------------------------------

INSTALL = ("headless Chromium is needed for this test: install it with `sudo apt-get install chromium` "
           "(Debian/Ubuntu; `dnf install chromium` on Fedora, `brew install --cask chromium` on macOS) "
           "or set BENCHSUITE_CHROMIUM to its path")


def _chromium() -> str | None:
    for name in (os.environ.get("BENCHSUITE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome",
                 "google-chrome-stable"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _browser(binary: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", *args],
                          capture_output=True, text=True, timeout=timeout)


def screenshot(html: Path, png: Path, size: str = "1400,4000") -> subprocess.CompletedProcess:
    """``html`` opened in headless Chromium, a screenshot written to ``png``."""
    binary = _chromium()
    if binary is None:
        raise RuntimeError(INSTALL)
    return _browser(binary, f"--screenshot={png}", f"--window-size={size}", html.resolve().as_uri())


@pytest.mark.slow  # about 5 s: two Chromium starts
def test_html_report_in_chromium(results, built, tmp_path):
    from PIL import Image

    binary = _chromium()
    if binary is None:
        if os.environ.get("BENCHSUITE_REQUIRE_CHROMIUM"):
            pytest.fail(INSTALL + " (BENCHSUITE_REQUIRE_CHROMIUM is set: CI must test in a browser)")
        pytest.skip(INSTALL)
    page = results / "report.html"
    dom = _browser(binary, "--dump-dom", page.resolve().as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stdout[:2000]
    # the inline JS ran to its end (sorting set up) and found every figure drawn with a size
    assert 'data-ready="1"' in body[0], body[0]
    assert f'data-charts="{len(FIGURES)}"' in body[0], body[0]
    errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not errors, errors
    shot = tmp_path / "shot.png"
    run = screenshot(page, shot, "1400,3000")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    colours = image.getcolors(1 << 24)
    assert colours is None or len(colours) > 50, "the screenshot is (nearly) one colour"
    grey = image.convert("L")
    dark = sum(grey.point(lambda v: 255 if v < 200 else 0).histogram()[255:])
    assert dark > 0.01 * grey.width * grey.height, f"only {dark} non-white pixels: figures did not render"
