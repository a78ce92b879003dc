"""Plan before you spend: what each run of a request will cost, from the model's config alone.

:func:`estimate_request` reads only ``config.json`` (no weights), builds the model on the ``meta`` device
(shapes, no storage), and for every run of the matrix (dense + method x ratio x seed) gives

- the **shape** (layers, hidden, intermediate, heads / kv heads, vocabulary);
- **parameters and FLOPs** before and after pruning, as the ``params`` and ``flops`` metrics count them
  (:func:`~benchsuite.evaluation.size.count_params`, :func:`~.size.flops_per_token` at the profile's
  ``seq_len``, run on the meta model). Structured pruning is applied to the meta model as the suite applies it:
  the unit ratio from the ratio basis (:func:`~benchsuite.running.plan.unit_ratio`), the granularity's own per-layer
  counts (``select`` with constant scores: which units go does not change how many parameters go), physical
  removal (``finalize``). N:M and unstructured keep dense storage (``params`` is unchanged); the non-zero count
  is given as well;
- **peak memory per phase**, above the level at the phase's start, as :class:`~benchsuite.evaluation.memory.PeakMemory`
  measures it (``peak_mem_prune_mb``, ``peak_mem_recover_mb``, ``peak_mem_eval_mb``), plus the loaded
  weights the phases sit on;
- **time** per phase from the profile's token budget and a measured (or given) throughput.

Memory terms (bytes; every tensor size is read from the meta model, nothing is fitted to a machine):

``weights``
    every parameter and buffer of the loaded model in the run's dtype (and the LoRA adapters attached before
    pruning, in their own dtype: peft keeps them in float32 for half-precision models). Not part of a phase.
``weight grads``
    criteria that need ``weight_grad`` (LLM-Pruner's Taylor): the host's calibration pass makes every parameter
    require grad, so one gradient per parameter in its dtype; the ``element2`` order adds two float32
    accumulators (gradient mean and Fisher diagonal) per projection weight.
``LoRA state``
    LoRA training (an iterative schedule, a one-shot LoRA-gradient calibration, or the recovery): one gradient
    per LoRA parameter, plus AdamW's two moments (``exp_avg``, ``exp_avg_sq``) where an optimizer steps.
``activations``
    measured, not modelled: one forward of the real model code runs on the meta model at the phase's shapes
    (micro-batch x length; LoRA attached, train mode with dropout where it trains) while a dispatch mode counts
    the bytes of every live tensor storage; tensors that autograd saves for backward are kept alive through
    ``saved_tensors_hooks`` so they are counted until the backward frees them. The peak of the forward (saved
    tensors, the cache, the logits and the loss' float32 copies) is the activation term.
``backward``
    the backward starts with every saved tensor still held and first creates the gradient of the largest
    activation (the logits') and the gradient it passes on: twice the largest tensor of the forward.
``CPU heap``
    on the CPU only, for a phase that makes more than one pass (training steps, calibration or evaluation batches):
    a share of the tensors of one more pass that glibc serves from its heap (those under :data:`HEAP_MAX`). Memory freed
    into the heap stays resident, and the next pass's allocations, interleaved differently with longer-lived ones
    (gradients, optimizer state), reuse it only in part: measured here on SmolLM2-135M, LoRA training at 2 x 64
    peaked 355 MB above its start after one step (the live-byte estimate: 378 MB) and 594 and 587 MB in two
    runs of four steps. How much of the freed memory the next passes fail to reuse lies between two bounds, none
    (0) and all of one more pass (1). LoRA training steps (LoRAPrune's schedule, the recovery) land about inside
    them: the peak beyond the live bytes, as a share of one pass's heap-served bytes, measured after four smoke
    steps (``benchmarks/dry_run_accuracy.py`` and runs of the same stages in one process): 0.63 and 0.65 on
    SmolLM2-135M, 0.80 on a 360M shape, 0.46 (recovery), 0.83 (the dense model), 0.93 (sampling-noisy) and 1.02
    (LoRAPrune) on a 1.1B shape. Their term takes the midpoint of the bounds,
    :data:`LORA_HEAP_SHARE` of a pass (its error: about half a pass at most), not a value fitted to those figures. The
    other multi-pass phases keep one whole pass: they are not bounded by it (LLM-Pruner's gradient calibration
    measured 2.8 passes beyond its live bytes on SmolLM2-135M and 0.34 on the 1.1B shape; evaluation, see below).
    Tensors above :data:`HEAP_MAX` are mapped and unmapped, exactly as they live; CUDA's caching allocator reuses
    its blocks, and ``max_memory_allocated`` counts live bytes only.
``scoring``
    criteria that score element-wise work one projection at a time in float32 (weight, gradient or estimated
    gradient, product): three float32 copies of the largest projection. Structured removal copies one
    module at a time (``index_select``), which this covers.
``evaluation``
    perplexity's forward under ``inference_mode`` at ``eval_batch x seq_len``, counted as above (live tensors,
    the KV cache and the logits chain: logits, their float32 shifted copy, log-softmax). Zero-shot tasks
    (lm-eval) are not estimated: their lengths depend on the task data; the estimate says so. On the CPU the
    measured peak also depends on what ran before in the process, which a config can't tell. On a 1.1B shape
    (2 batches of 4 x 128; estimate 258 MB dense, 269 MB pruned) the same measurement gave: the dense model 299-374
    MB as the first evaluation of four processes and 305-360 MB in successive ones; the dense model after four
    LoRA steps and the merge, 319-338 MB; the model pruned in place to LoRAPrune's shapes without LoRA or training,
    241-269 MB; LoRAPrune's own run (LoRA trained while pruning, then merged) in one process, 423 and 445 MB, and
    still 396-417 MB after dropping the pruning outcome, clearing the weights' ``requires_grad`` or giving the
    weights fresh storages. So the pruned model and what the run keeps alive during the measurement hold none of
    it; it comes with the allocator's state after that history (not isolated further), and the term does not
    model it (a factor would be fitted on those two runs).

On a GPU the estimate is of allocated bytes (what ``max_memory_allocated`` reports); on the CPU of resident
memory, which the allocator can hold somewhat above the live bytes (``benchmarks/dry_run_accuracy.py`` compares
both with measured peaks). A run whose weights plus largest phase exceed the device's total memory (the GPU's
total memory, or the system's RAM) is refused (:func:`check_fits`): an estimate that is off by 25% never refuses
a run that fits, since only what exceeds the whole device is refused.

Time: FLOPs per token x tokens of each phase (a forward: 1x, a training step or a backward into weights: 3x;
calibration samples x length, training steps x accumulation x micro-batch x length, evaluation windows x
``seq_len`` per corpus, latency repeats) divided by a throughput: a float matmul measured for about 0.2 s on the
device (an upper bound on what a model reaches, so the times are lower bounds), or one given by the caller.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchsuite.api.architecture import architecture_of
from benchsuite.api.errors import ConfigError
from benchsuite.api.model import base_linear, decoder_layers, layer_paths
from benchsuite.evaluation.size import count_params, flops_per_token
from benchsuite.models.resolve import ResolvedModel, resolve_model
from benchsuite.pruning.structure import parse_layers, remove_units
from benchsuite.running.finetune import LoRAConfig, attach_lora
from benchsuite.running.plan import MethodPlan, RunPlan, calibration_spec, unit_ratio

MB = 2**20
#: glibc's largest dynamic mmap threshold (``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit): once a freed block has raised
#: the threshold, allocations below it come from the heap, larger ones are mapped and unmapped on free
HEAP_MAX = 32 * MB
#: transformers' switch for sharing key/value heads inside the attention kernel
GQA_ENV = "TRANSFORMERS_SDPA_FORCE_GQA"
#: the share of one more pass's heap-served tensors that LoRA training steps keep resident on the CPU: the midpoint
#: of its bounds, 0 (the next step reuses every freed block) and 1 (it reuses none); see ``CPU heap`` above
LORA_HEAP_SHARE = 0.5
#: how many times a forward's FLOPs a training step (forward + backward into the activations and LoRA) costs
TRAIN_FLOPS_FACTOR = 3


# -- the meta model --------------------------------------------------------------------------------------
def read_config(path: Path) -> Any:
    """The transformers config of a checkpoint folder (``config.json`` only; an ``hf`` export's too)."""
    from benchsuite.models.hf import read_config as read

    try:
        return read(path)
    except Exception as exc:  # noqa: BLE001 - a broken config is one clear line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"model {path} can't be loaded: {type(exc).__name__}: {reason}") from None


def meta_model(config: Any, dtype: torch.dtype) -> nn.Module:
    """The causal LM of ``config`` on the meta device (shapes only: nothing allocated, no weight read)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def with_lora(model: nn.Module, lora: LoRAConfig) -> nn.Module:
    """``model`` wrapped with peft LoRA as the pipeline attaches it, on the meta device."""
    with torch.device("meta"):
        return attach_lora(model, lora)


@dataclass
class Shape:
    """What the config says about the model's size."""

    model_type: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool

    @classmethod
    def of(cls, config: Any) -> Shape:
        heads = config.num_attention_heads
        return cls(model_type=config.model_type, layers=config.num_hidden_layers, hidden=config.hidden_size,
                   intermediate=config.intermediate_size, heads=heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                   vocab=config.vocab_size, tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)))

    def text(self) -> str:
        return (f"{self.model_type}: {self.layers} layers, hidden {self.hidden}, intermediate {self.intermediate}, "
                f"{self.heads} heads / {self.kv_heads} kv heads of {self.head_dim}, vocabulary {self.vocab}"
                + (", tied embeddings" if self.tied_embeddings else ""))


