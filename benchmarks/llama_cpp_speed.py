"""llama.cpp's speed on the suite's GGUF exports: a structurally pruned default model against the dense one.

Prunes SmolLM2-135M with ``magnitude-l2`` (structured, --ratios, the smoke budget, no zero-shot) through the
runner with --save-models, exports the dense and the pruned model to GGUF (float32), and times llama.cpp
(llama-cpp-python) on each, interleaved: prompt processing (``--prompt`` tokens in one batch) and generation
(``--new`` tokens one at a time, after a short prompt), ``--repeats`` rounds, median tokens/s. The pruned/dense
speed ratio is set beside the FLOPs ratio and the suite's own latency speedup from the record.

    python benchmarks/llama_cpp_speed.py --out benchmarks/results/llama_cpp_speed.json   (tox -e interop runs it)
    python benchmarks/llama_cpp_speed.py --render benchmarks/results/llama_cpp_speed.json --readme docs/export.md

``--readme`` rewrites the docs page's table (docs/export.md) between ``<!-- llama-cpp-speed -->`` markers from the
JSON (``--render``: from a JSON written earlier, measuring nothing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def timed(llm, prompt: list[int], new: int) -> tuple[float, float]:
    """(prompt tokens/s, generated tokens/s) of one round."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    prefill = len(prompt) / (time.perf_counter() - start)
    llm.reset()
    llm.eval(prompt[:8])
    start = time.perf_counter()
    token = 0
    for _ in range(new):
        token = int(llm.scores[llm.n_tokens - 1].argmax()) if llm.n_tokens else token
        llm.eval([token])
    return prefill, new / (time.perf_counter() - start)


BLOCK = "llama-cpp-speed"  # the docs block this script owns (docs/export.md)


def render(result: dict) -> str:
    """The docs table of one measurement."""
    dense, pruned = result["dense"], result["pruned"]
    return "\n".join([
        f"| | dense | {result['ratio']:.0%} {result['granularity']} ({result['method']}) | pruned / dense |",
        "| --- | --- | --- | --- |",
        f"| prompt processing, {result['prompt_tokens']} tokens | {dense['prompt_tok_s']:.0f} tok/s | "
        f"{pruned['prompt_tok_s']:.0f} tok/s | {result['speedup_prompt']:.2f}x |",
        f"| generation, {result['new_tokens']} tokens | {dense['gen_tok_s']:.1f} tok/s | "
        f"{pruned['gen_tok_s']:.1f} tok/s | {result['speedup_generation']:.2f}x |",
        f"| FLOPs per token | | | {1 / result['flops_ratio']:.2f}x fewer |",
        f"| the suite's own latency speedup (transformers, CPU) | | | {result['suite_latency_speedup']:.2f}x |",
        f"| GGUF file | {dense['gguf_bytes'] / 1e6:.0f} MB | {pruned['gguf_bytes'] / 1e6:.0f} MB | "
        f"{pruned['gguf_bytes'] / dense['gguf_bytes']:.2f}x |",
    ])


def update_readme(readme: Path, result: dict) -> None:
    from benchsuite.reporting.blocks import update_block

    update_block(readme, BLOCK, render(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratios", type=float, default=0.5)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/llama_cpp_speed.json"))
    parser.add_argument("--render", type=Path, metavar="JSON", help="measure nothing: take this earlier result")
    parser.add_argument("--readme", type=Path, help="rewrite this page's llama-cpp-speed table from the result")
    args = parser.parse_args()
    if args.render:
        update_readme(args.readme or Path("docs/export.md"), json.loads(args.render.read_text()))
        return

    import llama_cpp

    from benchsuite.models.export import export
    from benchsuite.models.gguf_file import write_gguf
    from benchsuite.running.regression import environment
    from benchsuite.running.runner import Runner, RunRequest

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runner = Runner(RunRequest(methods=["magnitude-l2"], model="smollm2-135m", ratios=[args.ratios],
                                   profile="smoke", tasks=[], results=root / "results", save_models=True),
                        log=lambda _: None)
        records = {r["method"]: r for r in runner.run()}
        record, dense = records["magnitude-l2"], records["dense"]
        files = {"dense": write_gguf(runner.model_info.path, root / "dense.gguf"),
                 "pruned": export(record["_path"], "gguf", root / "pruned.gguf")}
        models = {name: llama_cpp.Llama(model_path=str(path), n_ctx=args.prompt + args.new + 8,
                                        n_batch=args.prompt, n_threads=args.threads, logits_all=False,
                                        verbose=False) for name, path in files.items()}
        sizes = {name: path.stat().st_size for name, path in files.items()}
        prompt = [(7 * i + 11) % 4000 + 100 for i in range(args.prompt)]
        rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
        for llm in models.values():  # warm-up
            timed(llm, prompt, 4)
        for _ in range(args.repeats):  # interleaved, so that the machine's drift hits both alike
            for name, llm in models.items():
                rounds[name].append(timed(llm, prompt, args.new))
        for llm in models.values():
            llm.close()
    median = {name: {"prompt_tok_s": statistics.median(p for p, _ in r),
                     "gen_tok_s": statistics.median(g for _, g in r), "rounds": r, "gguf_bytes": sizes[name]}
              for name, r in rounds.items()}
    metrics = record["metrics"]
    result = {
        "model": "smollm2-135m", "method": "magnitude-l2", "granularity": "structured", "ratio": args.ratios,
        "llama_cpp_python": llama_cpp.__version__, "threads": args.threads, "prompt_tokens": args.prompt,
        "new_tokens": args.new, "repeats": args.repeats, "kv_cache": "float16 (llama.cpp's default)",
        "machine": environment(),
        "dense": median["dense"], "pruned": median["pruned"],
        "speedup_prompt": median["pruned"]["prompt_tok_s"] / median["dense"]["prompt_tok_s"],
        "speedup_generation": median["pruned"]["gen_tok_s"] / median["dense"]["gen_tok_s"],
        "flops_ratio": metrics["flops_per_token"] / dense["metrics"]["flops_per_token"],
        "suite_latency_speedup": metrics.get("speedup"),
        "params": metrics.get("params"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"llama.cpp {result['llama_cpp_python']}, {args.threads} threads, float32: pruned/dense tokens/s "
          f"prompt {result['speedup_prompt']:.2f}x, generation {result['speedup_generation']:.2f}x; "
          f"dense/pruned FLOPs {1 / result['flops_ratio']:.2f}x; the suite's latency speedup "
          f"{result['suite_latency_speedup']:.2f}x")
    if args.readme:
        update_readme(args.readme, result)


if __name__ == "__main__":
    main()
