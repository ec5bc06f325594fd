"""ARMT associative-memory read: ``h + (phi(h w_q^T) A) / (phi(h w_q^T) z + eps)``.

Four layers: the Triton kernels (``babilong_fast.kernels.assoc_read``), the CUDA kernels
(``csrc/assoc_read``), :class:`AssocReadFunction` and the public :func:`assoc_read`, and the
float reference :func:`assoc_read_ref` beside them.
"""
from __future__ import annotations

import torch
from torch import nn

from babilong_fast.backends import Backend, extension_function, resolve_backend
from babilong_fast.ops._autocast import autocast_off
from babilong_fast.ops._checks import (
    HALF_AND_FLOAT,
    check_positive_float,
    check_positive_int,
    check_same_device,
    check_tensor,
)
from babilong_fast.ops._reference_backward import fused_needs_autograd, leaves, reference_grads
from babilong_fast.ops.dpfp import dpfp


def assoc_read_ref(
    h: torch.Tensor, w_q: torch.Tensor, A: torch.Tensor, z: torch.Tensor, nu: int = 3, eps: float = 1e-5
) -> torch.Tensor:
    """Pure-PyTorch reference. Computes in float32, or float64 when ``h`` is float64 (autocast or not).

    Args:
        h: ``[B, T, d]``.
        w_q: ``[n, d]`` (``nn.Linear`` weight layout, ``n = d_mem``).
        A: ``[B or 1, 2*nu*n, d]``.
        z: ``[B or 1, 2*nu*n]``.

    Returns:
        ``[B, T, d]`` in ``h``'s dtype.
    """
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    hf = h.to(acc)
    with autocast_off(h.device):
        phi = dpfp(hf @ w_q.to(acc).t(), nu)  # [B, T, F]
        num = phi @ A.to(acc)  # [B, T, d]
        den = phi @ z.to(acc).unsqueeze(-1)  # [B, T, 1]
    return (hf + num / (den + eps)).to(h.dtype)


def _check(h, w_q, A, z, nu, eps) -> tuple[int, float]:
    check_tensor("h", h, 3, HALF_AND_FLOAT)
    check_tensor("w_q", w_q, 2, HALF_AND_FLOAT)
    check_tensor("A", A, 3, (torch.float32,))
    check_tensor("z", z, 2, (torch.float32,))
    nu = check_positive_int("nu", nu)
    eps = check_positive_float("eps", eps)
    check_same_device(h=h, w_q=w_q, A=A, z=z)
    B, _, d = h.shape
    n = w_q.shape[0]
    if w_q.shape[1] != d or n < 1:
        raise ValueError(f"w_q must have shape (d_mem, d), d_mem >= 1, d = h.shape[-1] = {d}; got {tuple(w_q.shape)}")
    F = 2 * nu * n
    if A.shape[1:] != (F, d):
        raise ValueError(f"A must have shape (B, 2*nu*d_mem, d) = (B, {F}, {d}); got {tuple(A.shape)}")
    if A.shape[0] not in (1, B):
        raise ValueError(f"A's batch size must be 1 or h's batch size {B}; got {A.shape[0]}")
    if z.shape != (A.shape[0], F):
        raise ValueError(f"z must have shape (A.shape[0], 2*nu*d_mem) = ({A.shape[0]}, {F}); got {tuple(z.shape)}")
    return nu, eps


@torch.library.custom_op("babilong_fast::assoc_read_cuda", mutates_args=(), device_types="cuda")
def _assoc_read_cuda(
    h: torch.Tensor, w_q: torch.Tensor, A: torch.Tensor, z: torch.Tensor, nu: int, eps: float
) -> torch.Tensor:
    """The CUDA kernels as a torch op, so torch.compile can trace around them. w_q must be float32."""
    return extension_function("assoc_read_fwd")(h, w_q, A, z, nu, eps)


@_assoc_read_cuda.register_fake
def _(h, w_q, A, z, nu, eps):
    return torch.empty_like(h)


