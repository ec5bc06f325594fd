from __future__ import annotations

import pytest
import torch

from babilong_fast.backends import BackendUnavailableError
from babilong_fast.ops import assoc_write, assoc_write_ref
from tests.helpers import assert_close

# (B, M, d, d_mem, nu): one memory row, ARMT's M = 10, odd sizes, nu != 3.
SHAPES = [
    pytest.param(s, id="B{}-M{}-d{}-n{}-nu{}".format(*s))
    for s in [(1, 1, 16, 4, 3), (2, 10, 48, 8, 3), (3, 5, 33, 7, 2), (1, 3, 20, 3, 1)]
]


def phi_spec(u: torch.Tensor, nu: int) -> torch.Tensor:
    """DPFP from its index formula: phi[j*2n + i] = s[i] * s[(i - j - 1) mod 2n], s = [relu(u), relu(-u)]."""
    s = torch.cat([u.clamp_min(0), (-u).clamp_min(0)], -1)
    two_n = s.shape[-1]
    i = torch.arange(two_n)
    return torch.cat([s * s[..., (i - j) % two_n] for j in range(1, nu + 1)], -1)


def write_spec(mem, w_k, w_v, w_b, b_b, A, z, nu, eps=1e-5, correction=True, first=False, detach_gamma=True):
    """Float64 spec of the ARMT write: every row j against the pre-update state, rank-1 updates summed."""
    mem, w_k, w_v, w_b, b_b, A, z = (t.double() for t in (mem, w_k, w_v, w_b, b_b, A, z))
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


def make_inputs(B, M, d, n, nu, batch_state=None, z_scale=1.0):
    F = 2 * nu * n
    Bs = B if batch_state is None else batch_state
    mem = torch.randn(B, M, d)
    w_k = torch.randn(n, d) / d**0.5
    w_v = torch.randn(d, d) / d**0.5
    w_b = torch.randn(1, d) / d**0.5
    b_b = torch.randn(1)
    A = torch.randn(Bs, F, d)
    z = torch.rand(Bs, F) * z_scale
    return mem, w_k, w_v, w_b, b_b, A, z


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_assoc_write_half_inputs_give_float32_state(dtype):
    mem, w_k, w_v, w_b, b_b, A, z = make_inputs(2, 10, 40, 8, 3, z_scale=0.05)
    mem, w_k, w_v, w_b, b_b = (t.to(dtype) for t in (mem, w_k, w_v, w_b, b_b))
    A_new, z_new = assoc_write(mem, w_k, w_v, w_b, b_b, A, z)
    assert A_new.dtype == z_new.dtype == torch.float32
    A_want, z_want = write_spec(mem, w_k, w_v, w_b, b_b, A, z, 3)
    assert_close("A", A_want, A_new, 1e-5)
    assert_close("z", z_want, z_new, 1e-5)


def test_assoc_write_first_segment_rules():
    """Empty memory: A_new = K^T diag(beta) V and z_new = sum_j k_j, whatever the correction flag."""
    mem, w_k, w_v, w_b, b_b, A, z = make_inputs(2, 6, 24, 4, 3)
    A0, z0 = torch.zeros_like(A), torch.zeros_like(z)
    K = phi_spec(mem.double() @ w_k.double().t(), 3)
    V = mem.double() @ w_v.double().t()
    beta = torch.sigmoid(mem.double() @ w_b.double().t() + b_b.double())
    for correction in (True, False):
        A_new, z_new = assoc_write(mem, w_k, w_v, w_b, b_b, A0, z0, correction=correction, first_segment=True)
        assert_close("A", K.transpose(1, 2) @ (beta * V), A_new, 1e-6)
        assert_close("z", K.sum(1), z_new, 1e-6)
    # An empty state without the first-segment flag is not the same: gamma = 1 - eps/(|k|^2+eps) < 1.
    _, z_later = assoc_write(mem, w_k, w_v, w_b, b_b, A0, z0)
    assert not torch.equal(z_later, z_new)


