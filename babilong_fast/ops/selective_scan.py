"""Mamba-1 selective scan with an initial state in and the last state out.

Same arguments, layouts and results as ``mamba_ssm.selective_scan_fn``, plus ``initial_state``, so a
long sequence can be scanned chunk by chunk: feed each chunk's ``last_state`` to the next chunk as
``initial_state`` and the outputs equal one scan over the whole sequence. Layers: the CUDA kernel
(``csrc/selective_scan``), the Triton kernels (``babilong_fast.kernels.selective_scan``),
:class:`SelectiveScanFunction` and the public
:func:`selective_scan`, the vectorised PyTorch implementation :func:`selective_scan_chunked` (the ``torch``
backend) and the one-step-at-a-time float reference :func:`selective_scan_ref` beside them.
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
MAX_DSTATE = 256


def _channel_rows(X: torch.Tensor, dim: int, t: int | None) -> torch.Tensor:
    """B or C for one step as ``[dim, N]`` (time-invariant) or ``[batch, dim, N]`` (time-varying, groups expanded)."""
    if X.dim() == 2:
        return X
    if X.dim() == 3:  # (batch, N, L): shared by every channel
        return X[:, None, :, t]
    return X[..., t].repeat_interleave(dim // X.shape[1], dim=1)  # (batch, G, N) -> (batch, dim, N)


def _step_sizes(
    u: torch.Tensor, delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool
) -> tuple[torch.dtype, torch.Tensor, torch.Tensor]:
    """``(compute dtype, u, dt)``: float64 when ``u`` is, else float32; ``dt = softplus(delta + delta_bias)``
    (bias and softplus optional)."""
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    dt = delta.to(acc)
    if delta_bias is not None:
        dt = dt + delta_bias.to(acc)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    return acc, u.to(acc), dt


def _output(
    y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """``(y + D u) * silu(z)`` (each term optional), cast to ``dtype``; ``y``, ``u`` in the compute dtype."""
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype)


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch reference, one step at a time. Computes in float32, or float64 when ``u`` is float64.

    Per step t::

        dt  = softplus(delta[..., t] + delta_bias)     (bias and softplus optional)
        x   = exp(dt A) * x + dt B_t u[..., t]          (x starts at initial_state, else 0)
        y_t = C_t . x + D u[..., t]
        out = y * silu(z)                                (when z is given)

    Args: as :func:`selective_scan`.

    Returns:
        ``out [batch, dim, L]`` in ``u``'s dtype, and ``last_state [batch, dim, N]`` in the compute dtype
        when ``return_last_state``.
    """
    acc, u_, dt = _step_sizes(u, delta, delta_bias, delta_softplus)
    batch, dim, L = u.shape
    N = A.shape[1]
    A_, B_, C_ = A.to(acc), B.to(acc), C.to(acc)
    x = u_.new_zeros(batch, dim, N) if initial_state is None else initial_state.to(acc, copy=True)
    ys = []
    for t in range(L):
        dA = torch.exp(dt[:, :, t, None] * A_)  # [batch, dim, N]
        dBu = (dt[:, :, t] * u_[:, :, t])[..., None] * _channel_rows(B_, dim, t)
        x = dA * x + dBu
        ys.append((x * _channel_rows(C_, dim, t)).sum(-1))  # [batch, dim]
    y = torch.stack(ys, dim=-1) if ys else u_.new_zeros(batch, dim, 0)
    out = _output(y, u_, D, z, u.dtype)
    return (out, x) if return_last_state else out


SCAN_BLOCK_ELEMS = 1 << 19
"""Elements (``batch * dim * steps * N``) per block of :func:`selective_scan_chunked`: bounds its working memory."""


def _grouped(X: torch.Tensor) -> torch.Tensor:
    """Time-varying B or C as ``[batch, G, N, L]`` (the ``(batch, N, L)`` layout is one group)."""
    return X[:, None] if X.dim() == 3 else X