# -- live bytes on the meta device ---------------------------------------------------------------------
class LiveBytes(TorchDispatchMode):
    """Counts the bytes of tensor storages alive while ops run (on any device, meta included): every op's
    outputs are tracked until their last Python reference goes. Storages in ``exclude`` (the parameters)
    are not counted. ``peak``: the most bytes alive at once; ``largest``: the largest single storage."""

    def __init__(self, exclude: set[int] = frozenset()) -> None:
        super().__init__()
        self.exclude = set(exclude)
        self.live: dict[int, list[int]] = {}
        self.now = self.peak = self.largest = 0
        #: live bytes, and their peak, of storages under :data:`HEAP_MAX` (what glibc serves from its heap)
        self.heap_now = self.heap_peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self.exclude:
            return
        entry = self.live.get(key)
        if entry is None:
            size = storage.nbytes()
            entry = self.live[key] = [size, 0]
            self.now += size
            self.peak = max(self.peak, self.now)
            if size < HEAP_MAX:
                self.heap_now += size
                self.heap_peak = max(self.heap_peak, self.heap_now)
            self.largest = max(self.largest, size)
        entry[1] += 1
        weakref.finalize(t, self._drop, key)

    def _drop(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            if entry[0] < HEAP_MAX:
                self.heap_now -= entry[0]
            del self.live[key]


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``scaled_dot_product_attention`` as a real run's fused kernels run it (CPU flash attention, CUDA flash /
    memory-efficient): the output and the log-sum-exp are kept, no L x L matrix, key/value heads shared in place
    (GQA). The suite's inputs are never padded, so a real run passes no mask (``is_causal``); on the meta device
    transformers can't check that and builds the causal mask, which is dropped here."""
    if attn_mask is not None and query.shape[-2] == key.shape[-2]:
        attn_mask, is_causal = None, True
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]


