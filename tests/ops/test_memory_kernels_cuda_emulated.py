"""The CUDA kernels of the ARMT/RMT memory ops (``csrc/assoc_write``, ``csrc/segment_io``) against float64
references. Without a GPU: the kernels' and launchers' own source under thread emulation
(tests/ops/cuda_emulation), with the bindings' host code (checks, scratch, launch order); on a GPU the same
cases run the compiled kernels.
"""
from __future__ import annotations

import pytest
import torch

from babilong_fast.ops import rows_layer_norm_ref
from tests.helpers import assert_close, assert_same_nonfinite
from tests.ops import cuda_emulation
from tests.ops.test_assoc_write import CUDA_DTYPES, CUDA_RULES, CUDA_SHAPES, make_inputs, nan_inputs, ref64
from tests.ops.test_segment_io import (
    DTYPES,
    EMBED_SHAPES,
    LN_EPS,
    ROWS_SHAPES,
    RTOL,
    embed_ref64,
    ln_inputs,
    make_embed,
)

pytestmark = pytest.mark.skipif(cuda_emulation.skip_reason() is not None, reason=str(cuda_emulation.skip_reason()))
# ARMT's GPT-2 shapes (d = 768, d_mem = 64): about 5 s each emulated at batch 1 (hundreds of blocks of 256
# threads), 40 s at batch 8, so only batch 1 runs here; batch > 1 grids are covered by the small shapes.
SMALL_SHAPES = [p for p in CUDA_SHAPES if p.values[0][2] != 768]
GPT2_SHAPES = [p for p in CUDA_SHAPES if p.values[0][2] == 768]


def check_write(emu, shape, dtype, first, correction):
    B, M, d, n, nu, Ba = shape
    args = make_inputs(B, M, d, n, nu, batch_state=Ba, z_scale=0.05)
    args = (args[0].to(dtype), *args[1:])
    before = [t.clone() for t in args]
    A_new, z_new = emu.assoc_write_fwd(*args, nu, 1e-5, correction, first)
    assert A_new.dtype == z_new.dtype == torch.float32
    assert A_new.shape == (B, 2 * nu * n, d) and z_new.shape == (B, 2 * nu * n)
    A_want, z_want = ref64(args, nu, correction=correction, first_segment=first)
    assert_close("A", A_want, A_new, 1e-5)
    assert_close("z", z_want, z_new, 1e-5)
    assert all(torch.equal(t, b) for t, b in zip(args, before, strict=True)), "inputs were modified"


@pytest.mark.parametrize("first,correction", CUDA_RULES)
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_emulated_assoc_write(emu, shape, dtype, first, correction):
    """Several row tiles (M = 17, 33), F and d off the 32 x 64 tiles, the DPFP roll wrapping (nu > 2 d_mem),
    a broadcast state (A/z batch 1), mem in each dtype; every write rule."""
    check_write(emu, shape, dtype, first, correction)


@pytest.mark.parametrize("first,correction", CUDA_RULES)
@pytest.mark.parametrize("shape", GPT2_SHAPES[:1])
def test_emulated_assoc_write_gpt2(emu, shape, first, correction):
    check_write(emu, shape, torch.float32, first, correction)


@pytest.mark.parametrize("first,correction", CUDA_RULES)
@pytest.mark.parametrize("where", ["mem", "z"])
def test_emulated_assoc_write_keeps_nan(emu, where, first, correction):
    """NaN reaches the new state exactly where it does in the reference (relu(k) and gamma's clamp keep it)."""
    args = nan_inputs(where)
    A_new, z_new = emu.assoc_write_fwd(*args, 3, 1e-5, correction, first)
    A_want, z_want = ref64(args, 3, correction=correction, first_segment=first)
    assert z_want.isnan().any()
    assert_same_nonfinite("A", A_want, A_new, 1e-5)
    assert_same_nonfinite("z", z_want, z_new, 1e-5)


def test_emulated_assoc_write_rejects_bad_input(emu):
    args = make_inputs(2, 3, 40, 5, 3)
    with pytest.raises(RuntimeError, match="w_v must have shape"):
        emu.assoc_write_fwd(args[0], args[1], args[2][:, :39].contiguous(), *args[3:], 3, 1e-5, True, False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", EMBED_SHAPES)
def test_emulated_segment_embed(emu, dtype, shape):
    ids, wte, wpe, front, back, out = make_embed(*shape, dtype, "cpu")
    out.fill_(float("nan"))  # the kernel must write every element
    emu.segment_embed_fwd(ids, wte, wpe, out, front, back)
    assert_close("out", embed_ref64(ids, wte, wpe, front, back), out, RTOL[dtype])


def test_emulated_segment_embed_rounds_once_and_bad_ids(emu):
    """bf16 buffer, fp32 memory: the float32 sum rounded once; ids outside the vocabulary give NaN rows."""
    ids, wte, wpe, front, back, out = make_embed(2, 5, 4, 4, 64, 2, torch.bfloat16, "cpu")
    emu.segment_embed_fwd(ids, wte, wpe, out, front, back)
    assert torch.equal(out, embed_ref64(ids, wte, wpe, front, back).float().to(torch.bfloat16))
    ids, wte, wpe, front, back, out = make_embed(2, 6, 2, 2, 24, 1, torch.float32, "cpu")
    ids[0, 1], ids[1, 4] = -1, wte.shape[0]
    emu.segment_embed_fwd(ids, wte, wpe, out, front, back)
    bad = torch.zeros(2, 10, dtype=torch.bool)
    bad[0, 3] = bad[1, 6] = True
    assert torch.equal(torch.isnan(out).all(-1), bad) and not torch.isnan(out[~bad]).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROWS_SHAPES)
def test_emulated_rows_layer_norm(emu, dtype, shape):
    B, T, start, count, d = shape
    x, w, b = ln_inputs(B, T, d, "cpu", dtype)
    out = torch.full((B, count, d), float("nan"))
    emu.rows_layer_norm_fwd(x, start, count, w, b, LN_EPS, out)
    want = rows_layer_norm_ref(x.double(), start, count, w.double(), b.double(), LN_EPS)
    assert_close("out", want, out, 2e-6)


def test_emulated_rows_layer_norm_rejects_bad_rows(emu):
    x, w, b = ln_inputs(2, 8, 16, "cpu", torch.float32)
    with pytest.raises(RuntimeError, match="rows start"):
        emu.rows_layer_norm_fwd(x, 6, 3, w, b, 1e-5, torch.empty(2, 3, 16))
