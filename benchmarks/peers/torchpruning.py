"""The suite's structured pruning (heads + MLP channels) against Torch-Pruning's on the same work: SmolLM2-135M,
float32 on the CPU, 20% and 50%, the suite's ``magnitude-l2`` against Torch-Pruning's ``GroupMagnitudeImportance``
(p=2) and the suite's ``llm-pruner-notune`` (Taylor, element-wise first order, no recovery) against its
``GroupTaylorImportance`` on the same calibration tokens (the suite's draw, 10 x 64 from wiki, batch 2).

Matched parameter counts: the suite side runs first and its per-layer unit counts (query heads per key/value group,
MLP channels; the suite's own parameter-matched ratio) are what Torch-Pruning is asked to remove, layer by layer
(``head_pruning_ratio_dict``, ``pruning_ratio_dict``), in the same layers (the rest, ``lm_head``, the hidden size,
and the key/value heads are left as the suite leaves them). Torch-Pruning is driven as its LLM example
(``examples/LLMs/prune_llm.py``) drives it: ``BasePruner`` with ``num_heads`` for q/k/v, ``prune_num_heads=True``,
``prune_head_dims=False``, local ranking.

Torch-Pruning first traces the model into its dependency graph. That step is probed alone, in a worker of its own
with a time limit, once per attention implementation (``sdpa``, the default, and ``eager``); the probe records the
pruning groups it built (root layer, dependencies added, the largest channel index it reached against the layer's
width). Only where a probe finishes do the peer's jobs run; where none does, the JSON, the table and the README say
how it failed, and the suite's side is still measured.

    python benchmarks/peers/torchpruning.py [--jobs magnitude-50%,...]        (tox -e peers)
    python benchmarks/peers/report.py --readme README.md

Torch-Pruning is installed into a folder of its own (``pip install --no-deps --target DIR torch-pruning==1.6.1``;
tox -e peers does this) named by ``BENCHSUITE_PEERS_TORCH_PRUNING``; only the peer's worker puts it on its path.
The script is named ``torchpruning``, not ``torch_pruning``: its folder comes first on ``sys.path`` and would
shadow the package.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - the sibling module, also when run as a script

NAME = "torch_pruning"
VARIABLE = "BENCHSUITE_PEERS_TORCH_PRUNING"
INSTALL = "pip install --no-deps --target DIR torch-pruning==1.6.1"
#: job -> (suite method, Torch-Pruning importance, ratio)
JOBS = {
    "magnitude-20%": ("magnitude-l2", "GroupMagnitudeImportance", 0.2),
    "magnitude-50%": ("magnitude-l2", "GroupMagnitudeImportance", 0.5),
    "taylor-20%": ("llm-pruner-notune", "GroupTaylorImportance", 0.2),
    "taylor-50%": ("llm-pruner-notune", "GroupTaylorImportance", 0.5),
}
CALIBRATION = (10, 64)  # the quick profile's (LLM-Pruner's 10 samples of 64 tokens)
BATCH = 2
ATTENTION = ("sdpa", "eager")
PROBE_LIMIT_S = 120  # a 4-layer LLaMA never finished in 5 minutes (a build that works takes seconds)
HEADER = ("| job | time suite / peer | peak memory suite / peer | parameters suite / peer | wiki ppl suite | "
          "wiki ppl peer | c4 ppl suite | c4 ppl peer | intervals | kept units: equal decisions |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


# -- workers ---------------------------------------------------------------------------------------------------
def suite_worker(job: str, tokens: torch.Tensor) -> tuple[torch.nn.Module, dict[str, Any]]:
    from benchsuite.host import get_registry
    from benchsuite.running.pipeline import Calibration, prune
    from benchsuite.running.plan import RunRequest, plan_model, plan_request

    class Given(Calibration):
        def samples(self, corpus, samples, length, seed):
            return tokens

    method, _, ratio = JOBS[job]
    request = RunRequest(methods=[method], ratios=[ratio], profile="quick", tasks=[], metrics=["params"],
                         device="cpu", dtype="float32")
    plan = plan_request(request, get_registry())
    model_plan = plan_model(plan)
    model_plan.dense = None
    pruned = prune(plan, model_plan, model_plan.runs[0], Given(model_plan.tokenizer))
    phase = {"seconds": round(pruned.seconds, 3), "memory": pruned.memory, "threads": torch.get_num_threads(),
             "method": method, "pruned_units": pruned.pruned_units["total"],
             "versions": common.versions("benchsuite", "torch", "transformers")}
    return pruned.model, phase


def _widths(model: torch.nn.Module) -> list[dict[str, int]]:
    """Per decoder layer: query heads, key/value heads, MLP channels."""
    out = []
    for layer in model.model.layers:
        a = layer.self_attn
        hd = model.config.head_dim if getattr(model.config, "head_dim", None) else \
            model.config.hidden_size // model.config.num_attention_heads
        out.append({"heads": a.q_proj.out_features // hd, "kv_heads": a.k_proj.out_features // hd,
                    "channels": layer.mlp.gate_proj.out_features})
    return out


class Progress:
    """What the dependency-graph build did, written line by line (the parent reads it after a time-out)."""

    def __init__(self, path: Path, model: torch.nn.Module) -> None:
        import torch_pruning as tp
        from torch_pruning.dependency import group as tp_group

        self.file = path.open("w", buffering=1)
        names = {m: n for n, m in model.named_modules()}
        self.state = {"roots": 0, "root": None, "width": None, "deps": 0, "max_index": 0}
        state, file = self.state, self.file
        get_group, add_dep = tp.DependencyGraph.get_pruning_group, tp_group.Group.add_dep

        def get_pruning_group(graph, module, fn, idxs):
            state.update(roots=state["roots"] + 1, root=names.get(module, str(module)), width=len(idxs), deps=0,
                         max_index=0)
            file.write(json.dumps(state) + "\n")
            return get_group(graph, module, fn, idxs)

        def add(group, dep, idxs):
            state["deps"] += 1
            state["max_index"] = max(state["max_index"], max((int(getattr(i, "idx", i)) for i in idxs), default=0))
            if state["deps"] % 500 == 0:
                file.write(json.dumps(state) + "\n")
            return add_dep(group, dep, idxs)

        tp.DependencyGraph.get_pruning_group = get_pruning_group
        tp_group.Group.add_dep = add


def build_pruner(model: torch.nn.Module, importance: Any, heads: dict[int, int], channels: dict[int, int]):
    """Torch-Pruning's BasePruner as its LLM example sets it up, asked for exact per-layer counts: ``heads[i]``
    query heads per key/value group and ``channels[i]`` MLP channels in layer ``i``; other layers ignored."""
    import torch_pruning as tp

    cfg, layers = model.config, model.model.layers
    num_heads = {}
    for layer in layers:
        a = layer.self_attn
        num_heads |= {a.q_proj: cfg.num_attention_heads, a.k_proj: cfg.num_key_value_heads,
                      a.v_proj: cfg.num_key_value_heads}
    rep = cfg.num_attention_heads // cfg.num_key_value_heads
    # its local head count: ceil(ratio * heads), then ceil(that / kv heads) per group; half a head below the
    # wanted count gives exactly it. Channels: heads - int(width * (1 - ratio)); a quarter below, exactly it.
    head_ratios = {layers[i].self_attn.q_proj: (rep * n - 0.5) / cfg.num_attention_heads
                   for i, n in heads.items() if n}
    width = cfg.intermediate_size
    channel_ratios = {layers[i].mlp.gate_proj: (n - 0.25) / width for i, n in channels.items() if n}
    pruned = set(heads) | set(channels)
    ignored = [model.lm_head] + [layers[i] for i in range(len(layers)) if i not in pruned]
    example = torch.randint(0, cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    return tp.pruner.BasePruner(
        model, example_inputs=example, importance=importance, global_pruning=False,
        output_transform=lambda x: x.logits, pruning_ratio=0.0, pruning_ratio_dict=channel_ratios,
        ignored_layers=ignored, num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
        head_pruning_ratio=0.0, head_pruning_ratio_dict=head_ratios)


def _counts(spec: Path) -> tuple[dict[int, int], dict[int, int]]:
    data = json.loads(spec.read_text())
    return ({int(k): v for k, v in data["heads"].items()}, {int(k): v for k, v in data["channels"].items()})


def probe_worker(attention: str, model_path: Path, out: Path) -> None:
    """Build Torch-Pruning's pruner (its dependency graph) for the 50% counts, nothing else."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32,
                                                 attn_implementation=attention).eval()
    import torch_pruning as tp

    Progress(out / "progress.jsonl", model)
    heads, channels = _counts(out / "counts.json")
    start = time.perf_counter()
    build_pruner(model, tp.importance.GroupMagnitudeImportance(p=2), heads, channels)
    out.mkdir(parents=True, exist_ok=True)
    (out / "phase.json").write_text(json.dumps({"seconds": round(time.perf_counter() - start, 3)}))


