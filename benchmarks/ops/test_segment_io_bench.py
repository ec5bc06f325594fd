"""Micro-benchmarks of the segment memory read/write ops against the concatenation they replace.

    python -m pytest benchmarks/ops/test_segment_io_bench.py --benchmark-only

``segment_embed`` rows time ``[mem; wte(ids); mem] + wpe`` into a preallocated buffer per backend; the
``concat`` row is what ``RMT.segment_forward`` does (``torch.cat`` then HF's ``inputs_embeds + wpe``).
``rows_layer_norm`` rows time ``ln_f`` on the M write rows; the ``full_ln_f`` row is ``ln_f`` on all T rows, then
the slice (RMT's old path).
"""
from __future__ import annotations

import pytest
import torch

from babilong_fast.ops import rows_layer_norm, segment_embed
from timed_here import GPU, skip_unless_timed_here

# (B, L, M, d, V): RMT on GPT-2 small (segment 512, 16 memory tokens); a tiny CPU shape.
SHAPES = {"rmt-gpt2": (8, 512, 16, 768, 50257)} if GPU else {"small": (2, 128, 8, 256, 1000)}
DEVICE = "cuda" if GPU else "cpu"


def _sync():
    if GPU:
        torch.cuda.synchronize()


def _time(benchmark, run):
    with torch.no_grad():
        run()
        benchmark.pedantic(run, rounds=50 if GPU else 5, warmup_rounds=5 if GPU else 1)


def _embed_inputs(shape, dtype):
    B, L, M, d, V = shape
    ids = torch.randint(0, V, (B, L), device=DEVICE)
    wte = torch.randn(V, d, device=DEVICE).to(dtype)
    wpe = torch.randn(1024, d, device=DEVICE).to(dtype)
    mem = torch.randn(B, M, d, device=DEVICE)  # the fp32 memory state
    out = torch.empty(B, L + 2 * M, d, device=DEVICE, dtype=dtype)
    return ids, wte, wpe, mem, out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16] if GPU else [torch.float32], ids=str)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch", "concat"])
def test_segment_embed(benchmark, backend, shape, dtype):
    skip_unless_timed_here("torch" if backend == "concat" else backend, dtype)
    ids, wte, wpe, mem, out = _embed_inputs(shape, dtype)
    T = out.shape[1]
    pos = torch.arange(T, device=DEVICE)

    def run():
        if backend == "concat":
            m = mem.to(dtype)
            torch.cat([m, torch.nn.functional.embedding(ids, wte), m], 1) + torch.nn.functional.embedding(pos, wpe)
        else:
            segment_embed(ids, wte, wpe, out, front=mem, back=mem, backend=backend)
        _sync()

    _time(benchmark, run)
    B, L, M, d, _ = shape
    benchmark.extra_info.update(op="segment_embed", backend=backend, B=B, L=L, M=M, d=d, dtype=str(dtype), rows=B * T)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16] if GPU else [torch.float32], ids=str)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch", "full_ln_f"])
def test_rows_layer_norm(benchmark, backend, shape, dtype):
    skip_unless_timed_here("torch" if backend == "full_ln_f" else backend, dtype)
    B, L, M, d, _ = shape
    T = L + 2 * M
    x = torch.randn(B, T, d, device=DEVICE).to(dtype)
    ln = torch.nn.LayerNorm(d, device=DEVICE, dtype=dtype)
    out = torch.empty(B, M, d, device=DEVICE)

    def run():
        if backend == "full_ln_f":
            ln(x)[:, L + M :].float()
        else:
            rows_layer_norm(x, L + M, M, ln.weight, ln.bias, ln.eps, out, backend=backend)
        _sync()

    _time(benchmark, run)
    benchmark.extra_info.update(op="rows_layer_norm", backend=backend, B=B, T=T, M=M, d=d, dtype=str(dtype))
