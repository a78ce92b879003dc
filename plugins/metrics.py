"""Built-in plugin: the metrics every run measures (perplexity, zero-shot accuracy, parameters, FLOPs,
latency with the dense model timed interleaved, and latency with 2:4 sparse kernels), and ``fidelity`` (KL divergence
to the dense model's predictions and top-1 agreement) where asked for. Peak memory and
times of the pruning, recovery and evaluation phases are measured by the runner around the phases
themselves (``peak_mem_*_mb``, ``*_time_s``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from benchsuite import ConfigError, hookimpl
from benchsuite.api.architecture import bos_token
from benchsuite.api.columns import STANDARD, Column, accuracy_column, perplexity_column
from benchsuite.api.metrics import MeasureContext, Metric, MetricResult
from benchsuite.api.profiles import corpus_label

BENCHSUITE_API = "2.4"


class Perplexity(Metric):
    """Token perplexity over non-overlapping windows of each corpus' evaluation part, with a bootstrap
    interval over the windows (:func:`benchsuite.evaluation.perplexity.perplexity`)."""

    name = "perplexity"
    description = "token perplexity on the evaluation part of each corpus (--corpora), 95% interval over windows"
    default = True

    def setup(self) -> None:
        self._windows: dict[str, torch.Tensor] = {}

    def windows(self, corpus, ctx: MeasureContext) -> torch.Tensor:
        """The corpus' evaluation windows (tokenized once per ``benchsuite run``)."""
        if corpus.name not in self._windows:
            from benchsuite.data.tokens import eval_windows

            p = ctx.profile
            self._windows[corpus.name] = eval_windows(ctx.tokenizer, corpus, p.seq_len, p.eval_windows)
        return self._windows[corpus.name]

    def columns(self, ctx: MeasureContext) -> list:
        return [perplexity_column(corpus_label(corpus.name)) for corpus in ctx.corpora]

    def prepare(self, ctx: MeasureContext) -> None:
        for corpus in ctx.corpora:  # a missing, unreachable or too short corpus fails before any run
            try:
                windows = self.windows(corpus, ctx)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            if len(windows) == 0:
                raise ConfigError(f"corpus '{corpus.name}': its evaluation part holds fewer than "
                                  f"{ctx.profile.seq_len} tokens, not one perplexity window")

    def measure(self, model: nn.Module, ctx: MeasureContext) -> MetricResult:
        from benchsuite.evaluation.perplexity import perplexity

        values, details = {}, {}
        bos = bos_token(model, ctx.tokenizer)
        for corpus in ctx.corpora:
            key = f"ppl_{corpus_label(corpus.name)}"
            result = perplexity(model, self.windows(corpus, ctx), ctx.profile.eval_batch, desc=f"ppl {corpus.name}",
                                bos=bos, observers=ctx.window_observers.get(corpus.name, ()))
            values[key], values[f"{key}_lo"], values[f"{key}_hi"] = result["ppl"], result["ci_lo"], result["ci_hi"]
            details[key] = {k: v for k, v in result.items() if k != "ppl"} | {
                "corpus": corpus.name, "split": "evaluation part (disjoint from calibration)",
                "windows": "non-overlapping", "bos": "none prepended" if bos is None else
                f"token {bos} before every window (the model's family expects it; context only, not scored)"}
        return MetricResult(values, details)


class ZeroShot(Metric):
    """Zero-shot accuracy through lm-eval on the profile's tasks (or ``--tasks``), with intervals over
    the examples; nothing when no task is asked for."""

    name = "zeroshot"
    description = "zero-shot accuracy through lm-eval (--tasks, --limit), 95% interval over examples"
    default = True

    def columns(self, ctx: MeasureContext) -> list:
        return [accuracy_column(task) for task in (*ctx.tasks, "avg")] if ctx.tasks else []

    def prepare(self, ctx: MeasureContext) -> None:
        if ctx.tasks:
            from benchsuite.data.tasks import prepare_tasks

            prepare_tasks(ctx.tasks)  # fetch task data now: a missing download fails before any run

    def measure(self, model: nn.Module, ctx: MeasureContext) -> MetricResult:
        if not ctx.tasks:
            return MetricResult({})
        from benchsuite.evaluation.zeroshot import evaluate_zeroshot

        options = ctx.task_options
        zeroshot = evaluate_zeroshot(model, ctx.tokenizer, ctx.tasks, ctx.task_limit,
                                     options.get("batch_size") or ctx.profile.task_batch,
                                     include_path=options.get("include_path"), num_fewshot=options.get("num_fewshot"))
        values = {}
        for task, result in zeroshot["tasks"].items():
            if not isinstance(result["value"], (int, float)) or not math.isfinite(result["value"]):
                raise FloatingPointError(f"zero-shot {task}: accuracy {result['value']!r} is not a number")
            values[f"acc_{task}"] = result["value"]
            values[f"acc_{task}_lo"], values[f"acc_{task}_hi"] = result.get("ci_lo"), result.get("ci_hi")
            if "perplexity" in result.get("metrics", {}):  # LAMBADA: the perplexity of the last words too
                values[f"ppl_{task}"] = result["metrics"]["perplexity"]
        values["acc_avg"] = zeroshot["average"]
        values["acc_avg_lo"], values["acc_avg_hi"] = zeroshot["average_ci_lo"], zeroshot["average_ci_hi"]
        return MetricResult(values, {"zeroshot": zeroshot})


