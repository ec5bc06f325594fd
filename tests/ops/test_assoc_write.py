from __future__ import annotations

import pytest
import torch

from babilong_fast.backends import BackendUnavailableError
from babilong_fast.ops import assoc_write, assoc_write_ref
from tests.helpers import (
    HAS_CUDA,
    assert_close,
    assert_same_nonfinite,
    backend_params,
    dtype_params,
    requires_ext,
    requires_triton,
)

# Every backend on the device it runs on here (Triton: the interpreter on CPU; cuda: skipped without a GPU).
BACKENDS = backend_params()
DEVICE = "cuda" if HAS_CUDA else "cpu"

# (B, M, d, d_mem, nu): one memory row, ARMT's M = 10, odd sizes, nu != 3.
SHAPES = [
    pytest.param(s, id="B{}-M{}-d{}-n{}-nu{}".format(*s))
    for s in [(1, 1, 16, 4, 3), (2, 10, 48, 8, 3), (3, 5, 33, 7, 2), (1, 3, 20, 3, 1)]
]
# Backend comparisons: d not a multiple of 64, odd d_mem, M = 1, 3, 10, B = 1 and 3; nu + 1 > 2n (the DPFP roll
# wraps more than once).
OP_SHAPES = [
    pytest.param(s, id="B{}-M{}-d{}-n{}-nu{}".format(*s))
    for s in [(1, 1, 40, 5, 3), (3, 3, 100, 5, 2), (1, 10, 130, 5, 3), (3, 10, 40, 8, 1), (2, 5, 20, 2, 5)]
]

# The write's rules (first_segment, correction): a later segment with and without the correction, the first.
CUDA_RULES = [
    pytest.param(False, True, id="later-corr"),
    pytest.param(False, False, id="later-nocorr"),
    pytest.param(True, True, id="first"),
]


def phi_spec(u: torch.Tensor, nu: int) -> torch.Tensor:
    """DPFP from its index formula: phi[j*2n + i] = s[i] * s[(i - j - 1) mod 2n], s = [relu(u), relu(-u)]."""
    s = torch.cat([u.clamp_min(0), (-u).clamp_min(0)], -1)
    two_n = s.shape[-1]
    i = torch.arange(two_n)
    return torch.cat([s * s[..., (i - j) % two_n] for j in range(1, nu + 1)], -1)


def write_spec(mem, w_k, w_v, w_b, b_b, A, z, nu, eps=1e-5, correction=True, first=False, detach_gamma=True):
    """Float64 spec of the ARMT write: every row j against the pre-update state, rank-1 updates summed."""
    mem, w_k, w_v, w_b, b_b, A, z = (t.double().cpu() for t in (mem, w_k, w_v, w_b, b_b, A, z))
    B, M, _ = mem.shape
    A = A.expand(B, -1, -1)
    z = z.expand(B, -1)
    A_out, z_out = [], []
    for b in range(B):
        dA = torch.zeros_like(A[b])
        dz = torch.zeros_like(z[b])
        for j in range(M):
            m = mem[b, j]
            k = phi_spec(w_k @ m, nu)
            v = w_v @ m
            beta = torch.sigmoid(w_b[0] @ m + b_b[0])
            if first:
                vbar, gamma = torch.zeros_like(v), torch.ones((), dtype=m.dtype)
            else:
                delta = k @ z[b] + eps
                vbar = (k @ A[b]) / delta
                gamma = (1 - delta / (k @ k + eps)).clamp(0, 1) if correction else torch.ones((), dtype=m.dtype)
                if detach_gamma:
                    gamma = gamma.detach()
            dA = dA + beta * torch.outer(k, v - vbar)
            dz = dz + gamma * k
        A_out.append(A[b] + dA)
        z_out.append(z[b] + dz)
    return torch.stack(A_out), torch.stack(z_out)


def make_inputs(B, M, d, n, nu, batch_state=None, z_scale=1.0, device="cpu"):
    F = 2 * nu * n
    Bs = B if batch_state is None else batch_state
    mem = torch.randn(B, M, d)
    w_k = torch.randn(n, d) / d**0.5
    w_v = torch.randn(d, d) / d**0.5
    w_b = torch.randn(1, d) / d**0.5
    b_b = torch.randn(1)
    A = torch.randn(Bs, F, d)
    z = torch.rand(Bs, F) * z_scale
    return tuple(t.to(device) for t in (mem, w_k, w_v, w_b, b_b, A, z))


