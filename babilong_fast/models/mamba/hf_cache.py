"""transformers' Mamba cache across the 5.x releases that keep it in linear-attention cache layers (5.5 on).

All of them hold layer ``i``'s states in ``cache.layers[i]`` and write them with ``Cache.update_conv_state`` /
``update_recurrent_state``. Two layouts: up to 5.13 a layer holds one state (``conv_states``,
``recurrent_states``, ``has_previous_state`` a bool, the conv width fixed by the first write); from 5.14 it holds
several, keyed by index (``conv_states[0]``, ``has_previous_state[0]``, ``record_past``). Later releases add the
readers ``Cache.get_conv_state`` / ``get_recurrent_state`` / ``is_recording_past`` and rename the models' keyword
and output field ``cache_params`` to ``cache`` (5.17 has neither change, 5.24 both), and ``logits_to_keep`` as a
tensor goes through ``slice_logits_to_keep`` where it exists. These helpers let the patch read and pass the cache
on any of them (checked on 5.5, 5.8, 5.10, 5.12, 5.13, 5.14, 5.15, 5.16, 5.17, 5.18, 5.20, 5.22, 5.23 and 5.24).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from babilong_fast.models.mamba.parts import HF_MODULE


@functools.lru_cache(maxsize=1)
def linear_cache_supported() -> bool:
    """Whether the installed transformers keeps Mamba's state in linear-attention cache layers."""
    from transformers import cache_utils

    return hasattr(cache_utils, "LinearAttentionCacheLayerMixin") and hasattr(cache_utils.Cache, "update_conv_state")


@functools.cache
def checkpointing_drops_cache(block_cls: type) -> bool:
    """Whether ``block_cls`` (a transformers ``GradientCheckpointingLayer``), when it checkpoints, drops the cache it
    is passed (5.24 does: it neither reads nor writes it; 5.5 and 5.17 keep it). Found by running a probe layer
    through transformers' own checkpointing wrapper, with the keyword the block's forward takes."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
        from transformers.utils import logging as hf_logging
    except ImportError:
        return False
    name = "cache" if "cache" in inspect.signature(block_cls.forward).parameters else "cache_params"

    class _Probe(GradientCheckpointingLayer):
        def forward(self, x: torch.Tensor, **kwargs: Any) -> Any:
            return kwargs.get(name)

    probe = _Probe()
    probe.gradient_checkpointing, probe._gradient_checkpointing_func = True, lambda fn, *args: fn(*args)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its "caching is incompatible" notice is about the probe
    try:
        with torch.enable_grad():
            return probe(torch.zeros(1), **{name: "cache"}) is None
    finally:
        hf_logging.set_verbosity(verbosity)


def is_linear_cache(cache: Any) -> bool:
    """Whether ``cache`` is such a cache (not, say, 4.x's ``MambaCache``)."""
    return hasattr(cache, "update_conv_state") and hasattr(cache, "layers")


def _layer_state(cache: Any, layer: int, getter: str, states: str) -> torch.Tensor | None:
    if hasattr(cache, getter):
        return getattr(cache, getter)(layer)
    lay = cache.layers[layer]
    started, value = lay.has_previous_state, getattr(lay, states)
    if isinstance(started, bool):  # up to 5.13: one state per layer
        return value if started else None
    return value[0] if started[0] else None


def conv_state(cache: Any, layer: int) -> torch.Tensor | None:
    """Layer ``layer``'s cached conv inputs ``[B, d_inner, k]`` (the last ``k`` inputs), or None before a prefill."""
    return _layer_state(cache, layer, "get_conv_state", "conv_states")


def recurrent_state(cache: Any, layer: int) -> torch.Tensor | None:
    """Layer ``layer``'s cached SSM state ``[B, d_inner, d_state]``, or None before a prefill."""
    return _layer_state(cache, layer, "get_recurrent_state", "recurrent_states")


def recording_past(cache: Any, layer: int) -> bool:
    """Whether layer ``layer`` keeps past states for a later rollback (speculative decoding)."""
    if hasattr(cache, "is_recording_past"):
        return cache.is_recording_past(layer)
    return bool(getattr(cache.layers[layer], "record_past", False))


@functools.cache
def cache_keyword(model_cls: type) -> str:
    """The keyword that ``model_cls.forward`` takes the cache by: ``cache`` or (older) ``cache_params``, read from
    transformers' class (a subclass's forward may take ``**kwargs``). Cached per class: the stock Mamba loop asks
    once per token."""
    stock = next((c for c in model_cls.__mro__ if c.__module__ == HF_MODULE), model_cls)
    return "cache" if "cache" in inspect.signature(stock.forward).parameters else "cache_params"


def output_cache_field(output_cls: type) -> str:
    """The field of a Mamba output class that holds the cache: ``cache`` or (older) ``cache_params``."""
    return "cache" if "cache" in output_cls.__dataclass_fields__ else "cache_params"


def slice_kept(hidden: torch.Tensor, logits_to_keep: torch.Tensor) -> torch.Tensor:
    """``hidden [B, T, d]`` at the positions a tensor ``logits_to_keep`` names, as the model itself would: through
    transformers' ``slice_logits_to_keep`` (also 2-D positions and masks), or by indexing the time axis before it."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep
    except ImportError:
        return hidden[:, logits_to_keep, :]
    return slice_logits_to_keep(hidden, logits_to_keep)


def output_cache(out: Any) -> Any:
    """The cache a Mamba model call returned (None when it returned none)."""
    return out.get("cache", out.get("cache_params"))
