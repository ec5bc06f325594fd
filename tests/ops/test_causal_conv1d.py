from __future__ import annotations

import pytest
import torch

from babilong_fast.backends import BackendUnavailableError
from babilong_fast.ops import causal_conv1d, causal_conv1d_ref
from tests.helpers import HAS_CUDA, assert_close, backend_params, requires_triton

BACKENDS = backend_params()
DEVICE = "cuda" if HAS_CUDA else "cpu"
RTOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
HALF = [pytest.param(torch.bfloat16, id="bfloat16"), pytest.param(torch.float16, id="float16")]
CHUNKS = (1, 2, 7, 64, None)  # 1 and 2 are shorter than the state (width - 1 = 3): the state mixes old and new inputs


def make_inputs(batch, dim, L, width, bias=True, initial_state=True, device=DEVICE, dtype=torch.float32):
    args = {
        "x": torch.randn(batch, dim, L, device=device).to(dtype),
        "weight": torch.randn(dim, width, device=device) / width**0.5,
        "bias": torch.randn(dim, device=device) if bias else None,
    }
    if initial_state:
        args["initial_state"] = torch.randn(batch, dim, width - 1, device=device).to(dtype)
    return args


def ref64(args, activation=None):
    a = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    return causal_conv1d_ref(**a, return_final_state=True, activation=activation)


def run_chunked(args, chunk, backend, activation=None):
    """Convolve in chunks of ``chunk`` steps, carrying the final state into the next chunk's initial state."""
    x = args["x"]
    L = x.shape[-1]
    chunk = chunk or L
    state = args.get("initial_state")
    outs = []
    for s in range(0, L, chunk):
        out, state = causal_conv1d(
            x[..., s : s + chunk], args["weight"], args["bias"], state, return_final_state=True,
            activation=activation, backend=backend,
        )
        outs.append(out)
    return torch.cat(outs, dim=-1), state


def _chunk_cases():
    # (width, bias, initial state, activation)
    full = [(4, True, True, "silu"), (4, False, False, None), (2, True, False, "swish"), (3, False, True, None),
            (5, True, True, None), (1, True, True, "silu")]
    cases = [pytest.param("torch", *c, CHUNKS, id="torch-W{}-bias{}-h0{}-{}".format(*c)) for c in full]
    marks = [pytest.mark.triton, requires_triton]
    cases.append(pytest.param("triton", *full[0], CHUNKS, id="triton-W{}-bias{}-h0{}-{}".format(*full[0]), marks=marks))
    cases += [
        pytest.param("triton", *c, (2, 7, 64), id="triton-W{}-bias{}-h0{}-{}-chunks2,7,64".format(*c), marks=marks)
        for c in full[1:]
    ]
    cuda = next(p for p in backend_params() if p.id == "cuda").marks
    cases += [pytest.param("cuda", *c, CHUNKS, id="cuda-W{}-bias{}-h0{}-{}".format(*c), marks=cuda) for c in full]
    return cases


@pytest.mark.parametrize("backend,width,bias,h0,activation,chunks", _chunk_cases())
def test_causal_conv1d_chunked(backend, width, bias, h0, activation, chunks):
    """Chunks of 1, 2, 7, 64 and all steps, carrying the state, equal one float64 conv of the whole sequence."""
    args = make_inputs(2, 20, 71, width, bias, h0)
    want, want_final = ref64(args, activation)
    for chunk in chunks:
        out, final = run_chunked(args, chunk, backend, activation)
        assert out.dtype == torch.float32 and final.shape == (2, 20, width - 1)
        assert_close(f"out (chunk {chunk})", want, out, 1e-5)
        if width > 1:
            assert_close(f"final_state (chunk {chunk})", want_final, final, 1e-7)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", HALF)
def test_causal_conv1d_half(backend, device, dtype):
    args = make_inputs(2, 12, 29, 4, device=device, dtype=dtype)
    want, want_final = ref64(args, "silu")
    for chunk in (2, 7, None):
        out, final = run_chunked(args, chunk, backend, "silu")
        assert out.dtype == dtype and final.dtype == dtype
        assert_close(f"out (chunk {chunk})", want, out, RTOL[dtype])
        assert torch.equal(final.double(), want_final), "the state holds raw inputs: exact in any dtype"


