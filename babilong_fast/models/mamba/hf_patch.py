"""Replacement ``forward``s for transformers ``MambaForCausalLM`` / ``MambaModel``, bound by :mod:`babilong_fast.patch`.

They run :func:`~babilong_fast.models.mamba.forward_chunk` over the input in chunks with the state carried,
read the starting state from and write the final state to transformers' cache (so ``generate`` prefills
once, in chunks, then decodes one token per step from the state), and compute logits only at the kept
positions. A padding mask zeroes the padded positions' mixer inputs and conv outputs, as transformers does.
Gradient checkpointing set on transformers' blocks checkpoints each chunk's layers with the block's own function.
A call they do not cover (``output_hidden_states``, a cache recording past states, a cache passed to blocks that
checkpoint and so drop it (transformers 5.24; 5.5 and 5.17 keep it), float64 weights, subclasses with
their own forward (an LM subclass's runs, with the backbone still chunked inside), mixers
with wrapped projections such as LoRA adapters, hooks or a replaced forward (accelerate's offload) on the
mixers, blocks or norms) runs the model's own forward instead, as does the LM when its backbone has hooks (the
patched backbone then runs in chunks); hooks on the embedding see the whole input. Note that
transformers' forward restarts the selective scan from zero when it continues a cache with more than one token
(the patched forward carries the state).
"""

from __future__ import annotations

import contextvars
import functools
import warnings
from typing import Any

import torch
from torch import nn

from babilong_fast.models.mamba import hf_cache
from babilong_fast.models.mamba.layers import forward_chunked
from babilong_fast.models.mamba.parts import (
    HF_BACKBONE,
    HF_LM,
    MambaParts,
    class_path,
    custom_forward,
    mamba_parts,
    own_forward_first,
    wrapped_mixers,
)
from babilong_fast.models.mamba.state import MambaState
from babilong_fast.models.plain_modules import has_hooks
from babilong_fast.ops._checks import HALF_AND_FLOAT
from babilong_fast.patch import OPTIONS_ATTR


def bindings(model: nn.Module) -> list[tuple[nn.Module, str, Any]]:
    """``(module, attribute, function)`` to bind: the LM's and its backbone's ``forward``."""
    import transformers

    mamba_parts(model)  # fails early on a model it cannot run
    if not hf_cache.linear_cache_supported():
        raise RuntimeError(
            f"patching Mamba needs transformers' linear-attention cache (Cache.update_conv_state, transformers 5.5 "
            f"and later); found transformers {transformers.__version__}. MambaLM and StreamRunner work without it."
        )
    if class_path(model) == HF_LM:
        return [(model, "forward", causal_lm_forward), (model.backbone, "forward", backbone_forward)]
    assert class_path(model) == HF_BACKBONE
    return [(model, "forward", backbone_forward)]


_WARNED = contextvars.ContextVar("babilong_fast_mamba_fallback_warned", default=False)
"""True inside the LM's fallback call, whose backbone call must not repeat the LM's warning."""


def _unsupported(backbone: nn.Module, parts: MambaParts, output_hidden_states, cache) -> bool:
    dtype = backbone.embeddings.weight.dtype
    why = (f"{dtype} weights; the fused ops take float32, bfloat16 or float16" if dtype not in HALF_AND_FLOAT
           else wrapped_mixers(parts))
    if why:
        if not _WARNED.get():
            warnings.warn(f"babilong_fast patch: runs transformers' own forward ({why})", RuntimeWarning,
                          stacklevel=4)  # the caller of the forward (past own_forward_first's frame)
        return True
    if output_hidden_states if output_hidden_states is not None else backbone.config.output_hidden_states:
        return True
    if cache is not None:
        if _checkpoint_funcs(backbone) is not None and hf_cache.checkpointing_drops_cache(type(backbone.layers[0])):
            return True  # the checkpointed blocks neither read nor write it (transformers 5.24)
        if not hf_cache.is_linear_cache(cache):
            return True
        return any(hf_cache.recording_past(cache, i) for i in range(len(backbone.layers)))
    return False


