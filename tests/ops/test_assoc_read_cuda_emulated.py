"""The CUDA kernels of the ARMT associative read (``csrc/assoc_read``: FFMA, and ``csrc/assoc_read_tc``: 3xTF32
``mma.sync`` on tensor cores) against the float64 reference, without a GPU: the kernels' and launchers' own
source under thread emulation (tests/ops/cuda_emulation; the tensor-core instructions emulated from the PTX
ISA), with the bindings' host code (checks, split plans, scratch, launch order). The emulated device has an
H100's 132 SMs unless a case asks for one (then the reductions over d and F split less or not at all). On a GPU,
tests/ops/test_assoc_read_tc.py runs the compiled kernels on the same kinds of shapes.
"""
from __future__ import annotations

import pytest
import torch

from babilong_fast.ops import assoc_read_ref
from tests.helpers import assert_close, assert_same_nonfinite
from tests.ops import cuda_emulation

pytestmark = [
    pytest.mark.skipif(cuda_emulation.skip_reason() is not None, reason=str(cuda_emulation.skip_reason())),
    pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, test_assoc_read_tc.py runs the real kernels"),
]

VARIANTS = ("assoc_read_fwd", "assoc_read_fwd_tc")
RTOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
DTYPES = [pytest.param(t, id=str(t).removeprefix("torch.")) for t in RTOL]
# (B, T, d, n, nu, batch of A): odd T and d (d % 4 != 0: A read one float at a time; odd d: no pair stores),
# T past one FFMA tile (32 tokens) and one tensor-core tile (128), d past one column tile (128), the DPFP roll
# wrapping (nu > 2n), A broadcast over the batch (tiles then span batch boundaries).
SHAPES = [
    pytest.param(s, id="B{}-T{}-d{}-n{}-nu{}-Ab{}".format(*s))
    for s in [(1, 5, 17, 13, 1, 1), (2, 37, 136, 8, 3, 2), (3, 50, 70, 5, 2, 1), (2, 130, 200, 13, 1, 2),
              (2, 9, 24, 2, 5, 2)]
]
SMS = [pytest.param(132, id="sms132"), pytest.param(1, id="sms1")]


def make_inputs(B, T, d, n, nu, Ba, dtype=torch.float32):
    F = 2 * nu * n
    h = torch.randn(B, T, d).to(dtype)
    w_q = torch.randn(n, d) / d**0.5
    A = torch.randn(Ba, F, d)
    z = torch.rand(Ba, F) + 0.05
    return h, w_q, A, z


def check(emu, name, args, nu, rtol, num_sms=132):
    h = args[0]
    before = [t.clone() for t in args]
    out = getattr(emu, name)(*args, nu, 1e-5, num_sms)
    assert out.dtype == h.dtype and out.shape == h.shape
    ref = assoc_read_ref(*(t.double() for t in args), nu)
    assert_close(f"{name} out", ref, out, rtol)
    if h.dtype == torch.float32:  # the read term alone (h dominates out)
        assert_close(f"{name} read term", ref - h.double(), out.double() - h.double(), 10 * rtol)
    assert all(torch.equal(t, b) for t, b in zip(args, before, strict=True)), "inputs were modified"


@pytest.mark.parametrize("num_sms", SMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", VARIANTS)
def test_emulated_assoc_read(emu, name, shape, dtype, num_sms):
    torch.manual_seed(0)
    B, T, d, n, nu, Ba = shape
    check(emu, name, make_inputs(B, T, d, n, nu, Ba, dtype), nu, RTOL[dtype], num_sms)


@pytest.mark.parametrize("name", VARIANTS)
def test_emulated_assoc_read_gpt2(emu, name):
    """ARMT on GPT-2: d = 768, d_mem = 64, nu = 3 (F = 384)."""
    torch.manual_seed(0)
    check(emu, name, make_inputs(1, 40, 768, 64, 3, 1), 3, 1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_emulated_assoc_read_large_values(emu, name):
    """A state 1e3 times larger and a tiny key scale: the 3xTF32 split must stay relative, not absolute."""
    torch.manual_seed(0)
    h, w_q, A, z = make_inputs(2, 20, 96, 16, 3, 2)
    check(emu, name, (h, w_q * 1e-2, A * 1e3, z), 3, 1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_emulated_assoc_read_keeps_nan(emu, name):
    """A NaN in one token's h makes that token's whole read NaN, as in the reference (relu must keep NaN; fmaxf
    returns the 0)."""
    torch.manual_seed(0)
    h, w_q, A, z = make_inputs(2, 37, 40, 5, 3, 2)
    h[1, 20, 7] = float("nan")
    out = getattr(emu, name)(h, w_q, A, z, 3, 1e-5, 132)
    assert out[1, 20].isnan().all()
    assert_same_nonfinite(f"{name} out", assoc_read_ref(h.double(), w_q.double(), A.double(), z.double(), 3), out,
                            1e-5)


def test_emulated_assoc_read_large_smem(emu):
    """n = 192: the FFMA kernel's dynamic shared memory alone passes CUDA's default 48 KB, which the launcher
    must raise (the emulated launch refuses it otherwise)."""
    torch.manual_seed(0)
    check(emu, "assoc_read_fwd", make_inputs(1, 5, 17, 192, 1, 1), 1, 1e-5, num_sms=1)


def test_emulated_assoc_read_tc_too_large_n(emu):
    """The tensor-core kernel's q tile lives in shared memory: past sm_90's opt-in maximum it must say so."""
    args = make_inputs(1, 3, 8, 320, 1, 1)
    with pytest.raises(RuntimeError, match="assoc_read_fwd_tc: n = 320 needs .* bytes of shared memory"):
        emu.assoc_read_fwd_tc(*args, 1, 1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_emulated_assoc_read_rejects_bad_input(emu, name):
    h, w_q, A, z = make_inputs(2, 5, 16, 4, 3, 2)
    fn = getattr(emu, name)
    with pytest.raises(RuntimeError, match=f"{name}: A must have shape"):
        fn(h, w_q, A[:, :-1].contiguous(), z, 3)
    with pytest.raises(RuntimeError, match=f"{name}: z must be contiguous"):
        fn(h, w_q, A, torch.rand(24, 2).t(), 3)
    with pytest.raises(RuntimeError, match=f"{name}: h must be float32, bfloat16 or float16"):
        fn(h.double(), w_q, A, z, 3)


@pytest.mark.parametrize("name", VARIANTS)
def test_emulated_assoc_read_empty(emu, name):
    h, w_q, A, z = make_inputs(2, 0, 16, 4, 3, 2)
    assert getattr(emu, name)(h, w_q, A, z, 3).shape == (2, 0, 16)
