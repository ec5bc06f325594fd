from __future__ import annotations

import pytest
import torch

from babilong_fast.ops import AssocRead, assoc_read, assoc_read_ref
from tests.helpers import assert_close, assert_same_nonfinite, backend_params, dtype_params, requires_ext

RTOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
DTYPES = dtype_params(RTOL)

# (B, T, d, d_mem, nu): odd T and d, B = 1 and B > 1, a single token, ARMT's GPT-2 shape.
SHAPES = [
    pytest.param(s, id="B{}-T{}-d{}-n{}-nu{}".format(*s))
    for s in [(1, 1, 64, 64, 3), (2, 37, 100, 5, 3), (1, 70, 130, 24, 2), (3, 65, 40, 16, 1), (1, 3, 33, 3, 9),
              (2, 19, 36, 40, 2)]  # last: 2n = 80 in two chunks of i, the second partial
]


def make_inputs(B, T, d, n, nu, device, batch_a=None, scale_state=1.0):
    F = 2 * nu * n
    Ba = B if batch_a is None else batch_a
    h = torch.randn(B, T, d, device=device)
    w_q = torch.randn(n, d, device=device) / d**0.5
    A = torch.randn(Ba, F, d, device=device) * scale_state
    z = (torch.rand(Ba, F, device=device) + 0.05) * scale_state
    return h, w_q, A, z


def ref64(h, w_q, A, z, nu):
    return assoc_read_ref(h.double(), w_q.double(), A.double(), z.double(), nu)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_assoc_read(backend, device, dtype, shape):
    B, T, d, n, nu = shape
    h, w_q, A, z = make_inputs(B, T, d, n, nu, device)
    h = h.to(dtype)
    out = assoc_read(h, w_q, A, z, nu=nu, backend=backend)
    assert out.dtype == dtype and out.device == h.device
    assert_close("out", ref64(h, w_q, A, z, nu), out, RTOL[dtype])


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_assoc_read_gpt2_shape(backend, device, dtype):
    """ARMT on GPT-2: T = 512 tokens + 10 memory tokens, d = 768, d_mem = 64 (the launch configs used in practice)."""
    h, w_q, A, z = make_inputs(2, 522, 768, 64, 3, device)
    h = h.to(dtype)
    assert_close("out", ref64(h, w_q, A, z, 3), assoc_read(h, w_q, A, z, backend=backend), RTOL[dtype])


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 70, 130, 24, 2), (2, 522, 768, 64, 3)], ids=["odd", "gpt2"])
def test_assoc_read_weights_in_h_dtype(backend, device, dtype, shape):
    """w_q in h's dtype, as in a bf16 / fp16 model (the Triton query projection then runs a half-precision dot)."""
    B, T, d, n, nu = shape
    h, w_q, A, z = make_inputs(B, T, d, n, nu, device)
    h, w_q = h.to(dtype), w_q.to(dtype)
    assert_close("out", ref64(h, w_q, A, z, nu), assoc_read(h, w_q, A, z, nu=nu, backend=backend), RTOL[dtype])


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_assoc_read_keeps_nan_as_reference(backend, device, dtype):
    """A NaN in one token's h (an overflowed half-precision layer, say) makes that token's whole read NaN, as in the
    reference, and no other: relu(q) must keep NaN as torch.relu does (fmaxf and tl.maximum return the 0)."""
    h, w_q, A, z = make_inputs(2, 37, 100, 5, 3, device)
    h = h.to(dtype)
    h[1, 20, 7] = float("nan")
    out = assoc_read(h, w_q, A, z, backend=backend)
    assert out[1, 20].isnan().all()
    assert_same_nonfinite("out", ref64(h, w_q, A, z, 3), out, RTOL[dtype])


@pytest.mark.triton
@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[0] == "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_query_is_float32_exact(backend, device, dtype):
    """The Triton query kernel's s = [relu(q), relu(-q)], q = h w_q^T, matches float64 within 1e-5 for every dtype:
    products of two bf16 or two fp16 values are exact in float32, so the half-precision dot loses nothing."""
    from babilong_fast.kernels.assoc_read import assoc_query_fwd

    torch.manual_seed(3)
    h = torch.randn(2, 37, 300, device=device).to(dtype)
    w_q = (torch.randn(24, 300, device=device) / 17).to(dtype)
    q = h.double() @ w_q.double().T
    assert_close("s", torch.cat([q.clamp(min=0), (-q).clamp(min=0)], -1), assoc_query_fwd(h, w_q), 1e-5)