class Params(Metric):
    name = "params"
    description = "unique parameters (tied embeddings once), and their fraction of the dense model's"
    default = True
    phase = "efficiency"

    def columns(self, ctx: MeasureContext) -> list:
        return [STANDARD["params"], STANDARD["params_ratio"]]

    def measure(self, model: nn.Module, ctx: MeasureContext) -> MetricResult:
        from benchsuite.evaluation.size import count_params

        params = count_params(model)
        return MetricResult({"params": params, "params_ratio": params / ctx.dense_params},
                            {"params": "unique parameters (tied embeddings once), embeddings included"})


class Flops(Metric):
    name = "flops"
    description = "FLOPs per token of one forward over seq_len tokens (torch FlopCounterMode, eager attention)"
    default = True
    phase = "efficiency"

    def columns(self, ctx: MeasureContext) -> list:
        return [STANDARD["flops_per_token"]]

    def measure(self, model: nn.Module, ctx: MeasureContext) -> MetricResult:
        from benchsuite.evaluation.size import flops_per_token

        flops = flops_per_token(model, ctx.profile.seq_len)
        return MetricResult({"flops_per_token": flops["flops_per_token"]}, {"flops_per_token": flops})


class Latency(Metric):
    """Median forward latency; a pruned model is timed interleaved with a fresh dense copy, which gives
    its speedup with an interval (see :func:`benchsuite.evaluation.latency.latency`)."""

    name = "latency"
    description = "median forward latency (dense kernels), speedup over the dense model timed interleaved"
    default = True
    phase = "efficiency"

    def columns(self, ctx: MeasureContext) -> list:
        return [STANDARD["latency_ms"], STANDARD["speedup"]]

    def measure(self, model: nn.Module, ctx: MeasureContext) -> MetricResult:
        from benchsuite.evaluation.latency import latency

        p = ctx.profile
        reference = ctx.reference()
        lat = latency(model, p.latency_batch, p.latency_len, p.latency_repeats, reference=reference)
        del reference
        values = {"latency_ms": lat["latency_ms"], "latency_iqr_ms": lat["iqr_ms"], "latency_noisy": int(lat["noisy"])}
        if lat.get("speedup") is not None:
            values |= {"speedup": lat["speedup"], "speedup_lo": lat["speedup_lo"], "speedup_hi": lat["speedup_hi"]}
        return MetricResult(values, {"latency_ms": lat})


class SparseLatency(Metric):
    """Latency with 2:4-sparse weights run by torch's semi-structured kernels (CUDA); where that can't run
    the reason is recorded (nothing for a model without 2:4-sparse weights)."""

    name = "sparse-latency"
    description = "median forward latency with 2:4-sparse weights on torch's semi-structured kernels (CUDA)"
    default = True
    phase = "efficiency"

    def columns(self, ctx: MeasureContext) -> list:
        return [STANDARD["latency_sparse_ms"]]

    def measure(self, model: nn.Module, ctx: MeasureContext) -> MetricResult:
        from benchsuite.evaluation.latency import sparse_latency

        p = ctx.profile
        sparse = sparse_latency(model, p.latency_batch, p.latency_len, p.latency_repeats)
        values = {}
        if sparse["latency_ms"] is not None:
            values = {"latency_sparse_ms": sparse["latency_ms"], "latency_sparse_noisy": int(bool(sparse.get("noisy")))}
        details = {"latency_sparse_ms": sparse} if sparse.get("reason") != "no 2:4-sparse weights" else {}
        return MetricResult(values, details)