def _fwd(backend: str, h, w_q, A, z, nu: int, eps: float) -> torch.Tensor:
    if backend == "torch":
        return assoc_read_ref(h, w_q, A, z, nu, eps)
    if backend == "triton":
        from babilong_fast.kernels.assoc_read import assoc_read_fwd

        return assoc_read_fwd(h, w_q, A, z, nu, eps)
    return _assoc_read_cuda(h, w_q.float().contiguous(), A, z, nu, eps)


class AssocReadFunction(torch.autograd.Function):
    """Fused forward; the backward recomputes with the reference and differentiates it."""

    @staticmethod
    def forward(ctx, h, w_q, A, z, nu: int, eps: float, backend: str):
        ctx.save_for_backward(h, w_q, A, z)
        ctx.nu, ctx.eps = nu, eps
        return _fwd(backend, h, w_q, A, z, nu, eps)

    @staticmethod
    def backward(ctx, grad_out):
        inputs = leaves(ctx.saved_tensors, ctx.needs_input_grad[:4])
        with torch.enable_grad():
            grads = reference_grads((assoc_read_ref(*inputs, ctx.nu, ctx.eps),), (grad_out,), inputs)
        return (*grads, None, None, None)


def assoc_read(
    h: torch.Tensor,
    w_q: torch.Tensor,
    A: torch.Tensor,
    z: torch.Tensor,
    *,
    nu: int = 3,
    eps: float = 1e-5,
    backend: Backend = "auto",
) -> torch.Tensor:
    """ARMT associative read with the residual add fused: ``h + (q A) / (q . z + eps)``, ``q = dpfp(h w_q^T)``.

    The fused kernels build the DPFP features on the fly from ``h w_q^T`` (never stored) and
    produce numerator and denominator in one pass; accumulation is in float32.

    Args:
        h: ``[B, T, d]`` float32, bfloat16 or float16, contiguous.
        w_q: ``[d_mem, d]`` query projection (``nn.Linear`` weight layout).
        A: ``[B, 2*nu*d_mem, d]`` float32 associative matrix (batch 1 broadcasts).
        z: ``[B, 2*nu*d_mem]`` float32 normaliser.
        nu: DPFP order (default 3).
        eps: added to the denominator (default 1e-5).
        backend: ``"auto"``, ``"cuda"``, ``"triton"`` or ``"torch"`` (see :func:`babilong_fast.backends`).

    Returns:
        ``[B, T, d]`` in ``h``'s dtype.

    Examples::
        >>> h = torch.randn(2, 10, 768)
        >>> w_q = torch.randn(64, 768) / 28
        >>> A, z = torch.rand(2, 384, 768), torch.rand(2, 384)
        >>> assoc_read(h, w_q, A, z).shape
        torch.Size([2, 10, 768])
    """
    nu, eps = _check(h, w_q, A, z, nu, eps)
    chosen = resolve_backend("assoc_read", backend, h.device)
    if h.numel() == 0:
        return h.clone()
    # The torch path is differentiated by autograd directly; only the fused kernels need the recompute.
    if fused_needs_autograd(chosen, h, w_q, A, z):
        return AssocReadFunction.apply(h, w_q, A, z, nu, eps, chosen)
    return _fwd(chosen, h, w_q, A, z, nu, eps)


class AssocRead(nn.Module):
    """Module form: owns ``W_q`` (``d_model -> d_mem``, no bias); ``forward(h, A, z) -> [B, T, d]``."""

    def __init__(self, d_model: int, d_mem: int = 64, nu: int = 3, eps: float = 1e-5, backend: Backend = "auto"):
        super().__init__()
        self.W_q = nn.Linear(d_model, d_mem, bias=False)
        self.nu, self.eps, self.backend = nu, eps, backend

    def forward(self, h: torch.Tensor, A: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return assoc_read(h, self.W_q.weight, A, z, nu=self.nu, eps=self.eps, backend=self.backend)

    def extra_repr(self) -> str:
        return f"d_model={self.W_q.in_features}, d_mem={self.W_q.out_features}, nu={self.nu}, backend={self.backend!r}"