@pytest.mark.triton
@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[0] == "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_read_tiles_for_small_grids(backend, device, dtype):
    """On a GPU a grid with fewer programs than SMs takes smaller tiles (batch 1: T = 522 on an H100's 132 SMs);
    each tile the choice can make gives the float64 result, including [64, 64] for half inputs."""
    from babilong_fast.kernels.assoc_read import assoc_read_fwd, default_config

    big, b1 = default_config(522, 768, 64, dtype, B=8, sms=132), default_config(522, 768, 64, dtype, B=1, sms=132)
    assert big == default_config(522, 768, 64, dtype) and (big.BT, big.BD) == (64, 128)
    assert (b1.BT, b1.BD) == ((32, 32) if dtype == torch.float32 else (64, 32))
    h, w_q, A, z = make_inputs(1, 70, 130, 24, 2, device)
    h = h.to(dtype)
    ref = ref64(h, w_q, A, z, 2)
    for bt, bd, warps in ((32, 32, 4), (64, 32, 8), (64, 64, 8)):
        config = big._replace(BT=bt, BD=bd, num_warps=warps)
        assert_close(f"out {config}", ref, assoc_read_fwd(h, w_q, A, z, 2, 1e-5, config=config), RTOL[dtype])


@pytest.mark.parametrize("backend,device", backend_params())
def test_assoc_read_broadcast_state(backend, device):
    h, w_q, A, z = make_inputs(3, 19, 72, 8, 3, device, batch_a=1)
    assert_close("out", ref64(h, w_q, A, z, 3), assoc_read(h, w_q, A, z, backend=backend), 1e-5)


@pytest.mark.parametrize("backend,device", backend_params())
def test_assoc_read_first_segment_state(backend, device):
    """Empty memory (A = 0, z = 0, ARMT's first segment): the read adds nothing."""
    h, w_q, A, z = make_inputs(2, 21, 48, 8, 3, device)
    out = assoc_read(h, w_q, torch.zeros_like(A), torch.zeros_like(z), backend=backend)
    assert_close("out", h, out, 1e-7)


@pytest.mark.parametrize("backend,device", backend_params())
def test_assoc_read_small_denominator(backend, device):
    """A nearly empty normaliser (one write of a tiny key) stresses the eps in the denominator."""
    h, w_q, A, z = make_inputs(2, 17, 40, 4, 3, device, scale_state=1e-4)
    assert_close("out", ref64(h, w_q, A, z, 3), assoc_read(h, w_q, A, z, backend=backend), 1e-5)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="float32"),
                                   pytest.param(torch.bfloat16, id="bfloat16")])
def test_assoc_read_grad(backend, device, dtype):
    B, T, d, n, nu = 2, 23, 40, 8, 3
    h, w_q, A, z = make_inputs(B, T, d, n, nu, device)
    h = h.to(dtype)
    grad_out = torch.randn(B, T, d, device=device)
    leaves = [t.clone().requires_grad_() for t in (h, w_q, A, z)]
    assoc_read(*leaves, nu=nu, backend=backend).float().backward(grad_out)
    leaves64 = [t.detach().double().requires_grad_() for t in (h, w_q, A, z)]
    assoc_read_ref(*leaves64, nu).backward(grad_out.double())
    for name, got, want in zip(("h", "w_q", "A", "z"), leaves, leaves64, strict=True):
        assert_close(f"grad {name}", want.grad, got.grad, 1e-5 if dtype == torch.float32 else 2e-2)