class _as_real_kernels:
    """While inside, attention on the meta device runs as a real run's (:func:`_fused_sdpa`; transformers is told
    to share key/value heads in the kernel, as it does on a real device when there is no mask)."""

    def __init__(self, model: nn.Module) -> None:
        self.meta = next(model.parameters()).device.type == "meta"

    def __enter__(self) -> None:
        if self.meta:
            self.original = torch.nn.functional.scaled_dot_product_attention
            self.env = os.environ.get(GQA_ENV)
            torch.nn.functional.scaled_dot_product_attention = _fused_sdpa
            os.environ[GQA_ENV] = "1"

    def __exit__(self, *exc: Any) -> None:
        if self.meta:
            torch.nn.functional.scaled_dot_product_attention = self.original
            if self.env is None:
                os.environ.pop(GQA_ENV, None)
            else:
                os.environ[GQA_ENV] = self.env


def _storages(model: nn.Module) -> set[int]:
    return {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers())}


def _ids(model: nn.Module, batch: int, length: int) -> torch.Tensor:
    return torch.zeros(batch, length, dtype=torch.long, device=next(model.parameters()).device)


@dataclass
class Footprint:
    """What one pass holds: the peak of live bytes, the largest tensor, and the peak of the live bytes that the CPU
    allocator serves from its heap (tensors under :data:`HEAP_MAX`)."""

    peak: int
    largest: int
    heap: int


def training_activations(model: nn.Module, batch: int, length: int, train: bool) -> Footprint:
    """The peak live bytes of one forward with its loss for a backward at ``batch x length``; autograd's saved
    tensors stay counted until the forward ends (they live until the backward)."""
    exclude = _storages(model)
    was_training = model.training
    model.train(train)
    mode = LiveBytes(exclude)
    try:
        with _as_real_kernels(model), torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t), mode:
            ids = _ids(model, batch, length)
            out = model(input_ids=ids, labels=ids)  # as train_lora and calibrate call it
            del out
    finally:
        model.train(was_training)
    return Footprint(mode.peak, mode.largest, mode.heap_peak)


