"""How long the README's default run takes on a fresh clone, and where the time goes.

Clones this repository's HEAD (commit first: uncommitted changes are not in the clone) into a temporary folder,
sets it up with the README's command (``pip install -e .``, into a virtual environment of its own) and runs the
README's ``benchsuite run`` there into a fresh results folder, with ``--timings`` (the progress view's own clock:
the setup steps and every stage of every run). ``--cold`` also starts from an empty cache (``BENCHSUITE_CACHE``,
``HF_HOME``, pip's cache off), as a new machine would: the model, corpora and task data are downloaded and the
model converted within the run.

Each record the run wrote is then set beside the committed one of the same settings in ``results/reference``
(the same ``config_hash``): its mask digest and every perplexity must be equal to the digit, as the regression
check requires. Any difference is printed and recorded; the script exits 1.

    python benchmarks/default_run_time.py --cold --out benchmarks/results/default_run_time.json
    python benchmarks/default_run_time.py --render benchmarks/results/default_run_time.json --readme docs/results.md

``--readme`` rewrites the docs section (docs/results.md) between ``<!-- default-run-time -->`` markers from the JSON
(``--render``: from a JSON written earlier, measuring nothing). ``--venv DIR`` reuses an environment made by an
earlier call (``--keep``), without timing an install.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BLOCK = "default-run-time"
#: the README's commands (its "Two commands" section): what this script runs
INSTALL = ["pip", "install", "-e", "."]
RUN = ["benchsuite", "run"]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def measure(work: Path, cold: bool, venv: Path | None) -> dict[str, Any]:
    clone = work / "benchsuite"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    commit = _git("rev-parse", "HEAD")
    env = dict(os.environ)
    for key in ("BENCHSUITE_CACHE", "PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(key, None)
    if cold:
        env |= {"BENCHSUITE_CACHE": str(work / "cache"), "HF_HOME": str(work / "hf"), "PIP_NO_CACHE_DIR": "1"}
    install_s = None
    if venv is None:
        venv = work / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        print(f"setting up: {' '.join(INSTALL)} (in {clone})", flush=True)
        start = time.perf_counter()
        subprocess.run([str(venv / "bin" / INSTALL[0]), *INSTALL[1:], "--quiet"], cwd=clone, env=env, check=True)
        install_s = time.perf_counter() - start
    else:
        # the clone's code in the reused environment: its editable install points at another clone
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", "-e", "."], cwd=clone, env=env,
                       check=True)
    results, timings = work / "results", work / "timings.json"
    command = [str(venv / "bin" / RUN[0]), *RUN[1:], "--results", str(results), "--timings", str(timings)]
    print(f"running: {' '.join(RUN)} (fresh results folder{', empty cache' if cold else ''})", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=clone, env=env, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"benchsuite run failed (exit {proc.returncode})")
    versions = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch, transformers; "
                               "print(torch.__version__, transformers.__version__, torch.get_num_threads())"],
                              capture_output=True, text=True, check=True).stdout.split()
    return {"commit": commit, "cold": cold, "install_s": install_s, "run_wall_s": wall,
            "install": " ".join(INSTALL), "command": " ".join(RUN),
            "torch": versions[0], "transformers": versions[1], "threads": int(versions[2]),
            "machine": _machine(), "timings": json.loads(timings.read_text()), "records": check(results)}


def _machine() -> dict[str, Any]:
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gb": round(os.sysconf("SC_PAGE_SIZE")
                                                                 * os.sysconf("SC_PHYS_PAGES") / 2**30)}


def check(results: Path) -> list[dict[str, Any]]:
    """Each record under ``results`` beside the reference record of the same settings: the run's timings, and
    whether its mask digest and perplexities equal the reference's (else the largest relative difference of a
    perplexity; floats are bit-identical only with the same CPU kernels, ``hardware.cpu_capability``)."""
    from benchsuite.running.records import latest_attempts, scan

    reference = {r["config_hash"]: r for r in latest_attempts(scan(ROOT / "results" / "reference")[0])}
    rows = []
    for record in latest_attempts(scan(results)[0]):
        label = "dense" if record["method"] == "dense" else f"{record['variant']} ratio={record['ratio']}"
        ref = reference.get(record["config_hash"])
        row: dict[str, Any] = {"run": label, "config_hash": record["config_hash"], "status": record["status"],
                               "started_at": record["started_at"], "timings": record["timings"],
                               "cpu_capability": record["hardware"].get("cpu_capability")}
        if ref is None:
            row["reference"] = "no reference record with these settings"
        else:
            ppl = {k: (v, ref["metrics"].get(k)) for k, v in record["metrics"].items() if k.startswith("ppl_")}
            masks = (record.get("pruned_units") or {}).get("mask_sha256") == (ref.get("pruned_units") or {}).get(
                "mask_sha256")
            worst = max((abs(a - b) / abs(b) if b else float("inf") for a, b in ppl.values()), default=0.0)
            row["ppl_max_rel_diff"] = worst
            row["reference_cpu_capability"] = ref["hardware"].get("cpu_capability")
            row["reference"] = ("identical" if masks and worst == 0 else
                                f"masks identical, perplexities within {worst:.1e} (relative)" if masks else
                                f"mask digest differs; perplexities within {worst:.1e} (relative)")
        rows.append(row)
    return sorted(rows, key=lambda r: r["started_at"])


# -- the README section --------------------------------------------------------------------------------------
def _t(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def _agreement(records: list[dict[str, Any]]) -> str:
    if all(r["reference"] == "identical" for r in records):
        return ("Every record it wrote has the mask digest and the perplexities of the committed reference record "
                "with the same settings, to the last digit.")
    masks = all(r["reference"].startswith(("identical", "masks identical")) for r in records)
    worst = max(r.get("ppl_max_rel_diff", 0.0) for r in records)
    caps = sorted({r.get("cpu_capability") or "not recorded" for r in records})
    ref_caps = sorted({r.get("reference_cpu_capability") or "not recorded" for r in records if "config_hash" in r})
    return (f"Against the committed reference records (their CPU kernels: {', '.join(ref_caps)}; this run's: "
            f"{', '.join(caps)}): {'every mask digest equal' if masks else 'mask digests differ (see the table)'}, "
            f"perplexities within {worst:.1e} relative (floats are bit-identical only on the same kernels).")


def render(data: dict[str, Any]) -> str:
    t = data["timings"]
    total = data["run_wall_s"]
    stages = dict(t["by_stage"])
    startup = total - t["total_s"]  # interpreter start, imports, plugin loading: before the view's clock starts
    rows = [("start (Python, imports, plugins)", startup)] + [(k, v) for k, v in stages.items() if k != "other"] + [
        ("other (between stages: loads, records, table)", stages.get("other", 0.0))]
    setup = t["runs"].get("setup", {})
    lines = [
        f"Measured from a fresh clone of commit {data['commit'][:7]} into a fresh results folder"
        + (", with an empty cache (the model, corpora and task data downloaded, the model converted)"
           if data["cold"] else "") + f", on {data['machine']['cpus']} CPU cores ({data['machine']['cpu']}, "
        f"{data['machine']['memory_gb']} GiB; torch {data['torch']}, {data['threads']} threads): "
        f"`{data['command']}` took **{_t(total)}**"
        + (f" after `{data['install']}` took {_t(data['install_s'])}" if data["install_s"] is not None else "")
        + " (`python benchmarks/default_run_time.py --cold`). " + _agreement(data["records"]),
        "",
        "| stage | time | share |",
        "| --- | --- | --- |",
    ]
    for name, seconds in rows:
        extra = ""
        if name == "setup" and setup:
            extra = " (" + ", ".join(f"{k} {_t(v)}" for k, v in setup.items()) + ")"
        lines.append(f"| {name}{extra} | {_t(seconds)} | {100 * seconds / total:.0f}% |")
    lines += ["", "| run | prune | fine-tune | evaluate: perplexity | zero-shot | latency, FLOPs, other | total | "
              "against the reference |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in data["records"]:
        tm = r["timings"]
        metric = tm.get("eval_metric_s", {})
        ppl, zs = metric.get("perplexity"), metric.get("zeroshot")
        rest = tm.get("eval_s", 0.0) - (ppl or 0.0) - (zs or 0.0)
        whole = tm.get("prune_s", 0.0) + tm.get("recover_s", 0.0) + tm.get("eval_s", 0.0)
        lines.append(f"| {r['run']} | {_t(tm.get('prune_s'))} | {_t(tm.get('recover_s'))} | {_t(ppl)} | {_t(zs)} | "
                     f"{_t(rest)} | {_t(whole)} | {r['reference']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true", help="an empty cache, as on a new machine")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "default_run_time.json")
    parser.add_argument("--venv", type=Path, help="an environment made by an earlier --keep call: no install")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (clone, environment, results)")
    parser.add_argument("--render", type=Path, help="measure nothing: read this JSON")
    parser.add_argument("--readme", type=Path, help="rewrite this page's default-run-time section (docs/results.md)")
    args = parser.parse_args()
    if args.render:
        data = json.loads(args.render.read_text())
    else:
        work = Path(tempfile.mkdtemp(prefix="benchsuite-default-run-"))
        try:
            data = measure(work, args.cold, args.venv)
        finally:
            if args.keep:
                print(f"kept {work}", flush=True)
            else:
                shutil.rmtree(work, ignore_errors=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(render(data))
    if args.readme:
        from benchsuite.reporting.blocks import update_block

        update_block(args.readme, BLOCK, render(data))
    if any("differs" in r["reference"] for r in data["records"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