def _padding_mask(attention_mask: object, x: torch.Tensor) -> torch.Tensor | None:
    """The mask to apply: None when there is none or it keeps every position; checked against the input."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != x.shape[:2]:
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must be [batch, length] = {tuple(x.shape[:2])} like the input, got {got}")
    if bool(attention_mask.all()):
        return None
    return attention_mask.to(x.device)


def _state_from_cache(cache, parts: MambaParts, batch: int, device: torch.device) -> MambaState:
    conv_dtype = parts.mixers[0].in_proj.weight.dtype
    d = parts.dims
    zero = MambaState.zeros(parts.num_layers, batch, d.d_inner, d.d_state, d.d_conv, conv_dtype, device)
    if cache is None:
        return zero
    conv, ssm = list(zero.conv), list(zero.ssm)
    for i in range(parts.num_layers):
        c, s = hf_cache.conv_state(cache, i), hf_cache.recurrent_state(cache, i)
        if c is not None and s is not None:
            conv[i] = c[..., c.shape[-1] - (d.d_conv - 1) :].to(conv_dtype).contiguous()
            ssm[i] = s.float().contiguous()
            if torch.is_grad_enabled():  # the fused ops' autograd saves it; _write_cache then updates the cache
                conv[i], ssm[i] = conv[i].clone(), ssm[i].clone()
    return MambaState(conv, ssm)


def _write_cache(cache, state: MambaState, d_conv: int) -> None:
    # transformers keeps the last d_conv inputs; its conv never reads the oldest, so our d_conv - 1 are written
    # behind a zero column (up to 5.13 the first write fixes the cache's width, so it must be d_conv).
    for i, (c, s) in enumerate(zip(state.conv, state.ssm, strict=True)):
        cache.update_conv_state(nn.functional.pad(c, (1, 0)), i, conv_kernel_size=d_conv)
        cache.update_recurrent_state(s, i)


def run_backbone(
    backbone: nn.Module,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    cache,
    use_cache: bool,
    logits_to_keep: int | torch.Tensor = 0,
    attention_mask: torch.Tensor | None = None,
    parts: MambaParts | None = None,
) -> tuple[torch.Tensor, Any]:
    """The backbone over the input in chunks; final hidden states at the kept positions, and the cache.

    Args:
        backbone: a patched transformers ``MambaModel``.
        input_ids, inputs_embeds: exactly one: ``[B, T]`` or ``[B, T, d_model]``.
        cache: transformers cache to start from and update, or None.
        use_cache: create a cache when ``cache`` is None.
        logits_to_keep: as transformers' (int: the last k positions, 0 all; tensor: positions).
        attention_mask: ``[B, T]`` padding mask (1 keep, 0 pad) or None.
        parts: ``mamba_parts(backbone)`` when the caller has it.

    Returns:
        ``(hidden [B, k, d_model] after norm_f, cache or None)``.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    opts = backbone.__dict__[OPTIONS_ATTR]
    parts = mamba_parts(backbone) if parts is None else parts
    x = input_ids if inputs_embeds is None else inputs_embeds
    B = x.shape[0]
    mask = _padding_mask(attention_mask, x)
    state = _state_from_cache(cache, parts, B, x.device)
    keep_last = logits_to_keep if isinstance(logits_to_keep, int) and logits_to_keep > 0 else 0
    hidden, state = forward_chunked(
        parts, state, input_ids, inputs_embeds, chunk_size=opts.chunk_size, keep_last=keep_last, backend=opts.backend,
        mask=mask, checkpoint=_checkpoint_funcs(backbone),
    )
    if isinstance(logits_to_keep, torch.Tensor):
        hidden = hf_cache.slice_kept(hidden, logits_to_keep)
    elif logits_to_keep < 0:  # transformers slices [-k:], so a negative k drops the first |k| positions
        hidden = hidden[:, -logits_to_keep:]
    if cache is None and use_cache:
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(config=backbone.config)
    if cache is not None:
        _write_cache(cache, state, parts.dims.d_conv)
    return hidden, cache


def _checkpoint_funcs(backbone: nn.Module) -> list | None:
    """Per block, transformers' checkpoint function where the block checkpoints in this call (checkpointing on for
    it, training, gradients enabled), else None; None when no block does. Each chunk's layers are then checkpointed
    as transformers' blocks are (every n-th layer, offloading, reentrant or not: the block's own function)."""
    if not (backbone.training and torch.is_grad_enabled()):
        return None
    funcs = [block._gradient_checkpointing_func if getattr(block, "gradient_checkpointing", False) else None
             for block in backbone.layers]
    return funcs if any(funcs) else None