def ref64(args, nu, **kw):
    return assoc_write_ref(*(t.double() for t in args), nu=nu, **kw)


@pytest.mark.parametrize("correction", [True, False], ids=["corr", "nocorr"])
@pytest.mark.parametrize("first", [False, True], ids=["later", "first"])
@pytest.mark.parametrize("shape", SHAPES)
def test_assoc_write_ref_matches_spec(shape, first, correction):
    B, M, d, n, nu = shape
    args = make_inputs(B, M, d, n, nu, z_scale=0.05)
    A_want, z_want = write_spec(*args, nu, correction=correction, first=first)
    A64, z64 = assoc_write_ref(*(t.double() for t in args), nu=nu, correction=correction, first_segment=first)
    assert A64.dtype == torch.float64
    assert_close("A f64", A_want, A64, 1e-12)
    assert_close("z f64", z_want, z64, 1e-12)
    A32, z32 = assoc_write(*args, nu=nu, correction=correction, first_segment=first)
    assert A32.dtype == z32.dtype == torch.float32
    assert A32.shape == (B, 2 * nu * n, d) and z32.shape == (B, 2 * nu * n)
    assert_close("A f32", A_want, A32, 1e-5)
    assert_close("z f32", z_want, z32, 1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("correction", [True, False], ids=["corr", "nocorr"])
@pytest.mark.parametrize("first", [False, True], ids=["later", "first"])
@pytest.mark.parametrize("shape", OP_SHAPES)
def test_assoc_write_backend_matches_spec(backend, device, shape, first, correction):
    B, M, d, n, nu = shape
    args = make_inputs(B, M, d, n, nu, z_scale=0.05, device=device)
    before = [t.clone() for t in args]
    A_new, z_new = assoc_write(*args, nu=nu, correction=correction, first_segment=first, backend=backend)
    assert A_new.dtype == z_new.dtype == torch.float32 and A_new.device == args[0].device
    assert A_new.shape == (B, 2 * nu * n, d) and z_new.shape == (B, 2 * nu * n)
    A_want, z_want = write_spec(*args, nu, correction=correction, first=first)
    assert_close("A", A_want, A_new, 1e-5)
    assert_close("z", z_want, z_new, 1e-5)
    assert all(torch.equal(t, b) for t, b in zip(args, before, strict=True)), "inputs were modified"


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("first", [False, True], ids=["later", "first"])
def test_assoc_write_gpt2_shape(backend, device, first):
    """ARMT on GPT-2: M = 10 memory rows, d = 768, d_mem = 64, nu = 3 (the launch configs used in practice)."""
    args = make_inputs(2, 10, 768, 64, 3, z_scale=0.05, device=device)
    A_want, z_want = ref64(args, 3, first_segment=first)
    A_new, z_new = assoc_write(*args, first_segment=first, backend=backend)
    assert_close("A", A_want, A_new, 1e-5)
    assert_close("z", z_want, z_new, 1e-5)


def nan_inputs(where: str, device="cpu") -> tuple:
    """Write inputs (B = 2, M = 5, d = 40, d_mem = 8, nu = 3) with one NaN in batch row 1: in ``mem`` (its DPFP
    features are NaN, so is all of batch 1's new state) or in ``z`` (later segments: the normaliser of every row of
    batch 1 is NaN, and with the correction so is gamma, which clamp(0, 1) keeps)."""
    args = make_inputs(2, 5, 40, 8, 3, z_scale=0.05, device=device)
    args[0 if where == "mem" else 6][(1, 2, 3) if where == "mem" else (1, 4)] = float("nan")
    return args


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("first,correction", CUDA_RULES)
@pytest.mark.parametrize("where", ["mem", "z"])
def test_assoc_write_keeps_nan_as_reference(backend, device, where, first, correction):
    """NaN reaches the new state exactly where it does in the reference: relu(k) and the clamp of gamma keep NaN as
    torch does (fmaxf and tl.maximum / tl.minimum return the other operand)."""
    args = nan_inputs(where, device)
    A_want, z_want = ref64(args, 3, correction=correction, first_segment=first)
    assert z_want.isnan().any()
    A_new, z_new = assoc_write(*args, correction=correction, first_segment=first, backend=backend)
    assert_same_nonfinite("A", A_want, A_new, 1e-5)
    assert_same_nonfinite("z", z_want, z_new, 1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_assoc_write_half_inputs_give_float32_state(backend, device, dtype):
    """Half-precision mem and weights are exact in float32, so the float32 state matches the float64 spec closely."""
    mem, w_k, w_v, w_b, b_b, A, z = make_inputs(2, 10, 40, 8, 3, z_scale=0.05, device=device)
    mem, w_k, w_v, w_b, b_b = (t.to(dtype) for t in (mem, w_k, w_v, w_b, b_b))
    A_new, z_new = assoc_write(mem, w_k, w_v, w_b, b_b, A, z, backend=backend)
    assert A_new.dtype == z_new.dtype == torch.float32
    A_want, z_want = write_spec(mem, w_k, w_v, w_b, b_b, A, z, 3)
    assert_close("A", A_want, A_new, 1e-5)
    assert_close("z", z_want, z_new, 1e-5)


@pytest.mark.parametrize("first", [False, True], ids=["later", "first"])
def test_assoc_write_ref_is_float32_under_autocast(first):
    """bf16 autocast (training on a GPU) must not run the state's update and recall in bf16 (docs/math.md §2.5)."""
    args = make_inputs(2, 10, 40, 8, 3, z_scale=0.05)
    args = (args[0].to(torch.bfloat16), *args[1:])
    want = assoc_write(*args, first_segment=first, backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = assoc_write(*args, first_segment=first, backend="torch")
    for name, g, w in zip(("A", "z"), got, want, strict=True):
        assert g.dtype == torch.float32 and torch.equal(g, w), name
    leaves = [t.clone().requires_grad_() for t in args]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        A_new, z_new = assoc_write_ref(*leaves, first_segment=first)
    (A_new.sum() + z_new.sum()).backward()  # outside, as torch.autocast's docs ask
    leaves32 = [t.clone().requires_grad_() for t in args]
    A_new, z_new = assoc_write_ref(*leaves32, first_segment=first)
    (A_new.sum() + z_new.sum()).backward()
    for i, (g, w) in enumerate(zip(leaves, leaves32, strict=True)):
        assert torch.equal(g.grad, w.grad), i


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_assoc_write_first_segment_rules(backend, device):
    """Empty memory: A_new = K^T diag(beta) V and z_new = sum_j k_j, whatever the correction flag."""
    mem, w_k, w_v, w_b, b_b, A, z = make_inputs(2, 6, 24, 4, 3, device=device)
    A0, z0 = torch.zeros_like(A), torch.zeros_like(z)
    K = phi_spec(mem.double().cpu() @ w_k.double().cpu().t(), 3)
    V = mem.double().cpu() @ w_v.double().cpu().t()
    beta = torch.sigmoid(mem.double().cpu() @ w_b.double().cpu().t() + b_b.double().cpu())
    for correction in (True, False):
        A_new, z_new = assoc_write(
            mem, w_k, w_v, w_b, b_b, A0, z0, correction=correction, first_segment=True, backend=backend
        )
        assert_close("A", K.transpose(1, 2) @ (beta * V), A_new, 1e-6)
        assert_close("z", K.sum(1), z_new, 1e-6)
    # An empty state without the first-segment flag is not the same: gamma = 1 - eps/(|k|^2+eps) < 1.
    _, z_later = assoc_write(mem, w_k, w_v, w_b, b_b, A0, z0, backend=backend)
    assert not torch.equal(z_later, z_new)


def test_assoc_write_repeated_keys_give_zero_gamma():
    """Writing the same memory rows twice: gamma = 0 on the second write, so z does not grow (docs/math.md §2.4)."""
    mem, w_k, w_v, w_b, b_b, A, z = (t.double() for t in make_inputs(2, 10, 32, 8, 3))
    A0, z0 = torch.zeros_like(A), torch.zeros_like(z)
    A1, z1 = assoc_write_ref(mem, w_k, w_v, w_b, b_b, A0, z0, first_segment=True)
    A2, z2 = assoc_write_ref(mem, w_k, w_v, w_b, b_b, A1, z1)
    assert torch.equal(z2, z1)
    # One row: the recall of a stored key is beta * v * s, s = |k|^2 / (|k|^2 + eps), so a second write of it adds
    # beta * (1 - beta * s) * v.
    m1 = mem[:, :1]
    A1, z1 = assoc_write_ref(m1, w_k, w_v, w_b, b_b, A0, z0, first_segment=True)
    A2, z2 = assoc_write_ref(m1, w_k, w_v, w_b, b_b, A1, z1)
    assert_close("z", z1, z2, 1e-12)  # gamma = 1 - (|k|^2 + eps)/(|k|^2 + eps): zero up to rounding
    k = phi_spec(m1 @ w_k.t(), 3)
    v = m1 @ w_v.t()
    beta = torch.sigmoid(m1 @ w_b.t() + b_b)
    sq = k.square().sum(-1, keepdim=True)
    recall_scale = sq / (sq + 1e-5)
    assert_close("A", A1 + k.transpose(1, 2) @ (beta * (1 - beta * recall_scale) * v), A2, 1e-12)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_assoc_write_repeated_keys_give_zero_gamma_backend(backend, device):
    """The same ten rows written twice in float32: every gamma clips to 0, so z is unchanged exactly."""
    mem, w_k, w_v, w_b, b_b, A, z = make_inputs(2, 10, 40, 5, 3, device=device)
    A0, z0 = torch.zeros_like(A), torch.zeros_like(z)
    A1, z1 = assoc_write(mem, w_k, w_v, w_b, b_b, A0, z0, first_segment=True, backend=backend)
    A2, z2 = assoc_write(mem, w_k, w_v, w_b, b_b, A1, z1, backend=backend)
    assert torch.equal(z2, z1)
    A_want, _ = ref64((mem, w_k, w_v, w_b, b_b, A1, z1), 3)
    assert_close("A", A_want, A2, 1e-5)
    # One row: gamma = 1 - (|k|^2 + eps)/(|k|^2 + eps) is zero up to float32 rounding.
    m1 = mem[:, :1].contiguous()
    A1, z1 = assoc_write(m1, w_k, w_v, w_b, b_b, A0, z0, first_segment=True, backend=backend)
    _, z2 = assoc_write(m1, w_k, w_v, w_b, b_b, A1, z1, backend=backend)
    assert_close("z", z1, z2, 1e-6)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("first", [False, True], ids=["later", "first"])
def test_assoc_write_broadcast_state(backend, device, first):
    """A batch-1 state (ARMT's initial zeros, or any shared state) broadcasts over the batch of memory rows."""
    args = make_inputs(3, 3, 130, 5, 3, batch_state=1, z_scale=0.05, device=device)
    A_want, z_want = write_spec(*args, 3, first=first)
    A_new, z_new = assoc_write(*args, first_segment=first, backend=backend)
    assert A_new.shape == (3, 30, 130) and z_new.shape == (3, 30)
    assert_close("A", A_want, A_new, 1e-5)
    assert_close("z", z_want, z_new, 1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_assoc_write_empty_rows(backend, device):
    """No memory rows: the state is returned unchanged (broadcast to the batch)."""
    mem, w_k, w_v, w_b, b_b, A, z = make_inputs(2, 0, 16, 4, 3, batch_state=1, device=device)
    A_new, z_new = assoc_write(mem, w_k, w_v, w_b, b_b, A, z, backend=backend)
    assert torch.equal(A_new, A.expand(2, -1, -1)) and torch.equal(z_new, z.expand(2, -1))


def test_assoc_write_gamma_is_detached():
    """Gradients equal the spec's with gamma detached and differ from the spec's with gamma differentiated."""
    B, M, d, n, nu = 2, 5, 24, 4, 3
    base = [t.double() for t in make_inputs(B, M, d, n, nu)]
    # Solve for z so that every gamma lies strictly inside (0, 1), where clip has a nonzero derivative:
    # gamma = 1 - phi(k).z / |phi(k)|^2, M equations in 2*nu*n > M unknowns.
    K = phi_spec(base[0] @ base[1].t(), nu)
    target = torch.linspace(0.2, 0.8, M, dtype=torch.float64).expand(B, M)
    sq = K.square().sum(-1)
    rhs = ((1 - target) * sq).unsqueeze(-1)
    base[6] = (K.mT @ torch.linalg.solve(K @ K.mT, rhs)).squeeze(-1)  # the least-norm solution of K z = rhs
    gamma = 1 - (K @ base[6].unsqueeze(-1)).squeeze(-1) / sq
    assert_close("gamma", target, gamma, 1e-8)
    weights = (torch.randn(B, 2 * nu * n, d, dtype=torch.float64), torch.randn(B, 2 * nu * n, dtype=torch.float64))

    def grads(fn):
        inputs = [t.clone().requires_grad_(True) for t in base]
        A_new, z_new = fn(inputs)
        ((A_new * weights[0]).sum() + (z_new * weights[1]).sum()).backward()
        return [t.grad for t in inputs]

    got = grads(lambda x: assoc_write_ref(*x, nu=nu))
    want = grads(lambda x: write_spec(*x, nu))
    undetached = grads(lambda x: write_spec(*x, nu, detach_gamma=False))
    names = ("mem", "w_k", "w_v", "w_b", "b_b", "A", "z")
    for name, g, w in zip(names, got, want, strict=True):
        assert_close(f"d{name}", w, g, 1e-10)
    assert any((g - u).abs().max() > 1e-6 for g, u in zip(got, undetached, strict=True) if u is not None)


NAMES = ("mem", "w_k", "w_v", "w_b", "b_b", "A", "z")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize(
    "first,correction,batch_state",
    [(False, True, None), (False, False, None), (True, True, None), (False, True, 1)],
    ids=["later-corr", "later-nocorr", "first", "broadcast"],
)
def test_assoc_write_grads_match_spec_float32(backend, device, first, correction, batch_state):
    args = make_inputs(2, 4, 20, 5, 2, batch_state=batch_state, z_scale=0.05, device=device)
    inputs = [t.clone().requires_grad_(True) for t in args]
    A_new, z_new = assoc_write(*inputs, nu=2, first_segment=first, correction=correction, backend=backend)
    (A_new.square().sum() + z_new.square().sum()).backward()
    ref_inputs = [t.detach().double().cpu().requires_grad_(True) for t in args]
    A_ref, z_ref = write_spec(*ref_inputs, 2, first=first, correction=correction)
    (A_ref.square().sum() + z_ref.square().sum()).backward()
    for name, t, r in zip(NAMES, inputs, ref_inputs, strict=True):
        assert t.grad.shape == t.shape, name
        assert_close(f"d{name}", r.grad, t.grad, 1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_assoc_write_grads_some_inputs(backend, device):
    """Only some inputs need gradients (frozen weights): those get them, the rest stay None; half mem works."""
    mem, w_k, w_v, w_b, b_b, A, z = make_inputs(2, 3, 24, 3, 3, z_scale=0.05, device=device)
    mem = mem.to(torch.bfloat16).requires_grad_(True)
    A = A.clone().requires_grad_(True)
    A_new, z_new = assoc_write(mem, w_k, w_v, w_b, b_b, A, z, backend=backend)
    g = torch.randn_like(A_new)
    (A_new * g).sum().backward()
    assert mem.grad.dtype == torch.bfloat16 and w_k.grad is None and z.grad is None
    ref = [t.detach().double().cpu().requires_grad_(True) for t in (mem, A)]
    A_ref, _ = write_spec(ref[0], w_k, w_v, w_b, b_b, ref[1], z, 3)
    (A_ref * g.double().cpu()).sum().backward()
    assert_close("dmem", ref[0].grad, mem.grad, 1e-2)
    assert_close("dA", ref[1].grad, A.grad, 1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_assoc_write_grad_of_one_input(backend, device, name):
    """One input trained, the rest frozen: w_v, w_b, b_b and A reach A_new only, not z_new (the fused backward
    must differentiate only the outputs that depend on what is trained)."""
    args = make_inputs(2, 3, 16, 3, 2, z_scale=0.05, device=device)
    i = NAMES.index(name)
    leaf = args[i].clone().requires_grad_(True)
    A_new, z_new = assoc_write(*args[:i], leaf, *args[i + 1:], nu=2, backend=backend)
    (A_new.square().sum() + z_new.square().sum()).backward()
    ref_args = [t.detach().double().cpu() for t in args]
    ref_args[i].requires_grad_(True)
    A_ref, z_ref = write_spec(*ref_args, 2)
    (A_ref.square().sum() + z_ref.square().sum()).backward()
    assert_close(f"d{name}", ref_args[i].grad, leaf.grad, 1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("first", [False, True], ids=["later", "first"])
@pytest.mark.parametrize("name", NAMES)
def test_assoc_write_outputs_require_grad_as_the_reference(backend, device, first, name):
    """One input trained: A_new and z_new require grad exactly where the reference's do (z_new only from mem,
    w_k and z; A_new not from z on the first segment)."""
    args = make_inputs(2, 3, 16, 3, 2, z_scale=0.05, device=device)
    i = NAMES.index(name)
    args = [*args[:i], args[i].clone().requires_grad_(True), *args[i + 1:]]
    got = assoc_write(*args, nu=2, first_segment=first, backend=backend)
    want = assoc_write_ref(*args, nu=2, first_segment=first)
    assert [t.requires_grad for t in got] == [t.requires_grad for t in want]
    assert want[0].requires_grad == (name != "z" or not first)
    assert want[1].requires_grad == (name in ("mem", "w_k", "z"))


@requires_triton
@pytest.mark.triton
def test_assoc_write_triton_small_tiles():
    """Explicit 16-wide tiles: several row blocks, key-column blocks, feature chunks and the loop over M."""
    from babilong_fast.kernels.assoc_write import AssocWriteConfig, assoc_write_fwd

    cfg = AssocWriteConfig(BR=16, BN=16, BK=16, BM=16, BD_RECALL=16, BI=16, BF=16, BD_UPDATE=16, num_warps=4)
    args = make_inputs(2, 21, 40, 19, 1, batch_state=1, z_scale=0.05, device=DEVICE)
    for first in (False, True):
        A_new, z_new = assoc_write_fwd(*args, 1, 1e-5, True, first, config=cfg)
        A_want, z_want = ref64(args, 1, first_segment=first)
        assert_close("A", A_want, A_new, 1e-5)
        assert_close("z", z_want, z_new, 1e-5)


def test_assoc_write_bad_input():
    mem, w_k, w_v, w_b, b_b, A, z = make_inputs(2, 3, 16, 4, 3)
    ok = dict(mem=mem, w_k=w_k, w_v=w_v, w_b=w_b, b_b=b_b, A=A, z=z)

    def call(**over):
        kw = {**ok, **over}
        nu = kw.pop("nu", 3)
        backend = kw.pop("backend", "auto")
        return assoc_write(**kw, nu=nu, backend=backend)

    cases = [
        (TypeError, "mem", dict(mem=mem.numpy())),
        (ValueError, "mem", dict(mem=mem[0])),
        (TypeError, "mem", dict(mem=mem.double())),
        (TypeError, "A", dict(A=A.half())),
        (TypeError, "z", dict(z=z.double())),
        (ValueError, "w_k", dict(w_k=w_k[:, :-1].contiguous())),
        (ValueError, "d_mem >= 1", dict(w_k=w_k[:0], A=A[:, :0], z=z[:, :0])),  # as assoc_read refuses it
        (ValueError, "w_v", dict(w_v=w_v[:-1].contiguous())),
        (ValueError, "w_b", dict(w_b=w_b.t().contiguous())),
        (ValueError, "b_b", dict(b_b=torch.zeros(2))),
        (ValueError, "A", dict(A=A[:, :-1].contiguous())),
        (ValueError, "A", dict(A=torch.zeros(3, *A.shape[1:]))),
        (ValueError, "z", dict(z=z[:1].contiguous())),
        (ValueError, "mem", dict(mem=mem.transpose(0, 1))),
        (ValueError, "nu", dict(nu=0)),
    ]
    for exc, name, over in cases:
        with pytest.raises(exc, match=name):
            call(**over)
    for eps in (0.0, float("inf"), float("nan")):  # inf: z_new all NaN (inf / inf) before
        with pytest.raises(ValueError, match="eps must be a finite number > 0"):
            assoc_write(mem, w_k, w_v, w_b, b_b, A, z, eps=eps)
    # The cuda backend exists but needs the built extension and CUDA tensors: CPU tensors get the reason.
    why = r"assoc_write: backend 'cuda' is unavailable: .*(_C is not built|needs CUDA tensors)"
    with pytest.raises(BackendUnavailableError, match=why):
        call(backend="cuda")


def test_assoc_write_cuda_op_fake_shapes():
    """The CUDA op's fake (meta) implementation gives torch.compile the right outputs, without a GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from babilong_fast.ops.assoc_write import _assoc_write_cuda

    with FakeTensorMode():
        mem = torch.empty(3, 10, 40, device="cuda", dtype=torch.bfloat16)
        w_k, w_v, w_b, b_b = (torch.empty(*s, device="cuda") for s in ((5, 40), (40, 40), (1, 40), (1,)))
        A, z = torch.empty(1, 30, 40, device="cuda"), torch.empty(1, 30, device="cuda")
        A_new, z_new = _assoc_write_cuda(mem, w_k, w_v, w_b, b_b, A, z, 3, 1e-5, True, False)
    assert A_new.shape == (3, 30, 40) and z_new.shape == (3, 30)
    assert A_new.dtype == z_new.dtype == torch.float32 and A_new.device.type == "cuda"


# The extension called directly: (B, M, d, d_mem, nu, A/z batch). M > 16 spans several row tiles, F and d not
# multiples of the 32 x 64 tiles, nu > 2*d_mem wraps the DPFP roll, and ARMT's GPT-2 shape at B = 1 and 8.
CUDA_SHAPES = [
    pytest.param(s, id="B{}-M{}-d{}-n{}-nu{}-Ba{}".format(*s))
    for s in [
        (1, 1, 40, 5, 3, 1),
        (3, 3, 100, 5, 2, 3),
        (2, 17, 70, 3, 4, 1),
        (2, 33, 65, 2, 5, 2),
        (1, 10, 768, 64, 3, 1),
        (8, 10, 768, 64, 3, 8),
        (8, 10, 768, 64, 3, 1),
    ]
]
CUDA_DTYPES = dtype_params((torch.float32, torch.bfloat16, torch.float16))


@requires_ext
@pytest.mark.cuda
@pytest.mark.parametrize("first,correction", CUDA_RULES)
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_assoc_write_cuda_direct(shape, dtype, first, correction):
    """Float32 weights, mem in any of the three dtypes: the float32 state matches the float64 reference.

    Half-precision mem is exact in float32 and the outputs are float32, so the tolerance is float32's (1e-5)
    against the reference fed the same (rounded) mem.
    """
    from babilong_fast.backends import load_extension

    fn = load_extension()[0].assoc_write_fwd
    B, M, d, n, nu, Ba = shape
    mem, w_k, w_v, w_b, b_b, A, z = make_inputs(B, M, d, n, nu, batch_state=Ba, z_scale=0.05, device="cuda")
    mem = mem.to(dtype)
    before = [t.clone() for t in (mem, w_k, w_v, w_b, b_b, A, z)]
    A_new, z_new = fn(mem, w_k, w_v, w_b, b_b, A, z, nu, 1e-5, correction, first)
    assert A_new.dtype == z_new.dtype == torch.float32 and A_new.is_cuda and z_new.is_cuda
    assert A_new.shape == (B, 2 * nu * n, d) and z_new.shape == (B, 2 * nu * n)
    cpu = [t.cpu() for t in (mem, w_k, w_v, w_b, b_b, A, z)]
    A_want, z_want = ref64(cpu, nu, correction=correction, first_segment=first)
    assert_close("A", A_want, A_new, 1e-5)
    assert_close("z", z_want, z_new, 1e-5)
    assert all(torch.equal(t, b) for t, b in zip((mem, w_k, w_v, w_b, b_b, A, z), before, strict=True))


@requires_ext
@pytest.mark.cuda
def test_assoc_write_cuda_half_weights_and_segments():
    """Through assoc_write: half weights (cast to float32 for the kernel), then a chain of four segments
    (first, then later with the correction) in float32 state against the same chain in float64."""
    B, M, d, n, nu = 3, 10, 130, 5, 3
    mem, w_k, w_v, w_b, b_b, A, z = make_inputs(B, M, d, n, nu, z_scale=0.05, device="cuda")
    weights = tuple(t.to(torch.bfloat16) for t in (w_k, w_v, w_b, b_b))
    A_new, z_new = assoc_write(mem.half(), *weights, A, z, nu=nu, backend="cuda")
    A_want, z_want = ref64([t.cpu() for t in (mem.half(), *weights, A, z)], nu)
    assert_close("A", A_want, A_new, 1e-5)
    assert_close("z", z_want, z_new, 1e-5)

    weights = (w_k, w_v, w_b, b_b)
    A32, z32 = torch.zeros(1, 2 * nu * n, d, device="cuda"), torch.zeros(1, 2 * nu * n, device="cuda")
    A64, z64 = A32.double().cpu(), z32.double().cpu()
    for seg in range(4):
        m = torch.randn(B, M, d, device="cuda")
        A32, z32 = assoc_write(m, *weights, A32, z32, nu=nu, first_segment=seg == 0, backend="cuda")
        A64, z64 = assoc_write_ref(
            m.double().cpu(), *(t.double().cpu() for t in weights), A64, z64, nu=nu, first_segment=seg == 0
        )
        assert_close(f"A seg {seg}", A64, A32, 1e-5)
        assert_close(f"z seg {seg}", z64, z32, 1e-5)


@requires_ext
@pytest.mark.cuda
def test_assoc_write_cuda_host_checks():
    """The extension itself rejects bad tensors (TORCH_CHECK, RuntimeError) naming the argument."""
    from babilong_fast.backends import load_extension

    fn = load_extension()[0].assoc_write_fwd
    mem, w_k, w_v, w_b, b_b, A, z = make_inputs(2, 3, 16, 4, 3, device="cuda")
    ok = dict(mem=mem, w_k=w_k, w_v=w_v, w_b=w_b, b_b=b_b, A=A, z=z)
    cases = [
        ("mem must be a CUDA tensor", dict(mem=mem.cpu())),
        ("mem must be float32, bfloat16 or float16", dict(mem=mem.double())),
        ("w_k must be float32", dict(w_k=w_k.half())),
        ("mem must be contiguous", dict(mem=mem.transpose(0, 1))),
        ("w_v must have shape", dict(w_v=w_v[:-1].contiguous())),
        ("b_b must have shape", dict(b_b=torch.zeros(2, device="cuda"))),
        (r"A\.size\(0\) must be B", dict(A=torch.zeros(3, *A.shape[1:], device="cuda"))),
        ("z must have shape", dict(z=z[:, :-1].contiguous())),
        ("A must be on the same device as mem", dict(A=A.cpu())),
    ]
    for match, over in cases:
        kw = {**ok, **over}
        with pytest.raises(RuntimeError, match=match):
            fn(kw["mem"], kw["w_k"], kw["w_v"], kw["w_b"], kw["b_b"], kw["A"], kw["z"], 3, 1e-5, True, False)
    with pytest.raises(RuntimeError, match="nu must be >= 1"):
        fn(mem, w_k, w_v, w_b, b_b, A, z, 0, 1e-5, True, False)


@requires_ext
@pytest.mark.cuda
def test_assoc_write_cuda_bad_input_raises_in_python():
    """Bad input with backend="cuda" fails in the Python checks (ValueError/TypeError), before any kernel."""
    mem, w_k, w_v, w_b, b_b, A, z = make_inputs(2, 3, 16, 4, 3, device="cuda")
    with pytest.raises(ValueError, match="w_v"):
        assoc_write(mem, w_k, w_v[:-1].contiguous(), w_b, b_b, A, z, backend="cuda")
    with pytest.raises(TypeError, match="mem"):
        assoc_write(mem.double(), w_k, w_v, w_b, b_b, A, z, backend="cuda")
    with pytest.raises(ValueError, match="one device"):
        assoc_write(mem, w_k, w_v, w_b, b_b, A.cpu(), z, backend="cuda")
