"""A test kit for plugin authors: tiny random models of every described family, an offline tokenizer, small text
corpora, a :class:`~benchsuite.api.components.PruneContext` factory and a conformance check for criteria.

Nothing here needs the network or a real model; everything runs on a CPU in seconds::

    from benchsuite.testing import assert_conforms
    from my_plugin import MyCriterion

    def test_my_criterion_conforms():
        assert_conforms(MyCriterion)          # every registered granularity and schedule, MHA and GQA

A checkpoint folder that ``benchsuite run --model DIR`` (or :class:`benchsuite.running.runner.Runner`) accepts,
with corpora that need no download::

    model_dir = save_tiny_model(tmp_path / "model")
    text = write_corpus(tmp_path / "text.txt")
    # benchsuite run --model DIR --profile smoke --tasks none \
    #     --corpora TEXT --recovery-data TEXT --calibration-data TEXT
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchsuite.api.architecture import architecture_of
from benchsuite.api.components import Criterion, Granularity, GroupSet, PruneContext
from benchsuite.api.errors import ConfigError
from benchsuite.api.experts import fused
from benchsuite.api.model import decoder_layers

__all__ = [
    "SPECIAL_TOKENS", "TINY_VOCAB", "ConformanceReport", "assert_conforms", "calibration_tokens", "check_criterion",
    "corpus_text", "make_context", "offline_tokenizer", "save_tiny_model", "seed_everything", "tiny_llama",
    "tiny_model", "FAMILY_CONFIGS", "write_corpus",
]

#: The offline tokenizer's special tokens, after the 256 byte tokens (ids 256, 257, 258, 259).
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
#: Vocabulary size of :func:`offline_tokenizer` and of the models :func:`tiny_llama` builds.
TINY_VOCAB = 256 + len(SPECIAL_TOKENS)


# -- tokenizer ------------------------------------------------------------------------------------------
def _byte_alphabet() -> dict[int, str]:
    """Byte -> the printable character that stands for it in a byte-level vocabulary (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def offline_tokenizer():
    """A byte-level tokenizer built in memory, with no file or download: token id ``b`` is byte ``b`` of
    the UTF-8 text (ids 0-255), then ``<unk>``, ``<s>`` (bos), ``</s>`` (eos) and ``<pad>`` (256-259).

    Returns a ``transformers.PreTrainedTokenizerFast`` of :data:`TINY_VOCAB` tokens; ``save_pretrained``
    and ``AutoTokenizer.from_pretrained`` round-trip it. Deterministic: every call builds the same one.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in _byte_alphabet().items()}
    vocab.update({token: 256 + i for i, token in enumerate(SPECIAL_TOKENS)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))  # no merges: one token per byte
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    unk, bos, eos, pad = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token=unk, bos_token=bos, eos_token=eos,
                                   pad_token=pad)


def add_a_merge(folder: str | os.PathLike) -> Path:
    """Give the :func:`offline_tokenizer` saved in ``folder`` one merge (``Ġ`` + ``t`` -> token 260, so the model
    needs a vocabulary of at least 261): a GGUF BPE vocabulary needs merges, and the offline tokenizer has none.
    Returns the folder."""
    folder = Path(folder)
    file = folder / "tokenizer.json"
    data = json.loads(file.read_text())
    data["model"]["vocab"]["Ġt"] = TINY_VOCAB
    data["model"]["merges"] = [["Ġ", "t"]]
    file.write_text(json.dumps(data))
    return folder


# -- models ---------------------------------------------------------------------------------------------
#: family -> (transformers config class, what its config adds to the common tiny settings): a tiny checkpoint of
#: every family :mod:`benchsuite_plugins.architectures` describes (Phi-3's fused projections, the mixtures of experts
#: with 4 experts of which 2 are routed per token)
FAMILY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": 16}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {}),
    "gemma2": ("Gemma2Config", {"query_pre_attn_scalar": 16, "sliding_window": 16, "final_logit_softcapping": 30.0,
                                "attn_logit_softcapping": 50.0}),
    "gemma3": ("Gemma3TextConfig", {"query_pre_attn_scalar": 16, "sliding_window": 16}),
    "granite": ("GraniteConfig", {"embedding_multiplier": 6.0, "residual_multiplier": 0.5,
                                  "attention_multiplier": 0.1, "logits_scaling": 4.0}),
    "olmo2": ("Olmo2Config", {}),
    "phi3": ("Phi3Config", {}),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen3-moe": ("Qwen3MoeConfig", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64}),
}


def tiny_model(family: str = "llama", heads: int = 4, kv_heads: int = 4, layers: int = 8, seed: int = 0, *,
               hidden_size: int = 96, intermediate_size: int = 128, vocab_size: int = TINY_VOCAB,
               max_positions: int = 256, weight_std: float = 0.2, norm_std: float = 0.1,
               config: Mapping[str, Any] | None = None):
    """A tiny random causal LM of ``family`` (a key of :data:`FAMILY_CONFIGS`), made with that family's own
    transformers config class, in eval mode: ``heads`` query heads sharing ``kv_heads`` key/value heads
    (``kv_heads == heads``: multi-head attention; fewer: GQA), ``layers`` decoder layers,
    ``head_dim = hidden_size // heads``, tied embeddings, :data:`TINY_VOCAB` tokens (the offline tokenizer's).
    Its matrices are drawn from ``N(0, weight_std)`` (wider than the usual initialisation), so that pruning visibly
    changes the logits, and its norm weights moved by ``N(0, norm_std)`` from their initial values, so that a norm
    cut or kept wrongly shows. ``config`` overrides settings of the family's config (e.g. ``sliding_window``).
    Seeds torch's global generator with ``seed``."""
    import transformers

    if family not in FAMILY_CONFIGS:
        raise ValueError(f"family {family!r} unknown; choose one of {', '.join(FAMILY_CONFIGS)}")
    if hidden_size % heads or heads % kv_heads:
        raise ValueError(f"hidden_size {hidden_size} must divide by heads {heads}, and heads by kv_heads {kv_heads}")
    torch.manual_seed(seed)
    config_name, extra = FAMILY_CONFIGS[family]
    settings = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=hidden_size // heads, max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=257, eos_token_id=258, pad_token_id=259, **extra,
    )
    model = transformers.AutoModelForCausalLM.from_config(
        getattr(transformers, config_name)(**{**settings, **(config or {})})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, weight_std)
        if norm_std:
            for name, p in model.named_parameters():
                if p.dim() == 1 and "norm" in name:
                    p.add_(torch.randn_like(p) * norm_std)
    decoder_layers(model)  # as the suite holds it (a mixture of experts: per-expert Linears)
    return model


