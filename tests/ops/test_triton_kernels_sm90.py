"""Every Triton kernel behind the ops compiles for an H100 (sm_90) and ptxas keeps it in registers, without a GPU.

The interpreter that runs the Triton tests here accepts code the GPU compiler may refuse (block shapes, dtypes
of ``tl.where`` / ``tl.dot`` operands, constexpr misuse), and it says nothing about registers. So the real op
wrappers are called, ``backend="triton"``, at GPT-2 small's shapes and at odd small ones, in all three dtypes,
with a stand-in driver that compiles each launch for sm_90 and launches nothing (``tests/ops/triton_aot.py``).
The selective scan's tiled kernels have their own such test (``test_selective_scan_chunked.py``).
"""
from __future__ import annotations

import textwrap

import pytest

from tests.ops.triton_aot import COMPILE_ONLY, has_nvidia_backend, run_compiler_script

OPS_SCRIPT = COMPILE_ONLY + textwrap.dedent("""
    from babilong_fast.ops import assoc_read, assoc_write, causal_conv1d, rows_layer_norm, segment_embed
    import babilong_fast.kernels.causal_conv1d as kc

    import babilong_fast.kernels.assoc_read as kr

    _conv_config = kc.default_config
    kc.default_config = lambda dim, L, interpreter=False: _conv_config(dim, L)  # the GPU's tiles, not the CPU's
    kr._sm_count = lambda device: 132  # an H100's SMs: the read picks its tiles to fill them

    nu, M = 3, 10
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        for B, T, d, n in ((8, 522, 768, 64), (1, 7, 100, 12)):  # GPT-2 small's ARMT segment; odd sizes
            print("CASE", "model" if d == 768 else "odd", dt)
            F = 2 * nu * n
            A, z = torch.randn(B, F, d), torch.rand(B, F)
            assoc_read(torch.randn(B, T, d, dtype=dt), torch.randn(n, d, dtype=dt), A, z, backend="triton")
            w = [torch.randn(*s, dtype=dt) for s in ((n, d), (d, d), (1, d), (1,))]
            for first in (True, False):
                assoc_write(torch.randn(B, M, d, dtype=dt), *w, A, z, first_segment=first, backend="triton")
            V = 50
            out = torch.empty(B, M + T + M, d, dtype=dt)
            segment_embed(torch.randint(0, V, (B, T)), torch.randn(V, d, dtype=dt), torch.randn(2 * M + T, d, dtype=dt),
                          out, front=torch.randn(1, M, d), back=torch.randn(B, M, d), backend="triton")
            rows_layer_norm(out, M + T, M, torch.randn(d, dtype=dt), torch.randn(d, dtype=dt), backend="triton")
        for B in (1, 2):  # smaller read tiles, so that the grid fills the SMs ([64, 64] for half inputs at B=2)
            print("CASE", "model", dt)
            assoc_read(torch.randn(B, 522, 768, dtype=dt), torch.randn(64, 768, dtype=dt), torch.randn(B, 384, 768),
                       torch.rand(B, 384), backend="triton")
        for L in (8192, 37):  # Mamba-130m's inner width and chunk; a short odd chunk
            print("CASE", "model" if L == 8192 else "odd", dt)
            causal_conv1d(torch.randn(1, 1536, L, dtype=dt), torch.randn(1536, 4, dtype=dt),
                          torch.randn(1536, dtype=dt), torch.randn(1, 1536, 3, dtype=dt), return_final_state=True,
                          activation="silu", backend="triton")
""")

KERNELS = {"_assoc_query_fwd_kernel", "_assoc_read_fwd_kernel", "_assoc_write_proj_kernel",
           "_assoc_write_recall_kernel", "_assoc_write_update_kernel", "_segment_embed_fwd_kernel",
           "_rows_layer_norm_fwd_kernel", "_causal_conv1d_fwd_kernel"}


@pytest.mark.skipif(not has_nvidia_backend(), reason="needs Triton's NVIDIA backend (ptxas)")
def test_op_kernels_compile_for_sm90():
    """All compile; at the models' shapes none spills registers. (At the odd sizes, Triton 3.8 spills 72-88 bytes
    in the write's update kernel, whose tiles are sized for d = 768; Triton 3.6, the GPU image's, none.)"""
    case, stats = None, []
    for line in run_compiler_script(OPS_SCRIPT).splitlines():
        if line.startswith("CASE "):
            case = line.split()[1:]
        elif line.startswith("STATS "):
            name, _, warps, _, regs, _, spills = line.split()[1:]
            stats.append((case[0], case[1], name, int(warps), int(regs), int(spills)))
    assert {s[2] for s in stats} == KERNELS, stats
    # per dtype: 2 shapes x (2 read, 2 + 3 write, 2 segment io), the batch-1 and batch-2 reads (2 each), 2 convs
    assert len(stats) == 3 * (2 * 9 + 4 + 2), stats
    spilling = [s for s in stats if s[0] == "model" and s[5] > 0]
    assert not spilling, spilling
