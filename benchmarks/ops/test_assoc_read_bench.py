"""Per-op micro-benchmarks (pytest-benchmark), one row per backend that runs here.

    python -m pytest benchmarks/ops --benchmark-only            # GPU: cuda, triton, torch; CPU: torch
    python -m pytest benchmarks/ops --benchmark-only --benchmark-json=ops.json
"""
from __future__ import annotations

import pytest
import torch

from babilong_fast.ops import assoc_read
from timed_here import GPU, skip_unless_timed_here

SHAPES = {"armt-gpt2": (8, 522, 768, 64), "decode": (8, 1, 768, 64)} if GPU else {"small": (2, 128, 256, 64)}


def _sync():
    if GPU:
        torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16] if GPU else [torch.float32], ids=str)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
def test_assoc_read(benchmark, backend, shape, dtype):
    skip_unless_timed_here(backend)
    B, T, d, n = shape
    device = "cuda" if GPU else "cpu"
    h = torch.randn(B, T, d, device=device).to(dtype)
    w_q = torch.randn(n, d, device=device) / d**0.5
    A, z = torch.randn(B, 6 * n, d, device=device), torch.rand(B, 6 * n, device=device) + 0.05

    def run():
        assoc_read(h, w_q, A, z, backend=backend)
        _sync()

    with torch.no_grad():
        run()
        benchmark.pedantic(run, rounds=30 if GPU else 5, warmup_rounds=3 if GPU else 1)
    benchmark.extra_info.update(backend=backend, B=B, T=T, d=d, d_mem=n, dtype=str(dtype), tokens=B * T)
