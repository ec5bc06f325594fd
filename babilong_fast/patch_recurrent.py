"""Drop-in patch for the public RMT / ARMT repositories: their wrapper's own ``forward`` and ``generate`` run on ours.

After ``patch_recurrent(wrapper)`` the instance's ``forward`` and ``generate`` are replaced (instance attributes;
the class is untouched) by functions that run :class:`babilong_fast.models.ARMT` / :class:`~babilong_fast.models.RMT`
built with ``from_reference`` on the wrapper's own parameters (shared, so training, ``.to()`` and
``state_dict`` still act on one set of weights; the state dict keys do not change; a parameter or module of the
wrapper replaced after patching, by ``load_state_dict(..., assign=True)`` or ``to_empty()`` say, is picked up at
the next call). They return what the originals return:

* ``forward(input_ids, labels=None, labels_mask=None, attention_mask=None, ...)``: a
  ``CausalLMOutputWithCrossAttentions`` with ``loss`` (labels shifted by one, ``labels_mask[:, :-1]`` selects the
  scored positions, token-mean cross-entropy; ``0`` without labels), ``logits`` (all segments concatenated;
  ``RecurrentWrapperLight``: the last segment only) and ``logits_<i>`` per segment; the ARMT repository's
  wrappers also give ``ce_loss`` and, with labels, ``ce_loss_<i>`` (the per-segment loss).
* ``generate(input_ids, attention_mask, max_new_tokens=..., eos_token_id=..., pad_token_id=...)``: greedy tokens,
  the new ones only, rows that ended padded with ``pad_token_id`` as Hugging Face ``generate`` does. The segments
  before the last run with memory writes and no logits under ``torch.no_grad``, so memory does not grow with
  the input's length.

Calls our path cannot honour run the original method instead, with a one-time warning per reason:

* ``forward``: ``inputs_embeds``, ``output_attentions``, ``output_hidden_states``, ``input_segmented``,
  ``sliding_window`` (ARMT repository), a ``labels_mask`` that is not boolean, ``labels`` of another shape than
  ``input_ids``, RMT truncated BPTT (``rmt_config['k2']`` not -1/None) while gradients are enabled.
* ``generate``: a missing ``max_new_tokens`` (or ``max_length``), sampling or beam search (``do_sample``,
  ``num_beams`` > 1, ...), logits processors and stopping rules (``repetition_penalty``, ``min_new_tokens``,
  ``bad_words_ids``, ...; also when set in the backbone's ``generation_config``), ``output_scores`` /
  ``return_dict_in_generate``, an ``attention_mask`` with padding (zeros), and any other keyword.
* both: ``rmt_config``'s segmentation changed after patching; ARMT weights in float64 (its fused ops take
  float32, bfloat16, float16); modules or parameters replaced after patching by ones ``from_reference`` refuses;
  hooks (or a replaced ``forward``) on a module ours does not call: the memory cell, the GPT-2 LM, its
  ``transformer``, ARMT's layer wrappers (``transformer.h[i]``; their inner blocks are called, hooks and all).

Where the references fail, ours is more lenient: ARMT's ``forward`` and ``generate`` accept
``attention_mask=None`` (read as all ones).

Examples::
    >>> from babilong_fast.patch_recurrent import patch_recurrent, unpatch_recurrent   # doctest: +SKIP
    >>> model = AssociativeRecurrentWrapper(cell, segment_size=512)                     # doctest: +SKIP
    >>> patch_recurrent(model)            # model(...) and model.generate(...) now run babilong_fast  # doctest: +SKIP
    >>> unpatch_recurrent(model)                                                        # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from babilong_fast._binding import MISSING, bind
from babilong_fast.backends import Backend, check_backend
from babilong_fast.models import ARMT, RMT
from babilong_fast.models._common import check_input_ids, check_token_range, segment_bounds
from babilong_fast.models.plain_modules import first_hooked_or_replaced
from babilong_fast.models.reference import (
    LEFT_ALIGNMENTS,
    RMT_WRAPPER_LIGHT,
    ReferenceModelError,
    class_names,
    container_pairs,
    is_wrapper,
)
from babilong_fast.ops._checks import HALF_AND_FLOAT

__all__ = ["is_recurrent_patched", "is_reference_recurrent", "patch_recurrent", "unpatch_recurrent"]

_ATTR = "_babilong_fast_patch"
_PATCHED = ("forward", "generate")

# Generate keywords our greedy path honours (beyond max_new_tokens / eos_token_id / pad_token_id), with the
# values that keep decoding greedy; use_cache and the sampling knobs only matter under sampling.
_GREEDY_KWARGS: dict[str, Any] = {
    "do_sample": (None, False),
    "num_beams": (None, 1),
    "num_return_sequences": (None, 1),
    "output_scores": (None, False),
    "output_logits": (None, False),
    "output_attentions": (None, False),
    "output_hidden_states": (None, False),
    "return_dict_in_generate": (None, False),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "use_cache": None,
    "temperature": None,
    "top_k": None,
    "top_p": None,
    "bos_token_id": None,
}
# generation_config fields that change greedy decoding when not at these values.
_GREEDY_CONFIG: dict[str, tuple[Any, ...]] = {
    "do_sample": (None, False),
    "num_beams": (None, 1),
    "num_beam_groups": (None, 1),
    "num_return_sequences": (None, 1),
    "penalty_alpha": (None,),
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "force_words_ids": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,),
    "renormalize_logits": (None, False),
    "guidance_scale": (None, 1.0),
    "max_time": (None,),
    "stop_strings": (None,),
    "watermarking_config": (None,),
    "return_dict_in_generate": (None, False),
    "output_scores": (None, False),
}


@dataclass
class _Patch:
    """What a patched wrapper carries (stored outside ``nn.Module``'s registries, so ``state_dict`` is unchanged)."""

    fast: ARMT | RMT
    kind: str
    originals: dict[str, Any]
    saved: dict[str, Any]
    signatures: dict[str, inspect.Signature]
    segment_size: int
    light: bool
    per_segment_loss: bool
    shared: tuple[Any, ...]  # the wrapper's objects ``fast`` was built on (see _shared_objects)
    stale: tuple[tuple[Any, ...], str] | None = None  # replaced objects from_reference refused, and why
    warned: set[str] = field(default_factory=set)


def is_reference_recurrent(model: object) -> bool:
    """True for the public repositories' recurrent wrappers that :func:`patch_recurrent` accepts.

    That is ``AssociativeRecurrentWrapper`` (ARMT) and ``RecurrentWrapper`` / ``RecurrentWrapperLight`` (RMT),
    recognised by class name and attributes (``memory_cell``, ``rmt_config``) without importing the repositories.
    Unsupported settings are only reported by :func:`patch_recurrent`.
    """
    return is_wrapper(model, "armt") or is_wrapper(model, "rmt")


def is_recurrent_patched(model: object) -> bool:
    """True while ``model`` is patched by :func:`patch_recurrent`."""
    return isinstance(getattr(model, "__dict__", {}).get(_ATTR), _Patch)


def patch_recurrent(model: nn.Module, backend: Backend = "auto") -> nn.Module:
    """Make a public ARMT / RMT wrapper's own ``forward`` and ``generate`` run on babilong_fast; returns ``model``.

    See the module docstring for what is returned and which calls fall back to the original methods.
    Patching twice is a no-op (the second call only updates ``backend``).

    A patched wrapper deep-copies (the copy is patched, on its own weights); unpatch it before pickling the
    whole object (its ``state_dict`` needs nothing).

    Args:
        model: an ``AssociativeRecurrentWrapper``, ``RecurrentWrapper`` or ``RecurrentWrapperLight``.
        backend: backend of ARMT's fused associative ops (``"auto"``, ``"cuda"``, ``"triton"``, ``"torch"``);
            checked, and unused for RMT, which has no fused op yet.

    Returns:
        ``model``, patched in place.

    Raises:
        TypeError: not a reference wrapper (a bare memory cell included: patch its wrapper).
        ValueError: an unknown ``backend``.
        ReferenceModelError (a ValueError): a setting babilong_fast does not implement (see ``from_reference``).
    """
    check_backend(backend)
    if not is_reference_recurrent(model):
        raise TypeError(
            "patch_recurrent expects a public RMT/ARMT wrapper (AssociativeRecurrentWrapper, RecurrentWrapper, "
            f"RecurrentWrapperLight) with .memory_cell and .rmt_config; got {type(model).__name__}"
        )
    if is_recurrent_patched(model):
        rec = model.__dict__[_ATTR]
        if rec.kind == "armt":
            rec.fast.backend = backend
        return model
    kind = "armt" if is_wrapper(model, "armt") else "rmt"
    fast = _build(model, kind, backend)
    originals = {name: getattr(model, name) for name in _PATCHED}
    signatures = {name: inspect.signature(fn) for name, fn in originals.items()}
    rec = _Patch(
        fast=fast,
        kind=kind,
        originals=originals,
        saved={name: model.__dict__.get(name, MISSING) for name in _PATCHED},
        signatures=signatures,
        segment_size=fast.segment_size,
        light=RMT_WRAPPER_LIGHT in class_names(model),
        # The ARMT repository's wrappers segment the labels too: each cell reports its own ce_loss.
        per_segment_loss="input_segmented" in signatures["forward"].parameters,
        shared=_shared_objects(model),
    )
    object.__setattr__(model, _ATTR, rec)
    model.__dict__["forward"] = bind(_patched_forward, model)
    model.__dict__["generate"] = bind(_patched_generate, model)
    return model


def unpatch_recurrent(model: nn.Module) -> nn.Module:
    """Undo :func:`patch_recurrent` (restore the original ``forward`` / ``generate``); a no-op if not patched."""
    rec = model.__dict__.pop(_ATTR, None) if hasattr(model, "__dict__") else None
    if not isinstance(rec, _Patch):
        return model
    for name, prev in rec.saved.items():
        if prev is MISSING:
            model.__dict__.pop(name, None)
        else:
            model.__dict__[name] = prev
    return model


def _build(model: nn.Module, kind: str, backend: Backend) -> ARMT | RMT:
    return ARMT.from_reference(model, backend=backend) if kind == "armt" else RMT.from_reference(model)


def _shared_objects(model: nn.Module) -> tuple[Any, ...]:
    """The wrapper's parameters and modules that ``from_reference`` takes over (memory, backbone parts, blocks
    and ARMT's projections), to notice one being replaced after patching."""
    cell = model.memory_cell
    lm = getattr(cell, "model", None)
    tr = getattr(lm, "transformer", None)
    objs: list[Any] = [getattr(cell, "memory", None), lm, tr, getattr(lm, "lm_head", None)]
    if tr is not None:
        objs += [getattr(tr, name, None) for name in ("wte", "wpe", "ln_f", "h")]
        for block in getattr(tr, "h", ()):
            objs += [block, *(getattr(block, name, None) for name in ("layer", "W_mq", "W_mk", "W_mv", "W_mb"))]
    return tuple(objs)


def _same_objects(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _refresh(rec: _Patch, model: nn.Module) -> str | None:
    """Rebuild ``rec.fast`` when the wrapper's parameters or modules were replaced since it was built; returns
    why the original must run instead when ``from_reference`` refuses the new ones."""
    shared = _shared_objects(model)
    if _same_objects(shared, rec.shared):
        return None
    if rec.stale is not None and _same_objects(shared, rec.stale[0]):
        return rec.stale[1]
    try:
        fast = _build(model, rec.kind, getattr(rec.fast, "backend", "auto"))
    except ReferenceModelError as e:
        rec.stale = (shared, f"parameters or modules replaced after patching: {e}")
        return rec.stale[1]
    rec.fast, rec.shared, rec.stale, rec.segment_size = fast, shared, None, fast.segment_size
    return None


def _warn_once(rec: _Patch, method: str, reason: str) -> None:
    if reason not in rec.warned:
        rec.warned.add(reason)
        warnings.warn(
            f"babilong_fast patch: {method} falls back to the original implementation ({reason})",
            RuntimeWarning,
            stacklevel=3,
        )


def _sync_modes(rec: _Patch, model: nn.Module) -> None:
    """Our containers around shared modules follow the reference's train/eval and gradient-checkpointing flags."""
    rec.fast.training = model.training
    for src, dst in container_pairs(model.memory_cell.model, rec.fast.backbone):
        dst.training = src.training
        for attr in ("gradient_checkpointing", "_gradient_checkpointing_func"):
            if attr in src.__dict__:
                dst.__dict__[attr] = src.__dict__[attr]


def _skipped_module_reason(rec: _Patch, model: nn.Module) -> str | None:
    """Hooks or a replaced forward on a module of the wrapper that ours never calls (the memory cell, the GPT-2
    LM and its transformer, ARMT's layer wrappers: ours calls their parts), which would be skipped silently."""
    lm = model.memory_cell.model
    named = [("memory_cell", model.memory_cell), ("memory_cell.model", lm), ("memory_cell.model.transformer",
                                                                             lm.transformer)]
    if rec.kind == "armt":
        named += [(f"memory_cell.model.transformer.h.{i}", w) for i, w in enumerate(lm.transformer.h)]
    return first_hooked_or_replaced(named)


def _config_reason(rec: _Patch, model: nn.Module) -> str | None:
    if rec.kind == "armt" and rec.fast.memory.dtype not in HALF_AND_FLOAT:
        return f"{rec.fast.memory.dtype} weights: ARMT's fused ops take float32, bfloat16 or float16"
    why = _skipped_module_reason(rec, model)
    if why:
        return why
    cfg = model.rmt_config
    if cfg.get("segment_alignment") not in LEFT_ALIGNMENTS or cfg.get("segment_size") != rec.segment_size:
        return "rmt_config segmentation changed after patching; patch again"
    return None


def _forward_reason(rec: _Patch, model: nn.Module, a: dict[str, Any]) -> str | None:
    if a.get("input_ids") is None or a.get("inputs_embeds") is not None:
        return "inputs_embeds instead of input_ids"
    for name in ("output_attentions", "output_hidden_states", "input_segmented", "sliding_window"):
        if a.get(name):
            return name
    labels, labels_mask, ids = a.get("labels"), a.get("labels_mask"), a["input_ids"]
    if labels_mask is not None and (not isinstance(labels_mask, torch.Tensor) or labels_mask.dtype != torch.bool):
        return "labels_mask is not a bool tensor"
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != getattr(ids, "shape", None)):
        return "labels not shaped like input_ids"
    k2 = model.rmt_config.get("k2")
    if rec.kind == "rmt" and k2 not in (-1, None) and torch.is_grad_enabled():
        return "truncated BPTT (rmt_config['k2']) with gradients enabled"
    return _config_reason(rec, model)


def _ce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The references' loss: ``logits[:, :-1]`` against ``labels[:, 1:]`` where ``mask[:, :-1]``, token mean."""
    flat_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    flat_labels = labels[:, 1:].reshape(-1)
    if mask is not None:
        keep = mask[:, :-1].reshape(-1)
        flat_logits, flat_labels = flat_logits[keep], flat_labels[keep]
    return F.cross_entropy(flat_logits, flat_labels)


def _patched_forward(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
    rec: _Patch = model.__dict__[_ATTR]
    try:
        bound = rec.signatures["forward"].bind(*args, **kwargs)
    except TypeError:
        return rec.originals["forward"](*args, **kwargs)  # the original raises its own error
    bound.apply_defaults()
    a = bound.arguments
    reason = _refresh(rec, model) or _forward_reason(rec, model, a)
    if reason is not None:
        _warn_once(rec, "forward", reason)
        return rec.originals["forward"](*args, **kwargs)
    return _run_forward(rec, model, a["input_ids"], a.get("labels"), a.get("labels_mask"), a.get("attention_mask"))


def _run_forward(
    rec: _Patch,
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor | None,
    labels_mask: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
) -> Any:
    from transformers.modeling_outputs import CausalLMOutputWithCrossAttentions

    _sync_modes(rec, model)
    fast = rec.fast
    ids = check_input_ids(input_ids)
    check_token_range(ids, fast.vocab_size)  # a clear error, not an embedding IndexError or a device assert
    bounds = segment_bounds(ids.shape[1], rec.segment_size)
    state = fast.init_state(ids.shape[0], ids.device)
    seg_logits = []
    for i, (a, b) in enumerate(bounds):
        keep = not rec.light or i == len(bounds) - 1
        seg_mask = None if attention_mask is None else attention_mask[:, a:b]
        logits, _, state = fast.segment_forward(ids[:, a:b], seg_mask, state, return_logits=keep)
        if keep:
            seg_logits.append((a, b, logits))
    full = torch.cat([lg for _, _, lg in seg_logits], 1)
    out = CausalLMOutputWithCrossAttentions()
    if labels is not None:
        start = seg_logits[0][0]  # RecurrentWrapperLight scores the last segment only
        mask = None if labels_mask is None else labels_mask[:, start:]
        out["loss"] = _ce(full, labels[:, start:], mask)
    else:
        out["loss"] = 0
    if rec.per_segment_loss:
        out["ce_loss"] = out["loss"]
    out["logits"] = full
    for i, (a, b, lg) in enumerate(seg_logits):
        out[f"logits_{i}"] = lg
        if rec.per_segment_loss and labels is not None:
            out[f"ce_loss_{i}"] = _ce(lg, labels[:, a:b], None if labels_mask is None else labels_mask[:, a:b])
    return out


def _generate_reason(rec: _Patch, model: nn.Module, a: dict[str, Any], gen: dict[str, Any]) -> str | None:
    if not isinstance(a.get("input_ids"), torch.Tensor):
        return "input_ids is not a tensor"
    if gen.get("max_new_tokens") is None or "max_length" in gen:
        return "max_new_tokens missing (or max_length given)"
    for name, value in gen.items():
        if name in ("max_new_tokens", "eos_token_id", "pad_token_id"):
            continue
        if name not in _GREEDY_KWARGS:
            return f"generate keyword {name!r}"
        allowed = _GREEDY_KWARGS[name]
        if allowed is not None and value not in allowed:
            return f"{name}={value!r}"
    gc = getattr(model.memory_cell.model, "generation_config", None)
    for name, allowed in _GREEDY_CONFIG.items():
        if name in gen:
            continue
        value = getattr(gc, name, None)
        if value not in allowed and not (isinstance(value, (list, dict)) and not value):
            return f"generation_config.{name}={value!r}"
    mask = a.get("attention_mask")
    if mask is not None and (not isinstance(mask, torch.Tensor) or not bool((mask == 1).all())):
        return "attention_mask with padding"
    return _config_reason(rec, model)


def _token_ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def _patched_generate(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
    rec: _Patch = model.__dict__[_ATTR]
    sig = rec.signatures["generate"]
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        return rec.originals["generate"](*args, **kwargs)
    bound.apply_defaults()
    a = dict(bound.arguments)
    gen: dict[str, Any] = {}
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            gen = dict(a.pop(p.name, {}))
    reason = _refresh(rec, model) or _generate_reason(rec, model, a, gen)
    if reason is not None:
        _warn_once(rec, "generate", reason)
        return rec.originals["generate"](*args, **kwargs)
    gc = getattr(model.memory_cell.model, "generation_config", None)
    eos = _token_ids(gen["eos_token_id"] if "eos_token_id" in gen else getattr(gc, "eos_token_id", None))
    pad = gen["pad_token_id"] if "pad_token_id" in gen else getattr(gc, "pad_token_id", None)
    if pad is None and eos:
        pad = eos[0]
    return _run_generate(rec, model, a["input_ids"], int(gen["max_new_tokens"]), eos, pad)


@torch.no_grad()
def _run_generate(
    rec: _Patch, model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, eos: list[int], pad: int | None
) -> torch.Tensor:
    """Segments before the last: memory writes, no logits; then greedy decoding; HF's end-of-sequence padding."""
    _sync_modes(rec, model)
    fast = rec.fast
    ids = check_input_ids(input_ids)
    check_token_range(ids, fast.vocab_size)  # a clear error, not an embedding IndexError or a device assert
    bounds = segment_bounds(ids.shape[1], rec.segment_size)
    state = fast.init_state(ids.shape[0], ids.device)
    for a, b in bounds[:-1]:
        state = fast.segment_forward(ids[:, a:b], None, state, return_logits=False)[2]
    a, b = bounds[-1]
    tokens = fast.generate_from_state(ids[:, a:b], state, max_new_tokens, eos[0] if eos else -1)
    if not eos:
        return tokens
    is_eos = torch.zeros_like(tokens, dtype=torch.bool)
    for e in eos:
        is_eos |= tokens == e
    # Position t is past the end of its row when an EOS came strictly before it.
    ended_before = (is_eos.cumsum(1) - is_eos.long()) > 0
    tokens = tokens.masked_fill(ended_before, pad)
    live = (~ended_before).any(0).nonzero()
    return tokens[:, : int(live.max()) + 1]
