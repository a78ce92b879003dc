"""Model families: one small description per decoder family that everything else asks.

An :class:`Architecture` says where a family keeps its decoder layers and projections, which parameters go with a
pruned head (biases always; OLMo 2's ``q_norm``/``k_norm`` over the whole projection) and which stay whole (Qwen3's
and Gemma 3's per-head norms), which transformers classes its checkpoints are, and how it is exported. Plugins
register them with ``benchsuite_register_architectures``; the built-in families are registered the same way
(``benchsuite_plugins.architectures``). :func:`architecture_of` finds a model's family by its config's
``model_type``: a family no plugin describes, or one described as not prunable yet, is one clear
:class:`~benchsuite.api.errors.ConfigError`, raised before any work.

May import: :mod:`benchsuite.util` and the other modules of :mod:`benchsuite.api`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from benchsuite.api.errors import ConfigError

#: the plugin guide's section on describing a family (named in the error for an undescribed one)
GUIDE = "docs/plugins.md#describing-a-new-family"

_LLAMA_ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_LLAMA_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class Architecture:
    """A decoder family, as pruning, recovery, saving and export need to know it.

    Paths are relative to one decoder layer. A family whose checkpoints hold the attention projections as
    separate q/k/v/o Linears and the MLP as gate/up/down Linears (the Llama layout, which transformers keeps for
    Llama, Mistral, Qwen2/3, Gemma 2/3, Granite and OLMo 2) is described by its names and classes alone; a fused
    projection (Phi-3's ``qkv_proj``: q rows, then k, then v; ``gate_up_proj``: gate rows, then up) is named for
    each of its parts."""

    #: the family's name (``benchsuite models``/``plugins`` and records show it)
    name: str
    #: the ``model_type`` values of the checkpoints it describes (``config.json``)
    model_types: tuple[str, ...]
    description: str = ""
    #: transformers' config and causal-LM classes (names in ``transformers``): a structurally pruned export
    #: subclasses them, so it opens as this family
    config_class: str = "LlamaConfig"
    model_class: str = "LlamaForCausalLM"
    #: q, k, v, o projections (rows of q/k/v: heads x head_dim; columns of o: heads x head_dim)
    attention: tuple[str, str, str, str] = _LLAMA_ATTENTION
    #: gate, up, down projections (rows of gate/up and columns of down: intermediate channels)
    mlp: tuple[str, str, str] = _LLAMA_MLP
    #: parameters cut with the heads, by their first dimension: path -> ``"q"`` (query rows) or ``"kv"``
    #: (key/value rows); OLMo 2's ``q_norm``/``k_norm`` normalise the whole projection. Removing a head changes
    #: what such a norm averages over, so the masked model computes the norm over the kept rows only (exact)
    cut_with_heads: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: parameters that a pruned head leaves whole (norms over ``head_dim`` shared by every head): documented,
    #: and checked to be present
    kept: tuple[str, ...] = ()
    #: llama.cpp's architecture for the family, one the GGUF writer knows (``benchsuite.models.gguf_file.LAYOUTS``:
    #: dense, N:M, unstructured exports); None: no GGUF export
    gguf: str | None = None
    #: the plain Llama layout, which llama.cpp's ``deci`` reads with per-layer widths (structured GGUF exports)
    gguf_per_layer: bool = False
    #: removing whole decoder layers keeps the model working (depth pruning)
    depth: bool = True
    #: the family's models expect the tokenizer's BOS token first (Gemma: without it, wiki perplexity is about 5x
    #: worse): every evaluation, calibration and training window then starts with it (context only, never scored)
    bos: bool = False
    #: why checkpoints of this family can't be pruned by this version (refused before any work); None: they can
    unsupported: str | None = None
    #: a mixture of experts: the path of a layer's experts module, which transformers stores as fused 3-D parameters
    #: ``gate_up_proj`` ``[experts, 2 * width, hidden]`` (gate rows, then up rows) and ``down_proj``
    #: ``[experts, hidden, width]`` (Mixtral, Qwen3-MoE). The suite holds each expert as three Linears
    #: (``<experts>.<e>.gate_linear``/``up_linear``/``down_linear``; :mod:`benchsuite.api.experts`) while it prunes
    #: and trains, and writes them back fused; ``mlp`` then names one expert's projections with ``{e}``
    experts: str | None = None
    #: the router of a mixture of experts (a ``[experts, hidden]`` weight): a pruned expert's row goes with it
    router: str | None = None
    #: the config attributes holding the experts' count and each expert's MLP width
    experts_count: str = "num_experts"
    experts_width: str = "intermediate_size"

    def __post_init__(self) -> None:
        if self.experts and self.mlp == _LLAMA_MLP:
            object.__setattr__(self, "mlp", tuple(f"{self.experts}.{{e}}.{name}"
                                                  for name in ("gate_linear", "up_linear", "down_linear")))
        if self.experts and not self.router:
            raise ValueError(f"family {self.name!r}: a mixture of experts needs the router's path")

    def layer_paths(self, layer: Any = None, experts: int | None = None) -> tuple[str, ...]:
        """:attr:`projections` of one decoder layer, each expert's named (``mlp.experts.3.down_proj``): the experts
        the layer holds now (``layer``), or the first ``experts``."""
        if not self.experts:
            return self.projections
        count = experts if experts is not None else len(layer.get_submodule(self.experts))
        mlp = tuple(path.format(e=e) for e in range(count) for path in dict.fromkeys(self.mlp))
        return tuple(dict.fromkeys(self.attention)) + mlp

    def layer_input_groups(self, layer: Any) -> tuple[tuple[str, ...], ...]:
        """:attr:`input_groups` of one decoder layer (each expert's gate/up and down are groups of their own)."""
        if not self.experts:
            return self.input_groups
        q, k, v, o = self.attention
        gate, up, down = self.mlp
        count = len(layer.get_submodule(self.experts))
        out = [tuple(dict.fromkeys((q, k, v))), (o,)]
        for e in range(count):
            out += [tuple(dict.fromkeys((gate.format(e=e), up.format(e=e)))), (down.format(e=e),)]
        return tuple(out)

    @property
    def projections(self) -> tuple[str, ...]:
        """Every pruned projection of a layer, attention first, each once (a fused one holds several parts); the
        keys criteria receive end in these. A mixture of experts names one expert's with ``{e}``: ask
        :meth:`layer_paths` for a layer's."""
        return tuple(dict.fromkeys(self.attention + self.mlp))

    @property
    def input_groups(self) -> tuple[tuple[str, ...], ...]:
        """Projections that read the same input, in order: (q, k, v), (o,), (gate, up), (down,), each once."""
        q, k, v, o = self.attention
        gate, up, down = self.mlp
        return tuple(tuple(dict.fromkeys(g)) for g in ((q, k, v), (o,), (gate, up), (down,)))

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """The module names peft's ``target_modules`` matches for every projection of the family."""
        return tuple(dict.fromkeys(path.rpartition(".")[2] for path in self.projections))

    def expert_path(self, e: int, part: int) -> str:
        """Expert ``e``'s gate (0), up (1) or down (2) projection."""
        return self.mlp[part].format(e=e)

    def as_dict(self) -> dict[str, Any]:
        """What a record keeps of the family."""
        return {"name": self.name, "model_types": list(self.model_types), "model_class": self.model_class}


#: model_type -> family, as the loaded plugins describe them (see :func:`use_architectures`)
_FAMILIES: dict[str, Architecture] = {}
#: loads the plugins (and so fills :data:`_FAMILIES`) where nothing did yet; set by the package (``benchsuite``)
_loader: Callable[[], Any] | None = None


def set_loader(loader: Callable[[], Any] | None) -> None:
    """What :func:`architecture_of` calls to load the plugins when no family is known yet."""
    global _loader
    _loader = loader


def use_architectures(families: Iterable[Architecture]) -> None:
    """Make ``families`` the ones :func:`architecture_of` knows (the host calls this when it loads the plugins; an
    earlier family keeps a ``model_type`` that a later one also claims)."""
    table: dict[str, Architecture] = {}
    for family in families:
        for model_type in family.model_types:
            table.setdefault(model_type, family)
    _FAMILIES.clear()
    _FAMILIES.update(table)


def known_families() -> dict[str, Architecture]:
    """model_type -> family, loading the plugins first where none is known."""
    return dict(_families())


def _families() -> dict[str, Architecture]:
    if not _FAMILIES and _loader is not None:
        _loader()
    return _FAMILIES


def model_type_of(model_or_config: Any) -> str | None:
    """The ``model_type`` of a model (also through peft wrappers), of a config, or of a config dict."""
    if isinstance(model_or_config, Mapping):
        return model_or_config.get("model_type")
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", None)


def architecture_of(model_or_config: Any, *, prunable: bool = True) -> Architecture:
    """The family of a model, config or config dict. A ``model_type`` no plugin describes is a ConfigError that
    lists the described families and points to the guide; with ``prunable``, so is a family described as not
    prunable yet (with its reason)."""
    model_type = model_type_of(model_or_config)
    families = _families()
    family = families.get(model_type) if model_type else None
    if family is None:
        names = sorted({f"{f.name} ({', '.join(f.model_types)})" for f in families.values() if not f.unsupported})
        raise ConfigError(f"model_type {model_type!r}: no plugin describes this model family; described: "
                          f"{'; '.join(names) or 'none'}. Describe it in a plugin ({GUIDE})")
    if prunable and family.unsupported:
        raise ConfigError(f"{family.name} (model_type {model_type!r}) can't be pruned by this version: "
                          f"{family.unsupported}")
    return family


def bos_token(model_or_config: Any, tokenizer: Any) -> int | None:
    """The token to put before every window of this model's family (:attr:`Architecture.bos`), or None."""
    try:
        family = architecture_of(model_or_config, prunable=False)
    except ConfigError:
        return None
    if not family.bos:
        return None
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise ConfigError(f"{family.name} models expect a BOS token before every window, and the tokenizer has none")
    return int(bos)
