"""The suite's structured pruning (heads + MLP channels) against Torch-Pruning's on the same work: SmolLM2-135M,
float32 on the CPU, 20% and 50%, the suite's ``magnitude-l2`` against Torch-Pruning's ``GroupMagnitudeImportance``
(p=2) and the suite's ``llm-pruner+none`` (Taylor, element-wise first order, no recovery) against its
``GroupTaylorImportance`` on the same calibration tokens (the suite's draw, 10 x 64 from wiki, batch 2).

Matched parameter counts: the suite side runs first and its per-layer unit counts (query heads per key/value group,
MLP channels; the suite's own parameter-matched ratio) are what Torch-Pruning is asked to remove, layer by layer
(``head_pruning_ratio_dict``, ``pruning_ratio_dict``), in the same layers (the rest, ``lm_head``, the hidden size,
and the key/value heads are left as the suite leaves them). Torch-Pruning is driven as its LLM example
(``examples/LLMs/prune_llm.py``) drives it: ``BasePruner`` with ``num_heads`` for q/k/v, ``prune_num_heads=True``,
``prune_head_dims=False``, local ranking.

Torch-Pruning first traces the model into its dependency graph, and as transformers 5 runs a LLaMA by default that
build never ends: the KV cache's first ``torch.cat([empty, keys], dim=-2)`` hides the keys' width from Torch-Pruning's
shape inference, so it maps the rotary embedding's ``cat((-x2, x1), dim=-1)`` as a concat of channels (its guard on
the dim cannot tell ``-1``, which autograd reports as 2**64 - 1, from an unset one), and each pass round the loop
slice -> cat -> mul -> add -> mul -> slice shifts the key indices by the keys' width (``get_pruning_group`` stops
only on a repeated index list). And under SDPA, transformers 5 shares key/value heads through ``enable_gqa``, not
``repeat_kv``'s expand, the only GQA Torch-Pruning's index mapping knows. So for ``BasePruner(...)`` only the model
runs without its cache (``use_cache=False`` in the example inputs) and with eager attention (the same function):
the graph and its coupling of heads and channels are the model's. Importance, pruning and the pruned model use sdpa.

Two more settings make Torch-Pruning do what it is asked. It ranks heads only inside a width scope that prunes
something (its example gives the width the head ratio), so ``q_proj`` gets the head ratio as width ratio too,
unused with ``prune_head_dims=False``. And its rule that a GQA layer's key/value projections keep all their rows
is applied to each group it yields (:func:`_keep_kv_rows`): its own test misses a layer left with one query head
per key/value head (at 50% here, every pruned layer), which would ask for key/value rows that do not exist and be
dropped unpruned. The phase JSON counts where that happened.

The build is still probed alone first, in a worker with a time limit, recording the pruning groups it built (root
layer, dependencies added, the largest channel index reached against the layer's width); only where it finishes
do the peer's jobs run, else the JSON, the table and the README say how it failed, and the suite's side is still
measured.

    python benchmarks/peers/torchpruning.py [--jobs magnitude-50%,...]        (tox -e peers)
    python benchmarks/peers/report.py --readme docs/peers.md

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
    "taylor-20%": ("llm-pruner+none", "GroupTaylorImportance", 0.2),
    "taylor-50%": ("llm-pruner+none", "GroupTaylorImportance", 0.5),
}
CALIBRATION = (10, 64)  # the quick profile's (LLM-Pruner's 10 samples of 64 tokens)
BATCH = 2
ATTENTION = "sdpa"  # the attention the model is loaded, scored, pruned and evaluated with
TRACE = {"attention": "eager", "use_cache": False}  # how BasePruner(...) traces it (the module doc says why)
PROBE_LIMIT_S = 120  # traced with the cache, a 4-layer LLaMA never finished in 5 minutes (this build takes seconds)
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


def build_pruner(model: torch.nn.Module, importance: Any, heads: dict[int, int],
                 channels: dict[int, int]) -> tuple[Any, list[str]]:
    """Torch-Pruning's BasePruner as its LLM example sets it up, asked for exact per-layer counts: ``heads[i]``
    query heads per key/value group and ``channels[i]`` MLP channels in layer ``i``; other layers ignored. Traced
    as :data:`TRACE` says. Also returns the list its GQA rule fills (:func:`_keep_kv_rows`)."""
    import torch_pruning as tp

    cfg, layers = model.config, model.model.layers
    num_heads = {}
    for layer in layers:
        a = layer.self_attn
        num_heads |= {a.q_proj: cfg.num_attention_heads, a.k_proj: cfg.num_key_value_heads,
                      a.v_proj: cfg.num_key_value_heads}
    kv = cfg.num_key_value_heads
    # its local head count: ceil(ratio * heads), then ceil(that / kv heads) per group; half a head below n per
    # group in every group gives exactly n. Channels: width - int(width * (1 - ratio)); a quarter below, exactly it.
    # Head ratios go to the whole attention module: it reads them off whichever of q/k/v its group lists first.
    head_ratios = {layers[i].self_attn: (kv * n - 0.5) / cfg.num_attention_heads for i, n in heads.items() if n}
    width = cfg.intermediate_size
    channel_ratios = {layers[i].mlp.gate_proj: (n - 0.25) / width for i, n in channels.items() if n}
    channel_ratios |= {attn.q_proj: ratio for attn, ratio in head_ratios.items()}  # opens the head ranking
    pruned = set(heads) | set(channels)
    ignored = [model.lm_head] + [layers[i] for i in range(len(layers)) if i not in pruned]
    tokens = torch.randint(0, cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    attention = cfg._attn_implementation
    model.set_attn_implementation(TRACE["attention"])
    try:
        pruner = tp.pruner.BasePruner(
            model, example_inputs={"input_ids": tokens, "use_cache": TRACE["use_cache"]}, importance=importance,
            global_pruning=False, output_transform=lambda x: x.logits, pruning_ratio=0.0,
            pruning_ratio_dict=channel_ratios, ignored_layers=ignored, num_heads=num_heads, prune_num_heads=True,
            prune_head_dims=False, head_pruning_ratio=0.0, head_pruning_ratio_dict=head_ratios)
    finally:
        model.set_attn_implementation(attention)
    kv_layers = {m for layer in layers for m in (layer.self_attn.k_proj, layer.self_attn.v_proj)} \
        if kv < cfg.num_attention_heads else set()
    return pruner, _keep_kv_rows(pruner, kv_layers)


def _keep_kv_rows(pruner: Any, kv_layers: set[torch.nn.Module]) -> list[str]:
    """Torch-Pruning's GQA rule (``BasePruner._prune``: with ``prune_num_heads``, a GQA layer's key/value
    projections keep all rows, ``group[i] = (dep, [])``) applied to every group before its own check. It decides
    GQA from the head counts it has just lowered, so a layer left with one query head per key/value head looks like
    MHA to it; that group keeps the query rows' indices for key/value, fails the check and is dropped unpruned.
    Returns the key/value projections where the rule was applied here and not by it."""
    graph, applied = pruner.DG, []
    check = graph.check_pruning_group

    def checked(group) -> bool:
        for i, (dep, idxs) in enumerate(group):
            if len(idxs) and dep.target.module in kv_layers and graph.is_out_channel_pruning_fn(dep.handler):
                group[i] = (dep, [])
                applied.append(graph._module2name[dep.target.module])
        return check(group)

    graph.check_pruning_group = checked
    return applied


def tp_prune(model: torch.nn.Module, importance_name: str, heads: dict[int, int], channels: dict[int, int],
             tokens: torch.Tensor) -> list[str]:
    """Torch-Pruning's pruning of ``model`` in place (:func:`build_pruner`); Taylor's gradients from the mean loss
    on ``tokens`` (batches of :data:`BATCH`). Returns where the GQA rule was applied for it."""
    import torch_pruning as tp

    importance = getattr(tp.importance, importance_name)(p=2) if importance_name == "GroupMagnitudeImportance" \
        else getattr(tp.importance, importance_name)()
    pruner, applied = build_pruner(model, importance, heads, channels)
    if importance_name == "GroupTaylorImportance":
        model.zero_grad()
        for batch in tokens.split(BATCH):
            loss = model(batch, labels=batch).loss * len(batch) / len(tokens)
            loss.backward()
    for group in pruner.step(interactive=True):
        group.prune()
    model.zero_grad(set_to_none=True)
    for layer in model.model.layers:  # the attributes HF's attention reads, as Torch-Pruning's example sets them
        a = layer.self_attn
        a.num_key_value_groups = (a.q_proj.out_features // a.head_dim) // (a.k_proj.out_features // a.head_dim)
    return applied


def _counts(spec: Path) -> tuple[dict[int, int], dict[int, int]]:
    data = json.loads(spec.read_text())
    return ({int(k): v for k, v in data["heads"].items()}, {int(k): v for k, v in data["channels"].items()})


def probe_worker(model_path: Path, out: Path) -> None:
    """Build Torch-Pruning's pruner (its dependency graph) for the 50% counts, nothing else."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32,
                                                 attn_implementation=ATTENTION).eval()
    import torch_pruning as tp

    Progress(out / "progress.jsonl", model)
    heads, channels = _counts(out / "counts.json")
    start = time.perf_counter()
    build_pruner(model, tp.importance.GroupMagnitudeImportance(p=2), heads, channels)
    out.mkdir(parents=True, exist_ok=True)
    (out / "phase.json").write_text(json.dumps({"seconds": round(time.perf_counter() - start, 3)}))


