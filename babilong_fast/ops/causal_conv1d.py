"""Depthwise causal conv1d (Mamba's short convolution) with the conv state carried between calls.

``causal-conv1d``'s ``causal_conv1d_fn`` semantics on channel-first x, with ``initial_state`` /
``return_final_state`` available for that layout too: the state is the last ``width - 1`` inputs,
so convolving a sequence chunk by chunk, passing each chunk's final state on, equals one call on the
whole sequence. Layers: the CUDA kernel (``csrc/causal_conv1d``), the Triton kernel
(``babilong_fast.kernels.causal_conv1d``),
:class:`CausalConv1dFunction` and the public :func:`causal_conv1d`, and the reference :func:`causal_conv1d_ref`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from babilong_fast.backends import Backend, extension_function, resolve_backend
from babilong_fast.ops._checks import HALF_AND_FLOAT, check_same_device, check_tensor
from babilong_fast.ops._reference_backward import (
    fused_needs_autograd,
    leaves,
    mark_constant_outputs,
    reference_grads,
)

IMPLEMENTED = ("cuda", "triton", "torch")
ACTIVATIONS = (None, "silu", "swish")
CUDA_MAX_WIDTH = 32
"""Widest kernel the CUDA backend takes (Mamba's is 4)."""


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    activation: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch reference. Computes in float32, or float64 when ``x`` is float64.

    With ``xp = cat([initial_state or zeros, x], -1)`` (``W - 1`` columns prepended)::

        out[..., t] = act(bias + sum_k weight[:, k] * xp[..., t + k]),   final_state = xp[..., -(W-1):]

    Args: as :func:`causal_conv1d`.

    Returns:
        ``out [batch, dim, L]`` in x's dtype, and ``final_state [batch, dim, W-1]`` in x's dtype when
        ``return_final_state``.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    batch, dim, L = x.shape
    W = weight.shape[1]
    prev = x.new_zeros(batch, dim, W - 1) if initial_state is None else initial_state
    xp = torch.cat([prev.to(acc), x.to(acc)], dim=-1)  # [batch, dim, W-1+L]
    w = weight.to(acc)
    out = xp.new_zeros(batch, dim, L) if bias is None else bias.to(acc)[:, None].expand(batch, dim, L)
    for k in range(W):
        out = out + w[:, k, None] * xp[..., k : k + L]
    if activation in ("silu", "swish"):
        out = F.silu(out)
    out = out.to(x.dtype)
    if not return_final_state:
        return out
    return out, xp[..., xp.shape[-1] - (W - 1) :].to(x.dtype).contiguous()


def _check(x, weight, bias, initial_state, activation) -> None:
    check_tensor("x", x, 3, HALF_AND_FLOAT, contiguous=False)
    if x.shape[-1] > 1 and x.stride(-1) != 1 and x.numel() > 0:  # an empty x launches nothing
        raise ValueError(
            f"x must be contiguous along its last (sequence) dimension, got strides {x.stride()}; pass x.contiguous()"
        )
    batch, dim, _ = x.shape
    check_tensor("weight", weight, 2, HALF_AND_FLOAT)
    if weight.shape[0] != dim or weight.shape[1] < 1:
        raise ValueError(
            f"weight must have shape (dim, width) with dim = x.shape[1] = {dim}; got {tuple(weight.shape)}"
        )
    W = weight.shape[1]
    tensors = {"x": x, "weight": weight}
    if bias is not None:
        check_tensor("bias", bias, 1, HALF_AND_FLOAT)
        if bias.shape != (dim,):
            raise ValueError(f"bias must have shape (dim,) = ({dim},); got {tuple(bias.shape)}")
        tensors["bias"] = bias
    if initial_state is not None:
        check_tensor("initial_state", initial_state, 3, (x.dtype,))
        if initial_state.shape != (batch, dim, W - 1):
            raise ValueError(
                f"initial_state must have shape (batch, dim, width - 1) = ({batch}, {dim}, {W - 1}); "
                f"got {tuple(initial_state.shape)}"
            )
        tensors["initial_state"] = initial_state
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None, 'silu' or 'swish'; got {activation!r}")
    check_same_device(**tensors)


@torch.library.custom_op("babilong_fast::causal_conv1d_cuda", mutates_args=(), device_types="cuda")
def _causal_conv1d_cuda(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, initial_state: torch.Tensor | None, silu: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CUDA kernel as a torch op, so torch.compile can trace around it: ``(out, final_state)``."""
    return extension_function("causal_conv1d_fwd")(x, weight, bias, initial_state, silu, True)


@_causal_conv1d_cuda.register_fake
def _(x, weight, bias, initial_state, silu):
    final = x.new_empty((x.shape[0], x.shape[1], weight.shape[1] - 1))
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), final


def _fwd(backend: str, x, weight, bias, initial_state, return_final_state: bool, activation):
    if backend == "cuda":
        out, final = _causal_conv1d_cuda(x, weight, bias, initial_state, activation is not None)
        return out, (final if return_final_state else None)
    if backend == "triton":
        from babilong_fast.kernels.causal_conv1d import causal_conv1d_fwd

        return causal_conv1d_fwd(x, weight, bias, initial_state, return_final_state, activation is not None)
    res = causal_conv1d_ref(x, weight, bias, initial_state, return_final_state, activation)
    return res if return_final_state else (res, None)


class CausalConv1dFunction(torch.autograd.Function):
    """Fused forward returning ``(out, final_state)``; the backward recomputes with the reference and
    differentiates it (through ``final_state`` and into ``initial_state`` too)."""

    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, activation, backend: str):
        ctx.save_for_backward(x, weight, bias, initial_state)
        ctx.activation = activation
        ctx.set_materialize_grads(False)
        out, final = _fwd(backend, x, weight, bias, initial_state, True, activation)
        mark_constant_outputs(ctx, (final,), ((0, 3),))  # final_state: inputs only, not weight or bias
        return out, final

    @staticmethod
    def backward(ctx, grad_out, grad_final):
        inputs = leaves(ctx.saved_tensors, ctx.needs_input_grad[:4])
        if grad_out is None and grad_final is None:  # grads are not materialised: nothing flows back
            return (None,) * (len(inputs) + 2)
        with torch.enable_grad():
            out, final = causal_conv1d_ref(*inputs, return_final_state=True, activation=ctx.activation)
            grads = reference_grads((out, final), (grad_out, grad_final), inputs)
        return (*grads, None, None)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    activation: str | None = None,
    backend: Backend = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv1d over channel-first x, optionally continuing from a carried state.

    Accumulates in float32. Differentiable in x, weight, bias and initial_state.

    Args:
        x: ``[batch, dim, L]`` float32, bfloat16 or float16; stride 1 along L (other strides free).
        weight: ``[dim, width]`` contiguous (``nn.Conv1d(dim, dim, width, groups=dim).weight[:, 0]``), any width >= 1.
        bias: ``[dim]``, optional.
        initial_state: ``[batch, dim, width - 1]`` in x's dtype, contiguous: the inputs before x[..., 0]
            (default zeros).
        return_final_state: also return the last ``width - 1`` inputs (taken from ``initial_state`` where L is shorter).
        activation: ``None``, ``"silu"`` or ``"swish"`` (the same).
        backend: ``"auto"``, ``"cuda"`` (width <= 32), ``"triton"`` or ``"torch"`` (see
            :func:`babilong_fast.backends`). On CUDA tensors ``"auto"`` picks cuda, then triton, each once
            :data:`babilong_fast.GPU_VERIFIED_BACKENDS` lists it for the op; until then, and for
            CPU tensors, torch.

    Returns:
        ``out [batch, dim, L]`` in x's dtype, or ``(out, final_state [batch, dim, width - 1])``.

    Examples::
        >>> x, w = torch.randn(2, 64, 100), torch.randn(64, 4)
        >>> y1, s = causal_conv1d(x[..., :30], w, return_final_state=True, activation="silu")
        >>> y2 = causal_conv1d(x[..., 30:], w, initial_state=s, activation="silu")
        >>> torch.allclose(torch.cat([y1, y2], -1), causal_conv1d(x, w, activation="silu"), atol=1e-6)
        True
    """
    _check(x, weight, bias, initial_state, activation)
    chosen = resolve_backend("causal_conv1d", backend, x.device, implemented=IMPLEMENTED)
    if chosen == "cuda" and weight.shape[1] > CUDA_MAX_WIDTH:
        raise ValueError(f"the cuda backend takes widths up to {CUDA_MAX_WIDTH}; got width {weight.shape[1]}")
    return_final_state = bool(return_final_state)
    if x.numel() == 0:  # nothing to launch: the reference handles the empty shapes
        chosen = "torch"
    args = (x, weight, bias, initial_state)
    if fused_needs_autograd(chosen, *args):
        out, final = CausalConv1dFunction.apply(*args, activation, chosen)
    else:
        out, final = _fwd(chosen, *args, return_final_state, activation)
    return (out, final) if return_final_state else out
