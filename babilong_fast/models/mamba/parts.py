"""Find the modules of a Mamba-1 language model, whichever library built it.

Supported, recognised by class name so that nothing is imported here: Hugging Face
``MambaForCausalLM`` / ``MambaModel`` and mamba_ssm ``MambaLMHeadModel`` / ``MixerModel`` (Mamba-1
mixers, no MLP). Both compute ``h <- h + mixer(norm(h))`` per layer, then ``norm_f``; the mixers hold the
same weights (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from babilong_fast.models.plain_modules import first_hooked_or_replaced, first_not_plain

HF_MODULE = "transformers.models.mamba.modeling_mamba"
SSM_MODELS_MODULE = "mamba_ssm.models.mixer_seq_simple"
SSM_MIXER_MODULE = "mamba_ssm.modules.mamba_simple"

HF_LM, HF_BACKBONE = f"{HF_MODULE}.MambaForCausalLM", f"{HF_MODULE}.MambaModel"
SSM_LM, SSM_BACKBONE = f"{SSM_MODELS_MODULE}.MambaLMHeadModel", f"{SSM_MODELS_MODULE}.MixerModel"
SSM_MIXER = f"{SSM_MIXER_MODULE}.Mamba"
HF_MIXER = f"{HF_MODULE}.MambaMixer"

MIXER_WEIGHTS = ("in_proj", "conv1d", "x_proj", "dt_proj", "A_log", "D", "out_proj")
ACTIVATIONS = ("silu", "swish")


def class_path(obj: object) -> str | None:
    """The first ``module.qualname`` along ``type(obj)``'s MRO that is a known Mamba class, else None."""
    known = (HF_LM, HF_BACKBONE, SSM_LM, SSM_BACKBONE, SSM_MIXER, HF_MIXER)
    for cls in type(obj).__mro__:
        path = f"{cls.__module__}.{cls.__qualname__}"
        if path in known:
            return path
    return None


@dataclass(frozen=True)
class MambaDims:
    """Sizes of one mixer, read from its weights."""

    d_model: int
    d_inner: int
    d_state: int
    d_conv: int
    dt_rank: int


def mixer_dims(mixer: nn.Module) -> MambaDims:
    """Check that ``mixer`` is a Mamba-1 mixer and return its sizes (TypeError naming what is missing)."""
    missing = [w for w in MIXER_WEIGHTS if not hasattr(mixer, w)]
    if missing:
        raise TypeError(f"{type(mixer).__name__} is not a Mamba-1 mixer: it has no {', '.join(missing)}")
    activation = getattr(mixer, "activation", "silu")
    if activation not in ACTIVATIONS:
        raise TypeError(f"the mixer's activation must be 'silu' (or 'swish'), got {activation!r}")
    d_inner, d_state = mixer.A_log.shape
    return MambaDims(
        d_model=mixer.in_proj.weight.shape[1],
        d_inner=d_inner,
        d_state=d_state,
        d_conv=mixer.conv1d.weight.shape[-1],
        dt_rank=mixer.dt_proj.weight.shape[1],
    )


@dataclass(frozen=True)
class MambaParts:
    """The modules a Mamba-1 LM's forward runs, in order.

    Args:
        embedding: token embedding ``[V, d_model]``.
        norms, mixers: one pre-norm and one mixer per layer.
        norm_f: the final norm.
        lm_head: ``[V, d_model]`` projection, or None for a bare backbone.
        residual_in_fp32: the residual stream is kept in float32.
        library: ``"transformers"`` or ``"mamba_ssm"``; decides two dtype details (``norm_f``'s input cast,
            float32 logits) so outputs match that library's forward.
        dims: the mixers' sizes (all layers alike).
        blocks: the layers holding each norm and mixer (never called: only checked for hooks).
    """

    embedding: nn.Embedding
    norms: tuple[nn.Module, ...]
    mixers: tuple[nn.Module, ...]
    norm_f: nn.Module
    lm_head: nn.Module | None
    residual_in_fp32: bool
    library: str
    dims: MambaDims
    blocks: tuple[nn.Module, ...] = ()

    @property
    def num_layers(self) -> int:
        return len(self.mixers)

    @property
    def vocab_size(self) -> int:
        return self.embedding.weight.shape[0]


def _layers(backbone: nn.Module, library: str) -> tuple[tuple[nn.Module, ...], ...]:
    norms, mixers = [], []
    for i, layer in enumerate(backbone.layers):
        if getattr(layer, "mlp", None) is not None:
            raise TypeError(f"layer {i} has an MLP; only Mamba-1 blocks (norm + mixer) are supported")
        if library == "mamba_ssm" and class_path(layer.mixer) != SSM_MIXER:
            raise TypeError(f"layer {i}'s mixer is a {type(layer.mixer).__name__}; only Mamba-1 mixers are supported")
        norms.append(layer.norm)
        mixers.append(layer.mixer)
    if not mixers:
        raise TypeError("the model has no layers")
    return tuple(norms), tuple(mixers), tuple(backbone.layers)


