"""Calibration passes, run by the host for criteria: one loop (device, mode, no-grad or backward,
progress, cleanup) so that no criterion writes its own.

    def prepare(self, model, ctx):
        calibrate(model, ctx, desc="Wanda: activations", inputs={key: self._add for key, _ in linear_modules(model)})

Schedules that prune layer by layer keep each decoder layer's inputs (:class:`LayerInputs`): captured once, moved
on through every finished layer, so that a pass of one layer replaces a pass of the whole model (the inputs are
bit for bit those of a full forward). While they are ``active()``, ``calibrate`` without gradients runs only the
current layer: the sequential schedule does this for criteria that declare ``layer_local``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from benchsuite.api.components import PruneContext
from benchsuite.api.model import decoder_layers, input_device, linear_modules
from benchsuite.util.progress import track

Grad = Literal["none", "lora", "weights"]

#: one layer's arguments for one calibration batch: (positional, keyword)
Arguments = tuple[tuple, dict[str, Any]]


class _Stop(Exception):
    """Raised by the hook that caught a layer's inputs: the rest of the model does not run."""


class LayerInputs:
    """The positional and keyword arguments decoder layer ``index`` receives for each calibration batch.

    ``LayerInputs(model, batches, device, start)`` runs the embedding (and the layers before ``start``) once per
    batch and stops at layer ``start``; :meth:`advance` passes the arguments through the current layer, as it is
    now (pruned), to give the next layer's. The hidden states equal, bit for bit, those of a forward pass of the
    whole model. ``with inputs.active(): ...``: :func:`calibrate` calls without gradients on this model run
    only the current layer on these arguments instead of the whole model.
    """

    def __init__(self, model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str,
                 start: int = 0) -> None:
        self.model = model
        self.index = start
        self.cached: list[Arguments] = []
        self.tokens = 0

        def hook(_module, args, kwargs):
            self.cached.append((args, kwargs))
            raise _Stop

        handle = decoder_layers(model)[start].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                for batch in batches:
                    try:
                        model(input_ids=batch.to(device), use_cache=False)
                    except _Stop:
                        pass
                    self.tokens += batch.numel()
        finally:
            handle.remove()

    def __len__(self) -> int:
        return len(self.cached)

    def run(self, layer: nn.Module | None = None) -> list[Arguments]:
        """Pass every cached input through ``layer`` (default: the current one); the next layer's arguments."""
        layer = decoder_layers(self.model)[self.index] if layer is None else layer
        out = []
        with torch.no_grad():
            for args, kwargs in self.cached:
                result = layer(*args, **kwargs) if args else layer(**kwargs)
                hidden = result[0] if isinstance(result, tuple) else result
                out.append(((hidden, *args[1:]), kwargs) if args else ((), {**kwargs, "hidden_states": hidden}))
        return out

    def advance(self, to: int | None = None) -> None:
        """Move on through the current layer (or through every layer before ``to``)."""
        target = self.index + 1 if to is None else to
        while self.index < target:
            self.cached = self.run()
            self.index += 1

    @contextmanager
    def active(self) -> Iterator[LayerInputs]:
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)


_ACTIVE: contextvars.ContextVar[LayerInputs | None] = contextvars.ContextVar("benchsuite_layer_inputs",
                                                                             default=None)


def calibrate(model: nn.Module, ctx: PruneContext, *, desc: str, grad: Grad = "none", per_sample: bool = False,
              train_mode: bool = False, inputs: Mapping[str, Callable[[str, torch.Tensor], None]] | None = None,
              after_backward: Callable[[], None] | None = None,
              collect: Callable[[], None] | None = None) -> dict[str, int]:
    """Run the model over ``ctx.calibration_batches()`` (moved to the model's input device, counted in the progress
    view).

    - ``grad="none"``: forward passes under ``torch.no_grad``.
    - ``grad="weights"``: every parameter requires grad; the mean language-modelling loss over all
      samples is back-propagated batch by batch, so ``.grad`` ends as its gradient. With
      ``per_sample=True`` each sample's own loss is back-propagated alone, ``after_backward()`` reads
      that sample's gradients, and they are zeroed before the next one (e.g. a Fisher diagonal).
    - ``grad="lora"``: as ``weights``, but only the parameters that already require grad (the LoRA
      adapters) get gradients; the pretrained weights stay frozen.
    - ``inputs``: ``{key: fn(key, x)}`` for module keys from :func:`~benchsuite.api.model.linear_modules`;
      ``fn`` receives each input ``x`` (detached) of that projection's pretrained Linear.
    - ``collect()``: called after the last pass, while the gradients are still there.
    - Inside a schedule's ``LayerInputs.active()`` on this model, a pass without gradients runs only that
      layer on its cached inputs (hooks of other layers see nothing); see :class:`LayerInputs`.

    The model runs in eval mode (no dropout) unless ``train_mode``. Afterwards hooks are removed,
    gradients dropped, ``requires_grad`` flags and the train/eval mode restored, whatever happened.
    Returns ``{"batches", "samples", "tokens"}``.
    """
    if grad not in ("none", "lora", "weights"):
        raise ValueError(f"grad must be 'none', 'lora' or 'weights', not {grad!r}")
    if per_sample and grad == "none":
        raise ValueError("per_sample passes back-propagate each sample: give grad='weights' or 'lora'")
    batches = list(ctx.calibration_batches())
    samples = sum(len(b) for b in batches)
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    device = input_device(model)  # a model spread over devices (device_map) starts at its embedding
    handles = []
    if inputs:
        targets = dict(linear_modules(model))
        unknown = sorted(set(inputs) - set(targets))
        if unknown:
            raise KeyError(f"calibrate: no projection {unknown[0]!r} (keys look like 'layers.0.self_attn.q_proj')")
        for key, fn in inputs.items():
            handles.append(targets[key].register_forward_pre_hook(_input_hook(key, fn)))
    was_training = model.training
    model.train(train_mode)
    tokens = 0
    try:
        model.zero_grad(set_to_none=True)
        if grad == "weights":
            for p in params:
                p.requires_grad_(True)
        window = _ACTIVE.get()
        if grad == "none" and window is not None and window.model is model:
            layer = decoder_layers(model)[window.index]
            with torch.no_grad():
                for args, kwargs in track(window.cached, f"calibrate: {desc} (layer {window.index})"):
                    layer(*args, **kwargs) if args else layer(**kwargs)
            tokens = window.tokens
        elif grad == "none":
            with torch.no_grad():
                for batch in track(batches, f"calibrate: {desc}"):
                    model(batch.to(device))
                    tokens += batch.numel()
        elif per_sample:
            for sample in track(torch.cat(batches) if batches else [], f"calibrate: {desc}", samples):
                ids = sample[None].to(device)
                model(input_ids=ids, labels=ids).loss.backward()
                tokens += ids.numel()
                if after_backward is not None:
                    after_backward()
                model.zero_grad(set_to_none=False)
        else:
            for batch in track(batches, f"calibrate: {desc}"):
                ids = batch.to(device)
                (model(input_ids=ids, labels=ids).loss * (len(batch) / samples)).backward()
                tokens += ids.numel()
        if collect is not None:
            collect()
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(params, flags):
            p.grad = None
            p.requires_grad_(flag)
        model.train(was_training)
    return {"batches": len(batches), "samples": samples, "tokens": tokens}


def _input_hook(key: str, fn: Callable[[str, torch.Tensor], None]):
    def hook(_module, args):
        fn(key, args[0].detach())
    return hook
