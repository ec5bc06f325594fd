"""Micro-benchmarks of the causal depthwise conv with state carry, one row per backend that runs here.

Run: ``python -m pytest benchmarks/ops/test_causal_conv1d_bench.py`` (pytest-benchmark). GPU: Mamba-130m's
conv (d_inner 1536, width 4) on a 2048-token chunk; CPU: a small one, torch only.
"""
from __future__ import annotations

import pytest
import torch

from babilong_fast.ops import causal_conv1d
from timed_here import GPU, skip_unless_timed_here

SHAPES = ({"mamba130m-B1": (1, 1536, 2048, 4), "mamba130m-B8": (8, 1536, 2048, 4)} if GPU
          else {"small": (1, 128, 1024, 4)})


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
def test_causal_conv1d(benchmark, backend, dtype, shape):
    skip_unless_timed_here(backend, dtype)
    B, D, L, W = shape
    device = "cuda" if GPU else "cpu"
    x = torch.randn(B, D, L, device=device, dtype=dtype)
    w, b = torch.randn(D, W, device=device, dtype=dtype), torch.randn(D, device=device, dtype=dtype)
    s0 = torch.randn(B, D, W - 1, device=device, dtype=dtype)

    def run():
        causal_conv1d(x, w, b, initial_state=s0, return_final_state=True, activation="silu", backend=backend)
        if GPU:
            torch.cuda.synchronize()

    with torch.no_grad():
        run()
        benchmark.pedantic(run, rounds=30 if GPU else 5, warmup_rounds=3 if GPU else 1)
    benchmark.extra_info.update(backend=backend, B=B, dim=D, L=L, width=W, dtype=str(dtype))