# (batch, dim, L, width): dim not a multiple of the block, odd L, L = 1, L shorter than the state.
ODD = [
    pytest.param(s, id="b{}-d{}-L{}-W{}".format(*s))
    for s in [(1, 37, 33, 4), (3, 70, 17, 3), (2, 5, 1, 4), (1, 9, 2, 4)]
]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("shape", ODD)
def test_causal_conv1d_odd_sizes(backend, device, shape):
    batch, dim, L, width = shape
    args = make_inputs(batch, dim, L, width, device=device)
    want, want_final = ref64(args, "silu")
    out, final = causal_conv1d(**args, return_final_state=True, activation="silu", backend=backend)
    assert_close("out", want, out, 1e-5)
    assert_close("final_state", want_final, final, 1e-7)


@requires_triton
@pytest.mark.triton
def test_causal_conv1d_triton_blocks():
    """Several channel and time blocks, the last ones partial (forced small tiles)."""
    from babilong_fast.kernels.causal_conv1d import CausalConv1dConfig, causal_conv1d_fwd

    args = make_inputs(2, 37, 45, 4)
    want, want_final = ref64(args)
    out, final = causal_conv1d_fwd(**args, config=CausalConv1dConfig(16, 16, 1))
    assert_close("out", want, out, 1e-5)
    assert_close("final_state", want_final, final, 1e-7)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("chunk", [pytest.param(None, id="whole"), pytest.param(2, id="chunk2")])