class Fidelity(Metric):
    """KL divergence of the next-token distributions, KL(dense || pruned), and top-1 agreement with the dense model,
    on the first ``windows`` perplexity windows of a corpus (:mod:`benchsuite.evaluation.fidelity`); nothing for the
    dense model itself. It shares the perplexity metric's forward passes: the dense model's log-probabilities are
    kept from its own perplexity pass, and each pruned model's logits are read from its pass. Where the dense
    model was measured by an earlier invocation (resumed runs), a copy of it computes them once."""

    name = "fidelity"
    description = ("KL(dense || pruned) of next-token distributions and top-1 agreement with the dense model, on "
                   "perplexity windows, 95% interval over windows (no forward pass of its own)")
    default = True

    #: how many of the corpus' evaluation windows (the first ones; 0: all)
    windows: int = 32
    #: the corpus (a name from --corpora; empty: the first)
    corpus: str = ""

    def validate(self) -> None:
        if self.windows < 0:
            raise ValueError("windows must be 0 (all) or more")

    def setup(self) -> None:
        self._windows: torch.Tensor | None = None
        self._reference: torch.Tensor | None = None  # the dense model's log-probabilities of the windows
        self._capture: dict[int, torch.Tensor] = {}  # the dense model's, while its perplexity pass runs
        self._pending = None  # this model's distances, while its perplexity pass runs

    def _corpus(self, ctx: MeasureContext):
        if not ctx.corpora:
            raise ConfigError("metric 'fidelity' compares on perplexity windows: give at least one corpus")
        if not self.corpus:
            return ctx.corpora[0]
        found = [c for c in ctx.corpora if c.name == self.corpus or corpus_label(c.name) == self.corpus]
        if not found:
            raise ConfigError(f"metric 'fidelity': corpus '{self.corpus}' is not one of --corpora "
                              f"({', '.join(c.name for c in ctx.corpora)})")
        return found[0]

    def _label(self, ctx: MeasureContext) -> str:
        return corpus_label(self._corpus(ctx).name)

    def _window_count(self, ctx: MeasureContext) -> int:
        if self._windows is None:
            from benchsuite.data.tokens import eval_windows

            p = ctx.profile
            windows = eval_windows(ctx.tokenizer, self._corpus(ctx), p.seq_len, p.eval_windows)
            self._windows = windows[:self.windows] if self.windows else windows
        return len(self._windows)

    def columns(self, ctx: MeasureContext) -> list:
        label = self._label(ctx)
        return [Column(f"kl_{label}", f"KL {label}", ".3f", interval="points", views=("ppl",)),
                Column(f"top1_{label}", f"top-1 {label} %", ".1f", scale=100.0, interval="points", views=("ppl",))]

    def prepare(self, ctx: MeasureContext) -> None:
        self._corpus(ctx)

    def observe(self, corpus: str, ctx: MeasureContext):
        from benchsuite.evaluation.fidelity import WindowDistances, log_probs

        if corpus != self._corpus(ctx).name:
            return None
        count = self._window_count(ctx)
        if ctx.dense:
            self._capture = {}

            def capture(start: int, logits: torch.Tensor) -> None:
                for i in range(min(len(logits), count - start)):
                    self._capture[start + i] = log_probs(logits[i]).cpu()
            return capture
        self._pending = WindowDistances(self._reference) if self._reference is not None else None
        return self._pending.add if self._pending is not None else None

    def measure(self, model: nn.Module, ctx: MeasureContext) -> MetricResult:
        from benchsuite.evaluation.fidelity import dense_reference, distance_to_dense

        corpus, label = self._corpus(ctx), self._label(ctx)
        count = self._window_count(ctx)
        if ctx.dense:  # keep the dense model's log-probabilities; its distance to itself is not a measurement
            if len(self._capture) != count:
                self._capture = {}
                return MetricResult({})
            self._reference = torch.stack([self._capture[i] for i in range(count)])
            self._capture = {}
            kept = self._reference.numel() * self._reference.element_size() / 2**20
            return MetricResult({}, {f"kl_{label}": {
                "kept_mb": round(kept, 1), "windows": count,
                "memory": "the dense model's log-probabilities of these windows, kept on the CPU for the pruned runs' "
                          "KL and top-1 agreement: counted in this record's peak_mem_eval_mb"}})
        pending, self._pending = self._pending, None
        bos = bos_token(model, ctx.tokenizer)
        if pending is not None and pending.complete:
            result = pending.summary(f"KL to dense {corpus.name}") | {"pass": "shared with perplexity"}
        else:  # no perplexity pass over these windows, or the dense model measured by an earlier invocation
            if self._reference is None:
                reference = ctx.reference()
                if reference is None:
                    return MetricResult({}, {f"kl_{label}": {
                        "reason": "no second copy of the dense model fits in memory"}})
                self._reference = dense_reference(reference, self._windows, ctx.profile.eval_batch, bos,
                                                  desc=f"dense log-probabilities {corpus.name}")
                del reference
            result = distance_to_dense(model, self._reference, self._windows, ctx.profile.eval_batch,
                                       desc=f"KL to dense {corpus.name}", bos=bos) | {"pass": "its own"}
        values = {f"kl_{label}": result["kl"], f"kl_{label}_lo": result["kl_lo"], f"kl_{label}_hi": result["kl_hi"],
                  f"top1_{label}": result["top1"], f"top1_{label}_lo": result["top1_lo"],
                  f"top1_{label}_hi": result["top1_hi"]}
        return MetricResult(values, {f"kl_{label}": result | {"corpus": corpus.name}})


@hookimpl
def benchsuite_register_metrics(register):
    for metric in (Perplexity, ZeroShot, Params, Flops, Latency, SparseLatency, Fidelity):
        register(metric)
