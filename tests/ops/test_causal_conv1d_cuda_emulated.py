"""The CUDA causal conv1d kernel (``csrc/causal_conv1d``) against the float64 reference.

As test_selective_scan_cuda_emulated.py: without a GPU the kernel's source under thread emulation, with the
binding's parameter setup and NaN-filled outputs; on a GPU the compiled kernel. A block covers 1024 steps of
one row, so lengths around 1024 cross block boundaries (each block stages the W-1 inputs before its tile).
"""
from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from tests.ops import cuda_emulation
from tests.ops.test_causal_conv1d import HALF, RTOL, make_inputs, ref64

pytestmark = pytest.mark.skipif(cuda_emulation.skip_reason() is not None, reason=str(cuda_emulation.skip_reason()))
TILE = 128 * 8  # kConvThreads * kConvStepsPerThread


def conv(emu, args, activation=None, return_final_state=True):
    return emu.causal_conv1d_fwd(args["x"], args["weight"], args.get("bias"), args.get("initial_state"),
                                 activation is not None, return_final_state)


def conv_chunked(emu, args, chunk, activation=None):
    x = args["x"]
    state, outs = args.get("initial_state"), []
    for s in range(0, x.shape[-1], chunk):
        out, state = conv(emu, {**args, "x": x[..., s : s + chunk], "initial_state": state}, activation)
        outs.append(out)
    return torch.cat(outs, dim=-1), state


def check(args, out, final, activation, rtol=1e-5):
    want, want_final = ref64(args, activation)
    assert out.dtype == args["x"].dtype and final.dtype == args["x"].dtype
    assert_close("out", want, out, rtol)
    if want_final.numel():
        assert torch.equal(final.double(), want_final), "the state holds raw inputs: exact in any dtype"


# (width, bias, initial state, activation)
CASES = [(4, True, True, "silu"), (4, False, False, None), (2, True, False, "silu"), (3, False, True, None),
         (1, True, True, "silu"), (32, True, True, None)]


@pytest.mark.parametrize("case", [pytest.param(c, id="W{}-bias{}-h0{}-{}".format(*c)) for c in CASES])
@pytest.mark.parametrize("L", [1, 2, 5, TILE - 1, TILE, TILE + 3, 2 * TILE])
def test_emulated_matches_reference(emu, case, L):
    """Every width/bias/state/activation at lengths shorter than the state, around one tile and two."""
    width, bias, h0, activation = case
    args = make_inputs(2, 3, L, width, bias, h0, device="cpu")
    check(args, *conv(emu, args, activation), activation)


@pytest.mark.parametrize("chunk", [1, 2, 7, TILE - 1])
def test_emulated_chunks_carry_state(emu, chunk):
    """Chunks (shorter than the state too) carrying final_state on equal one float64 conv of the sequence."""
    args = make_inputs(1, 2, 2 * TILE + 20 if chunk > 2 else 40, 4, device="cpu")
    check(args, *conv_chunked(emu, args, chunk, "silu"), "silu")


@pytest.mark.parametrize("dtype", HALF)
def test_emulated_half(emu, dtype):
    args = make_inputs(2, 3, TILE + 16, 4, device="cpu", dtype=dtype)
    check(args, *conv(emu, args, "silu"), "silu", RTOL[dtype])


def test_emulated_strided_and_mixed_dtypes(emu):
    """x as half of Mamba's xz (any batch and channel strides), weight and bias in their own dtypes."""
    xz = torch.randn(2, 8, 300)
    args = {"x": xz[:, :4], "weight": torch.randn(4, 4).to(torch.bfloat16), "bias": torch.randn(4).half(),
            "initial_state": torch.randn(2, 4, 3)}
    check(args, *conv(emu, args, "silu"), "silu")


def test_emulated_without_final_state(emu):
    args = make_inputs(1, 2, 30, 4, device="cpu")
    out, final = conv(emu, args, return_final_state=False)
    assert final is None
    assert_close("out", ref64(args)[0], out, 1e-5)


@pytest.mark.parametrize(
    "key,value,match",
    [
        pytest.param("weight", lambda w: torch.randn(w.shape[0], 33), "width", id="width-33"),
        pytest.param("weight", lambda w: w.double(), "weight must be float32", id="weight-dtype"),
        pytest.param("initial_state", lambda s: s.half(), "initial_state must be", id="state-dtype"),
        pytest.param("bias", lambda b: torch.randn(7), "bias must be", id="bias-shape"),
    ],
)
def test_emulated_binding_rejects_bad_input(emu, key, value, match):
    args = make_inputs(2, 3, 6, 4, device="cpu")
    args[key] = value(args[key])
    with pytest.raises(RuntimeError, match=match):
        conv(emu, args)
