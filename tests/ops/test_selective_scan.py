from __future__ import annotations

import importlib

import pytest
import torch

from babilong_fast.backends import BackendUnavailableError
from babilong_fast.ops import selective_scan, selective_scan_ref
from tests.helpers import HAS_CUDA, assert_close, assert_same_nonfinite, backend_params, requires_triton

RTOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
HALF = [pytest.param(torch.bfloat16, id="bfloat16"), pytest.param(torch.float16, id="float16")]
LAYOUTS = ("invariant", "varying", "grouped")
# Optional arguments switched on per case; "all" also starts from a nonzero initial state.
OPTIONS = {
    "plain": (),
    "D": ("D",),
    "z": ("z",),
    "bias-softplus": ("delta_bias", "delta_softplus"),
    "all": ("D", "z", "delta_bias", "delta_softplus", "initial_state"),
}
CHUNKS = (1, 7, 64, None)  # None: the whole sequence in one call
TIME_ARGS = ("u", "delta", "z")
BACKENDS = backend_params()
DEVICE = "cuda" if HAS_CUDA else "cpu"
# The module itself: babilong_fast.ops exports a function of the same name.
scan_module = importlib.import_module("babilong_fast.ops.selective_scan")


def make_inputs(batch, dim, L, N, layout, options=("D", "z", "delta_bias", "delta_softplus", "initial_state"),
                device="cpu", dtype=torch.float32, groups=2, layout_c=None):
    """Mamba-like scales: A < 0, positive delta; inputs in ``dtype``, A, D, delta_bias and the state float32."""

    def bc(lay):
        if lay == "invariant":
            return torch.randn(dim, N, device=device)
        if lay == "varying":
            return torch.randn(batch, N, L, device=device).to(dtype)
        return torch.randn(batch, groups, N, L, device=device).to(dtype)

    args = {
        "u": torch.randn(batch, dim, L, device=device).to(dtype),
        "delta": (0.5 * torch.rand(batch, dim, L, device=device)).to(dtype),
        "A": -0.5 - torch.rand(dim, N, device=device),
        "B": bc(layout),
        "C": bc(layout_c or layout),
    }
    if "D" in options:
        args["D"] = torch.randn(dim, device=device)
    if "z" in options:
        args["z"] = torch.randn(batch, dim, L, device=device).to(dtype)
    if "delta_bias" in options:
        args["delta_bias"] = 0.5 * torch.rand(dim, device=device) - 0.5
    if "delta_softplus" in options:
        args["delta_softplus"] = True
    if "initial_state" in options:
        args["initial_state"] = torch.randn(batch, dim, N, device=device)
    return args


def ref64(args):
    """The float64 ground truth: the reference on the whole sequence, all inputs in float64."""
    a = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    return selective_scan_ref(**a, return_last_state=True)


def with_infinite_decay(args):
    """``args`` with A = -inf (``-exp(A_log)`` overflowed) and -3e38 (-inf once scaled by log2(e)) at two entries:
    that state column decays to 0 in one step (dt > 0), so every output and the last state stay finite."""
    A = args["A"].clone()
    A[1, 2] = -float("inf")
    A[-1, 0] = -3e38
    return {**args, "A": A}