def _use_cache(model: nn.Module, use_cache: bool | None) -> bool:
    if use_cache is None:
        use_cache = model.config.use_cache and not model.training
    # as transformers: no cache is created or returned when training with gradient checkpointing
    return bool(use_cache) and not (model.gradient_checkpointing and model.training)


def _backbone_called(lm: nn.Module) -> bool:
    """Whether the LM's forward must call its backbone as a module: hooks on it, a forward other than ours, or a
    backbone subclass's own forward (which ours hands the call to)."""
    fn = lm.backbone.__dict__.get("forward")
    ours = isinstance(fn, functools.partial) and fn.func is backbone_forward
    return has_hooks(lm.backbone) or not ours or custom_forward(lm.backbone, "the backbone") is not None


def _to_tuple(*values) -> tuple:
    # transformers' tuples hold the cache whenever there is one, also one passed in with use_cache=False
    return tuple(v for v in values if v is not None)


@own_forward_first("the backbone", "transformers")
def backbone_forward(
    self,
    input_ids: torch.LongTensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    cache=None,
    use_cache: bool | None = None,
    output_hidden_states: bool | None = None,
    return_dict: bool | None = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
):
    """``MambaModel.forward`` on babilong_fast's chunked kernels (same arguments and outputs)."""
    from transformers.models.mamba.modeling_mamba import MambaOutput

    cache = kwargs.pop("cache_params", None) if cache is None else cache
    parts = mamba_parts(self)
    if _unsupported(self, parts, output_hidden_states, cache):
        return type(self).forward(
            self, input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=use_cache,
            output_hidden_states=output_hidden_states, return_dict=return_dict, attention_mask=attention_mask,
            **{hf_cache.cache_keyword(type(self)): cache}, **kwargs,
        )
    use_cache = _use_cache(self, use_cache)
    hidden, cache = run_backbone(
        self, input_ids, inputs_embeds, cache, use_cache, attention_mask=attention_mask, parts=parts
    )
    return_dict = return_dict if return_dict is not None else self.config.return_dict
    if not return_dict:
        return _to_tuple(hidden, cache)
    field = hf_cache.output_cache_field(MambaOutput)
    return MambaOutput(last_hidden_state=hidden, hidden_states=None, **{field: cache if use_cache else None})


@own_forward_first("the model", None)  # an LM subclass's forward runs; the patched backbone in it, in chunks
def causal_lm_forward(
    self,
    input_ids: torch.LongTensor | None = None,
    attention_mask: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    cache=None,
    labels: torch.LongTensor | None = None,
    output_hidden_states: bool | None = None,
    return_dict: bool | None = None,
    use_cache: bool | None = None,
    logits_to_keep: int | torch.Tensor = 0,
    **kwargs,
):
    """``MambaForCausalLM.forward`` on babilong_fast's chunked kernels: the LM head runs only at the kept positions."""
    from transformers.models.mamba.modeling_mamba import MambaCausalLMOutput

    cache = kwargs.pop("cache_params", None) if cache is None else cache
    parts = mamba_parts(self.backbone)
    # the backbone's hooks run only when it is called: transformers' forward calls it (still chunked when patched)
    unsupported = _unsupported(self.backbone, parts, output_hidden_states, cache)  # warns why, if it says
    if unsupported or _backbone_called(self):
        token = _WARNED.set(unsupported)  # warned here: the backbone's call inside does not repeat it
        try:
            return type(self).forward(
                self, input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                labels=labels, output_hidden_states=output_hidden_states, return_dict=return_dict,
                use_cache=use_cache, logits_to_keep=logits_to_keep, **{hf_cache.cache_keyword(type(self)): cache},
                **kwargs,
            )
        finally:
            _WARNED.reset(token)
    use_cache = _use_cache(self.backbone, use_cache)
    hidden, cache = run_backbone(
        self.backbone, input_ids, inputs_embeds, cache, use_cache, logits_to_keep, attention_mask=attention_mask,
        parts=parts,
    )
    logits = self.lm_head(hidden.to(self.lm_head.weight.dtype)).float()
    loss = None
    if labels is not None:
        loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
    return_dict = return_dict if return_dict is not None else self.config.return_dict
    if not return_dict:
        return _to_tuple(loss, logits, cache)
    field = hf_cache.output_cache_field(MambaCausalLMOutput)
    return MambaCausalLMOutput(loss=loss, logits=logits, hidden_states=None, **{field: cache if use_cache else None})