def test_causal_conv1d_grad(backend, device, chunk):
    """Gradients of out and final_state, through the carried state when chunked, against float64."""
    args = make_inputs(2, 6, 11, 4, device=device)
    leaves = {k: v.clone().requires_grad_() for k, v in args.items()}
    g_out, g_final = torch.randn(2, 6, 11, device=device), torch.randn(2, 6, 3, device=device)
    out, final = run_chunked(leaves, chunk, backend, "silu")
    ((out * g_out).sum() + (final * g_final).sum()).backward()
    leaves64 = {k: v.detach().double().requires_grad_() for k, v in args.items()}
    out64, final64 = causal_conv1d_ref(**leaves64, return_final_state=True, activation="silu")
    ((out64 * g_out.double()).sum() + (final64 * g_final.double()).sum()).backward()
    for k in args:
        assert_close(f"grad {k}", leaves64[k].grad, leaves[k].grad, 1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("name", ["weight", "bias"])
def test_causal_conv1d_grad_through_the_state_alone(backend, device, name):
    """The final state holds inputs only: with the loss on it and only weight or bias trained, a zero gradient."""
    args = make_inputs(2, 6, 11, 4, device=device)
    args[name] = args[name].clone().requires_grad_()
    out, final = causal_conv1d(**args, return_final_state=True, backend=backend)
    (out.sum() * 0 + final.square().sum()).backward()  # out: so the loss has a graph at all
    assert args[name].grad is not None and not args[name].grad.any()


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("name", ["x", "weight", "bias", "initial_state"])
def test_causal_conv1d_outputs_require_grad_as_the_reference(backend, device, name):
    """One input trained: final_state requires grad only from x or initial_state, as the reference's."""
    args = make_inputs(2, 6, 11, 4, device=device)
    args[name] = args[name].clone().requires_grad_()
    got = causal_conv1d(**args, return_final_state=True, backend=backend)
    want = causal_conv1d_ref(**args, return_final_state=True)
    assert [t.requires_grad for t in got] == [t.requires_grad for t in want] == [True, name in ("x", "initial_state")]


def test_causal_conv1d_matches_conv1d():
    """Same as a left-padded depthwise nn.Conv1d (Mamba's fallback) when there is no state."""
    x, w, b = torch.randn(2, 8, 13), torch.randn(8, 4), torch.randn(8)
    want = torch.nn.functional.conv1d(x, w[:, None], b, padding=3, groups=8)[..., :13]
    assert_close("out", want, causal_conv1d(x, w, b), 1e-6)


def test_causal_conv1d_strided_view():
    """x as half of an xz tensor (Mamba's in_proj output): any batch and channel strides."""
    xz = torch.randn(2, 16, 9)
    x = xz.chunk(2, dim=1)[0]
    w = torch.randn(8, 4)
    assert_close("out", causal_conv1d_ref(x.contiguous(), w), causal_conv1d(x, w), 1e-7)


@requires_triton
@pytest.mark.triton
def test_causal_conv1d_triton_strided_view():
    xz = torch.randn(2, 16, 9, device=DEVICE)
    x = xz.chunk(2, dim=1)[0]
    w = torch.randn(8, 4, device=DEVICE)
    assert_close("out", causal_conv1d_ref(x.contiguous(), w), causal_conv1d(x, w, backend="triton"), 1e-6)


def test_causal_conv1d_returns():
    x, w = torch.randn(2, 4, 0), torch.randn(4, 4)
    s = torch.randn(2, 4, 3)
    out, final = causal_conv1d(x, w, initial_state=s, return_final_state=True)
    assert out.shape == (2, 4, 0) and torch.equal(final, s)
    assert isinstance(causal_conv1d(torch.randn(2, 4, 5), w), torch.Tensor)


def _bad(**overrides):
    args = {"x": torch.randn(2, 4, 6), "weight": torch.randn(4, 3), "bias": torch.randn(4),
            "initial_state": torch.randn(2, 4, 2), "activation": None}
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    "overrides,exc,match",
    [
        pytest.param({"x": torch.randn(4, 6)}, ValueError, "x must be 3-D", id="x-rank"),
        pytest.param({"x": torch.randn(2, 4, 6).double()}, TypeError, "x must have dtype", id="x-dtype"),
        pytest.param({"x": torch.randn(2, 6, 4).transpose(1, 2)},
            ValueError, "x must be contiguous along", id="x-view"),
        pytest.param({"x": "x"}, TypeError, "x must be a torch.Tensor", id="x-str"),
        pytest.param({"weight": torch.randn(5, 3)}, ValueError, "weight must have shape", id="weight-dim"),
        pytest.param({"weight": torch.randn(4, 1, 3)}, ValueError, "weight must be 2-D", id="weight-rank"),
        pytest.param({"weight": torch.randn(3, 4).t()}, ValueError, "weight must be contiguous", id="weight-view"),
        pytest.param({"bias": torch.randn(5)}, ValueError, "bias must have shape", id="bias-shape"),
        pytest.param({"initial_state": torch.randn(2, 4, 3)},
            ValueError, "initial_state must have shape", id="state-width"),
        pytest.param({"initial_state": torch.randn(3, 4, 2)},
            ValueError, "initial_state must have shape", id="state-batch"),
        pytest.param({"initial_state": torch.randn(2, 4, 2).bfloat16()},
            TypeError, "initial_state must have dtype float32", id="state-dtype"),
        pytest.param({"initial_state": torch.randn(2, 2, 4).transpose(1, 2)},
            ValueError, "initial_state must be contiguous", id="state-view"),
        pytest.param({"activation": "relu"}, ValueError, "activation must be None, 'silu' or 'swish'", id="activation"),
        pytest.param({"activation": True}, ValueError, "activation must be", id="activation-bool"),
        pytest.param({"bias": torch.randn(4, device="meta")}, ValueError, "one device", id="bias-device"),
    ],
)
def test_causal_conv1d_bad_input(overrides, exc, match):
    with pytest.raises(exc, match=match):
        causal_conv1d(**_bad(**overrides))


def test_causal_conv1d_cuda_backend_needs_cuda_tensors():
    with pytest.raises(BackendUnavailableError, match="needs CUDA tensors|not built"):
        causal_conv1d(**_bad(), backend="cuda")


def test_causal_conv1d_cuda_op_fake_shapes():
    """The CUDA op's fake (meta) implementation gives torch.compile the right outputs, without a GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from babilong_fast.ops.causal_conv1d import _causal_conv1d_cuda

    with FakeTensorMode():
        x = torch.empty(2, 6, 20, device="cuda", dtype=torch.float16)
        weight, bias = torch.empty(6, 4, device="cuda", dtype=torch.float16), None
        out, final = _causal_conv1d_cuda(x, weight, bias, None, True)
    assert out.shape == x.shape and out.dtype == torch.float16
    assert final.shape == (2, 6, 3) and final.dtype == torch.float16 and final.device.type == "cuda"