def peer_worker(job: str, tokens: torch.Tensor, model_path: Path,
                out: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Torch-Pruning on the suite's per-layer counts (:func:`tp_prune`), timed."""
    from transformers import AutoModelForCausalLM

    _, importance_name, _ = JOBS[job]
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32,
                                                 attn_implementation=ATTENTION).eval()
    heads, channels = _counts(out / "counts.json")
    applied, phase = common.timed_phase(lambda: tp_prune(model, importance_name, heads, channels, tokens))
    phase |= {"importance": importance_name, "attention": ATTENTION, "trace": TRACE,
              "gqa_rule_applied_for_it": len(applied),
              "versions": common.versions("torch-pruning", "torch", "transformers")}
    return model, phase


def worker(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if args.worker == "probe":
        return probe_worker(Path(args.model_path), out)
    tokens = torch.load(args.tokens)
    if args.worker == "suite":
        model, phase = suite_worker(args.job, tokens)
    else:
        model, phase = peer_worker(args.job, tokens, Path(args.model_path), out)
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
    """The dependency-graph build alone, traced as :data:`TRACE` says (one entry: the JSON keeps a list)."""
    out = work / "probe"
    out.mkdir()
    (out / "counts.json").write_text(json.dumps(counts))
    print(f"  torch-pruning: building its dependency graph ({TRACE}, limit {PROBE_LIMIT_S} s)", flush=True)
    entry: dict[str, Any] = {"attention": TRACE["attention"], "use_cache": TRACE["use_cache"],
                             "limit_s": PROBE_LIMIT_S}
    try:
        phase = common.run_worker(Path(__file__), "probe", "probe", out / "none", out, path, site=site,
                                  timeout=PROBE_LIMIT_S)
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
    print(f"  torch-pruning: {describe_probe(entry)}", flush=True)
    return [entry]


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
    """The suite's pruned units per layer, read from its model (:func:`unit_counts`)."""
    return unit_counts(dense, torch.load(phase_dir / "model.pt", weights_only=False))


def unit_counts(dense: torch.nn.Module, pruned: torch.nn.Module) -> dict[str, dict[int, int]]:
    """Per layer either side pruned: query heads removed from each key/value group (the suite removes as many from
    every group), MLP channels removed."""
    kv = dense.config.num_key_value_heads
    heads, channels = {}, {}
    for i, (w_dense, w) in enumerate(zip(_widths(dense), _widths(pruned))):
        h, c = w_dense["heads"] - w["heads"], w_dense["channels"] - w["channels"]
        if h % kv:
            raise ValueError(f"layer {i}: {h} query heads removed, not as many from each of {kv} key/value groups")
        if h or c:
            heads[i], channels[i] = h // kv, c
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
    if not any(p["status"] == "ok" for p in probes):
        entry["peer"] = {"failed": "; ".join(f"{p['attention']}: {describe_probe(p)}" for p in probes)}
        return entry
    peer_dir = work / "peer"
    peer_dir.mkdir()
    (peer_dir / "counts.json").write_text(json.dumps(counts))
    print(f"  {job}: torch-pruning pruning", flush=True)
    try:
        p = common.run_worker(Path(__file__), "peer", job, tokens_file, peer_dir, path, site=site)
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
    built = [p for p in result["probes"] if p["status"] == "ok"]
    ran = [j for j in result["jobs"] if "phase" in j.get("peer", {})]
    if built and ran:
        phase = ran[0]["peer"]["phase"]
        trace = phase.get("trace", TRACE)
        rule = ", ".join(f"{j['job']} {j['peer']['phase'].get('gqa_rule_applied_for_it', 0)}" for j in ran)
        lines += ["", f"Its dependency graph was built in {built[0]['seconds']:.1f} s, traced with "
                  f"{trace['attention']} attention and use_cache={trace['use_cache']}; importance, pruning and "
                  f"evaluation ran with {phase.get('attention', ATTENTION)} attention. Key/value projections where "
                  f"the script applied Torch-Pruning's GQA rule for it (its own check misses them): {rule}."]
    if not built:
        lines += ["", f"Torch-Pruning ({result['peer_versions']['torch-pruning']}) did not run: "
                  + "; ".join(f"with {p['attention']} attention, {describe_probe(p)}" for p in result["probes"])
                  + ". The suite's side above is measured all the same."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, of {', '.join(JOBS)}")
    for name in ("worker", "job", "tokens", "out", "model-path"):
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