def with_infinite_input(batch, dim, L, N, layout, with_z, device="cpu"):
    """Positive u, B, C, z, initial_state, no D; u = inf at one step of channel 1 and delta = inf at one step of
    channel 2: those channels' states, and so their outputs, are +inf from that step on (no inf - inf)."""
    args = make_inputs(batch, dim, L, N, layout, ("z", "initial_state") if with_z else ("initial_state",), device)
    args = {k: v.abs() if k in ("u", "B", "C", "z", "initial_state") else v for k, v in args.items()}
    args["u"][0, 1, L // 2] = float("inf")
    args["delta"][-1, 2, L // 3] = float("inf")
    return args


def time_slice(args, start, stop):
    out = {}
    for k, v in args.items():
        timed = k in TIME_ARGS or (k in ("B", "C") and v.dim() > 2)
        out[k] = v[..., start:stop] if timed else v
    return out


def run_chunked(args, chunk, backend, **kw):
    """Scan in chunks of ``chunk`` steps, carrying last_state into the next chunk's initial_state."""
    L = args["u"].shape[-1]
    chunk = chunk or L
    state = args.get("initial_state")
    outs = []
    for s in range(0, L, chunk):
        piece = time_slice(args, s, s + chunk)
        piece["initial_state"] = state
        out, state = selective_scan(**piece, return_last_state=True, backend=backend, **kw)
        outs.append(out)
    return torch.cat(outs, dim=-1), state


def _chunk_cases():
    cases = []
    for layout in LAYOUTS:
        for opt in OPTIONS:
            cases.append(pytest.param("torch", layout, opt, CHUNKS, id=f"torch-{layout}-{opt}"))
    # Triton in the interpreter is slow: every layout plain and with everything on at every chunk size,
    # each option alone at one chunk size.
    marks = [pytest.mark.triton, requires_triton]
    for layout in LAYOUTS:
        for opt in ("plain", "all"):
            cases.append(pytest.param("triton", layout, opt, CHUNKS, id=f"triton-{layout}-{opt}", marks=marks))
    for opt in ("D", "z", "bias-softplus"):
        cases.append(pytest.param("triton", "varying", opt, (7,), id=f"triton-varying-{opt}-chunk7", marks=marks))
    cuda = next(p for p in backend_params() if p.id == "cuda").marks
    for layout in LAYOUTS:
        for opt in OPTIONS:
            cases.append(pytest.param("cuda", layout, opt, CHUNKS, id=f"cuda-{layout}-{opt}", marks=cuda))
    return cases


@pytest.mark.parametrize("backend,layout,opt,chunks", _chunk_cases())
def test_selective_scan_chunked(backend, layout, opt, chunks):
    """Chunks of 1, 7, 64 and all steps, carrying the state, equal one float64 scan of the whole sequence."""
    batch = 2 if backend == "torch" or HAS_CUDA else 1  # the interpreter runs programs serially
    args = make_inputs(batch, 20, 71, 16, layout, OPTIONS[opt], device=DEVICE)
    want, want_last = ref64(args)
    for chunk in chunks:
        out, last = run_chunked(args, chunk, backend)
        assert out.dtype == torch.float32 and last.dtype == torch.float32
        assert_close(f"out (chunk {chunk})", want, out, 1e-5)
        assert_close(f"last_state (chunk {chunk})", want_last, last, 1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_selective_scan_half(backend, device, dtype, layout):
    args = make_inputs(2, 12, 29, 16, layout, device=device, dtype=dtype)
    want, want_last = ref64(args)
    for chunk in (7, None):
        out, last = run_chunked(args, chunk, backend)
        assert out.dtype == dtype and last.dtype == torch.float32
        assert_close(f"out (chunk {chunk})", want, out, RTOL[dtype])
        assert_close(f"last_state (chunk {chunk})", want_last, last, 1e-5)  # float32 state from exact inputs


# (batch, dim, L, N, groups): dim not a multiple of the block, N = 16 and odd N, odd L, groups straddling blocks.
ODD = [
    pytest.param(s, id="b{}-d{}-L{}-N{}-G{}".format(*s))
    for s in [(1, 37, 33, 5, 1), (3, 39, 17, 16, 3), (2, 5, 1, 1, 5), (1, 70, 13, 7, 2)]
]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("shape", ODD)
def test_selective_scan_odd_sizes(backend, device, shape):
    batch, dim, L, N, G = shape
    for layout, layout_c in (("grouped", "varying"), ("invariant", "grouped")):
        args = make_inputs(batch, dim, L, N, layout, device=device, groups=G, layout_c=layout_c)
        want, want_last = ref64(args)
        out, last = selective_scan(**args, return_last_state=True, backend=backend)
        assert_close("out", want, out, 1e-5)
        assert_close("last_state", want_last, last, 1e-5)
    out_only = selective_scan(**args, backend=backend)  # no last state asked for (CUDA: not written)
    assert isinstance(out_only, torch.Tensor)
    assert_close("out without last_state", want, out_only, 1e-5)


@requires_triton
@pytest.mark.triton
@pytest.mark.parametrize("BD", [8, 16])
def test_selective_scan_triton_blocks(BD):
    """Several channel blocks per batch row, the last one partial (the GPU's small blocks, forced here)."""
    from babilong_fast.kernels.selective_scan import SelectiveScanConfig, selective_scan_fwd

    args = make_inputs(2, 39, 11, 5, "grouped", device=DEVICE, groups=3, layout_c="varying")
    want, want_last = ref64(args)
    out, last = selective_scan_fwd(**args, config=SelectiveScanConfig(BD, 1))
    assert_close("out", want, out, 1e-5)
    assert_close("last_state", want_last, last, 1e-5)


GRAD_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("layout", ["invariant", "grouped"])
@pytest.mark.parametrize("chunk", [pytest.param(None, id="whole"), pytest.param(4, id="chunk4")])
def test_selective_scan_grad(backend, device, layout, chunk):
    """Gradients of out and last_state, through the carried state when chunked, against float64."""
    args = make_inputs(2, 6, 11, 5, layout, device=device)
    leaves = {k: v.clone().requires_grad_() if k in GRAD_ARGS else v for k, v in args.items()}
    g_out, g_last = torch.randn(2, 6, 11, device=device), torch.randn(2, 6, 5, device=device)
    out, last = run_chunked(leaves, chunk, backend)
    ((out * g_out).sum() + (last * g_last).sum()).backward()
    leaves64 = {k: v.detach().double().requires_grad_() if k in GRAD_ARGS else v for k, v in args.items()}
    out64, last64 = selective_scan_ref(**leaves64, return_last_state=True)
    ((out64 * g_out.double()).sum() + (last64 * g_last.double()).sum()).backward()
    for k in GRAD_ARGS:
        assert_close(f"grad {k}", leaves64[k].grad, leaves[k].grad, 1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("name", ["C", "D", "z"])
def test_selective_scan_grad_through_the_state_alone(backend, device, name):
    """The loss on last_state only, one input trained that last_state does not depend on: a zero gradient
    (the fused backward must skip last_state's missing graph), as the reference gives."""
    args = make_inputs(2, 6, 7, 5, "grouped", device=device)
    args[name] = args[name].clone().requires_grad_()
    out, last = selective_scan(**args, return_last_state=True, backend=backend)
    (out.sum() * 0 + last.square().sum()).backward()  # out: so the loss has a graph at all
    assert args[name].grad is not None and not args[name].grad.any()


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("name", GRAD_ARGS)
def test_selective_scan_outputs_require_grad_as_the_reference(backend, device, name):
    """One input trained: out and last_state require grad exactly where the reference's do (last_state not
    from C, D or z)."""
    args = make_inputs(2, 6, 7, 5, "grouped", device=device)
    args[name] = args[name].clone().requires_grad_()
    got = selective_scan(**args, return_last_state=True, backend=backend)
    want = selective_scan_ref(**args, return_last_state=True)
    assert [t.requires_grad for t in got] == [t.requires_grad for t in want] == [True, name not in "CDz"]


def test_selective_scan_returns():
    args = make_inputs(2, 4, 6, 3, "varying", options=())
    out = selective_scan(**args)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4, 6)
    assert_close("auto", ref64(args)[0], out, 1e-5)  # on CPU the chunked scan, a different float32 order


def test_selective_scan_empty_sequence():
    """L = 0: no output steps, and the last state is the initial state."""
    args = make_inputs(2, 4, 0, 3, "varying")
    out, last = selective_scan(**args, return_last_state=True)
    assert out.shape == (2, 4, 0)
    assert torch.equal(last, args["initial_state"])


def test_selective_scan_strided_views():
    """x and z as halves of one xz tensor (Mamba's in_proj output), as mamba_ssm allows."""
    xz = torch.randn(2, 16, 9)
    x, z = xz.chunk(2, dim=1)
    args = make_inputs(2, 8, 9, 4, "varying")
    args.update(u=x, z=z)
    assert_close("out", ref64(args)[0], selective_scan(**args, backend="torch"), 1e-5)


@requires_triton
@pytest.mark.triton
def test_selective_scan_triton_strided_views():
    device = DEVICE
    xz = torch.randn(2, 16, 9, device=device)
    x, z = xz.chunk(2, dim=1)
    args = make_inputs(2, 8, 9, 4, "varying", device=device)
    args.update(u=x, z=z)
    assert_close("out", ref64(args)[0], selective_scan(**args, backend="triton"), 1e-5)


def _bad(**overrides):
    args = make_inputs(2, 4, 6, 3, "varying")
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    "overrides,exc,match",
    [
        pytest.param({"u": torch.randn(4, 6)}, ValueError, "u must be 3-D", id="u-rank"),
        pytest.param({"u": torch.randn(2, 4, 6).double()}, TypeError, "u must have dtype", id="u-dtype"),
        pytest.param({"u": torch.randn(2, 6, 4).transpose(1, 2)},
            ValueError, "u must be contiguous along", id="u-view"),
        pytest.param({"u": [[1.0]]}, TypeError, "u must be a torch.Tensor", id="u-list"),
        pytest.param({"delta": torch.rand(2, 4, 7)}, ValueError, "delta must have u's shape", id="delta-L"),
        pytest.param({"delta": torch.rand(3, 4, 6)}, ValueError, "delta must have u's shape", id="delta-batch"),
        pytest.param({"delta": torch.rand(2, 6, 4).transpose(1, 2)},
            ValueError, "delta must be contiguous", id="delta-view"),
        pytest.param({"A": -torch.rand(5, 3)}, ValueError, "A must have shape", id="A-dim"),
        pytest.param({"A": -torch.rand(4, 3).half()}, TypeError, "A must have dtype float32", id="A-dtype"),
        pytest.param({"A": torch.randn(4, 3, dtype=torch.complex64)}, TypeError, "complex A", id="A-complex"),
        pytest.param({"A": -torch.rand(4, 300)}, ValueError, "between 1 and 256", id="A-N"),
        pytest.param({"B": torch.randn(3, 3, 6)}, ValueError, r"B must have shape \(batch, N, L\)", id="B-batch"),
        pytest.param({"B": torch.randn(2, 4, 6)}, ValueError, r"B must have shape \(batch, N, L\)", id="B-N"),
        pytest.param({"B": torch.randn(2, 3, 5)}, ValueError, r"B must have shape \(batch, N, L\)", id="B-L"),
        pytest.param({"B": torch.randn(4, 5)}, ValueError, r"B must have shape \(dim, N\)", id="B-invariant"),
        pytest.param({"B": torch.randn(2, 3, 3, 6)}, ValueError, "divisible by the number of groups", id="B-groups"),
        pytest.param({"B": torch.randn(6)}, ValueError, "B must be 2-D", id="B-rank"),
        pytest.param({"B": torch.randn(2, 6, 3).transpose(1, 2)}, ValueError, "B must be contiguous", id="B-view"),
        pytest.param({"C": torch.randn(2, 2, 3, 7)}, ValueError, "grouped C must have shape", id="C-grouped-L"),
        pytest.param({"C": torch.randn(2, 3, 6).double()}, TypeError, "C must have dtype", id="C-dtype"),
        pytest.param({"D": torch.randn(5)}, ValueError, "D must have shape", id="D-shape"),
        pytest.param({"D": torch.randn(4).half()}, TypeError, "D must have dtype float32", id="D-dtype"),
        pytest.param({"delta_bias": torch.randn(4, 1)}, ValueError, "delta_bias must be 1-D", id="delta_bias-rank"),
        pytest.param({"z": torch.randn(1, 4, 6)}, ValueError, "z must have u's shape", id="z-batch"),
        pytest.param({"z": torch.randn(2, 6, 4).transpose(1, 2)}, ValueError, "z must be contiguous", id="z-view"),
        pytest.param({"initial_state": torch.randn(2, 4, 4)},
            ValueError, "initial_state must have shape", id="state-N"),
        pytest.param({"initial_state": torch.randn(1, 4, 3)},
            ValueError, "initial_state must have shape", id="state-batch"),
        pytest.param({"initial_state": torch.randn(2, 4, 3).bfloat16()},
            TypeError, "initial_state must have dtype float32", id="state-dtype"),
        pytest.param({"initial_state": torch.randn(2, 3, 4).transpose(1, 2)},
            ValueError, "initial_state must be contiguous", id="state-view"),
        pytest.param({"D": torch.randn(4, device="meta")}, ValueError, "one device", id="D-device"),
    ],
)
def test_selective_scan_bad_input(overrides, exc, match):
    with pytest.raises(exc, match=match):
        selective_scan(**_bad(**overrides))


def test_selective_scan_bad_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        selective_scan(**_bad(), backend="jax")


def test_selective_scan_cuda_backend_needs_cuda_tensors():
    with pytest.raises(BackendUnavailableError, match="needs CUDA tensors|not built"):
        selective_scan(**_bad(), backend="cuda")


# The torch backend's vectorised implementation (selective_scan_chunked) against the per-step float64 reference:
# chunk lengths K that do and do not divide L, blocks forced small so the state crosses block boundaries too.
CHUNKED_CASES = [
    pytest.param(layout, layout_c, opt, id=f"{layout}-{layout_c}-{opt}")
    for layout, layout_c in (("invariant", None), ("varying", None), ("grouped", None), ("varying", "grouped"),
                             ("invariant", "varying"))
    for opt in OPTIONS
]


@pytest.mark.parametrize("layout,layout_c,opt", CHUNKED_CASES)
def test_selective_scan_chunked_torch(monkeypatch, layout, layout_c, opt):
    args = make_inputs(2, 12, 53, 7, layout, OPTIONS[opt], groups=3, layout_c=layout_c)
    want, want_last = ref64(args)
    for K, block_elems in ((1, None), (5, None), (16, None), (None, None), (4, 2 * 12 * 7 * 8), (3, 1)):
        if block_elems is not None:  # blocks of 8 steps (K=4), or of K steps (K=3, block_elems=1)
            monkeypatch.setattr(scan_module, "SCAN_BLOCK_ELEMS", block_elems)
        out, last = scan_module.selective_scan_chunked(**args, return_last_state=True, chunk_size=K)
        assert out.dtype == torch.float32 and last.dtype == torch.float32
        assert_close(f"out (K={K}, block={block_elems})", want, out, 1e-5)
        assert_close(f"last_state (K={K}, block={block_elems})", want_last, last, 1e-5)


@pytest.mark.parametrize("L", [1, 2, 17, 64, 65])
def test_selective_scan_chunked_float64(L):
    """In float64 the chunked form and the per-step reference agree to rounding (same maths, other order)."""
    from babilong_fast.ops.selective_scan import selective_scan_chunked

    args = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in make_inputs(2, 6, L, 5, "varying").items()}
    want, want_last = selective_scan_ref(**args, return_last_state=True)
    out, last = selective_scan_chunked(**args, return_last_state=True, chunk_size=8)
    assert out.dtype == torch.float64
    assert_close("out", want, out, 1e-12)
    assert_close("last_state", want_last, last, 1e-12)


def test_selective_scan_torch_backend_is_chunked(monkeypatch):
    """backend="torch" runs the vectorised implementation, not the per-step reference."""
    calls = []
    real = scan_module.selective_scan_chunked
    monkeypatch.setattr(scan_module, "selective_scan_chunked", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(scan_module, "selective_scan_ref", lambda *a, **k: pytest.fail("per-step reference used"))
    args = make_inputs(1, 4, 9, 3, "varying")
    selective_scan(**args, backend="torch")
    assert calls


def test_selective_scan_chunked_large_decay():
    """Steps whose decay underflows to 0 (dt * A << -100) stay finite: no inverse decays are ever formed."""
    from babilong_fast.ops.selective_scan import selective_scan_chunked

    args = make_inputs(1, 8, 40, 4, "varying", options=("initial_state",))
    args["delta"] = 50 * torch.rand(1, 8, 40)
    args["A"] = -1 - 10 * torch.rand(8, 4)
    want, want_last = ref64(args)
    out, last = selective_scan_chunked(**args, return_last_state=True, chunk_size=16)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    assert_close("out", want, out, 1e-5)
    assert_close("last_state", want_last, last, 1e-5)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's 0 * inf
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_selective_scan_infinite_decay(backend, device):
    """Padded steps past a chunk's end must be identities whatever A holds: taken as dt = 0, their 0 * -inf made
    the last state NaN where the float64 reference's is finite. In calls of 5 steps and of all 13."""
    args = with_infinite_decay(make_inputs(2, 4, 13, 5, "varying", device=device))
    want, want_last = ref64(args)
    for chunk in (5, None):
        out, last = run_chunked(args, chunk, backend)
        assert_close(f"out (chunk {chunk})", want, out, 1e-5)
        assert_close(f"last_state (chunk {chunk})", want_last, last, 1e-5)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's 0 * inf
@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("with_z", [False, True], ids=["plain", "z"])
def test_selective_scan_infinite_input(backend, device, with_z):
    """An infinite u or delta makes its channel's outputs +inf, as in the float64 reference, not NaN: no 0 * u
    for an absent D, no 0 * inf from the state columns a power-of-two tile adds past N = 3."""
    args = with_infinite_input(2, 4, 9, 3, "varying", with_z, device)
    want, want_last = ref64(args)
    assert torch.isinf(want).any() and torch.isinf(want_last).any()
    out, last = selective_scan(**args, return_last_state=True, backend=backend)
    assert_same_nonfinite("out", want, out, 1e-5)
    assert_same_nonfinite("last_state", want_last, last, 1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_selective_scan_chunked_infinite_decay(layout):
    """The torch backend with chunk lengths K that do and do not divide L (padded last chunk)."""
    from babilong_fast.ops.selective_scan import selective_scan_chunked

    args = with_infinite_decay(make_inputs(2, 4, 13, 5, layout, groups=2))
    want, want_last = ref64(args)
    for K in (1, 4, 13, 16):
        out, last = selective_scan_chunked(**args, return_last_state=True, chunk_size=K)
        assert_close(f"out (K={K})", want, out, 1e-5)
        assert_close(f"last_state (K={K})", want_last, last, 1e-5)


def test_selective_scan_cuda_op_fake_shapes():
    """The CUDA op's fake (meta) implementation gives torch.compile the right outputs, without a GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from babilong_fast.ops.selective_scan import _selective_scan_cuda

    with FakeTensorMode():
        u = torch.empty(2, 6, 20, device="cuda", dtype=torch.bfloat16)
        delta, z = torch.empty_like(u), torch.empty_like(u)
        A = torch.empty(6, 5, device="cuda")
        B, C = torch.empty(2, 5, 20, device="cuda"), torch.empty(2, 5, 20, device="cuda")
        out, last = _selective_scan_cuda(u, delta, A, B, C, None, z, None, None, True, True)
        out_only, no_last = _selective_scan_cuda(u, delta, A, B, C, None, z, None, None, True, False)
    assert out.shape == u.shape and out.dtype == torch.bfloat16 and out.is_contiguous()
    assert last.shape == (2, 6, 5) and last.dtype == torch.float32 and last.device.type == "cuda"
    assert out_only.shape == u.shape and no_last.shape == (0,)  # the state is not written when not asked for
