"""ARMT associative-memory write: a rank-M delta-rule update of ``(A, z)`` from the M memory rows.

With ``K = dpfp(mem w_k^T)``, ``V = mem w_v^T`` and ``beta = sigmoid(mem w_b^T + b_b)``::

    first segment:  Vbar = 0,  gamma = 1
    otherwise:      delta = K z + eps,  Vbar = (K A) / delta,
                    gamma = stopgrad(clip(1 - delta / (|K|^2 + eps), 0, 1))   (1 without correction)
    A_new = A + K^T diag(beta) (V - Vbar)
    z_new = z + K^T gamma

Every row uses the pre-update ``(A, z)`` (one parallel rank-M update), and ``beta`` scales the
value update only, not ``z``. Four layers: the Triton kernels (``babilong_fast.kernels.assoc_write``), the
CUDA kernels (``csrc/assoc_write``), :class:`AssocWriteFunction` and the public :func:`assoc_write`, and the
float reference :func:`assoc_write_ref` beside them.
"""

from __future__ import annotations

import torch

from babilong_fast.backends import Backend, extension_function, resolve_backend
from babilong_fast.ops._autocast import autocast_off
from babilong_fast.ops._checks import (
    HALF_AND_FLOAT,
    check_positive_float,
    check_positive_int,
    check_same_device,
    check_tensor,
)
from babilong_fast.ops._reference_backward import (
    fused_needs_autograd,
    leaves,
    mark_constant_outputs,
    reference_grads,
)
from babilong_fast.ops.dpfp import dpfp

IMPLEMENTED = ("cuda", "triton", "torch")


