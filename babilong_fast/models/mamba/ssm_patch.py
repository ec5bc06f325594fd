"""Replacement ``forward``s for mamba_ssm ``MambaLMHeadModel`` and ``Mamba`` (bound by :mod:`babilong_fast.patch`).

Tested on the CPU against mamba_ssm's own Python code with its CUDA extension stubbed out
(``tests/models/test_mamba_ssm_patch.py``, gated on ``BABILONG_FAST_MAMBA_SSM_SRC``); not yet run with mamba_ssm's
CUDA build. The states live where mamba_ssm's
``generate`` keeps them, ``inference_params.key_value_memory_dict[layer_idx] = (conv [B, d_inner, d_conv],
ssm [B, d_inner, d_state])``; mamba_ssm's conv step never reads the oldest conv column either.
"""

from __future__ import annotations

import warnings
from collections import namedtuple
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from babilong_fast.models.mamba.layers import forward_chunked, mixer_forward
from babilong_fast.models.mamba.parts import (
    SSM_LM,
    class_path,
    custom_forward,
    mamba_parts,
    mixer_dims,
    own_forward_first,
    wrapped_mixer_part,
    wrapped_mixers,
)
from babilong_fast.models.mamba.state import MambaState
from babilong_fast.models.plain_modules import hooked_or_replaced
from babilong_fast.patch import OPTIONS_ATTR

CausalLMOutput = namedtuple("CausalLMOutput", ["logits"])


def bindings(model: nn.Module) -> list[tuple[nn.Module, str, Any]]:
    if class_path(model) == SSM_LM:
        mamba_parts(model)
        return [(model, "forward", lm_forward)]
    mixer_dims(model)
    return [(model, "forward", mixer_forward_patched)]


def _read(params, mixer: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if params is None or params.seqlen_offset == 0 or mixer.layer_idx not in params.key_value_memory_dict:
        return None, None
    conv, ssm = params.key_value_memory_dict[mixer.layer_idx]
    return conv[..., 1:].to(mixer.in_proj.weight.dtype).contiguous(), ssm.float().contiguous()


def _write(params, mixer: nn.Module, conv: torch.Tensor, ssm: torch.Tensor) -> None:
    if params is None:
        return
    full = F.pad(conv, (1, 0))  # [B, d_inner, d_conv]
    if mixer.layer_idx in params.key_value_memory_dict:
        old_conv, old_ssm = params.key_value_memory_dict[mixer.layer_idx]
        old_conv.copy_(full)
        old_ssm.copy_(ssm)
    else:
        params.key_value_memory_dict[mixer.layer_idx] = (full, ssm.to(mixer.dt_proj.weight.dtype))


@own_forward_first("the model", "mamba_ssm")
def lm_forward(self, input_ids, position_ids=None, inference_params=None, num_last_tokens=0, **mixer_kwargs):
    """``MambaLMHeadModel.forward`` in chunks with the state carried (``inference_params`` read and written)."""
    opts, parts = self.__dict__[OPTIONS_ATTR], mamba_parts(self)
    if mixer_kwargs:  # Mamba-1 mixers take none: mamba_ssm's own forward says so
        return type(self).forward(self, input_ids, position_ids, inference_params, num_last_tokens, **mixer_kwargs)
    why = (
        hooked_or_replaced(self.backbone, "the backbone")
        or custom_forward(self.backbone, "the backbone")
        or wrapped_mixers(parts)
    )
    if why:
        warnings.warn(f"babilong_fast patch: runs mamba_ssm's own forward ({why})", RuntimeWarning, stacklevel=3)
        return type(self).forward(self, input_ids, position_ids, inference_params, num_last_tokens, **mixer_kwargs)
    B = input_ids.shape[0]
    conv, ssm = zip(*(_read(inference_params, m) for m in parts.mixers), strict=True)
    if conv[0] is None:
        d = parts.dims
        dtype = parts.mixers[0].in_proj.weight.dtype
        state = MambaState.zeros(parts.num_layers, B, d.d_inner, d.d_state, d.d_conv, dtype, input_ids.device)
    else:
        state = MambaState(conv, ssm)
    hidden, state = forward_chunked(
        parts, state, input_ids, chunk_size=opts.chunk_size, keep_last=num_last_tokens, backend=opts.backend
    )
    for m, c, s in zip(parts.mixers, state.conv, state.ssm, strict=True):
        _write(inference_params, m, c, s)
    return CausalLMOutput(logits=self.lm_head(hidden))


@own_forward_first("the mixer", "mamba_ssm")
def mixer_forward_patched(self, hidden_states, inference_params=None, **kwargs):
    """``Mamba.forward`` in chunks with our ops; with ``inference_params`` it runs mamba_ssm's own forward."""
    if inference_params is not None or wrapped_mixer_part(self, hooks_on_mixer=False) or kwargs:
        return type(self).forward(self, hidden_states, inference_params=inference_params, **kwargs)
    opts = self.__dict__[OPTIONS_ATTR]
    conv = ssm = None
    outs = []
    for s in range(0, hidden_states.shape[1], opts.chunk_size):
        out, conv, ssm = mixer_forward(self, hidden_states[:, s : s + opts.chunk_size], conv, ssm, opts.backend)
        outs.append(out)
    return torch.cat(outs, 1)
