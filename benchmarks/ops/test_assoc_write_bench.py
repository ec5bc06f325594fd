"""Micro-benchmarks of the ARMT memory write, one row per backend that runs here (see test_assoc_read_bench.py)."""
from __future__ import annotations

import pytest
import torch

from babilong_fast.ops import assoc_write
from timed_here import GPU, skip_unless_timed_here

SHAPES = {"armt-gpt2": (8, 10, 768, 64)} if GPU else {"small": (2, 10, 256, 64)}


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
def test_assoc_write(benchmark, backend, shape):
    skip_unless_timed_here(backend)
    B, M, d, n = shape
    device = "cuda" if GPU else "cpu"
    mem = torch.randn(B, M, d, device=device)
    w_k, w_v = torch.randn(n, d, device=device) / d**0.5, torch.randn(d, d, device=device) / d**0.5
    w_b, b_b = torch.randn(1, d, device=device) / d**0.5, torch.zeros(1, device=device)
    A, z = torch.randn(B, 6 * n, d, device=device), torch.rand(B, 6 * n, device=device) + 0.05

    def run():
        assoc_write(mem, w_k, w_v, w_b, b_b, A, z, backend=backend)
        if GPU:
            torch.cuda.synchronize()

    with torch.no_grad():
        run()
        benchmark.pedantic(run, rounds=30 if GPU else 5, warmup_rounds=3 if GPU else 1)
    benchmark.extra_info.update(backend=backend, B=B, M=M, d=d, d_mem=n)