def _scan_block(
    dt: torch.Tensor, dtu: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, x: torch.Tensor, K: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One block of T steps in chunks of K. ``dt``, ``dtu = dt * u``: ``[b, d, T]``; B, C: as given, time-sliced;
    ``x [b, d, N]``: the state before the block.

    Returns ``y [b, d, T]`` (the ``C . state`` term only) and the state after the block.
    """
    b, d, T = dt.shape
    N = A.shape[1]
    nC = -(-T // K)
    pad = nC * K - T
    decay = torch.exp(dt[..., None] * A[:, None, :])  # [b, d, T, N], <= 1 for Mamba
    if B.dim() == 2:
        dBu = dtu[..., None] * B[:, None, :]
    else:
        Bg = _grouped(B).to(dt.dtype).transpose(2, 3)  # [b, G, T, N]
        G = Bg.shape[1]
        dBu = (dtu.reshape(b, G, d // G, T, 1) * Bg[:, :, None]).view(b, d, T, N)
    if pad:  # padded steps are exact identities (decay 1, no input), not dt = 0: 0 * A = NaN for A = -inf
        decay, dBu = F.pad(decay, (0, 0, 0, pad), value=1.0), F.pad(dBu, (0, 0, 0, pad))
    decay, dBu = decay.view(b, d, nC, K, N), dBu.view(b, d, nC, K, N)
    # Every chunk scanned from a zero state, all chunks at once: K steps over [b, d, nC, N].
    hs = [dBu[:, :, :, 0]]
    for k in range(1, K):
        hs.append(torch.addcmul(dBu[:, :, :, k], decay[:, :, :, k], hs[-1]))
    h = torch.stack(hs, dim=3)  # [b, d, nC, K, N]
    within = torch.cumprod(decay, dim=3)  # decay from each chunk's start to each of its steps
    # The state carried across chunks: nC steps over [b, d, N].
    starts = []
    for c in range(nC):
        starts.append(x)
        x = torch.addcmul(h[:, :, c, -1], within[:, :, c, -1], x)
    H = torch.addcmul(h, within, torch.stack(starts, dim=2)[:, :, :, None])  # every step's state
    if C.dim() == 2:
        y = (H * C[:, None, None, :]).sum(-1)
    else:
        Cg = F.pad(_grouped(C).to(dt.dtype), (0, pad))
        G = Cg.shape[1]
        Cg = Cg.reshape(b, G, 1, N, nC, K).permute(0, 1, 2, 4, 5, 3)  # [b, G, 1, nC, K, N]
        y = (H.view(b, G, d // G, nC, K, N) * Cg).sum(-1)
    return y.reshape(b, d, nC * K)[..., :T], x


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The ``torch`` backend: :func:`selective_scan_ref`'s results with vectorised PyTorch ops.

    The sequence is cut into chunks of ``K`` steps. Every chunk is scanned from a zero state, all chunks at
    once (``K`` vectorised steps); then the chunk-start states are carried across chunks (one step per
    chunk), and each step's state is ``h_t + prod_{s<=t} exp(dt_s A) * x_start``. Only decays within one
    chunk are formed, never their inverses, so it is as stable as the plain recurrence (every decay is
    <= 1 when ``A < 0`` and ``dt >= 0``). Work is done in blocks of about :data:`SCAN_BLOCK_ELEMS`
    state elements (``batch * dim * N`` per step), so memory stays bounded for any ``L``. Differentiable with autograd.

    Args: as :func:`selective_scan`, plus

        chunk_size: ``K``; default about ``sqrt(block length)``, between 4 and 64.

    Returns:
        as :func:`selective_scan_ref`.
    """
    acc, u_, dt = _step_sizes(u, delta, delta_bias, delta_softplus)
    batch, dim, L = u.shape
    N = A.shape[1]
    A_ = A.to(acc)
    B_ = B.to(acc) if B.dim() == 2 else B
    C_ = C.to(acc) if C.dim() == 2 else C
    dtu = dt * u_
    x = u_.new_zeros(batch, dim, N) if initial_state is None else initial_state.to(acc, copy=True)
    block = max(1, SCAN_BLOCK_ELEMS // max(1, batch * dim * N))
    K = chunk_size or min(64, max(4, int(min(block, max(L, 1)) ** 0.5)))
    block = max(K, block // K * K)
    ys = []
    for s in range(0, L, block):
        e = min(L, s + block)
        Bs = B_ if B_.dim() == 2 else B_[..., s:e]
        Cs = C_ if C_.dim() == 2 else C_[..., s:e]
        y, x = _scan_block(dt[..., s:e], dtu[..., s:e], A_, Bs, Cs, x, K)
        ys.append(y)
    y = torch.cat(ys, dim=-1) if ys else u_.new_zeros(batch, dim, 0)
    out = _output(y, u_, D, z, u.dtype)
    return (out, x) if return_last_state else out


def _check_last_stride(name: str, x: torch.Tensor) -> None:
    if x.shape[-1] > 1 and x.stride(-1) != 1 and x.numel() > 0:  # an empty tensor launches nothing
        raise ValueError(
            f"{name} must be contiguous along its last (sequence) dimension, got strides {x.stride()}; "
            f"pass {name}.contiguous()"
        )


def _check_bc(name: str, X: object, batch: int, dim: int, N: int, L: int) -> None:
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(X).__name__}")
    if X.dim() == 2:
        check_tensor(name, X, 2, HALF_AND_FLOAT)
        if X.shape != (dim, N):
            raise ValueError(f"time-invariant {name} must have shape (dim, N) = ({dim}, {N}); got {tuple(X.shape)}")
        return
    if X.dim() == 3:
        check_tensor(name, X, 3, HALF_AND_FLOAT, contiguous=False)
        if X.shape != (batch, N, L):
            raise ValueError(
                f"time-varying {name} must have shape (batch, N, L) = ({batch}, {N}, {L}); got {tuple(X.shape)}"
            )
    elif X.dim() == 4:
        check_tensor(name, X, 4, HALF_AND_FLOAT, contiguous=False)
        G = X.shape[1]
        if X.shape[0] != batch or X.shape[2:] != (N, L):
            raise ValueError(
                f"grouped {name} must have shape (batch, G, N, L) = ({batch}, G, {N}, {L}); got {tuple(X.shape)}"
            )
        if G < 1 or dim % G:
            raise ValueError(f"grouped {name}: dim = {dim} must be divisible by the number of groups G = {G}")
    else:
        raise ValueError(
            f"{name} must be 2-D (dim, N), 3-D (batch, N, L) or 4-D (batch, G, N, L); got shape {tuple(X.shape)}"
        )
    _check_last_stride(name, X)


def _check(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    check_tensor("u", u, 3, HALF_AND_FLOAT, contiguous=False)
    _check_last_stride("u", u)
    batch, dim, L = u.shape
    check_tensor("delta", delta, 3, HALF_AND_FLOAT, contiguous=False)
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape (batch, dim, L) = {tuple(u.shape)}; got {tuple(delta.shape)}")
    _check_last_stride("delta", delta)
    if isinstance(A, torch.Tensor) and A.is_complex():
        raise TypeError("A must be real float32; complex A is not supported")
    check_tensor("A", A, 2, (torch.float32,))
    if A.shape[0] != dim:
        raise ValueError(f"A must have shape (dim, N) with dim = u.shape[1] = {dim}; got {tuple(A.shape)}")
    N = A.shape[1]
    if not 1 <= N <= MAX_DSTATE:
        raise ValueError(f"A's state size N = A.shape[1] must be between 1 and {MAX_DSTATE}; got {N}")
    _check_bc("B", B, batch, dim, N, L)
    _check_bc("C", C, batch, dim, N, L)
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C}
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None:
            check_tensor(name, v, 1, (torch.float32,))
            if v.shape != (dim,):
                raise ValueError(f"{name} must have shape (dim,) = ({dim},); got {tuple(v.shape)}")
            tensors[name] = v
    if z is not None:
        check_tensor("z", z, 3, HALF_AND_FLOAT, contiguous=False)
        if z.shape != u.shape:
            raise ValueError(f"z must have u's shape (batch, dim, L) = {tuple(u.shape)}; got {tuple(z.shape)}")
        _check_last_stride("z", z)
        tensors["z"] = z
    if initial_state is not None:
        check_tensor("initial_state", initial_state, 3, (torch.float32,))
        if initial_state.shape != (batch, dim, N):
            raise ValueError(
                f"initial_state must have shape (batch, dim, N) = ({batch}, {dim}, {N}); "
                f"got {tuple(initial_state.shape)}"
            )
        tensors["initial_state"] = initial_state
    check_same_device(**tensors)


@torch.library.custom_op("babilong_fast::selective_scan_cuda", mutates_args=(), device_types="cuda")
def _selective_scan_cuda(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None, delta_softplus: bool, return_last_state: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CUDA kernel as a torch op, so torch.compile can trace around it: ``(out, last_state)``, the state
    [batch, dim, N] float32, or an empty tensor when not asked for (the kernel then does not write it)."""
    fn = extension_function("selective_scan_fwd")
    out, last = fn(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, return_last_state)
    return out, (last if last is not None else u.new_empty(0, dtype=torch.float32))


@_selective_scan_cuda.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, return_last_state):
    last_shape = (u.shape[0], u.shape[1], A.shape[1]) if return_last_state else (0,)
    return torch.empty(u.shape, dtype=u.dtype, device=u.device), u.new_empty(last_shape, dtype=torch.float32)


def _fwd(backend: str, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, return_last_state):
    if backend == "cuda":
        out, last = _selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                                         return_last_state)
        return out, (last if return_last_state else None)
    if backend == "triton":
        from babilong_fast.kernels.selective_scan import selective_scan_fwd

        return selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state)
    res = selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state)
    return res if return_last_state else (res, None)


class SelectiveScanFunction(torch.autograd.Function):
    """Fused forward returning ``(out, last_state)``; the backward recomputes with the reference and
    differentiates it, through ``last_state`` and into ``initial_state`` too."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus: bool, backend: str):
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state)
        ctx.delta_softplus = delta_softplus
        ctx.set_materialize_grads(False)
        out, last = _fwd(backend, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, True)
        mark_constant_outputs(ctx, (last,), ((0, 1, 2, 3, 7, 8),))  # last_state: not from C, D or z
        return out, last

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        inputs = leaves(ctx.saved_tensors, ctx.needs_input_grad[:9])
        if grad_out is None and grad_last is None:  # grads are not materialised: nothing flows back
            return (None,) * (len(inputs) + 2)
        with torch.enable_grad():
            u, delta, A, B, C, D, z, delta_bias, initial_state = inputs
            out, last = selective_scan_ref(
                u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, initial_state, return_last_state=True
            )
            grads = reference_grads((out, last), (grad_out, grad_last), inputs)
        return (*grads, None, None)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
    backend: Backend = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan (``mamba_ssm.selective_scan_fn`` semantics) with an optional initial state.

    State and accumulation are float32 whatever the input dtype. Differentiable in every tensor input,
    including ``initial_state``, and gradients flow through ``last_state`` (mamba_ssm's do not), so a
    chunked scan can be trained end to end.

    Args:
        u: ``[batch, dim, L]`` float32, bfloat16 or float16; stride 1 along L (other strides free).
        delta: ``[batch, dim, L]``, like ``u``.
        A: ``[dim, N]`` real float32, N <= 256; <= 0 as in Mamba (``-exp(A_log)``). With A > 0 a decay
            ``exp(delta A)`` can overflow; the chunked paths then give NaN where :func:`selective_scan_ref` gives inf.
        B: ``[dim, N]`` (time-invariant), ``[batch, N, L]`` (time-varying) or ``[batch, G, N, L]`` (grouped:
            channel d uses group ``d // (dim // G)``); dim must be divisible by G.
        C: as ``B`` (its layout may differ from B's).
        D: ``[dim]`` float32 skip connection, optional.
        z: ``[batch, dim, L]`` gate, optional: ``out *= silu(z)``.
        delta_bias: ``[dim]`` float32, added to ``delta`` before the softplus, optional.
        delta_softplus: apply softplus to ``delta`` (default False).
        initial_state: ``[batch, dim, N]`` float32 contiguous, the state before the first step (default zeros).
        return_last_state: also return the state after the last step.
        backend: ``"auto"``, ``"cuda"``, ``"triton"`` or ``"torch"`` (see :func:`babilong_fast.backends`). On CUDA
            tensors ``"auto"`` picks cuda, then triton, each once
            :data:`babilong_fast.GPU_VERIFIED_BACKENDS` lists it for the op; until then, and for
            CPU tensors, torch.

    Returns:
        ``out [batch, dim, L]`` in ``u``'s dtype, or ``(out, last_state [batch, dim, N] float32)``.

    Examples::
        >>> u, delta = torch.randn(2, 64, 100), torch.rand(2, 64, 100)
        >>> A, B, C = -torch.rand(64, 16), torch.randn(2, 16, 100), torch.randn(2, 16, 100)
        >>> y1, h = selective_scan(u[..., :60], delta[..., :60], A, B[..., :60], C[..., :60], return_last_state=True)
        >>> y2 = selective_scan(u[..., 60:], delta[..., 60:], A, B[..., 60:], C[..., 60:], initial_state=h)
        >>> torch.allclose(torch.cat([y1, y2], -1), selective_scan(u, delta, A, B, C), atol=1e-5)
        True
    """
    _check(u, delta, A, B, C, D, z, delta_bias, initial_state)
    chosen = resolve_backend("selective_scan", backend, u.device, implemented=IMPLEMENTED)
    delta_softplus, return_last_state = bool(delta_softplus), bool(return_last_state)
    if u.numel() == 0:  # nothing to launch: the reference handles the empty shapes
        chosen = "torch"
    args = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    if fused_needs_autograd(chosen, *args):
        out, last = SelectiveScanFunction.apply(*args, delta_softplus, chosen)
    else:
        out, last = _fwd(chosen, *args, delta_softplus, return_last_state)
    return (out, last) if return_last_state else out