def assoc_write_ref(
    mem: torch.Tensor,
    w_k: torch.Tensor,
    w_v: torch.Tensor,
    w_b: torch.Tensor,
    b_b: torch.Tensor,
    A: torch.Tensor,
    z: torch.Tensor,
    *,
    nu: int = 3,
    eps: float = 1e-5,
    correction: bool = True,
    first_segment: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch reference. Computes in float32, or float64 when ``mem`` is float64 (autocast or not).

    Args:
        mem: ``[B, M, d]`` block outputs at the memory rows.
        w_k: ``[n, d]`` key projection (``nn.Linear`` weight layout, ``n = d_mem``).
        w_v: ``[d, d]`` value projection.
        w_b: ``[1, d]`` and b_b: ``[1]``, the write-strength gate.
        A: ``[B or 1, 2*nu*n, d]``.
        z: ``[B or 1, 2*nu*n]``.

    Returns:
        ``(A_new [B, F, d], z_new [B, F])`` in the compute dtype (float32, or float64).
    """
    acc = torch.float64 if mem.dtype == torch.float64 else torch.float32
    m = mem.to(acc)
    A0, z0 = A.to(acc), z.to(acc)
    with autocast_off(mem.device):
        K = dpfp(m @ w_k.to(acc).t(), nu)  # [B, M, F]
        V = m @ w_v.to(acc).t()  # [B, M, d]
        beta = torch.sigmoid(m @ w_b.to(acc).t() + b_b.to(acc))  # [B, M, 1]
        delta, gamma = write_gates(K, z0, eps=eps, correction=correction, first_segment=first_segment)
        upd = beta * V if first_segment else beta * (V - (K @ A0) / delta)
        A_new = A0 + K.transpose(1, 2) @ upd  # [B, F, d]
        z_new = z0 + (K * gamma.unsqueeze(-1)).sum(1)  # [B, F]
    return A_new, z_new


def write_gates(
    K: torch.Tensor, z: torch.Tensor, *, eps: float = 1e-5, correction: bool = True, first_segment: bool = False
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The write's recall denominator and z-correction from its keys ``K [B, M, F]`` (φ of the key projections)
    and the pre-write ``z [B or 1, F]``: ``(delta [B, M, 1] or None on the first segment, gamma [B, M])``;
    gamma is detached, and 1 on the first segment or without ``correction``."""
    if first_segment:
        return None, torch.ones(K.shape[:2], dtype=K.dtype, device=K.device)
    delta = K @ z.unsqueeze(-1) + eps  # [B, M, 1]
    if not correction:
        return delta, torch.ones(K.shape[:2], dtype=K.dtype, device=K.device)
    ratio = delta / (K.square().sum(-1, keepdim=True) + eps)
    return delta, (1.0 - ratio).clamp(0.0, 1.0).squeeze(-1).detach()


def _check(mem, w_k, w_v, w_b, b_b, A, z, nu, eps) -> tuple[int, float]:
    check_tensor("mem", mem, 3, HALF_AND_FLOAT)
    check_tensor("w_k", w_k, 2, HALF_AND_FLOAT)
    check_tensor("w_v", w_v, 2, HALF_AND_FLOAT)
    check_tensor("w_b", w_b, 2, HALF_AND_FLOAT)
    check_tensor("b_b", b_b, 1, HALF_AND_FLOAT)
    check_tensor("A", A, 3, (torch.float32,))
    check_tensor("z", z, 2, (torch.float32,))
    nu = check_positive_int("nu", nu)
    eps = check_positive_float("eps", eps)
    check_same_device(mem=mem, w_k=w_k, w_v=w_v, w_b=w_b, b_b=b_b, A=A, z=z)
    B, _, d = mem.shape
    n = w_k.shape[0]
    if w_k.shape[1] != d or n < 1:  # as assoc_read: d_mem = 0 has no features to write with
        raise ValueError(
            f"w_k must have shape (d_mem, d), d_mem >= 1, d = mem.shape[-1] = {d}; got {tuple(w_k.shape)}"
        )
    if w_v.shape != (d, d):
        raise ValueError(f"w_v must have shape (d, d) = ({d}, {d}); got {tuple(w_v.shape)}")
    if w_b.shape != (1, d):
        raise ValueError(f"w_b must have shape (1, d) = (1, {d}); got {tuple(w_b.shape)}")
    if b_b.shape != (1,):
        raise ValueError(f"b_b must have shape (1,); got {tuple(b_b.shape)}")
    F = 2 * nu * n
    if A.shape[1:] != (F, d):
        raise ValueError(f"A must have shape (B, 2*nu*d_mem, d) = (B, {F}, {d}); got {tuple(A.shape)}")
    if A.shape[0] not in (1, B):
        raise ValueError(f"A's batch size must be 1 or mem's batch size {B}; got {A.shape[0]}")
    if z.shape != (A.shape[0], F):
        raise ValueError(f"z must have shape (A.shape[0], 2*nu*d_mem) = ({A.shape[0]}, {F}); got {tuple(z.shape)}")
    return nu, eps


@torch.library.custom_op("babilong_fast::assoc_write_cuda", mutates_args=(), device_types="cuda")
def _assoc_write_cuda(
    mem: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor, w_b: torch.Tensor, b_b: torch.Tensor,
    A: torch.Tensor, z: torch.Tensor, nu: int, eps: float, correction: bool, first_segment: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CUDA kernels as a torch op, so torch.compile can trace around them. Weights must be float32."""
    return extension_function("assoc_write_fwd")(mem, w_k, w_v, w_b, b_b, A, z, nu, eps, correction, first_segment)


@_assoc_write_cuda.register_fake
def _(mem, w_k, w_v, w_b, b_b, A, z, nu, eps, correction, first_segment):
    B, F, d = mem.shape[0], A.shape[1], A.shape[2]
    return A.new_empty(B, F, d), z.new_empty(B, F)


def _fwd(backend: str, mem, w_k, w_v, w_b, b_b, A, z, nu: int, eps: float, correction: bool, first_segment: bool):
    if backend == "cuda":
        w_k, w_v, w_b, b_b = (t.float().contiguous() for t in (w_k, w_v, w_b, b_b))
        return _assoc_write_cuda(mem, w_k, w_v, w_b, b_b, A, z, nu, eps, correction, first_segment)
    if backend == "triton":
        from babilong_fast.kernels.assoc_write import assoc_write_fwd

        return assoc_write_fwd(mem, w_k, w_v, w_b, b_b, A, z, nu, eps, correction, first_segment)
    return assoc_write_ref(
        mem, w_k, w_v, w_b, b_b, A, z, nu=nu, eps=eps, correction=correction, first_segment=first_segment
    )


class AssocWriteFunction(torch.autograd.Function):
    """Fused forward; the backward recomputes with the reference and differentiates it (``gamma`` detached)."""

    @staticmethod
    def forward(ctx, mem, w_k, w_v, w_b, b_b, A, z, nu: int, eps: float, correction: bool, first_segment: bool,
                backend: str):
        ctx.save_for_backward(mem, w_k, w_v, w_b, b_b, A, z)
        ctx.nu, ctx.eps, ctx.correction, ctx.first_segment = nu, eps, correction, first_segment
        A_new, z_new = _fwd(backend, mem, w_k, w_v, w_b, b_b, A, z, nu, eps, correction, first_segment)
        A_deps = (0, 1, 2, 3, 4, 5) if first_segment else (0, 1, 2, 3, 4, 5, 6)  # z: via the recall, not on the first
        mark_constant_outputs(ctx, (A_new, z_new), (A_deps, (0, 1, 6)))  # z_new: from mem, w_k and z alone
        return A_new, z_new

    @staticmethod
    def backward(ctx, grad_A, grad_z):
        inputs = leaves(ctx.saved_tensors, ctx.needs_input_grad[:7])
        with torch.enable_grad():
            outs = assoc_write_ref(
                *inputs, nu=ctx.nu, eps=ctx.eps, correction=ctx.correction, first_segment=ctx.first_segment
            )
            grads = reference_grads(outs, (grad_A, grad_z), inputs)
        return (*grads, None, None, None, None, None)


def assoc_write(
    mem: torch.Tensor,
    w_k: torch.Tensor,
    w_v: torch.Tensor,
    w_b: torch.Tensor,
    b_b: torch.Tensor,
    A: torch.Tensor,
    z: torch.Tensor,
    *,
    nu: int = 3,
    eps: float = 1e-5,
    correction: bool = True,
    first_segment: bool = False,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """ARMT associative write (delta rule with the ``gamma`` correction), one rank-M update.

    Differentiable in every input except through ``gamma``, which is detached as in ARMT.

    Args:
        mem: ``[B, M, d]`` float32, bfloat16 or float16, contiguous: block outputs at the memory rows.
        w_k: ``[d_mem, d]`` key projection (``nn.Linear`` weight layout).
        w_v: ``[d, d]`` value projection.
        w_b: ``[1, d]`` gate weight; b_b: ``[1]`` gate bias.
        A: ``[B, 2*nu*d_mem, d]`` float32 associative matrix (batch 1 broadcasts).
        z: ``[B, 2*nu*d_mem]`` float32 normaliser.
        nu: DPFP order (default 3).
        eps: added to ``K z`` and to ``|K|^2`` (default 1e-5).
        correction: use the ``gamma`` correction for ``z`` (default True; False means ``gamma = 1``).
        first_segment: the memory is empty: no recall (``Vbar = 0``) and ``gamma = 1``.
        backend: ``"auto"``, ``"cuda"``, ``"triton"`` or ``"torch"`` (see :func:`babilong_fast.backends`).
            On CUDA tensors ``"auto"`` picks cuda, then triton, each once
            :data:`babilong_fast.GPU_VERIFIED_BACKENDS` lists it for the op; until then, and for
            CPU tensors, the reference.

    Returns:
        ``(A_new [B, F, d], z_new [B, F])``, float32.

    Examples::
        >>> mem = torch.randn(2, 10, 768)
        >>> w_k, w_v = torch.randn(64, 768) / 28, torch.randn(768, 768) / 28
        >>> w_b, b_b = torch.randn(1, 768) / 28, torch.zeros(1)
        >>> A, z = torch.zeros(1, 384, 768), torch.zeros(1, 384)
        >>> A, z = assoc_write(mem, w_k, w_v, w_b, b_b, A, z, first_segment=True)
        >>> A.shape, z.shape
        (torch.Size([2, 384, 768]), torch.Size([2, 384]))
    """
    nu, eps = _check(mem, w_k, w_v, w_b, b_b, A, z, nu, eps)
    chosen = resolve_backend("assoc_write", backend, mem.device, implemented=IMPLEMENTED)
    correction, first_segment = bool(correction), bool(first_segment)
    if mem.numel() == 0 or A.numel() == 0:  # nothing to launch: the reference handles the empty shapes
        chosen = "torch"
    args = (mem, w_k, w_v, w_b, b_b, A, z)
    if fused_needs_autograd(chosen, *args):
        return AssocWriteFunction.apply(*args, nu, eps, correction, first_segment, chosen)
    return _fwd(chosen, *args, nu, eps, correction, first_segment)
