"""How long `benchsuite report` takes over many records (the issue's bound: 1,000 records in under 2 s).

Copies the reference records (with their per-window NLL and per-example correctness) into a temporary
folder as N distinct runs (other seeds), then times scanning + rendering in markdown, CSV and JSON.

    python benchmarks/report_speed.py [N]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from benchsuite.reporting.tables import render
from benchsuite.running.records import load_records

ROOT = Path(__file__).resolve().parent.parent / "results" / "reference"


def main(n: int = 1000) -> None:
    sources = [r for r in load_records(ROOT) if r["method"] != "dense"]
    dense = next(r for r in load_records(ROOT) if r["method"] == "dense")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            record = dict(sources[i % len(sources)])
            record["seed"] = i // len(sources)
            path = Path(tmp) / record["profile"] / (record.get("variant") or record["method"]) / f"r{i}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({k: v for k, v in record.items() if not k.startswith("_")}))
        (Path(tmp) / "dense.json").write_text(json.dumps({k: v for k, v in dense.items() if not k.startswith("_")}))
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*.json")) / (n + 1)
        for fmt in ("markdown", "csv", "json"):
            start = time.perf_counter()
            text = render(load_records(Path(tmp)), fmt)
            print(f"{n + 1} records ({size / 1024:.1f} KB each on average): {fmt} in "
                  f"{time.perf_counter() - start:.2f} s ({len(text):,} characters)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