def peer_worker(job: str, tokens: torch.Tensor, model_path: Path, attention: str,
                out: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Torch-Pruning on the suite's per-layer counts; Taylor's gradients from the mean loss on the same tokens."""
    import torch_pruning as tp
    from transformers import AutoModelForCausalLM

    _, importance_name, _ = JOBS[job]
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32,
                                                 attn_implementation=attention).eval()
    heads, channels = _counts(out / "counts.json")
    importance = getattr(tp.importance, importance_name)(p=2) if importance_name == "GroupMagnitudeImportance" \
        else getattr(tp.importance, importance_name)()

    def run() -> None:
        pruner = build_pruner(model, importance, heads, channels)
        if importance_name == "GroupTaylorImportance":
            model.zero_grad()
            for batch in tokens.split(BATCH):
                loss = model(batch, labels=batch).loss * len(batch) / len(tokens)
                loss.backward()
        for group in pruner.step(interactive=True):
            group.prune()
        model.zero_grad(set_to_none=True)

    _, phase = common.timed_phase(run)
    for layer in model.model.layers:  # the attributes HF's attention reads, as Torch-Pruning's example sets them
        a = layer.self_attn
        a.num_key_value_groups = (a.q_proj.out_features // a.head_dim) // (a.k_proj.out_features // a.head_dim)
    phase |= {"importance": importance_name, "attention": attention,
              "versions": common.versions("torch-pruning", "torch", "transformers")}
    return model, phase


def worker(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if args.worker == "probe":
        return probe_worker(args.attention, Path(args.model_path), out)
    tokens = torch.load(args.tokens)
    if args.worker == "suite":
        model, phase = suite_worker(args.job, tokens)
    else:
        model, phase = peer_worker(args.job, tokens, Path(args.model_path), args.attention, out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model, out / "model.pt")
    (out / "phase.json").write_text(json.dumps(phase, indent=1))


# -- the comparison --------------------------------------------------------------------------------------------
def kept_units(dense: torch.nn.Module, pruned: torch.nn.Module) -> list[dict[str, list[int]]]:
    """Per layer, which dense query heads and MLP channels survive (matched row by row: pruning removes rows and
    leaves the others' values as they were)."""
    hd = dense.model.layers[0].self_attn.head_dim
    out = []
    for d, p in zip(dense.model.layers, pruned.model.layers):
        entry = {}
        for key, module, unit in (("heads", "self_attn.q_proj", hd), ("channels", "mlp.gate_proj", 1)):
            rows = d.get_submodule(module).weight.detach().reshape(-1, unit * d.get_submodule(module).in_features)
            kept = p.get_submodule(module).weight.detach().reshape(-1, rows.shape[1])
            index = {tuple(r.tolist()[:8]) + (float(r.sum()),): i for i, r in enumerate(rows)}
            entry[key] = sorted(index[tuple(r.tolist()[:8]) + (float(r.sum()),)] for r in kept)
        out.append(entry)
    return out


def unit_agreement(dense: torch.nn.Module, a: list[dict], b: list[dict]) -> dict[str, Any]:
    """Fraction of equal keep/prune decisions over all query heads and MLP channels of the pruned layers."""
    hd = dense.model.layers[0].self_attn.head_dim
    rows, same, total = [], 0, 0
    for i, (x, y, layer) in enumerate(zip(a, b, dense.model.layers)):
        widths = {"heads": layer.self_attn.q_proj.out_features // hd, "channels": layer.mlp.gate_proj.out_features}
        if all(len(x[k]) == widths[k] for k in widths) and all(len(y[k]) == widths[k] for k in widths):
            continue  # a layer neither side pruned
        row = {"layer": i}
        for k, width in widths.items():
            equal = width - len(set(x[k]) ^ set(y[k]))
            row[k] = equal / width
            same, total = same + equal, total + width
        rows.append(row)
    return {"equal_decisions": same / total if total else 1.0, "per_layer": rows}


def probe(path: Path, site: Path, work: Path, counts: dict[str, dict[int, int]]) -> list[dict[str, Any]]:
    results = []
    for attention in ATTENTION:
        out = work / f"probe-{attention}"
        out.mkdir()
        (out / "counts.json").write_text(json.dumps(counts))
        print(f"  torch-pruning: building its dependency graph (attention {attention}, limit {PROBE_LIMIT_S} s)",
              flush=True)
        entry: dict[str, Any] = {"attention": attention, "limit_s": PROBE_LIMIT_S}
        try:
            phase = common.run_worker(Path(__file__), "probe", "probe", out / "none", out, path, site=site,
                                      extra=["--attention", attention], timeout=PROBE_LIMIT_S)
            entry |= {"status": "ok", "seconds": phase["seconds"]}
        except common.WorkerTimeout as exc:
            entry |= {"status": "timeout", "seconds": exc.seconds}
        except RuntimeError as exc:
            entry |= {"status": "error", "error": str(exc).splitlines()[-1][:300]}
        lines = (out / "progress.jsonl").read_text().splitlines() if (out / "progress.jsonl").exists() else []
        if lines:
            last = json.loads(lines[-1])
            entry |= {"groups_started": last["roots"], "last_root": last["root"], "root_width": last["width"],
                      "deps_in_last_group": last["deps"], "max_index_in_last_group": last["max_index"]}
        print(f"  torch-pruning ({attention}): {describe_probe(entry)}", flush=True)
        results.append(entry)
    return results


def describe_probe(p: dict[str, Any]) -> str:
    if p["status"] == "ok":
        return f"dependency graph built in {p['seconds']:.1f} s"
    if p["status"] == "error":
        return f"failed: {p['error']}"
    text = f"BasePruner() had not returned after {p['seconds']:.0f} s"
    if p.get("last_root"):
        text += (f" ({p['groups_started']} pruning groups started; the last, rooted at {p['last_root']} "
                 f"({p['root_width']} channels), had {p['deps_in_last_group']:,} dependencies and reached channel "
                 f"index {p['max_index_in_last_group']:,})")
    return text


def suite_counts(phase_dir: Path, dense: torch.nn.Module) -> dict[str, dict[int, int]]:
    """The suite's pruned units per layer (from its model): query heads per kv group, MLP channels."""
    pruned = torch.load(phase_dir / "model.pt", weights_only=False)
    rep = dense.config.num_attention_heads // dense.config.num_key_value_heads
    heads, channels = {}, {}
    for i, (w_dense, w) in enumerate(zip(_widths(dense), _widths(pruned))):
        h, c = w_dense["heads"] - w["heads"], w_dense["channels"] - w["channels"]
        if h or c:
            heads[i], channels[i] = h // rep, c
    return {"heads": heads, "channels": channels}


def compare(job: str, path: Path, site: Path, dense: torch.nn.Module, tokens_file: Path, work: Path,
            probes: list[dict[str, Any]]) -> dict[str, Any]:
    print(f"  {job}: suite pruning", flush=True)
    suite_dir = work / "suite"
    s = common.run_worker(Path(__file__), "suite", job, tokens_file, suite_dir, path)
    suite_model = torch.load(suite_dir / "model.pt", weights_only=False).eval()
    counts = suite_counts(suite_dir, dense)
    entry: dict[str, Any] = {"job": job, "ratio": JOBS[job][2], "suite_method": JOBS[job][0],
                             "peer_importance": JOBS[job][1],
                             "calibration": {"corpus": "wiki", "samples": CALIBRATION[0], "length": CALIBRATION[1],
                                             "seed": 0},
                             "counts": counts}
    print(f"  {job}: evaluating the suite's model", flush=True)
    entry["suite"] = {"phase": s, "params": sum(p.numel() for p in suite_model.parameters()),
                      "ppl": {k: _slim(v) for k, v in common.evaluate(suite_model, path).items()}}
    working = next((p["attention"] for p in probes if p["status"] == "ok"), None)
    if working is None:
        entry["peer"] = {"failed": "; ".join(f"{p['attention']}: {describe_probe(p)}" for p in probes)}
        return entry
    peer_dir = work / "peer"
    peer_dir.mkdir()
    (peer_dir / "counts.json").write_text(json.dumps(counts))
    print(f"  {job}: torch-pruning pruning", flush=True)
    try:
        p = common.run_worker(Path(__file__), "peer", job, tokens_file, peer_dir, path, site=site,
                              extra=["--attention", working])
    except RuntimeError as exc:
        entry["peer"] = {"failed": str(exc).splitlines()[-1][:300]}
        return entry
    peer_model = torch.load(peer_dir / "model.pt", weights_only=False).eval()
    print(f"  {job}: evaluating torch-pruning's model", flush=True)
    ppl = common.evaluate(peer_model, path)
    entry["peer"] = {"phase": p, "params": sum(q.numel() for q in peer_model.parameters()),
                     "ppl": {k: _slim(v) for k, v in ppl.items()}}
    entry["time_ratio"] = s["seconds"] / p["seconds"]
    entry["memory_ratio"] = (s["memory"]["peak_mb"] / p["memory"]["peak_mb"]
                             if p["memory"]["peak_mb"] > 0 else None)
    entry["peer_vs_suite"] = {k: common.paired(entry["suite"]["ppl"][k], ppl[k]) for k in ppl}
    entry["agreement"] = unit_agreement(dense, kept_units(dense, suite_model), kept_units(dense, peer_model))
    return entry


def _slim(ppl: dict[str, Any]) -> dict[str, Any]:
    return {k: ppl[k] for k in ("ppl", "ci_lo", "ci_hi", "tokens", "windows", "seq_len", "window_nll",
                                "window_tokens")}


def job_row(j: dict[str, Any]) -> str:
    s, p = j["suite"], j["peer"]
    suite_ppl = (common.fmt_ppl(s["ppl"]["wiki"]), common.fmt_ppl(s["ppl"]["c4"]))
    if "failed" in p:
        return (f"| {j['job']} | - ({s['phase']['seconds']:.1f} s / -) | - ({common.fmt_mb(s['phase']['memory'])} / -) "
                f"| {s['params']:,} / - | {suite_ppl[0]} | - | {suite_ppl[1]} | - | - | - |")
    mem = "-" if j["memory_ratio"] is None else f"{j['memory_ratio']:.2f}x"
    return (f"| {j['job']} | **{j['time_ratio']:.2f}x** ({s['phase']['seconds']:.1f} s / {p['phase']['seconds']:.1f} s)"
            f" | {mem} ({common.fmt_mb(s['phase']['memory'])} / {common.fmt_mb(p['phase']['memory'])}) | "
            f"{s['params']:,} / {p['params']:,} | {suite_ppl[0]} | {common.fmt_ppl(p['ppl']['wiki'])} | "
            f"{suite_ppl[1]} | {common.fmt_ppl(p['ppl']['c4'])} | {common.overlap(j)} | "
            f"{j['agreement']['equal_decisions']:.3f} |")


def table(result: dict[str, Any]) -> str:
    lines = [HEADER, *(job_row(j) for j in result["jobs"])]
    if not any(p["status"] == "ok" for p in result["probes"]):
        lines += ["", f"Torch-Pruning ({result['peer_versions']['torch-pruning']}) did not run: "
                  + "; ".join(f"with {p['attention']} attention, {describe_probe(p)}" for p in result["probes"])
                  + ". The suite's side above is measured all the same."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, of {', '.join(JOBS)}")
    for name in ("worker", "job", "tokens", "out", "model-path", "attention"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    jobs = [j for j in args.jobs.split(",") if j]
    bad = [j for j in jobs if j not in JOBS]
    if bad:
        raise SystemExit(f"unknown job: {', '.join(bad)} (jobs: {', '.join(JOBS)})")
    site = common.peer_site(VARIABLE, INSTALL)
    from benchsuite.models.checkpoint import load_model_dir

    path = common.model_path()
    dense = load_model_dir(path).eval()
    tokens = common.calibration_tokens(path, *CALIBRATION)
    results = []
    with tempfile.TemporaryDirectory(prefix="peers-tp-") as tmp:
        work = Path(tmp)
        tokens_file = work / "calib.pt"
        torch.save(tokens, tokens_file)
        probes = probe(path, site, work, _fifty_counts(path, dense, tokens_file, work))
        for job in jobs:
            folder = work / job.replace("%", "")
            folder.mkdir()
            results.append(compare(job, path, site, dense, tokens_file, folder, probes))
            print(job_row(results[-1]), flush=True)
    results = common.merged(NAME, results, key=lambda r: r["job"], order=lambda r: list(JOBS).index(r["job"]))
    result = {"peer": "torch-pruning", "peer_versions": common.versions_at(site, "torch-pruning"),
              "model": common.MODEL, "dtype": "float32", "device": "cpu", "eval": common.EVAL,
              "machine": common.machine(), "probes": probes, "jobs": results}
    js, md = common.write_result(NAME, result, table(result))
    print(table(result))
    print(f"wrote {js} and {md}")


def _fifty_counts(path: Path, dense: torch.nn.Module, tokens_file: Path, work: Path) -> dict[str, dict[int, int]]:
    """The counts the probe builds its pruner for: the suite's at 50% (magnitude-l2)."""
    out = work / "counts-50"
    common.run_worker(Path(__file__), "suite", "magnitude-50%", tokens_file, out, path)
    return suite_counts(out, dense)


if __name__ == "__main__":
    main()
