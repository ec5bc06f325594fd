"""The CUDA selective scan kernel (``csrc/selective_scan``) against the float64 reference.

Without a GPU the kernel's own source runs under thread emulation (``tests/ops/cuda_emulation``): one host
thread per CUDA thread, real barriers for ``__syncthreads`` and the warp shuffles, the binding's parameter
setup, and outputs NaN-filled first so an unwritten element fails. On a GPU the same cases run the compiled
kernel (inputs copied to the GPU, so strided views arrive contiguous there). Tiles are 1024 steps, so lengths
around 1024 and 2048 cross tile boundaries.
"""
from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close, assert_same_nonfinite
from tests.ops import cuda_emulation
from tests.ops.test_selective_scan import (
    HALF,
    LAYOUTS,
    OPTIONS,
    RTOL,
    make_inputs,
    ref64,
    time_slice,
    with_infinite_decay,
    with_infinite_input,
)

pytestmark = pytest.mark.skipif(cuda_emulation.skip_reason() is not None, reason=str(cuda_emulation.skip_reason()))
TILE = 128 * 8  # kScanThreads * kScanStepsPerThread
ARG_ORDER = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def scan(emu, args, return_last_state=True):
    pos = [args.get(k) for k in ARG_ORDER]
    return emu.selective_scan_fwd(*pos, bool(args.get("delta_softplus", False)), return_last_state)


def scan_chunked(emu, args, chunk):
    L = args["u"].shape[-1]
    state, outs = args.get("initial_state"), []
    for s in range(0, L, chunk):
        piece = time_slice(args, s, s + chunk)
        piece["initial_state"] = state
        out, state = scan(emu, piece)
        outs.append(out)
    return torch.cat(outs, dim=-1), state


def check(args, out, last, rtol=1e-5):
    """``out`` within ``rtol``; the float32 state, computed from the inputs' exact values, within 1e-5 always."""
    want, want_last = ref64(args)
    assert out.dtype == args["u"].dtype and last.dtype == torch.float32
    assert_close("out", want, out, rtol)
    assert_close("last_state", want_last, last, 1e-5)


