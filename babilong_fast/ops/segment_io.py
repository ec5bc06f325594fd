"""Memory read/write of a recurrent segment without concatenation copies.

* :func:`segment_embed` assembles a GPT-2 block input ``[front; wte(ids); back] + wpe(0..T-1)`` straight into a
  preallocated buffer (RMT: ``front = back = memory``; ARMT: ``front = None``, ``back = memory tokens``).
* :func:`rows_layer_norm` applies a LayerNorm to a contiguous band of rows only (RMT's ``ln_f`` on the write
  rows, which become the next memory).

Four layers per op: the Triton kernels (``babilong_fast.kernels.segment_io``), the CUDA kernels
(``csrc/segment_io``), the public functions, and the float references ``*_ref`` beside them. Both ops are
inference-only (no autograd through the fused backends; the torch backend is differentiable as plain torch).
"""
from __future__ import annotations

import torch

from babilong_fast.backends import Backend, extension_function, resolve_backend
from babilong_fast.ops._checks import HALF_AND_FLOAT, check_positive_float, check_same_device, check_tensor
from babilong_fast.ops._reference_backward import fused_needs_autograd

IMPLEMENTED = ("cuda", "triton", "torch")
_FLOATS = (*HALF_AND_FLOAT, torch.float64)


def segment_embed_rows(
    input_ids: torch.Tensor,
    wte: torch.Tensor,
    wpe: torch.Tensor,
    front: torch.Tensor | None = None,
    back: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[front; wte[ids]; back] + wpe[0:T]`` as a new ``[B, T, d]`` tensor in ``wte``'s dtype: the reference's
    sums (float32, or float64 for float64 ``wte``) rounded once, NaN rows for ids outside ``[0, V)``. The
    functional form of :func:`segment_embed_ref`, with no ``out`` buffer, as ``torch.compile`` traces it.

    ``front`` / ``back``: ``[B or 1, M, d]`` in any float dtype, or None.
    """
    B = input_ids.shape[0]
    acc = torch.float64 if wte.dtype == torch.float64 else torch.float32
    valid = (input_ids >= 0) & (input_ids < wte.shape[0])
    tok = torch.nn.functional.embedding(torch.where(valid, input_ids, 0), wte).to(acc)  # [B, L, d]
    tok = tok + torch.where(valid, 0.0, float("nan")).to(acc)[..., None]  # + 0, or NaN for a bad id
    parts = [m.to(acc).expand(B, -1, -1) for m in (front,) if m is not None]
    parts += [tok] + [m.to(acc).expand(B, -1, -1) for m in (back,) if m is not None]
    rows = torch.cat(parts, 1)
    return (rows + wpe[: rows.shape[1]].to(acc)).to(wte.dtype)


def segment_embed_ref(
    input_ids: torch.Tensor,
    wte: torch.Tensor,
    wpe: torch.Tensor,
    out: torch.Tensor,
    front: torch.Tensor | None = None,
    back: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pure-PyTorch reference of :func:`segment_embed` (sums in float32, or float64 for a float64 ``out``):
    :func:`segment_embed_rows` copied into ``out`` (differentiable as plain torch).

    Ids outside ``[0, V)`` give NaN rows (no device sync is spent on checking them).
    """
    return out.copy_(segment_embed_rows(input_ids, wte, wpe, front, back))


def _check_embed(input_ids, wte, wpe, out, front, back) -> tuple[int, int]:
    check_tensor("input_ids", input_ids, 2, (torch.int64,))
    check_tensor("wte", wte, 2, _FLOATS)
    check_tensor("wpe", wpe, 2, _FLOATS)
    check_tensor("out", out, 3, _FLOATS)
    mems = {}
    for name, m in (("front", front), ("back", back)):
        if m is not None:
            mems[name] = check_tensor(name, m, 3, _FLOATS)
    check_same_device(input_ids=input_ids, wte=wte, wpe=wpe, out=out, **mems)
    B, L = input_ids.shape
    d = out.shape[2]
    if wte.shape[0] == 0:
        raise ValueError("wte must have at least one row (a vocabulary of size 0 has no token to embed)")
    if wte.dtype != out.dtype or wpe.dtype != out.dtype:
        raise TypeError(f"wte, wpe and out must share one dtype; got {wte.dtype}, {wpe.dtype} and {out.dtype}")
    if wte.shape[1] != d or wpe.shape[1] != d:
        raise ValueError(f"wte [V, d] and wpe [P, d] must have d = out.shape[-1] = {d}; got {tuple(wte.shape)}, "
                         f"{tuple(wpe.shape)}")
    for name, m in mems.items():
        if m.shape[0] not in (1, B) or m.shape[2] != d:
            raise ValueError(f"{name} must be [B or 1, M, d] with B = {B}, d = {d}; got {tuple(m.shape)}")
    Mf = front.shape[1] if front is not None else 0
    Mb = back.shape[1] if back is not None else 0
    T = Mf + L + Mb
    if out.shape[:2] != (B, T):
        raise ValueError(
            f"out must be [B, Mf + L + Mb, d] = [{B}, {Mf} + {L} + {Mb}, {d}]; got {tuple(out.shape)}"
        )
    if T > wpe.shape[0]:
        raise ValueError(f"the segment has {T} rows but wpe only {wpe.shape[0]} positions")
    return Mf, Mb


@torch.library.custom_op("babilong_fast::segment_embed_cuda", mutates_args=("out",), device_types="cuda")
def _segment_embed_cuda(
    input_ids: torch.Tensor,
    wte: torch.Tensor,
    wpe: torch.Tensor,
    out: torch.Tensor,
    front: torch.Tensor | None,
    back: torch.Tensor | None,
) -> None:
    extension_function("segment_embed_fwd")(input_ids, wte, wpe, out, front, back)


@_segment_embed_cuda.register_fake
def _(input_ids, wte, wpe, out, front, back):
    return None


def _inference_only(op: str, chosen: str, *tensors: torch.Tensor | None) -> None:
    """The fused backends have no backward: refuse them where a gradient is wanted (it would be lost silently)."""
    if fused_needs_autograd(chosen, *tensors):
        raise ValueError(
            f"{op}'s {chosen} backend is inference-only (no autograd) and an input requires grad: use "
            "backend='torch', or run under torch.no_grad() / torch.inference_mode()"
        )


def segment_embed(
    input_ids: torch.Tensor,
    wte: torch.Tensor,
    wpe: torch.Tensor,
    out: torch.Tensor,
    *,
    front: torch.Tensor | None = None,
    back: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Write ``[front; wte[ids]; back] + wpe[0:T]`` into ``out`` (one pass, no concatenation).

    Rows ``0..Mf-1`` are ``front + wpe[0:Mf]``, rows ``Mf..Mf+L-1`` are ``wte[ids] + wpe[Mf:Mf+L]`` and rows
    ``Mf+L..T-1`` are ``back + wpe[Mf+L:T]``. Every sum is taken in float32 and rounded to ``out``'s dtype
    once. Ids are not range-checked (that would cost a device sync per segment): an id outside ``[0, V)``
    gives a row of NaN in every backend.

    Args:
        input_ids: ``[B, L]`` int64 token ids, contiguous.
        wte: ``[V, d]`` token embeddings, ``out``'s dtype.
        wpe: ``[P, d]`` position embeddings, ``out``'s dtype, ``P >= T``.
        out: ``[B, T, d]`` float32, bfloat16 or float16, contiguous; ``T = Mf + L + Mb``.
        front: ``[B or 1, Mf, d]`` rows before the tokens (any float dtype; batch 1 broadcasts), or None.
        back: ``[B or 1, Mb, d]`` rows after the tokens, or None.
        backend: ``"auto"``, ``"cuda"``, ``"triton"`` or ``"torch"`` (see :func:`babilong_fast.backends`).

    Returns:
        ``out``.

    Examples::
        >>> wte, wpe = torch.randn(100, 64), torch.randn(96, 64)
        >>> mem = torch.randn(1, 4, 64)
        >>> out = torch.empty(2, 4 + 16 + 4, 64)
        >>> segment_embed(torch.randint(0, 100, (2, 16)), wte, wpe, out, front=mem, back=mem).shape
        torch.Size([2, 24, 64])
    """
    _check_embed(input_ids, wte, wpe, out, front, back)
    chosen = resolve_backend("segment_embed", backend, out.device, implemented=IMPLEMENTED)
    _inference_only("segment_embed", chosen, wte, wpe, front, back)
    if out.numel() == 0:
        return out
    if chosen == "torch" or out.dtype == torch.float64:
        return segment_embed_ref(input_ids, wte, wpe, out, front, back)
    if chosen == "triton":
        from babilong_fast.kernels.segment_io import segment_embed_fwd

        segment_embed_fwd(input_ids, wte, wpe, out, front, back)
        return out
    _segment_embed_cuda(input_ids, wte, wpe, out, front, back)
    return out


def rows_layer_norm_ref(
    x: torch.Tensor, start: int, count: int, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Pure-PyTorch reference of :func:`rows_layer_norm`: float32 (float64 for float64 ``x``) ``[B, count, d]``."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows = x[:, start : start + count].to(acc)
    return torch.nn.functional.layer_norm(rows, (x.shape[-1],), weight.to(acc), bias.to(acc), eps)


def _check_rows(x, start, count, weight, bias, eps, out) -> float:
    check_tensor("x", x, 3, _FLOATS)
    check_tensor("weight", weight, 1, _FLOATS)
    check_tensor("bias", bias, 1, _FLOATS)
    eps = check_positive_float("eps", eps)
    B, T, d = x.shape
    for name, v in (("start", start), ("count", count)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    if start + count > T:
        raise ValueError(f"rows start..start+count-1 = {start}..{start + count - 1} exceed x's {T} rows")
    if weight.shape != (d,) or bias.shape != (d,):
        raise ValueError(f"weight and bias must be [d] = [{d}]; got {tuple(weight.shape)}, {tuple(bias.shape)}")
    tensors = {"x": x, "weight": weight, "bias": bias}
    if out is not None:
        want = torch.float64 if x.dtype == torch.float64 else torch.float32
        check_tensor("out", out, 3, (want,))
        if out.shape != (B, count, d):
            raise ValueError(f"out must be [B, count, d] = [{B}, {count}, {d}]; got {tuple(out.shape)}")
        tensors["out"] = out
    check_same_device(**tensors)
    return eps


@torch.library.custom_op("babilong_fast::rows_layer_norm_cuda", mutates_args=("out",), device_types="cuda")
def _rows_layer_norm_cuda(
    x: torch.Tensor, start: int, count: int, weight: torch.Tensor, bias: torch.Tensor, eps: float, out: torch.Tensor
) -> None:
    extension_function("rows_layer_norm_fwd")(x, start, count, weight, bias, eps, out)


@_rows_layer_norm_cuda.register_fake
def _(x, start, count, weight, bias, eps, out):
    return None


def rows_layer_norm(
    x: torch.Tensor,
    start: int,
    count: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
    out: torch.Tensor | None = None,
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """LayerNorm of rows ``start..start+count-1`` of ``x`` only, in float32 (RMT: ``ln_f`` on the write rows).

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` over the last dim (biased variance, as
    ``nn.LayerNorm``), computed and returned in float32 without rounding to ``x``'s dtype.

    Args:
        x: ``[B, T, d]`` float32, bfloat16 or float16, contiguous.
        start: first row, ``>= 0``.
        count: number of rows, ``start + count <= T``.
        weight: ``[d]`` scale, any float dtype.
        bias: ``[d]`` shift, any float dtype.
        eps: added to the variance (``ln_f.eps``).
        out: ``[B, count, d]`` float32 contiguous buffer to write into, or None for a new one.
        backend: ``"auto"``, ``"cuda"``, ``"triton"`` or ``"torch"``.

    Returns:
        ``[B, count, d]`` float32 (``out`` when given).

    Examples::
        >>> x = torch.randn(2, 24, 64)
        >>> ln = torch.nn.LayerNorm(64)
        >>> rows_layer_norm(x, 20, 4, ln.weight, ln.bias, ln.eps).shape
        torch.Size([2, 4, 64])
    """
    eps = _check_rows(x, start, count, weight, bias, eps, out)
    chosen = resolve_backend("rows_layer_norm", backend, x.device, implemented=IMPLEMENTED)
    _inference_only("rows_layer_norm", chosen, x, weight, bias)
    B, _, d = x.shape
    if out is None:
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        out = torch.empty(B, count, d, dtype=acc, device=x.device)
    if out.numel() == 0:
        return out
    if chosen == "torch" or x.dtype == torch.float64:
        out.copy_(rows_layer_norm_ref(x, start, count, weight, bias, eps))
    elif chosen == "triton":
        from babilong_fast.kernels.segment_io import rows_layer_norm_fwd

        rows_layer_norm_fwd(x, start, count, weight, bias, eps, out)
    else:
        _rows_layer_norm_cuda(x, start, count, weight, bias, eps, out)
    return out
