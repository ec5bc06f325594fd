"""No Triton kernel computes an address in 32 bits where the op's sizes let it pass 2^31 (compiled for sm_90).

Triton passes an integer argument below 2^31 as int32 and ``tl.program_id`` is int32, so ``f * D`` or an int32 loop
counter overflows silently on tensors of 2^31+ elements. The real op wrappers are called (``backend="triton"``)
through the compile-only driver of ``tests/ops/triton_aot.py``, which here also prints each kernel's Triton IR;
the test reads every 32-bit multiplication and every loop over the sequence length in it.
"""
from __future__ import annotations

import json
import re
import textwrap

import pytest
import torch

from tests.ops.triton_aot import COMPILE_ONLY, has_nvidia_backend, run_compiler_script

SCRIPT = COMPILE_ONLY + textwrap.dedent("""
    import json
    _compile = JITFunction.run

    def _print_ir(self, *args, **kwargs):
        kernel = _compile(self, *args, **kwargs)
        print("TTIR", self.fn.__name__, json.dumps(kernel.asm["ttir"]))
        return kernel

    JITFunction.run = _print_ir
    from babilong_fast.ops import assoc_read, assoc_write, causal_conv1d, rows_layer_norm, segment_embed
    import babilong_fast.kernels.selective_scan as ks

    dt = torch.bfloat16
    B, T, d, n, nu, M, V = 2, 7, 100, 12, 3, 10, 50
    A, z = torch.randn(B, 2 * nu * n, d), torch.rand(B, 2 * nu * n)
    assoc_read(torch.randn(B, T, d, dtype=dt), torch.randn(n, d, dtype=dt), A, z, backend="triton")
    w = [torch.randn(*s, dtype=dt) for s in ((n, d), (d, d), (1, d), (1,))]
    assoc_write(torch.randn(B, M, d, dtype=dt), *w, A, z, backend="triton")
    out = torch.empty(B, M + T + M, d, dtype=dt)
    segment_embed(torch.randint(0, V, (B, T)), torch.randn(V, d, dtype=dt), torch.randn(2 * M + T, d, dtype=dt),
                  out, front=torch.randn(1, M, d), back=torch.randn(B, M, d), backend="triton")
    rows_layer_norm(out, M + T, M, torch.randn(d, dtype=dt), torch.randn(d, dtype=dt), backend="triton")
    causal_conv1d(torch.randn(B, 64, 37, dtype=dt), torch.randn(64, 4, dtype=dt), torch.randn(64, dtype=dt),
                  torch.randn(B, 64, 3, dtype=dt), return_final_state=True, activation="silu", backend="triton")
    dim, N, L = 64, 16, 37
    for kernel in ks.KERNELS:
        Bt = torch.randn(B, 2, N, L, dtype=dt)
        ks.selective_scan_fwd(torch.randn(B, dim, L, dtype=dt), torch.rand(B, dim, L, dtype=dt), -torch.rand(dim, N),
                              Bt, Bt, torch.randn(dim), torch.randn(B, dim, L, dtype=dt), torch.randn(dim), True,
                              torch.randn(B, dim, N), True, kernel=kernel)
""")

# The 32-bit products left, by result name, each bounded below 2^31 by the sizes: 2n (s's row length), j * 2n
# (a feature index f < F = 2 nu n), a weight row's block i_n * BN (< n or d) and its offset o_n * d (below the
# weight's size, which the wrappers keep under 2^31: test_weights_past_int32_are_refused).
BOUNDED = {"p_s", "o_f", "o_n", "b_w"}


def _kernel_irs() -> list[tuple[str, str]]:
    out = run_compiler_script(SCRIPT)
    return [(ln.split(" ", 2)[1], json.loads(ln.split(" ", 2)[2])) for ln in out.splitlines() if ln.startswith("TTIR ")]


# Kernels whose int32 tile loop ``range(0, L, BT)`` would wrap past 2^31 - 1 for L within BT of it:
# selective_scan_fwd runs the step kernel for those lengths (test_tiled_scans_leave_unsafe_lengths_to_step).
TILE_LOOPS = {"_selective_scan_chunk_fwd_kernel", "statewise_scan_fwd_kernel"}


@pytest.mark.skipif(not has_nvidia_backend(), reason="needs Triton's NVIDIA backend (ptxas)")
def test_no_32_bit_offsets_in_triton_kernels():
    """Every 32-bit multiplication is one of the bounded ones (a row index times D in 32 bits overflowed once
    A held 2^31 elements a batch entry, or w_q / w_k / w_v 2^31 in all); only the tiled scans step an int32
    counter by more than 1 up to L."""
    irs = _kernel_irs()
    assert len({name for name, _ in irs}) == 11, [name for name, _ in irs]
    products, loops = [], set()
    for name, ir in irs:
        for line in ir.splitlines():
            m = re.match(r"\s*%(\w+?)(?:_\d+)? = arith\.muli .*: (?:i32|tensor<[^>]*xi32>)", line)
            if m and m.group(1) not in BOUNDED:
                products.append((name, line.strip()))
            m = re.search(r"scf\.for %\w+ = %\w+ to %L step %c(\d+)_i32", line)
            if m and m.group(1) != "1":
                loops.add(name)
    assert not products, products
    assert loops == TILE_LOOPS, loops


def test_tiled_scans_leave_unsafe_lengths_to_step():
    """Lengths just below 2^31 (int32, where t0 + BT wraps) go to the step kernel; others, and 2^31 on (int64), stay."""
    from babilong_fast.kernels import selective_scan as ks

    largest_tile = max(c.BT for k in ks.CANDIDATES for c in ks.CANDIDATES[k](1, 4096, 256) + ks.CANDIDATES[k](8, 1, 1))
    assert largest_tile <= 2**31 - ks.TILED_UNSAFE_L.start
    for kernel in ("chunked", "statewise"):
        for L in (1, 2**31 - 2**16 - 1, 2**31):
            assert ks.kernel_for_length(kernel, L) == kernel
        for L in (2**31 - 2**16, 2**31 - largest_tile, 2**31 - 1):
            assert ks.kernel_for_length(kernel, L) == "step"
    assert ks.kernel_for_length("step", 2**31 - 1) == "step"


@pytest.mark.parametrize("which", ["w_q", "w_k", "w_v"])
def test_weights_past_int32_are_refused(which):
    """The projection kernels' weight offsets are 32-bit: a weight of 2^31 elements is refused before any launch
    (expanded views: nothing is allocated or read)."""
    from babilong_fast.kernels.assoc_read import assoc_query_fwd
    from babilong_fast.kernels.assoc_write import assoc_write_fwd

    big = torch.zeros(1, 1).expand(2**16, 2**15)
    with pytest.raises(ValueError, match=f"{which} has 2147483648 elements"):
        if which == "w_q":
            assoc_query_fwd(torch.zeros(1, 1, 2**15), big)
        else:
            d = 2**15 if which == "w_k" else 2**16
            w_k = big if which == "w_k" else torch.zeros(1, 1).expand(4, d)
            w_v = big if which == "w_v" else torch.zeros(1, 1).expand(d, d)
            assoc_write_fwd(torch.zeros(1, 1, d), w_k, w_v, torch.zeros(1, d), torch.zeros(1), torch.zeros(1, 1, 1),
                            torch.zeros(1, 1), 3, 1e-5, True, False)