def eval_activations(model: nn.Module, batch: int, length: int) -> Footprint:
    """Peak live bytes of perplexity's forward (:func:`~benchsuite.evaluation.perplexity.perplexity`)
    at ``batch x length``."""
    import torch.nn.functional as F

    mode = LiveBytes(_storages(model))
    with _as_real_kernels(model), torch.inference_mode(), mode:
        ids = _ids(model, batch, length)
        logits = model(ids).logits[:, :-1].float()
        # cross_entropy as its CPU and CUDA kernels run it (log_softmax, then nll_loss): the meta kernel of
        # cross_entropy_loss would hide the float32 log-probabilities it holds
        log_probs = F.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)
        nll = F.nll_loss(log_probs, ids[:, 1:].reshape(-1), reduction="none")
        del logits, log_probs, nll
    return Footprint(mode.peak, mode.largest, mode.heap_peak)


def inference_activations(model: nn.Module, batch: int, length: int) -> Footprint:
    """Peak live bytes of a no-grad forward (calibration without gradients) at ``batch x length``."""
    mode = LiveBytes(_storages(model))
    with _as_real_kernels(model), torch.no_grad(), mode:
        out = model(_ids(model, batch, length))
        del out
    return Footprint(mode.peak, mode.largest, mode.heap_peak)


# -- estimates -------------------------------------------------------------------------------------------
@dataclass
class Phase:
    """One phase's estimated peak above its start, by term (bytes), its work and time."""

    name: str
    terms: dict[str, int] = field(default_factory=dict)
    tokens: int | None = None
    flops: float | None = None
    seconds: float | None = None
    note: str = ""

    @property
    def peak(self) -> int:
        return sum(self.terms.values())


@dataclass
class RunEstimate:
    label: str
    key: str
    ratio: float
    seed: int
    granularity: str
    params: int
    params_after: int
    nonzero_after: int
    flops_per_token: float | None
    flops_per_token_after: float | None
    #: the loaded model (and the LoRA adapters attached before pruning)
    weights: int
    phases: list[Phase]
    refused: str | None = None

    @property
    def peak(self) -> int:
        """Weights plus the largest phase."""
        return self.weights + max((p.peak for p in self.phases), default=0)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["phases"] = [asdict(p) | {"peak": p.peak} for p in self.phases]
        return out | {"peak": self.peak}


@dataclass
class DryRun:
    """Every run's estimate, with what they rest on."""

    model: ResolvedModel
    shape: Shape
    device: str
    dtype: str
    profile: str
    available: int
    available_source: str
    throughput: float | None
    throughput_source: str
    runs: list[RunEstimate]
    notes: list[str] = field(default_factory=list)

    @property
    def refused(self) -> list[RunEstimate]:
        return [run for run in self.runs if run.refused]

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model.as_dict(), "shape": asdict(self.shape), "device": self.device,
                "dtype": self.dtype, "profile": self.profile, "available_bytes": self.available,
                "available_source": self.available_source, "throughput_flops": self.throughput,
                "throughput_source": self.throughput_source, "notes": self.notes,
                "runs": [run.as_dict() for run in self.runs]}