@pytest.mark.parametrize("opt", OPTIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_emulated_matches_reference(emu, layout, opt):
    """Two tiles, the second partial; every B/C layout with every option set."""
    args = make_inputs(2, 4, TILE + 300, 5, layout, OPTIONS[opt])
    check(args, *scan(emu, args))


@pytest.mark.parametrize("L", [1, 31, TILE - 1, TILE, TILE + 1, 2 * TILE])
def test_emulated_tile_edges(emu, L):
    """Lengths inside one warp, one step short of / at / past a tile, and exactly two tiles. Rows of an odd L are
    not 16-byte aligned (element loads); of L = 1024, 2048 they are (vector loads)."""
    args = make_inputs(1, 2, L, 3, "grouped", groups=2, layout_c="varying")
    check(args, *scan(emu, args))


@pytest.mark.parametrize("chunk", [7, TILE - 3, TILE + 5])
def test_emulated_chunks_carry_state(emu, chunk):
    """Chunks carrying last_state into initial_state equal one float64 scan of the whole sequence."""
    args = make_inputs(1, 3, 2 * TILE + 50, 4, "varying")
    check(args, *scan_chunked(emu, args, chunk))


def test_emulated_single_steps_carry_state(emu):
    args = make_inputs(1, 2, 12, 3, "grouped", groups=2)
    check(args, *scan_chunked(emu, args, 1))


@pytest.mark.parametrize("N", [1, 16, 256])
def test_emulated_state_sizes(emu, N):
    """One state, Mamba's 16 and the largest the kernel holds (256, more than its 128 threads)."""
    args = make_inputs(1, 2, 70, N, "varying", layout_c="invariant")
    check(args, *scan(emu, args))


@pytest.mark.parametrize("chunk", [7, 40])
def test_emulated_infinite_decay(emu, chunk):
    """A = -inf, and -3e38 (whose A log2(e) is -inf): the padded steps past L stay identities (their dt = 0 gave
    0 * -inf = NaN in the last state), in calls of 7 steps and of all 40."""
    args = with_infinite_decay(make_inputs(1, 4, 40, 5, "invariant"))
    check(args, *scan_chunked(emu, args, chunk))


@pytest.mark.parametrize("with_z", [False, True], ids=["plain", "z"])
def test_emulated_infinite_input(emu, with_z):
    """An infinite u or delta: +inf outputs as in the reference; without D, no 0 * u (NaN for u = inf)."""
    args = with_infinite_input(2, 4, 40, 3, "varying", with_z)
    want, want_last = ref64(args)
    assert torch.isinf(want).any() and torch.isinf(want_last).any()
    out, last = scan(emu, args)
    assert_same_nonfinite("out", want, out, 1e-5)
    assert_same_nonfinite("last_state", want_last, last, 1e-5)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_emulated_half(emu, dtype, layout):
    args = make_inputs(2, 4, TILE + 40, 5, layout, dtype=dtype)
    check(args, *scan(emu, args), rtol=RTOL[dtype])


def test_emulated_mixed_dtypes_and_strides(emu):
    """Each tensor in its own dtype, and strided views (stride 1 along L only), read as they are."""
    args = make_inputs(2, 4, 300, 5, "grouped")
    big = torch.randn(3, 8, 310)
    args["u"] = big[1:, ::2, 5:305]  # batch stride 2480, channel stride 620
    args["delta"] = (0.5 * torch.rand(2, 4, 600))[..., ::2].contiguous().to(torch.float16)
    args["z"] = args["z"].to(torch.bfloat16)
    args["B"] = torch.randn(2, 2, 10, 300)[:, :, ::2].to(torch.bfloat16)  # n stride 600
    args["C"] = args["C"].to(torch.float16)
    assert args["u"].stride(-1) == 1 and not args["u"].is_contiguous()
    out, last = scan(emu, args)
    assert out.dtype == torch.float32
    want, want_last = ref64(args)
    assert_close("out", want, out, 2e-3)  # inputs rounded to half are the inputs: only the sums may differ
    assert_close("last_state", want_last, last, 2e-3)


def test_emulated_without_last_state(emu):
    args = make_inputs(1, 2, 40, 3, "varying")
    out, last = scan(emu, args, return_last_state=False)
    assert last is None
    assert_close("out", ref64(args)[0], out, 1e-5)


@pytest.mark.parametrize(
    "key,value,match",
    [
        pytest.param("A", lambda a: a.double(), "A must be", id="A-dtype"),
        pytest.param("A", lambda a: torch.zeros(a.shape[0], 257) - 1, "N = A.size", id="N-too-large"),
        pytest.param("D", lambda a: torch.randn(5), "D must be", id="D-shape"),
        pytest.param("initial_state", lambda a: torch.randn(2, 3, 4).transpose(1, 2), "initial_state must be",
                     id="h0-view"),
        pytest.param("u", lambda a: a.to(torch.int32), "u must be float32", id="u-dtype"),
        pytest.param("B", lambda b: b[..., :5], "time-varying B must be", id="B-length"),
        pytest.param("C", lambda c: torch.randn(2, 3, 3, 6), "groups G = 3 must divide", id="C-groups"),
        pytest.param("B", lambda b: torch.randn(2, 6, 3).transpose(1, 2), "stride 1 along L", id="B-stride"),
        pytest.param("C", lambda c: torch.randn(4, 2), "time-invariant C must be", id="C-invariant-shape"),
    ],
)
def test_emulated_binding_rejects_bad_input(emu, key, value, match):
    """The binding's own checks (shared with the CUDA binding), for callers that bypass the op's."""
    args = make_inputs(2, 4, 6, 3, "varying")
    args[key] = value(args[key])
    with pytest.raises(RuntimeError, match=match):
        scan(emu, args)

