"""Shared test helpers: tolerance check, backend/device selection."""
from __future__ import annotations

import pytest
import torch

from babilong_fast.backends import load_extension, triton_interpret

HAS_CUDA = torch.cuda.is_available()
HAS_EXT = load_extension()[0] is not None
try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
requires_ext = pytest.mark.skipif(not (HAS_CUDA and HAS_EXT), reason="needs a GPU and the built extension _C")
requires_triton = pytest.mark.skipif(
    not (HAS_TRITON and (HAS_CUDA or triton_interpret())), reason="needs Triton and a GPU, or TRITON_INTERPRET=1"
)


def backend_params() -> list:
    """(backend, device) pairs: every backend on the device it runs on here, skipped where it cannot."""
    gpu = "cuda" if HAS_CUDA else "cpu"
    return [
        pytest.param("torch", gpu, id="torch"),
        pytest.param("triton", gpu, id="triton", marks=[pytest.mark.triton, requires_triton]),
        pytest.param("cuda", "cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.ext, requires_ext]),
    ]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    return ((out64 - ref64).norm() / ref64.norm().clamp_min(1e-300)).item()


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, rtol: float) -> None:
    """Relative error ||out - ref|| / ||ref|| <= rtol, with no NaN; prints the worst element on failure."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    assert not torch.isnan(out64).any(), f"{name}: {int(torch.isnan(out64).sum())} NaN elements (unwritten output?)"
    assert not torch.isnan(ref64).any(), f"{name}: the reference has {int(torch.isnan(ref64).sum())} NaN elements"
    err = rel_err(out64, ref64)
    if not err <= rtol:
        diff = (out64 - ref64).abs()
        idx = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        raise AssertionError(
            f"{name}: relative error {err:.3e} > {rtol:.1e}; worst at {idx}: "
            f"got {out64[idx]:.6g}, want {ref64[idx]:.6g}"
        )


def assert_same_nonfinite(name: str, ref: torch.Tensor, out: torch.Tensor, rtol: float) -> None:
    """NaN, +inf and -inf exactly where ``ref`` has them, and ``assert_close`` on the finite elements (some)."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    for what in (torch.isnan, torch.isposinf, torch.isneginf):
        want, got = what(ref64), what(out64)
        assert torch.equal(got, want), (
            f"{name}: {what.__name__} in {int(got.sum())} elements, the reference in {int(want.sum())} "
            f"(first differing at {tuple(int(i) for i in (got != want).nonzero()[0])})"
        )
    finite = torch.isfinite(ref64)
    assert finite.any(), f"{name}: the reference has no finite element to compare"
    assert_close(name, ref64[finite], out64[finite], rtol)


def make_memory_matter(model) -> None:
    """Give an ARMT's memory projections O(1) DPFP features and a non-zero W_v (it starts at zero), in place."""
    with torch.no_grad():
        for p in model.layers:
            p.W_q.weight.normal_(0, 1.0)
            p.W_k.weight.normal_(0, 1.0)
            p.W_v.weight.normal_(0, 64**-0.5)


def dtype_params(dtypes) -> list:
    """``pytest.param`` per dtype, with ids such as ``bfloat16``."""
    return [pytest.param(d, id=str(d).replace("torch.", "")) for d in dtypes]