def test_assoc_write_repeated_keys_give_zero_gamma():
    """Writing the same memory rows twice: gamma = 0 on the second write, so z does not grow (armt_rmt.md 2.5)."""
    mem, w_k, w_v, w_b, b_b, A, z = (t.double() for t in make_inputs(2, 10, 32, 8, 3))
    A0, z0 = torch.zeros_like(A), torch.zeros_like(z)
    A1, z1 = assoc_write_ref(mem, w_k, w_v, w_b, b_b, A0, z0, first_segment=True)
    A2, z2 = assoc_write_ref(mem, w_k, w_v, w_b, b_b, A1, z1)
    assert torch.equal(z2, z1)
    # One row: the recall of a stored key is beta * v up to eps, so a second write of it adds ~(1 - beta) beta v.
    m1 = mem[:, :1]
    A1, z1 = assoc_write_ref(m1, w_k, w_v, w_b, b_b, A0, z0, first_segment=True)
    A2, z2 = assoc_write_ref(m1, w_k, w_v, w_b, b_b, A1, z1)
    assert_close("z", z1, z2, 1e-12)  # gamma = 1 - (|k|^2 + eps)/(|k|^2 + eps): zero up to rounding
    k = phi_spec(m1 @ w_k.t(), 3)
    v = m1 @ w_v.t()
    beta = torch.sigmoid(m1 @ w_b.t() + b_b)
    assert_close("A", A1 + k.transpose(1, 2) @ (beta * (1 - beta) * v), A2, 1e-6)


def test_assoc_write_broadcast_state():
    args = make_inputs(3, 7, 36, 6, 3, batch_state=1, z_scale=0.05)
    A_want, z_want = write_spec(*args, 3)
    A_new, z_new = assoc_write(*args)
    assert A_new.shape == (3, 36, 36) and z_new.shape == (3, 36)
    assert_close("A", A_want, A_new, 1e-5)
    assert_close("z", z_want, z_new, 1e-5)
    A_new, z_new = assoc_write(*args, first_segment=True)
    assert A_new.shape == (3, 36, 36) and z_new.shape == (3, 36)


def test_assoc_write_gamma_is_detached():
    """Gradients equal the spec's with gamma detached and differ from the spec's with gamma differentiated."""
    B, M, d, n, nu = 2, 5, 24, 4, 3
    base = [t.double() for t in make_inputs(B, M, d, n, nu)]
    # Pick z so that some gammas lie strictly inside (0, 1): there clip has a nonzero derivative.
    K = phi_spec(base[0] @ base[1].t(), nu)
    base[6] = K.mean(1) * 0.3 / M
    delta = K @ base[6].unsqueeze(-1)
    gamma = 1 - delta.squeeze(-1) / K.square().sum(-1)
    assert ((gamma > 0.05) & (gamma < 0.95)).any()
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


def test_assoc_write_grads_match_spec_float32():
    args = make_inputs(2, 4, 20, 4, 2, z_scale=0.05)
    inputs = [t.clone().requires_grad_(True) for t in args]
    A_new, z_new = assoc_write(*inputs, nu=2)
    (A_new.square().sum() + z_new.sum()).backward()
    ref_inputs = [t.double().requires_grad_(True) for t in args]
    A_ref, z_ref = write_spec(*ref_inputs, 2)
    (A_ref.square().sum() + z_ref.sum()).backward()
    for name, t, r in zip(("mem", "w_k", "w_v", "w_b", "b_b", "A", "z"), inputs, ref_inputs, strict=True):
        assert_close(f"d{name}", r.grad, t.grad, 1e-5)


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
    with pytest.raises(ValueError, match="eps"):
        assoc_write(mem, w_k, w_v, w_b, b_b, A, z, eps=0.0)
    with pytest.raises(BackendUnavailableError, match="assoc_write"):
        call(backend="triton")
