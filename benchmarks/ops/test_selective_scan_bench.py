"""Micro-benchmarks of the Mamba-1 selective scan with state carry, one row per backend that runs here.

Run: ``python -m pytest benchmarks/ops/test_selective_scan_bench.py`` (pytest-benchmark). GPU: Mamba-130m's
layer (d_inner 1536, d_state 16) on a 2048-token chunk, batch 1 and 8; CPU: a small layer, torch only.
``triton`` times the chunked kernel's default tile and ``triton-statewise`` the statewise kernel's (the tuner is
off here: timing eleven tiles per shape and dtype would cost the device check's micro step two dozen compiles;
the models benchmark records the tuner's timings), ``triton-step`` the Triton backend's per-token kernel,
``cuda`` the CUDA kernel (csrc/selective_scan).
"""
from __future__ import annotations

import pytest
import torch

from babilong_fast.ops import selective_scan
from timed_here import GPU, skip_unless_timed_here

SHAPES = ({"mamba130m-B1": (1, 1536, 2048, 16), "mamba130m-B8": (8, 1536, 2048, 16)} if GPU
          else {"small": (1, 128, 256, 16)})


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", ["cuda", "triton", "triton-statewise", "triton-step", "torch"])
def test_selective_scan(benchmark, variant, dtype, shape, monkeypatch):
    backend = variant.split("-")[0]
    skip_unless_timed_here(backend, dtype)
    monkeypatch.setenv("BABILONG_FAST_SCAN_TUNE", "0")
    if variant in ("triton-step", "triton-statewise"):
        from babilong_fast.kernels import selective_scan as kernels

        monkeypatch.setattr(kernels, "DEFAULT_KERNEL", variant.split("-")[1])
    B, D, L, N = shape
    device = "cuda" if GPU else "cpu"
    u, z = torch.randn(B, D, L, device=device, dtype=dtype), torch.randn(B, D, L, device=device, dtype=dtype)
    delta = (torch.rand(B, D, L, device=device) * 0.1).to(dtype)
    A = -torch.rand(D, N, device=device) - 0.5
    Bm, Cm = torch.randn(B, N, L, device=device, dtype=dtype), torch.randn(B, N, L, device=device, dtype=dtype)
    Dv, bias = torch.randn(D, device=device), torch.randn(D, device=device) * 0.1
    h0 = torch.randn(B, D, N, device=device)

    def run():
        selective_scan(u, delta, A, Bm, Cm, Dv, z, bias, True, initial_state=h0, return_last_state=True,
                       backend=backend)
        if GPU:
            torch.cuda.synchronize()

    with torch.no_grad():
        run()
        benchmark.pedantic(run, rounds=20 if GPU else 3, warmup_rounds=2 if GPU else 1)
    benchmark.extra_info.update(backend=variant, B=B, dim=D, L=L, d_state=N, dtype=str(dtype))
