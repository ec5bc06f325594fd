"""A Hugging Face ``GPT2Block`` for causal inference in fewer kernels: :func:`gpt2_block_infer`.

The block's own forward is the reference. Per block it launches ``ln_1``, the QKV GEMM, one SDPA call, the
output GEMM, the residual add, ``ln_2``, the MLP GEMM, one activation kernel, the second MLP GEMM and the
residual add: 10 kernels (with ``last``, 12: two build the mask). The HF forward launches 17 with GPT-2's
``gelu_new``, which it writes as eight elementwise ops (``pow``, ``tanh``, four ``mul``, two ``add``); here it
is one ``F.gelu(approximate="tanh")``, the same function. ``benchmarks/step_kernels.py`` counts them.

For what the fast streaming step needs (:mod:`babilong_fast.models.stream_step`): eval mode (no dropout),
causal attention, no padding, no cache. Blocks of another class, with wrapped layers (LoRA adapters) or forward
hooks, and ``reorder_and_upcast_attn`` are not handled (:func:`lean_block_unsupported`); the step calls those
itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from babilong_fast.models.plain_modules import first_not_plain

# transformers' tanh-approximated GELU classes (several elementwise ops each, across versions) -> one kernel
_TANH_GELUS = frozenset({"NewGELUActivation", "FastGELUActivation", "GELUTanh", "PytorchGELUTanh"})
# transformers 4.4x has a subclass per attention kernel (same weights); 5.x one class
_ATTENTION_CLASSES = frozenset({"GPT2Attention", "GPT2SdpaAttention"})


def mlp_activation(act: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``act`` as one kernel where it is a tanh-approximated GELU; otherwise ``act`` itself."""
    if type(act).__name__ in _TANH_GELUS:
        return lambda x: F.gelu(x, approximate="tanh")
    return act


def lean_block_unsupported(block: nn.Module) -> str | None:
    """Why :func:`gpt2_block_infer` must call ``block`` itself (None: it need not)."""
    from transformers.models.gpt2 import modeling_gpt2 as hf

    attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
    if (
        type(block) is not hf.GPT2Block
        or type(mlp) is not hf.GPT2MLP
        or type(attn).__module__ != hf.__name__
        or type(attn).__name__ not in _ATTENTION_CLASSES
    ):
        return f"{type(block).__name__} is not transformers' own GPT2Block"
    from transformers.pytorch_utils import Conv1D

    why = first_not_plain({
        "ln_1": (block.ln_1, (nn.LayerNorm,)), "attn.c_attn": (attn.c_attn, (Conv1D,)),
        "attn.c_proj": (attn.c_proj, (Conv1D,)), "ln_2": (block.ln_2, (nn.LayerNorm,)),
        "mlp.c_fc": (mlp.c_fc, (Conv1D,)), "mlp.c_proj": (mlp.c_proj, (Conv1D,)),
        "block": (block, (hf.GPT2Block,)), "attn": (attn, (type(attn),)), "mlp": (mlp, (hf.GPT2MLP,)),
    })
    if why:
        return why
    if attn.reorder_and_upcast_attn:
        return "reorder_and_upcast_attn"
    if type(attn).__name__ == "GPT2SdpaAttention" and attention_scale(block) != attn.head_dim**-0.5:
        return "transformers 4.4x's GPT2SdpaAttention ignores scale_attn_weights / scale_attn_by_inverse_layer_idx"
    if attn.is_cross_attention or attn.c_attn.weight.shape[1] != 3 * attn.num_heads * attn.head_dim:
        return "not a plain causal self-attention (cross-attention or pruned heads)"
    return None


def attention_scale(block: nn.Module) -> float:
    """GPT-2's softmax scale: ``head_dim**-0.5`` (if ``scale_attn_weights``), ``/ (layer_idx + 1)`` if asked."""
    attn = block.attn
    scale = attn.head_dim**-0.5 if attn.scale_attn_weights else 1.0
    if attn.scale_attn_by_inverse_layer_idx:
        scale /= float(attn.layer_idx + 1)
    return scale


def gpt2_block_infer(block: nn.Module, h: torch.Tensor, *, check: bool = True, last: int | None = None) -> torch.Tensor:
    """``block(h)`` with causal self-attention and no mask, in fewer kernels (eval mode, no dropout).

    Args:
        block: a ``transformers`` ``GPT2Block`` (:func:`lean_block_unsupported` says which it cannot run).
        h: ``[B, T, d]`` hidden states in the block's dtype.
        check: check ``block`` and ``h`` first; False for a caller that has already asked
            :func:`lean_block_unsupported` (the streaming step, once per block and segment).
        last: compute only the last ``last`` rows of the output (``block(h)[:, T - last:]``): keys and values
            of every row, queries, attention output and MLP of those rows alone. The streaming step's last
            block needs only the memory rows it writes from. None: all ``T`` rows.

    Returns:
        ``[B, T, d]`` (``[B, last, d]`` with ``last``), a new tensor (``h`` is not written).

    Raises:
        ValueError: ``block`` is not one this function runs (call the block itself, with a causal mask), or
            ``last`` is not in ``[1, T]``.
    """
    if check:
        why = lean_block_unsupported(block)
        if why is not None:
            raise ValueError(f"gpt2_block_infer cannot run this block: {why}")
        if h.dim() != 3 or h.shape[-1] != block.ln_1.normalized_shape[0]:
            raise ValueError(f"h must be [B, T, {block.ln_1.normalized_shape[0]}], got {tuple(h.shape)}")
        if last is not None and (isinstance(last, bool) or not isinstance(last, int) or not 1 <= last <= h.shape[1]):
            raise ValueError(f"last must be an integer in [1, {h.shape[1]}] (the rows of h), got {last!r}")
    B, T, d = h.shape
    R = T if last is None else last  # output rows: the last R of T
    attn, mlp, ln1, ln2 = block.attn, block.mlp, block.ln_1, block.ln_2
    H, D = attn.num_heads, attn.head_dim
    x = F.layer_norm(h, (d,), ln1.weight, ln1.bias, ln1.eps).view(B * T, d)
    qkv = torch.addmm(attn.c_attn.bias, x, attn.c_attn.weight).view(B, T, 3, H, D)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, T, D] views, as HF's split/view/transpose
    if R == T:
        a = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, scale=attention_scale(block))
    else:  # query row r sits at position T - R + r: it sees keys 0 .. T - R + r (SDPA's is_causal aligns top-left)
        visible = torch.ones(R, T, dtype=torch.bool, device=h.device).tril_(T - R)
        a = F.scaled_dot_product_attention(q[:, :, T - R :], k, v, attn_mask=visible, scale=attention_scale(block))
        h = h[:, T - R :]
    a = a.transpose(1, 2).reshape(B * R, H * D)  # a view where SDPA returns [B, R, H, D] memory (CPU, flash)
    h = torch.addmm(attn.c_proj.bias, a, attn.c_proj.weight).view(B, R, d).add_(h)
    x = F.layer_norm(h, (d,), ln2.weight, ln2.bias, ln2.eps).view(B * R, d)
    u = mlp_activation(mlp.act)(torch.addmm(mlp.c_fc.bias, x, mlp.c_fc.weight))
    return torch.addmm(mlp.c_proj.bias, u, mlp.c_proj.weight).view(B, R, d).add_(h)