def device_memory(device: torch.device, spread: bool = False) -> tuple[int, str]:
    """Total memory of the device a run uses (bytes) and where the figure comes from; ``spread`` (a model spread
    over the GPUs with ``--device-map``): the sum over the visible GPUs."""
    if device.type == "cuda" and spread:
        total = sum(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
        return total, f"total memory of the {torch.cuda.device_count()} visible GPUs (--device-map)"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return props.total_memory, f"{props.name}: total memory of {device}"
    import psutil

    return psutil.virtual_memory().total, "system RAM (total)"


def measure_throughput(device: torch.device, dtype: torch.dtype, seconds: float = 0.2) -> float:
    """FLOP/s of a square matmul in ``dtype`` on ``device``, timed for about ``seconds``."""
    n = 1024 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    a @ b  # warm-up
    sync(device)
    count, start = 0, time.perf_counter()
    while True:
        a @ b
        count += 1
        if count % 4 == 0:
            sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return 2 * n**3 * count / elapsed


def _element_nonzero(model: nn.Module, method: MethodPlan, ratio: float, layers: list[int]) -> int:
    """Parameters left non-zero by an element-level granularity at ``ratio`` in ``layers``."""
    granularity = method.build()[1]
    groups = granularity.units(model, layers)
    all_layers = decoder_layers(model)
    removed = 0
    for group in groups:
        weight = base_linear(all_layers[group.layer].get_submodule(group.members[0].module)).weight
        rows, cols = weight.shape
        fixed = granularity.fixed_ratio
        if fixed is not None:  # N:M: M-N of every block of M in every row
            m = granularity.m
            removed += rows * (cols // m) * round(fixed * m)
        elif getattr(granularity, "per_row", False):
            removed += rows * int(ratio * cols + 0.5)
        else:
            removed += int(ratio * weight.numel() + 0.5)
    return base_params(model) - removed


def pruned_meta(plan: RunPlan, method: MethodPlan, ratio: float, model: nn.Module) -> tuple[nn.Module, int]:
    """``model`` (meta, LoRA-wrapped or not) pruned in place as the suite prunes it at ``ratio``: structured
    units are removed, element-level sparsity keeps the shapes. Returns (model, parameters left non-zero, LoRA
    left out)."""
    granularity = method.build()[1]
    n_layers = len(decoder_layers(model))
    layers = parse_layers(method.method.layers, n_layers)
    unit = unit_ratio(plan, method, ratio, model)
    if granularity.fixed_ratio is not None or method.method.granularity != "structured":
        return model, _element_nonzero(model, method, unit["unit_ratio"], layers)
    groups = granularity.units(model, layers)
    masks = granularity.select(groups, [torch.zeros(g.size) for g in groups], unit["unit_ratio"])
    model = remove_units(model, groups, masks)  # the structured granularity's finalize, without its masks' hooks
    return model, base_params(model)


def base_params(model: nn.Module) -> int:
    """Parameters of the model without its LoRA adapters (what the ``params`` metric counts after merging)."""
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _lora_params(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if "lora_" in n]


def _largest_projection(model: nn.Module) -> int:
    return max(base_linear(layer.get_submodule(path)).weight.numel()
               for layer in decoder_layers(model) for path in layer_paths(model, layer))


def _heap(footprint: Footprint, passes: int | None, cpu: bool, share: float = 1.0) -> int:
    """The CPU heap's retention: ``share`` of another pass's heap-served tensors when a phase makes several
    passes (:data:`LORA_HEAP_SHARE` for LoRA training steps, one whole pass otherwise)."""
    return int(share * footprint.heap) if cpu and (passes is None or passes > 1) else 0


def _training_phase(name: str, model: nn.Module, batch: int, length: int, train: bool, optimizer: bool,
                    passes: int | None, cpu: bool, weight_grads: int = 0) -> Phase:
    footprint = training_activations(model, batch, length, train)
    activations, largest = footprint.peak, footprint.largest
    lora = _nbytes(_lora_params(model))
    backward = 2 * largest
    if weight_grads:  # a parameter's new gradient before it is added to .grad (the embedding's: the whole table)
        backward += max(p.numel() * p.element_size() for p in model.parameters())
    terms = {"weight grads": weight_grads, "LoRA grads": lora, "optimizer": 2 * lora if optimizer else 0,
             "activations": activations, "backward": backward,
             "CPU heap": _heap(footprint, passes, cpu, LORA_HEAP_SHARE if optimizer else 1.0)}
    return Phase(name, {k: v for k, v in terms.items() if v})


class _Estimator:
    """Builds the estimates of one plan; meta models and activations are computed once per shape."""

    def __init__(self, plan: RunPlan, config: Any, train_steps: int | None, throughput: float | None) -> None:
        self.plan, self.config, self.throughput = plan, config, throughput
        self.profile = plan.profile
        self.train_steps = train_steps
        self.dense = meta_model(config, plan.dtype)
        self.dense_params = count_params(self.dense)
        self.dense_flops = self.flops(self.dense)
        self.weights = _nbytes(self.dense.parameters()) + _nbytes(self.dense.buffers())
        self._eval: dict[int, Footprint] = {}
        self.cpu = plan.device.type == "cpu"

    def flops(self, model: nn.Module) -> float | None:
        """The ``flops`` metric's FLOPs per token (None when neither FLOPs nor times are asked for)."""
        return None if self.throughput is None else flops_per_token(model, self.profile.seq_len)["flops_per_token"]

    def time(self, phase: Phase, tokens: int | None, flops_per_token: float | None, factor: float) -> Phase:
        phase.tokens = tokens
        if tokens is not None and flops_per_token is not None:
            phase.flops = tokens * flops_per_token * factor
            phase.seconds = phase.flops / self.throughput
        return phase

    def eval_phase(self, model: nn.Module, params: int, flops: float) -> Phase:
        p = self.profile
        if params not in self._eval:
            self._eval[params] = eval_activations(model, p.eval_batch, p.seq_len)
        corpora = len(self.plan.corpora)
        tokens = None if p.eval_windows is None else corpora * p.eval_windows * p.seq_len
        note = "" if p.eval_windows is not None else "every window of each corpus: tokens unknown before reading them"
        if self.plan.tasks:
            note = "; ".join(x for x in (note, f"zero-shot ({len(self.plan.tasks)} tasks) not estimated") if x)
        batches = sum(math.ceil((p.eval_windows or 2 * p.eval_batch) / p.eval_batch) for _ in self.plan.corpora)
        footprint = self._eval[params]
        terms = {"activations": footprint.peak, "CPU heap": _heap(footprint, batches, self.cpu)}
        phase = Phase("eval", {k: v for k, v in terms.items() if v}, note=note)
        return self.time(phase, tokens, flops, 1)

    def dense_run(self) -> RunEstimate:
        eval_phase = self.eval_phase(self.dense, self.dense_params, self.dense_flops)
        return RunEstimate("dense", "dense", 0.0, 0, "", self.dense_params, self.dense_params, self.dense_params,
                           self.dense_flops, self.dense_flops, self.weights, [eval_phase])

    def pruned_run(self, method: MethodPlan, ratio: float) -> RunEstimate:
        p = self.profile
        lora, steps = method.lora(p.lora_budget())
        model = meta_model(self.config, self.plan.dtype)
        if lora is not None:
            model = with_lora(model, lora)
        lora_weights = _nbytes(_lora_params(model))
        phases = [self.prune_phase(method, model)]  # on the unpruned model; then it is pruned in place
        pruned, nonzero = pruned_meta(self.plan, method, ratio, model)
        params_after = base_params(pruned)
        base_pruned = pruned.get_base_model() if hasattr(pruned, "get_base_model") else pruned
        flops_after = self.flops(base_pruned) if params_after != self.dense_params else self.dense_flops
        if lora is not None and not method.schedule.trains:
            total = self.train_steps if steps is None else steps
            recover = _training_phase("recover", pruned, p.train_batch, p.train_len, train=True, optimizer=True,
                                      passes=None if total is None else total * lora.grad_accum, cpu=self.cpu)
            tokens = None if total is None else total * lora.grad_accum * p.train_batch * p.train_len
            phases.append(self.time(recover, tokens, flops_after, TRAIN_FLOPS_FACTOR))
        phases.append(self.eval_phase(base_pruned, params_after, flops_after))
        return RunEstimate(f"{method.key} ratio={ratio:g}", method.key, ratio, 0, method.build()[1].label(),
                           self.dense_params, params_after, nonzero, self.dense_flops, flops_after,
                           self.weights + lora_weights, phases)

    def prune_phase(self, method: MethodPlan, model: nn.Module) -> Phase:
        p = self.profile
        needs = method.criterion.needs
        criterion = method.build()[0]
        scoring = 3 * 4 * _largest_projection(model)
        if method.schedule.trains:  # LoRA trains while pruning (LoRAPrune's iterative schedule)
            steps = self.train_steps
            phase = _training_phase("prune", model, p.train_batch, p.train_len, train=True, optimizer=True,
                                    passes=None if steps is None else steps * p.grad_accum, cpu=self.cpu)
            phase.terms["scoring"] = scoring
            tokens = None if steps is None else steps * p.grad_accum * p.train_batch * p.train_len
            return self.time(phase, tokens, self.dense_flops, TRAIN_FLOPS_FACTOR)
        cal = calibration_spec(self.plan, method)
        passes = len(set(parse_layers(method.method.layers, len(decoder_layers(model))))) \
            if method.schedule.name == "sequential" else 1
        batches = passes * math.ceil(cal["samples"] / p.calib_batch)
        if "weight_grad" in needs:
            per_sample = getattr(criterion, "order", None) == "element2"
            params = list(model.parameters())
            grads = _nbytes(params)
            if per_sample:  # float32 gradient mean and Fisher diagonal of every projection weight
                grads += 2 * 4 * sum(base_linear(layer.get_submodule(path)).weight.numel()
                                     for layer in decoder_layers(model) for path in layer_paths(model, layer))
            with _all_require_grad(model):
                phase = _training_phase("prune", model, 1 if per_sample else p.calib_batch, cal["length"],
                                        train=False, optimizer=False, weight_grads=grads,
                                        passes=passes * cal["samples"] if per_sample else batches, cpu=self.cpu)
            phase.terms.pop("LoRA grads", None)  # counted in the weight gradients (every parameter has one)
            phase.terms["scoring"] = scoring
            factor = TRAIN_FLOPS_FACTOR
        elif "lora_grad" in needs:
            phase = _training_phase("prune", model, p.calib_batch, cal["length"], train=True, optimizer=False,
                                    passes=batches, cpu=self.cpu)
            phase.terms["scoring"] = scoring
            factor = TRAIN_FLOPS_FACTOR
        elif "calibration" in needs:
            footprint = inference_activations(model, p.calib_batch, cal["length"])
            terms = {"activations": footprint.peak, "CPU heap": _heap(footprint, batches, self.cpu), "scoring": scoring}
            phase = Phase("prune", {k: v for k, v in terms.items() if v})
            factor = 1
        else:
            return self.time(Phase("prune", {"scoring": scoring}), 0, self.dense_flops, 1)
        return self.time(phase, passes * cal["samples"] * cal["length"], self.dense_flops, factor)


class _all_require_grad:
    """Every parameter requires grad inside (as the host's ``grad="weights"`` calibration)."""

    def __init__(self, model: nn.Module) -> None:
        self.params = list(model.parameters())

    def __enter__(self) -> None:
        self.flags = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(True)

    def __exit__(self, *exc: Any) -> None:
        for p, flag in zip(self.params, self.flags):
            p.requires_grad_(flag)


def _train_steps(plan: RunPlan, model_path: Path) -> tuple[int | None, str]:
    """The profile's LoRA optimizer steps; a profile given in epochs needs the recovery data tokenized."""
    p = plan.profile
    if p.train_epochs is None:
        return p.train_steps, ""
    if not any(method.lora()[0] is not None for method in plan.methods):
        return None, ""
    try:
        from benchsuite.data.corpora import resolve_corpus
        from benchsuite.data.tokens import training_windows
        from benchsuite.models.checkpoint import load_tokenizer

        corpora = [resolve_corpus(name.strip(), plan.registry) for name in p.recovery_data.split(",")]
        windows = training_windows(load_tokenizer(model_path), corpora, p.train_len)
    except Exception as exc:  # noqa: BLE001 - the time stays unknown, the memory estimate does not need it
        return None, f"LoRA steps unknown ({p.train_epochs:g} epochs of data that could not be read: {exc})"
    return max(1, math.ceil(p.train_epochs * len(windows) / (p.train_batch * p.grad_accum))), ""


def estimate_request(plan: RunPlan, throughput: float | None = None,
                     memory: tuple[int, str] | None = None, flops: bool = True) -> DryRun:
    """Estimate every run of ``plan`` from its model's config (no weights are read).

    ``throughput`` (FLOP/s): None measures a matmul on the plan's device. ``memory`` (bytes, source): None reads
    the device's total memory. ``flops=False``: memory only (no FLOPs, no times; what :func:`check_fits` needs).
    Runs whose weights plus largest phase exceed the memory are marked ``refused``."""
    model = resolve_model(plan.request.model, plan.registry)
    config = read_config(model.path)
    architecture_of(config)  # an undescribed or not-yet-prunable family: refused, as the run would
    if not flops:
        throughput, throughput_source = None, "not asked for"
    elif throughput is None:
        throughput = measure_throughput(plan.device, plan.dtype)
        throughput_source = f"measured: {plan.dtype} matmul on {plan.device} (an upper bound: times are lower bounds)"
    else:
        throughput_source = "given"
    spread = getattr(plan.request, "device_map", None) is not None
    available, source = memory if memory is not None else device_memory(plan.device, spread)
    if flops:
        train_steps, note = _train_steps(plan, model.path)
    else:  # the memory needs no step count (a profile in epochs would have its recovery data tokenized)
        train_steps, note = (plan.profile.train_steps if plan.profile.train_epochs is None else None), ""
    estimator = _Estimator(plan, config, train_steps, throughput)
    runs = [estimator.dense_run()]
    for method in plan.methods:
        for ratio in method.ratios:
            estimate = estimator.pruned_run(method, ratio)
            for seed in plan.request.seeds:
                runs.append(copy.deepcopy(estimate) if seed != estimate.seed else estimate)
                runs[-1].seed = seed
                runs[-1].label = f"{method.key} ratio={ratio:g} seed={seed}"
    for run in runs:
        run.refused = refusal(run, available, source)
    notes = [note] if note else []
    if getattr(plan.request, "gradient_checkpointing", False):
        notes.append("--gradient-checkpointing: the training phases are estimated without it (upper bounds)")
    if plan.tasks:
        notes.append(f"zero-shot tasks ({', '.join(plan.tasks)}) are not in the evaluation estimates")
    return DryRun(model, Shape.of(config), str(plan.device), str(plan.dtype).replace("torch.", ""),
                  plan.profile.name, available, source, throughput, throughput_source, runs, notes)


def refusal(run: RunEstimate, available: int, source: str) -> str | None:
    """Why ``run`` can't fit ``available`` bytes (None when it fits)."""
    if run.peak <= available:
        return None
    phase = max(run.phases, key=lambda p: p.peak)
    return (f"{run.label}: estimated peak {run.peak / MB:,.0f} MB (weights {run.weights / MB:,.0f} MB + {phase.name} "
            f"{phase.peak / MB:,.0f} MB) exceeds the {available / MB:,.0f} MB of the device ({source})")


def check_fits(plan: RunPlan, log: Callable[[str], None] | None = None) -> DryRun | None:
    """Refuse, before any model loads, a request with a run that can't fit the device: a
    :class:`~benchsuite.ConfigError` naming the run, phase, estimate and memory. An estimate that can't be made
    (a model layout the estimator does not know, a broken config) does not stop the run here: ``log`` is told why,
    None is returned, and loading the model reports what is wrong in its own words."""
    try:
        dry = estimate_request(plan, flops=False)
    except Exception as exc:  # noqa: BLE001 - the estimate is a guard, not a requirement
        if log is not None:
            log(f"memory estimate skipped ({type(exc).__name__}: {exc})")
        return None
    refused = dry.refused
    if refused:
        more = f" (and {len(refused) - 1} more runs)" if len(refused) > 1 else ""
        raise ConfigError(f"{refused[0].refused}{more}; nothing was run (see `benchsuite run ... --dry-run`)")
    return dry


# -- output ----------------------------------------------------------------------------------------------
def _mb(value: int | None) -> str:
    return "" if value is None else f"{value / MB:,.0f}"


def _gflops(value: float | None) -> str:
    return "" if value is None else f"{value / 1e9:,.3f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


def render(dry: DryRun) -> str:
    """The dry run as text: what it rests on, one row per run, then each run's phases by term."""
    from tabulate import tabulate

    head = [f"model {dry.model.name} ({dry.model.source})", dry.shape.text(),
            f"device {dry.device}, {dry.dtype}, profile {dry.profile}; memory available: "
            f"{dry.available / MB:,.0f} MB ({dry.available_source})",
            f"throughput {(dry.throughput or 0) / 1e9:,.1f} GFLOP/s ({dry.throughput_source})"]
    rows = []
    for run in dry.runs:
        phases = {p.name: p for p in run.phases}
        seconds = [p.seconds for p in run.phases]
        rows.append([run.label, run.granularity, f"{run.params / 1e6:,.1f}M", f"{run.params_after / 1e6:,.1f}M",
                     f"{run.nonzero_after / 1e6:,.1f}M" if run.nonzero_after != run.params_after else "",
                     _gflops(run.flops_per_token), _gflops(run.flops_per_token_after),
                     _mb(run.weights)] + [_mb(phases[n].peak) if n in phases else "" for n in ("prune", "recover",
                                                                                                 "eval")]
                    + [_mb(run.peak), "?" if None in seconds else _duration(sum(seconds)),
                       "REFUSED" if run.refused else "ok"])
    table = tabulate(rows, headers=["run", "granularity", "params", "after", "non-zero", "GFLOP/tok", "after",
                                    "weights MB", "prune MB", "recover MB", "eval MB", "peak MB", "time", "fits"],
                     tablefmt="github", disable_numparse=True)
    detail, seen = [], set()
    for run in dry.runs:  # the phases of each method and ratio once (seeds share them)
        if (run.key, run.ratio) not in seen:
            seen.add((run.key, run.ratio))
            for phase in run.phases:
                terms = ", ".join(f"{k} {_mb(v)}" for k, v in phase.terms.items())
                work = (f"{phase.tokens:,} tokens, {_duration(phase.seconds)}" if phase.tokens is not None
                        else "tokens unknown")
                detail.append(f"  {run.label} / {phase.name}: {_mb(phase.peak)} MB = {terms}; {work}"
                              + (f"; {phase.note}" if phase.note else ""))
    out = "\n".join(head) + "\n\n" + table + "\n\nper phase (MB above the phase's start):\n" + "\n".join(detail)
    notes = list(dry.notes) + [run.refused for run in dry.refused]
    if notes:
        out += "\n\n" + "\n".join(notes)
    return out


def to_json(dry: DryRun) -> str:
    return json.dumps(dry.as_dict(), indent=2)
