"""``benchsuite report --format html``: one self-contained HTML file (inline SVG figures, inline CSS and JS,
nothing fetched to view it) with the figures of :mod:`benchsuite.reporting.figures`, the tables ``benchsuite report``
prints (sortable by clicking a header) and each run's provenance; and ``--format png|svg``, the figures
alone, one file each. The same records give the same bytes.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from benchsuite.reporting.figures import Figure, figures, safe_name
from benchsuite.reporting.tables import table, unseparated
from benchsuite.util.atomic import write_atomic

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1400px;
color:#222;padding:0 1em}
.nosep{color:#9a9a9a;background:#f3f3f3}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
figure.chart{margin:1em 0;overflow-x:auto}figure.chart svg{max-width:100%;height:auto}
figcaption{font-size:.9em;color:#555}
table.results{border-collapse:collapse;font-size:.8em;margin:.5em 0}
table.results th,table.results td{border:1px solid #ddd;padding:2px 6px;white-space:nowrap;text-align:right}
table.results th{background:#f4f4f4;cursor:pointer;user-select:none;position:sticky;top:0}
table.results th.asc::after{content:" \\25B2"}table.results th.desc::after{content:" \\25BC"}
table.results td.text{text-align:left}
details{margin:.2em 0;font-size:.85em}details pre{background:#f7f7f7;padding:.5em;overflow-x:auto}
.wrap{overflow-x:auto}
"""

#: sorts a table by the clicked header (numbers by value, "-" last), then marks <body> ready and counts
#: the rendered figures, so a browser test can tell the page worked
JS = """
(function(){
  function key(td){var t=td.getAttribute('data-sort')||td.textContent.trim();
    var m=t.match(/^-?[0-9]+(\\.[0-9]+)?(e[-+]?[0-9]+)?/i);return m?parseFloat(m[0]):t;}
  function cmp(a,b){var an=typeof a==='number',bn=typeof b==='number';
    if(an&&bn)return a-b;if(an)return -1;if(bn)return 1;return a<b?-1:a>b?1:0;}
  document.querySelectorAll('table.results').forEach(function(table){
    var heads=table.querySelectorAll('thead th');
    heads.forEach(function(th,i){th.addEventListener('click',function(){
      var asc=!th.classList.contains('asc');heads.forEach(function(h){h.classList.remove('asc','desc');});
      th.classList.add(asc?'asc':'desc');var body=table.tBodies[0];
      var rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(r1,r2){var c=cmp(key(r1.cells[i]),key(r2.cells[i]));return asc?c:-c;});
      rows.forEach(function(r){body.appendChild(r);});});});});
  var charts=document.querySelectorAll('figure.chart svg');var drawn=0;
  charts.forEach(function(svg){var b=svg.getBoundingClientRect();if(b.width>0&&b.height>0)drawn++;});
  document.body.setAttribute('data-charts',String(drawn));
  document.body.setAttribute('data-ready','1');
})();
"""

_TEXT_COLUMNS = {"model", "profile", "method", "granularity", "recovery", "settings", "seeds", "status"}


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _table(records: list[dict[str, Any]], view: str, caption: str) -> str:
    df, headers, body = table(records, view)
    if df.empty:
        return "<p>no results yet</p>"
    flat = {c.header for c in unseparated(df, df.attrs.get("columns", []))}  # greyed: they tell nothing apart
    if flat:
        caption += ("; greyed: no two rows differ beyond their 95% intervals (" + ", ".join(sorted(flat)) + ")")

    def attrs(h: str) -> str:
        classes = (["text"] if h in _TEXT_COLUMNS else []) + (["nosep"] if h in flat else [])
        return f' class="{" ".join(classes)}"' if classes else ""

    head = "".join(f"<th{attrs(h) if h in flat else ''}>{_e(h)}</th>" for h in headers)
    rows = []
    for line in body:
        cells = "".join(f"<td{attrs(h)}>{_e(c)}</td>" for h, c in zip(headers, line))
        rows.append(f"<tr>{cells}</tr>")
    return (f'<div class="wrap"><table class="results"><caption>{_e(caption)}</caption><thead><tr>{head}</tr>'
            f"</thead><tbody>{''.join(rows)}</tbody></table></div>")


def run_anchor(record: dict[str, Any]) -> str:
    variant = record.get("variant") or record.get("method")
    return "run-" + safe_name(f"{record.get('model')}-{record.get('profile')}-{variant}-{record.get('ratio')}"
                              f"-{record.get('seed')}-{str(record.get('config_hash', ''))[:8]}")