def test_assoc_read_ref_is_float32_under_autocast():
    """bf16 autocast must not turn the reference's float32 products (q, phi A, phi z) into bf16 ones."""
    h, w_q, A, z = make_inputs(2, 19, 40, 8, 3, "cpu")
    h = h.to(torch.bfloat16)
    want = assoc_read(h, w_q, A, z, backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = assoc_read(h, w_q, A, z, backend="torch")
    assert torch.equal(got, want)
    leaves = [t.clone().requires_grad_() for t in (h, w_q, A, z)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = assoc_read_ref(*leaves, 3)
    out.float().sum().backward()  # outside, as torch.autocast's docs ask
    leaves32 = [t.clone().requires_grad_() for t in (h, w_q, A, z)]
    assoc_read_ref(*leaves32, 3).float().sum().backward()
    for name, got_t, want_t in zip(("h", "w_q", "A", "z"), leaves, leaves32, strict=True):
        assert torch.equal(got_t.grad, want_t.grad), name


def test_assoc_read_module():
    mod = AssocRead(48, d_mem=8, nu=3)
    h, _, A, z = make_inputs(2, 9, 48, 8, 3, "cpu")
    assert_close("out", ref64(h, mod.W_q.weight, A, z, 3), mod(h, A, z), 1e-5)
    assert "d_mem=8" in repr(mod)


def test_assoc_read_empty_sequence():
    h, w_q, A, z = make_inputs(2, 0, 16, 4, 3, "cpu")
    assert assoc_read(h, w_q, A, z).shape == (2, 0, 16)


def _bad(**overrides):
    h, w_q, A, z = make_inputs(2, 5, 16, 4, 3, "cpu")
    args = {"h": h, "w_q": w_q, "A": A, "z": z, "nu": 3}
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    "overrides,exc,match",
    [
        pytest.param({"h": torch.randn(5, 16)}, ValueError, "h must be 3-D", id="h-rank"),
        pytest.param({"h": torch.randn(2, 5, 16).double()}, TypeError, "h must have dtype", id="h-dtype"),
        pytest.param({"h": torch.randn(2, 16, 5).transpose(1, 2)}, ValueError, "h must be contiguous", id="h-view"),
        pytest.param({"w_q": torch.randn(4, 17)}, ValueError, "w_q must have shape", id="w_q-shape"),
        pytest.param({"w_q": torch.randn(4)}, ValueError, "w_q must be 2-D", id="w_q-rank"),
        pytest.param({"w_q": torch.randn(0, 16), "A": torch.randn(2, 0, 16), "z": torch.randn(2, 0)}, ValueError,
                     "d_mem >= 1", id="d_mem-zero"),  # the CUDA kernel refuses it: every backend does
        pytest.param({"A": torch.randn(3, 24, 16)}, ValueError, "A's batch size", id="A-batch"),
        pytest.param({"A": torch.randn(2, 23, 16)}, ValueError, "A must have shape", id="A-shape"),
        pytest.param({"A": torch.randn(2, 24, 16).double()}, TypeError, "A must have dtype float32", id="A-dtype"),
        pytest.param({"A": torch.randn(2, 16, 24).transpose(1, 2)}, ValueError, "A must be contiguous", id="A-view"),
        pytest.param({"z": torch.randn(2, 24).half()}, TypeError, "z must have dtype float32", id="z-dtype"),
        pytest.param({"z": torch.randn(1, 24)}, ValueError, "z must have shape", id="z-batch"),
        pytest.param({"z": torch.randn(2, 24, device="meta")}, ValueError, "one device", id="z-device"),
        pytest.param({"nu": 0}, ValueError, "nu must be an integer >= 1", id="nu-zero"),
        pytest.param({"nu": 2.5}, ValueError, "nu must be an integer >= 1", id="nu-float"),
        pytest.param({"eps": 0.0}, ValueError, "eps must be a finite number > 0", id="eps-zero"),
        pytest.param({"eps": float("inf")}, ValueError, "eps must be a finite number > 0", id="eps-inf"),
        pytest.param({"eps": float("nan")}, ValueError, "eps must be a finite number > 0", id="eps-nan"),
        pytest.param({"h": [[1.0]]}, TypeError, "h must be a torch.Tensor", id="h-list"),
    ],
)
def test_assoc_read_bad_input(overrides, exc, match):
    args = _bad(**overrides)
    eps = args.pop("eps", 1e-5)
    with pytest.raises(exc, match=match):
        assoc_read(args["h"], args["w_q"], args["A"], args["z"], nu=args["nu"], eps=eps)


@requires_ext
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,batch_a",
    [pytest.param(s.values[0], None, id=s.id) for s in SHAPES]
    + [
        pytest.param((3, 37, 130, 24, 1), 1, id="broadcast-B3-T37-d130"),
        pytest.param((8, 1, 768, 64, 3), None, id="decode-B8-T1-d768"),
        pytest.param((1, 522, 768, 64, 3), None, id="B1-T522-d768"),
        pytest.param((8, 522, 768, 64, 3), None, id="B8-T522-d768"),
        pytest.param((2, 40, 257, 3, 4), 1, id="broadcast-d257-n3-nu4"),
    ],
)
def test_assoc_read_cuda_direct(dtype, shape, batch_a):
    """The extension called directly (float32 w_q), on odd shapes, broadcast state and the split-F/split-d paths."""
    from babilong_fast.backends import load_extension

    fn = load_extension()[0].assoc_read_fwd
    B, T, d, n, nu = shape
    h, w_q, A, z = make_inputs(B, T, d, n, nu, "cuda", batch_a=batch_a)
    h = h.to(dtype)
    assert_close("out", ref64(h, w_q, A, z, nu), fn(h, w_q, A, z, nu, 1e-5), RTOL[dtype])