def tiny_llama(heads: int = 4, kv_heads: int = 4, layers: int = 8, seed: int = 0, *, hidden_size: int = 96,
               intermediate_size: int = 128, vocab_size: int = TINY_VOCAB, max_positions: int = 256,
               weight_std: float = 0.2, config: Mapping[str, Any] | None = None):
    """A tiny random ``LlamaForCausalLM`` in eval mode (:func:`tiny_model` of the ``llama`` family, its norms left
    at one): ``heads`` query heads sharing ``kv_heads`` key/value heads (``kv_heads == heads``: multi-head
    attention; fewer: GQA), ``layers`` decoder layers, ``head_dim = hidden_size // heads``, tied embeddings,
    :data:`TINY_VOCAB` tokens (the offline tokenizer's). Its weights are drawn from ``N(0, weight_std)`` (wider
    than the usual initialisation), so that pruning visibly changes the logits. Seeds torch's global generator
    with ``seed``.
    """
    return tiny_model("llama", heads, kv_heads, layers, seed, hidden_size=hidden_size,
                      intermediate_size=intermediate_size, vocab_size=vocab_size, max_positions=max_positions,
                      weight_std=weight_std, norm_std=0.0, config=config)


def save_tiny_model(path: str | os.PathLike, heads: int = 6, kv_heads: int = 2, layers: int = 8, seed: int = 0,
                    family: str = "llama", **kwargs: Any) -> Path:
    """Save a tiny random model of ``family`` (:func:`tiny_llama` for ``llama``, else :func:`tiny_model`; GQA by
    default: 6 query heads over 2 key/value heads) and the :func:`offline_tokenizer` into ``path`` (created if
    needed): a checkpoint folder that ``benchsuite run --model PATH`` loads. ``kwargs`` go to the model's
    function. Returns the path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = tiny_llama(heads, kv_heads, layers, seed, **kwargs) if family == "llama" else tiny_model(
        family, heads, kv_heads, layers, seed, **kwargs)
    arch = architecture_of(model, prunable=False)
    with fused(model, arch, decoder_layers(model)) if arch.experts else contextlib.nullcontext():
        model.save_pretrained(path)  # as the hub keeps the family (per-expert tensors, in the family's names)
    offline_tokenizer().save_pretrained(path)
    return path


# -- text -----------------------------------------------------------------------------------------------
_WORDS = (
    "the a one every each this that some many few small large old new early late quiet busy bright dark "
    "river valley mountain city village market harbour bridge road garden forest field library station "
    "farmer teacher sailor painter doctor merchant child writer builder traveller engineer neighbour "
    "walks builds reads carries follows finds opens watches paints writes crosses remembers gathers "
    "slowly quickly often rarely always together carefully before after during across beyond under near "
    "and but while because although when where so then also still only never again"
).split()


def corpus_text(documents: int = 40, seed: int = 0, *, sentences: tuple[int, int] = (4, 8)) -> str:
    """Deterministic English-like text: ``documents`` paragraphs of ``sentences`` (min, max) sentences
    each, separated by blank lines (a ``.txt`` corpus' document separator). The default is about 20 KB;
    with the offline tokenizer every byte is a token."""
    rng = random.Random(seed)
    docs = []
    for d in range(documents):
        lines = []
        for _ in range(rng.randint(*sentences)):
            words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 14))]
            lines.append(" ".join(words).capitalize() + ".")
        docs.append(f"Document {d}. " + " ".join(lines))
    return "\n\n".join(docs) + "\n"


def write_corpus(path: str | os.PathLike, documents: int = 40, seed: int = 0) -> Path:
    """Write :func:`corpus_text` to ``path`` (a ``.txt`` file that ``--corpora``, ``--recovery-data`` and
    ``--calibration-data`` accept, or ``.jsonl`` with one ``{"text": ...}`` object per document). Returns the
    path."""
    path = Path(path)
    text = corpus_text(documents, seed)
    if path.suffix == ".jsonl":
        text = "".join(json.dumps({"text": doc}) + "\n" for doc in text.strip().split("\n\n"))
    elif path.suffix != ".txt":
        raise ValueError(f"{path}: a corpus file ends in .txt or .jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def calibration_tokens(samples: int = 4, length: int = 32, seed: int = 0) -> torch.Tensor:
    """``samples`` spans of ``length`` token ids (a LongTensor ``[samples, length]``) from
    :func:`corpus_text`, tokenized by the offline tokenizer (its ids are the text's bytes), at offsets
    drawn from ``seed``: the same call gives the same tokens."""
    ids = torch.tensor(list(corpus_text(seed=0).encode("utf-8")), dtype=torch.long)
    if length >= len(ids):
        raise ValueError(f"length {length} is longer than the test corpus ({len(ids)} tokens)")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - length, (samples,), generator=generator)
    return torch.stack([ids[int(s):int(s) + length] for s in starts])


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators, as the runner does before each run."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy comes with torch
        pass


# -- context --------------------------------------------------------------------------------------------
def make_context(seed: int = 0, calibration: torch.Tensor | Callable[[], Iterable[torch.Tensor]] | None = None, *,
                 samples: int = 4, length: int = 32, batch_size: int = 2, train_steps: int = 0,
                 lora: Any = None, train_batch: int = 2, train_len: int = 32, device: str | torch.device = "cpu",
                 profile: Mapping[str, Any] | None = None) -> PruneContext:
    """A :class:`~benchsuite.api.components.PruneContext` as the runner builds one, without a corpus download.

    - ``calibration``: ``None`` (``samples`` x ``length`` tokens of :func:`calibration_tokens` drawn with
      ``seed``), a LongTensor ``[n, length]`` (served in batches of ``batch_size``), or a callable that
      returns an iterable of batches. ``ctx.calibration_batches()`` gives a fresh iterator each call.
    - ``train_steps > 0``: ``ctx.finetune(model, steps, before_step=None, after_step=None, desc=...)``
      trains the model's LoRA adapters with :func:`benchsuite.running.finetune.train_lora` (attach them first
      with :func:`benchsuite.running.finetune.attach_lora`) on ``train_batch`` x ``train_len`` token windows of
      the test corpus, shuffled by ``seed``, and returns the training summary. ``lora``: a
      :class:`~benchsuite.running.finetune.LoRAConfig` or a dict of its fields (default: ``LoRAConfig()``).
    - ``profile``: what ``ctx.profile`` holds (default: the ``smoke`` profile's settings).
    """
    from benchsuite.api.profiles import get_profile
    from benchsuite.running.finetune import LoRAConfig, train_lora

    if calibration is None:
        calibration = calibration_tokens(samples, length, seed)
    if isinstance(calibration, torch.Tensor):
        tokens = calibration

        def calibration_batches() -> Iterator[torch.Tensor]:
            return iter([tokens[i:i + batch_size] for i in range(0, len(tokens), batch_size)])
    elif callable(calibration):
        def calibration_batches() -> Iterator[torch.Tensor]:
            return iter(calibration())
    else:
        raise TypeError(f"calibration must be None, a LongTensor or a callable, not {type(calibration).__name__}")
    ctx = PruneContext(seed=seed, device=torch.device(device),
                       profile=dict(profile) if profile is not None else get_profile("smoke").as_dict(),
                       calibration_batches=calibration_batches, train_steps=train_steps)
    if train_steps > 0:
        config = lora if isinstance(lora, LoRAConfig) else LoRAConfig(**dict(lora or {}))
        windows = torch.tensor(list(corpus_text(seed=1).encode("utf-8")), dtype=torch.long)
        windows = windows[: len(windows) // train_len * train_len].reshape(-1, train_len)

        def finetune(model: nn.Module, steps: int, before_step=None, after_step=None,
                     desc: str = "LoRA fine-tuning") -> dict[str, Any]:
            log = train_lora(model, _shuffled(windows, train_batch, seed), steps, config, seed, before_step,
                             after_step, desc)
            return log.summary() | {"micro_batch": train_batch, "length": train_len}

        ctx.finetune = finetune
    return ctx


def _shuffled(windows: torch.Tensor, batch: int, seed: int) -> Iterator[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(windows), generator=generator)
        for start in range(0, len(order) - batch + 1, batch):
            yield windows[order[start:start + batch]]


# -- conformance ----------------------------------------------------------------------------------------
@dataclass
class ConformanceReport:
    """What :func:`check_criterion` found: one line per failed check (``failures``), per combination
    that was not run or that the criterion declined (``skipped``, with the reason), per check that
    passed (``passed``), and per granularity that does not apply to the test models (``not_applicable``:
    whole experts, on the tiny Llamas; neither a skip of the criterion nor a failure)."""

    criterion: str
    params: dict[str, Any]
    passed: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    not_applicable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed (skipped combinations are not failures)."""
        return not self.failures

    def summary(self) -> str:
        """A readable account: the verdict, every failure, every skipped combination."""
        head = (f"criterion '{self.criterion}' {json.dumps(self.params, default=repr)}: "
                f"{'conforms' if self.ok else f'{len(self.failures)} failure(s)'} "
                f"({len(self.passed)} checks passed, {len(self.skipped)} skipped, {self.seconds:.1f} s)")
        lines = [head]
        lines += [f"  FAIL {line}" for line in self.failures]
        lines += [f"  skip {line}" for line in self.skipped]
        return "\n".join(lines)

    __str__ = summary


#: The tiny models the check runs on: name -> (query heads, key/value heads).
MODELS = {"mha": (4, 4), "gqa": (4, 2)}
#: Errors that mean "this criterion does not support this combination" (if they say why).
DECLINED = (ConfigError, ValueError, NotImplementedError)


@dataclass
class _Run:
    """One schedule run: what the probing granularity saw, and the outcome."""

    outcome: Any = None
    score_problems: list[str] = field(default_factory=list)
    finalize_checks: list[tuple[str, str | None]] = field(default_factory=list)  # (check, problem or None)
    finalized: int = 0
    unit_params: dict[str, int] = field(default_factory=dict)  # group name -> one unit's parameters (adaptive)
    removed_params: int | None = None  # projection parameters finalize removed (biases it adds count against)


def _component(item: Any, kind: str, table: Mapping[str, type]) -> tuple[str, type, dict[str, Any]]:
    """``name`` | class | ``(name or class, params)`` -> (label, class, params)."""
    params: dict[str, Any] = {}
    if isinstance(item, tuple):
        item, params = item[0], dict(item[1] or {})
    if isinstance(item, str):
        if item not in table:
            raise ConfigError(f"unknown {kind} '{item}' (registered: {', '.join(sorted(table))})")
        cls = table[item]
    else:
        cls = item
    label = cls.name + (f"{json.dumps(params, sort_keys=True, default=repr)}" if params else "")
    return label, cls, params


def _logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(input_ids=tokens).logits.float()
    finally:
        model.train(was_training)


def _probe(cls: type[Granularity], run: _Run, tokens: torch.Tensor, atol: float) -> type[Granularity]:
    """A subclass of the granularity ``cls`` that checks every score it computes and compares the
    masked model with the finalized one (same logits), then behaves exactly as ``cls``."""

    def score(self, criterion, model, groups):
        for group, params in zip(groups, self.unit_params(model, groups)):
            run.unit_params.setdefault(group.name, params)
        scores = cls.score(self, criterion, model, groups)
        if len(scores) != len(groups):
            run.score_problems.append(f"{len(scores)} score tensors for {len(groups)} groups")
        for group, value in zip(groups, scores):
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                run.score_problems.append(f"{group.name}: scores are not a float tensor ({type(value).__name__})")
            elif value.numel() != group.size:
                run.score_problems.append(f"{group.name}: {value.numel()} scores for {group.size} units "
                                          f"(shape {tuple(value.shape)})")
            elif not bool(torch.isfinite(value).all()):
                run.score_problems.append(f"{group.name}: {int((~torch.isfinite(value)).sum())} non-finite scores")
        return scores

    def finalize(self, model, groups, masks):
        run.finalized += 1
        self.apply_masks(model, groups, masks)
        masked = _logits(model, tokens)
        before = _projection_params(model)
        out = cls.finalize(self, model, groups, masks)
        run.removed_params = before - _projection_params(out)
        final = _logits(out, tokens)
        if not bool(torch.isfinite(final).all()):
            run.finalize_checks.append(("finite logits after finalize", "the finalized model gives non-finite logits"))
        diff = float((masked - final).abs().max()) if masked.shape == final.shape else math.inf
        scale = float(masked.abs().max()) or 1.0
        problem = None if diff <= atol * max(1.0, scale) else (
            f"the finalized model's logits differ from the masked model's by {diff:.3g} (|logits| up to "
            f"{scale:.3g})")
        run.finalize_checks.append(("masked equals finalized", problem))
        return out

    return type(cls.__name__, (cls,), {"score": score, "finalize": finalize, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


def _projection_params(model: nn.Module) -> int:
    """Weights and biases of the decoder layers' pretrained projections."""
    from benchsuite.api.model import linear_modules

    return sum(linear.weight.numel() + (linear.bias.numel() if linear.bias is not None else 0)
               for _, linear in linear_modules(model))


def _budget_problems(groups: list[GroupSet], masks: list[torch.Tensor], ratio: float, run: _Run) -> list[str]:
    """For adaptive granularities: the parameters removed (finalize's count when it ran) are within one unit's
    parameters of ``ratio`` of the units' parameters in all, and every block keeps a unit."""
    unit_params = [run.unit_params.get(g.name) for g in groups]
    if None in unit_params or len(masks) != len(groups):
        return [f"{len(masks)} masks for {len(groups)} groups, {len(run.unit_params)} of them scored"]
    problems = [f"{g.name}: a block lost all its units" for g, m in zip(groups, masks)
                if bool((~m.cpu()).reshape(g.blocks, -1).all(1).any())]
    target = ratio * sum(g.size * n for g, n in zip(groups, unit_params))
    removed = run.removed_params if run.removed_params is not None else sum(
        int((~m).sum()) * n for m, n in zip(masks, unit_params))
    slack = max(g.blocks * n for g, n in zip(groups, unit_params))
    if abs(removed - target) > slack:
        problems.append(f"{removed} parameters removed, expected {target:.0f} within one unit ({slack})")
    return problems


def _params_json(component: Any) -> str:
    return json.dumps(component.params(), sort_keys=True)


def _check_params(cls: type[Criterion], params: Mapping[str, Any] | None, report: ConformanceReport) -> str | None:
    """Parameters round-trip into the record; returns their JSON (None if the criterion can't be built)."""
    try:
        criterion = cls.create(params)
    except Exception as exc:  # noqa: BLE001 - reported
        report.failures.append(f"params: {cls.__name__}.create({dict(params or {})!r}) raised "
                               f"{type(exc).__name__}: {exc}")
        return None
    recorded = criterion.params()
    try:
        text = json.dumps(recorded, sort_keys=True)
    except (TypeError, ValueError) as exc:
        report.failures.append(f"params: params() is not JSON-serialisable ({exc}): {recorded!r}")
        return None
    try:
        again = cls.create(json.loads(text)).params()
    except Exception as exc:  # noqa: BLE001 - reported
        report.failures.append(f"params: create() does not accept its own recorded params {text}: "
                               f"{type(exc).__name__}: {exc}")
        return text
    if json.dumps(again, sort_keys=True) != text:
        report.failures.append(f"params: create(params()).params() gives {again!r}, not {recorded!r}")
    else:
        report.passed.append("params() is JSON and create(params()).params() round-trips")
    return text


def _ratio_problems(groups: list[GroupSet], masks: list[torch.Tensor], ratio: float) -> list[str]:
    """Within one unit per block of ``ratio`` in every group, and in total."""
    problems = []
    if len(masks) != len(groups):
        return [f"{len(masks)} masks for {len(groups)} groups"]
    pruned_total = expected_total = 0.0
    slack_total = 1
    for group, mask in zip(groups, masks):
        if mask.dtype != torch.bool or mask.numel() != group.size:
            problems.append(f"{group.name}: the mask is {mask.dtype} with {mask.numel()} entries for "
                            f"{group.size} units")
            continue
        pruned = int((~mask).sum())
        expected = ratio * group.size
        slack = max(1, group.blocks)
        if abs(pruned - expected) > slack + 1e-9 and abs(pruned - expected) > 0.01 * group.size:
            problems.append(f"{group.name}: {pruned} of {group.size} units pruned, expected about {expected:g}")
        pruned_total += pruned
        expected_total += expected
        slack_total = max(slack_total, slack)
    total = sum(g.size for g in groups)
    if abs(pruned_total - expected_total) > slack_total + 1e-9 and abs(pruned_total - expected_total) > 0.01 * total:
        problems.append(f"{int(pruned_total)} of {total} units pruned in all, expected about {expected_total:g} "
                        f"(ratio {ratio:g})")
    return problems


def _element_problems(model: nn.Module, groups: list[GroupSet], masks: list[torch.Tensor],
                      nm: tuple[int, int] | None) -> tuple[list[str], bool]:
    """For element-level masks (one per weight matrix): masked weights are zero, and N:M holds.
    Returns (problems, whether the masks were element-level)."""
    from benchsuite.api.model import base_linear, decoder_layers

    layers = decoder_layers(model)
    problems, element = [], False
    for group, mask in zip(groups, masks):
        if mask.dim() != 2 or len(group.members) != 1:
            continue
        try:
            weight = base_linear(layers[group.layer].get_submodule(group.members[0].module)).weight.detach()
        except (AttributeError, IndexError):
            continue
        if weight.shape != mask.shape:
            continue
        element = True
        left = int((weight[~mask.to(weight.device)] != 0).sum())
        if left:
            problems.append(f"{group.name}: {left} masked weights are not zero after finalize")
        if nm is not None:
            n, m = nm
            rows, cols = weight.shape
            if cols % m:
                problems.append(f"{group.name}: width {cols} is not a multiple of M={m}")
                continue
            nonzero = (weight != 0).reshape(rows, cols // m, m).sum(-1)
            kept = mask.reshape(rows, cols // m, m).sum(-1)
            if int(nonzero.max()) > n or int(kept.max()) > n:
                problems.append(f"{group.name}: a block of {m} keeps {max(int(nonzero.max()), int(kept.max()))} "
                                f"weights, more than N={n}")
    return problems, element


def check_criterion(criterion_cls: type[Criterion], params: Mapping[str, Any] | None = None, *,
                    granularities: Sequence[Any] | None = None, schedules: Sequence[Any] | None = None,
                    models: Sequence[str] = ("mha", "gqa"), ratio: float = 0.5, seed: int = 0, layers: int = 8,
                    train_steps: int = 4, atol: float = 1e-5, repeat: bool = True,
                    registry: Any = None) -> ConformanceReport:
    """Run a criterion through every registered granularity and schedule on tiny MHA and GQA models, and
    report every violation of the plugin contract (see docs/plugins.md, "Testing your plugin").

    - ``granularities`` / ``schedules``: names, classes or ``(name or class, params)`` pairs; default:
      everything :func:`benchsuite.host.load_registry` finds (third-party ones included), with
      default parameters. Schedules that train (``trains``) get a context with ``train_steps`` LoRA
      steps and a LoRA-wrapped model; so does every schedule for a criterion that needs ``lora_grad``.
    - ``ratio``: the target (granularities with a ``fixed_ratio``, N:M, use theirs); ``seed``: the run's
      seed; the models have ``layers`` decoder layers, of which all but the first are pruned.
    - ``repeat``: run every combination a second time with the same seed and compare the masks.

    Checks: parameters round-trip into the record (``create(params).params()`` is JSON and
    ``create`` of it gives it back) and are not changed by a run (runtime state is not a parameter);
    every score the granularity computes is a finite float tensor with one score per unit; every
    combination hits the target ratio (within one unit per block, per group and in all); the masked
    model gives the logits of the finalized one (structured: physically removed; within ``atol``,
    relative to the logits' size); element-level masks leave zeros in the weights (and at most N per
    block of M); the same seed gives the same masks. A combination the criterion declines with a
    ``ConfigError``, ``ValueError`` or ``NotImplementedError`` that says why is skipped, not failed
    (e.g. vector-wise Taylor at N:M); an error without a message, an error the granularity or schedule
    raises about what the criterion returned, or any other exception, fails.

    Runs on one torch thread (restored afterwards): the tiny models are fastest so, whatever else runs.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models run fastest on one thread, and then don't suffer from other load
    try:
        return _check_criterion(criterion_cls, params, granularities, schedules, models, ratio, seed, layers,
                                train_steps, atol, repeat, registry)
    finally:
        torch.set_num_threads(threads)


def _declined_by(exc: BaseException, criterion: Any, others: tuple[Any, ...]) -> bool:
    """Whether the criterion itself raised ``exc`` (its deepest frame among the components' is the criterion's),
    rather than the granularity or schedule refusing what it returned."""
    owner = None
    tb = exc.__traceback__
    while tb is not None:
        this = tb.tb_frame.f_locals.get("self")
        if this is criterion or any(this is other for other in others):
            owner = this
        tb = tb.tb_next
    return owner is criterion


def _check_criterion(criterion_cls, params, granularities, schedules, models, ratio, seed, layers, train_steps,
                     atol, repeat, registry) -> ConformanceReport:
    from benchsuite.host import load_registry
    from benchsuite.running.finetune import LoRAConfig, attach_lora

    start = time.perf_counter()
    report = ConformanceReport(getattr(criterion_cls, "name", criterion_cls.__name__), dict(params or {}))
    recorded = _check_params(criterion_cls, params, report)
    if recorded is None:
        report.seconds = time.perf_counter() - start
        return report
    registry = registry or load_registry()
    gran_items = [_component(g, "granularity", registry.granularities)
                  for g in (granularities if granularities is not None else sorted(registry.granularities))]
    sched_items = [_component(s, "schedule", registry.schedules)
                   for s in (schedules if schedules is not None else sorted(registry.schedules))]
    tokens = calibration_tokens(2, 16, seed + 1)
    lora_grad = "lora_grad" in getattr(criterion_cls, "needs", ())
    ran = 0

    for model_name in models:
        heads, kv_heads = MODELS[model_name]
        for gran_label, gran_cls, gran_params in gran_items:
            for sched_label, sched_cls, sched_params in sched_items:
                where = f"{model_name}/{gran_label}/{sched_label}"
                try:
                    trains = bool(getattr(sched_cls.create(sched_params), "trains", False))
                    fixed = gran_cls.create(gran_params).fixed_ratio
                except Exception as exc:  # noqa: BLE001 - not the criterion's fault
                    report.skipped.append(f"{where}: can't build the {sched_label} schedule or the {gran_label} "
                                          f"granularity: {type(exc).__name__}: {exc}")
                    continue
                target = ratio if fixed is None else fixed
                with_lora = trains or lora_grad
                masks = []
                for attempt in range(2 if repeat else 1):
                    run = _Run()
                    seed_everything(seed)
                    model = tiny_llama(heads, kv_heads, layers, seed)
                    if with_lora:
                        model = attach_lora(model, LoRAConfig())
                    ctx = make_context(seed, train_steps=train_steps if with_lora else 0)
                    criterion = criterion_cls.create(params)
                    schedule = sched_cls.create(sched_params)
                    granularity = _probe(gran_cls, run, tokens, atol).create(gran_params)
                    pruned = list(range(1, layers))
                    try:  # a granularity for other models (whole experts) does not apply to these tiny Llamas
                        granularity.check_model(model)
                    except ConfigError as exc:
                        report.not_applicable.append(f"{where}: {exc}")
                        break
                    try:
                        run.outcome = schedule.run(model, criterion, granularity, target, pruned, ctx)
                    except DECLINED as exc:
                        message = str(exc).strip()
                        if not _declined_by(exc, criterion, (granularity, schedule)):
                            report.failures.append(f"{where}: {type(exc).__name__}: {message}")
                        elif not message:
                            report.failures.append(f"{where}: {type(exc).__name__} without a message: say why "
                                                   "the combination is not supported")
                        else:
                            report.skipped.append(f"{where}: not supported: {type(exc).__name__}: {message}")
                        break
                    except Exception as exc:  # noqa: BLE001 - reported
                        report.failures.append(f"{where}: {type(exc).__name__}: {exc}")
                        break
                    masks.append([m.detach().cpu().clone() for m in run.outcome.masks])
                    if attempt:
                        continue  # the repeat only compares masks
                    ran += 1
                    outcome = run.outcome
                    if run.score_problems:
                        report.failures.append(f"{where}: scores: " + "; ".join(run.score_problems[:3]))
                    else:
                        report.passed.append(f"{where}: scores finite, one per unit")
                    problems = (_budget_problems(outcome.groups, outcome.masks, target, run)
                                if getattr(granularity, "adaptive", False) else
                                _ratio_problems(outcome.groups, outcome.masks, target))
                    if problems:
                        report.failures.append(f"{where}: ratio {target:g} not hit: " + "; ".join(problems[:3]))
                    else:
                        report.passed.append(f"{where}: ratio {target:g} hit")
                    if not run.finalized:
                        report.skipped.append(f"{where}: masked-equals-finalized not checked: the schedule did "
                                              "not call granularity.finalize")
                    for check, problem in run.finalize_checks:
                        if problem:
                            report.failures.append(f"{where}: {check}: {problem}")
                        else:
                            report.passed.append(f"{where}: {check}")
                    gp = granularity.params()
                    nm = (gp["n"], gp["m"]) if isinstance(gp.get("n"), int) and isinstance(gp.get("m"), int) else None
                    problems, element = _element_problems(outcome.model, outcome.groups, outcome.masks, nm)
                    if problems:
                        report.failures.append(f"{where}: element masks: " + "; ".join(problems[:3]))
                    elif element:
                        report.passed.append(f"{where}: masked weights are zero" + (f", {nm[0]}:{nm[1]} holds"
                                                                                   if nm else ""))
                    try:
                        after = _params_json(criterion)
                    except (TypeError, ValueError) as exc:
                        after = f"not JSON: {exc}"
                    if after != recorded:
                        report.failures.append(f"{where}: params() changed during the run ({recorded} -> {after}): "
                                               "runtime state must not be a parameter (create it in setup(), "
                                               "with a leading underscore)")
                    del model, outcome
                if len(masks) == 2:
                    same = len(masks[0]) == len(masks[1]) and all(
                        a.shape == b.shape and torch.equal(a, b) for a, b in zip(*masks))
                    if same:
                        report.passed.append(f"{where}: same seed, same masks")
                    else:
                        report.failures.append(f"{where}: two runs with seed {seed} gave different masks "
                                               "(draw randomness from ctx.seed or the seeded global generators)")
    if not ran and not report.failures:
        report.failures.append("no combination ran: the criterion declined every granularity and schedule")
    report.seconds = time.perf_counter() - start
    return report


def assert_conforms(criterion_cls: type[Criterion], params: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> ConformanceReport:
    """:func:`check_criterion`, for pytest: raises ``AssertionError`` listing every failure (and what
    was skipped); returns the report when nothing failed."""
    report = check_criterion(criterion_cls, params, **kwargs)
    if not report.ok:
        raise AssertionError(report.summary())
    return report