def mamba_parts(model: nn.Module) -> MambaParts:
    """The :class:`MambaParts` of a Hugging Face or mamba_ssm Mamba-1 model.

    Args:
        model: ``MambaForCausalLM``, ``MambaModel`` (transformers), ``MambaLMHeadModel`` or ``MixerModel`` (mamba_ssm).

    Raises:
        TypeError: any other model, or one whose layers are not plain Mamba-1 blocks.
    """
    path = class_path(model)
    if path in (HF_LM, HF_BACKBONE):
        library = "transformers"
        backbone = model.backbone if path == HF_LM else model
        embedding, residual_in_fp32 = backbone.embeddings, bool(backbone.config.residual_in_fp32)
    elif path in (SSM_LM, SSM_BACKBONE):
        library = "mamba_ssm"
        if getattr(model, "bidirectional", False):
            raise TypeError("bidirectional mamba_ssm models are not supported")
        backbone = model.backbone if path == SSM_LM else model
        embedding, residual_in_fp32 = backbone.embedding, bool(backbone.residual_in_fp32)
    else:
        raise TypeError(
            "expected a Mamba-1 language model (transformers MambaForCausalLM / MambaModel, or mamba_ssm "
            f"MambaLMHeadModel / MixerModel), got {type(model).__name__}"
        )
    norms, mixers, blocks = _layers(backbone, library)
    dims = {mixer_dims(m) for m in mixers}
    if len(dims) != 1:
        raise TypeError(f"all layers must have the same sizes, got {sorted(dims, key=str)}")
    lm_head = model.lm_head if path in (HF_LM, SSM_LM) else None
    return MambaParts(
        embedding, norms, mixers, backbone.norm_f, lm_head, residual_in_fp32, library, dims.pop(), blocks
    )


LIBRARY_MODULES = ("transformers.models.mamba.", "mamba_ssm.")


def custom_forward(module: nn.Module, name: str) -> str | None:
    """Why ``module``'s class ``forward`` is not its library's (a subclass redefining it, which babilong_fast would
    skip where it stands in for the module), or None."""
    for cls in type(module).__mro__:
        if "forward" in vars(cls):
            # the class's module, or the function's: transformers 5.24 puts a checkpointing wrapper (functools.wraps
            # of the inherited forward) into every subclass of its blocks, overriding or not
            fn_module = getattr(vars(cls)["forward"], "__module__", None) or ""
            if cls.__module__.startswith(LIBRARY_MODULES) or fn_module.startswith(LIBRARY_MODULES):
                return None
            return f"{name} is a {cls.__qualname__}, whose own forward would be skipped"
    return None


def own_forward_first(name: str, library: str | None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a patched ``forward``: a subclass with its own forward (:func:`custom_forward`) gets the call as the
    caller made it (its own signature), before anything binds the arguments to the library's; with ``library``
    a warning says that the library's code then runs unchunked."""

    def decorate(impl: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(impl)  # keeps impl's signature for inspect (transformers' generate reads it)
        def entry(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            why = custom_forward(self, name)
            if why is None:
                return impl(self, *args, **kwargs)
            if library is not None:
                warnings.warn(f"babilong_fast patch: runs {library}'s own forward ({why})", RuntimeWarning,
                              stacklevel=2)
            return type(self).forward(self, *args, **kwargs)

        return entry

    return decorate


def wrapped_mixer_part(mixer: nn.Module, name: str = "mixer", hooks_on_mixer: bool = True) -> str | None:
    """Why :func:`~babilong_fast.models.mamba.mixer_forward` cannot stand in for ``mixer`` (None: it can): it reads
    the projections' and the conv's weights directly, so a wrapped one (a LoRA adapter), one with forward hooks or
    a replaced forward would be skipped; so would such a mixer itself (``hooks_on_mixer``) where it is not called,
    and a mixer subclass's own forward."""
    parts = {f"{name}.{p}": (getattr(mixer, p), (nn.Linear,)) for p in ("in_proj", "x_proj", "dt_proj", "out_proj")}
    parts[f"{name}.conv1d"] = (mixer.conv1d, (nn.Conv1d,))
    if hooks_on_mixer:
        parts[name] = (mixer, (type(mixer),))  # its class is checked below: its hooks and forward here
    return custom_forward(mixer, name) or first_not_plain(parts)


def wrapped_mixers(parts: MambaParts) -> str | None:
    """Why the chunked forward cannot stand in for the layers (None: it can): the first layer's
    :func:`wrapped_mixer_part` reason, or hooks (or a replaced forward) on a block, which is never called, or on a
    norm, which is called per chunk (``norm_f`` only at the kept positions) instead of once on the whole input; or a
    block subclass's own forward."""
    for i, block in enumerate(parts.blocks):
        why = custom_forward(block, f"layers.{i}")
        if why:
            return why
    named = [(f"layers.{i}", b) for i, b in enumerate(parts.blocks)]
    named += [(f"layers.{i}.norm", n) for i, n in enumerate(parts.norms)] + [("norm_f", parts.norm_f)]
    why = first_hooked_or_replaced(named)
    if why:
        return why
    for i, mixer in enumerate(parts.mixers):
        why = wrapped_mixer_part(mixer, f"layers.{i}.mixer")
        if why:
            return why
    return None