def _provenance(records: list[dict[str, Any]]) -> str:
    def order(r):
        return (str(r.get("model")), str(r.get("profile")), r.get("method") != "dense", str(r.get("variant")),
                float(r.get("ratio") or 0), int(r.get("seed") or 0), str(r.get("config_hash")))

    items = []
    for r in sorted(records, key=order):
        git = r.get("git") or {}
        commit = (git.get("commit") or "?")[:12] + (" (dirty)" if git.get("dirty") else "")
        summary = (f"{r.get('model')} · {r.get('profile')} · {r.get('variant') or r.get('method')} · "
                   f"ratio {r.get('ratio', 0):g} · seed {r.get('seed')} · {r.get('status')} · commit {commit}")
        hardware = r.get("hardware") or {}
        shown = {
            "record": Path(str(r.get("_path", ""))).name,
            "git": git, "versions": r.get("versions"),
            "hardware": {k: v for k, v in hardware.items() if k != "argv"},
            "command": hardware.get("argv"),
            "profile": r.get("profile"), "profile_settings": r.get("profile_settings"),
            "dtype": r.get("dtype"), "config_hash": r.get("config_hash"),
            "started_at": r.get("started_at"), "finished_at": r.get("finished_at"),
            "error": r.get("error"),
        }
        text = json.dumps({k: v for k, v in shown.items() if v not in (None, "", {})}, indent=2, default=str,
                          sort_keys=False)
        items.append(f'<details id="{_e(run_anchor(r))}"><summary>{_e(summary)}</summary><pre>{_e(text)}</pre>'
                     "</details>")
    return "\n".join(items)


def render_html(records: list[dict[str, Any]], title: str = "benchsuite report",
                figs: list[Figure] | None = None) -> tuple[str, list[Figure]]:
    """The HTML page of ``records`` and the figures in it (``figs``, or drawn here; close them when done)."""
    figs = figures(records) if figs is None else figs
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>",
             f"<meta name=\"viewport\" content=\"width=device-width\"><style>{CSS}</style></head>",
             f'<body data-figures="{len(figs)}"><h1>{_e(title)}</h1>']
    parts.append(f"<p>{len(records)} records; {len(figs)} figures. Hover a heatmap cell for its 95% interval; "
                 "click a table header to sort; each run's provenance is at the end.</p>")
    if figs:
        parts.append("<nav><ul>" + "".join(f'<li><a href="#fig-{_e(f.name)}">{_e(f.group)}: {_e(f.title)}</a></li>'
                                           for f in figs) + '<li><a href="#tables">tables</a></li>'
                     '<li><a href="#runs">runs and provenance</a></li></ul></nav>')
    group = None
    for f in figs:
        if f.group != group:
            group = f.group
            parts.append(f"<h2>{_e(group)}</h2>")
        parts.append(f'<figure class="chart" id="fig-{_e(f.name)}" data-name="{_e(f.name)}">{f.svg()}'
                     f"<figcaption>{_e(f.title)} ({_e(f.name)})</figcaption></figure>")
    parts.append('<h2 id="tables">Tables</h2>')
    parts.append(_table(records, "ppl", "perplexity and efficiency (benchsuite report --view ppl)"))
    if any(k.startswith("acc_") for r in records for k in (r.get("metrics") or {})):
        parts.append(_table(records, "zeroshot", "zero-shot accuracy (benchsuite report --view zeroshot)"))
    parts.append(_table(records, "all", "every column (benchsuite report)"))
    parts.append(f'<h2 id="runs">Runs and provenance</h2>{_provenance(records)}')
    parts.append(f"<script>{JS}</script></body></html>\n")
    return "\n".join(parts), figs


def write_html(records: list[dict[str, Any]], out: Path) -> int:
    """Write the report to ``out`` (atomically); returns the number of figures."""
    page, figs = render_html(records)
    try:
        write_atomic(out, page)
    finally:
        for f in figs:
            f.close()
    return len(figs)


def write_figures(records: list[dict[str, Any]], folder: Path, fmt: str,
                  figs: list[Figure] | None = None) -> list[Path]:
    """Each figure (``figs``, or drawn here and closed) as ``<folder>/<name>.<fmt>`` (png or svg),
    atomically; the paths written."""
    paths = []
    for f in figures(records) if figs is None else figs:
        try:
            path = folder / f"{f.name}.{fmt}"
            write_atomic(path, f.png() if fmt == "png" else f.svg())
            paths.append(path)
        finally:
            if figs is None:
                f.close()
    return paths
