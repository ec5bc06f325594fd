from __future__ import annotations

import pytest
import torch

from babilong_fast.backends import triton_interpret
from babilong_fast.ops import rows_layer_norm, rows_layer_norm_ref, segment_embed
from babilong_fast.ops.segment_io import segment_embed_rows
from tests.helpers import assert_close, backend_params, dtype_params

RTOL = {torch.float32: 1e-6, torch.bfloat16: 5e-3, torch.float16: 1e-3}
DTYPES = dtype_params(RTOL)

# (B, L, Mf, Mb, d, memory batch): RMT [mem; x; mem], ARMT [x; mem], no memory, front only, broadcast
# memory (batch 1), odd d, a single token.
EMBED_SHAPES = [
    pytest.param(s, id="B{}-L{}-Mf{}-Mb{}-d{}-Bm{}".format(*s))
    for s in [
        (1, 16, 4, 4, 200, 1),
        (3, 13, 5, 5, 17, 3),
        (2, 9, 0, 6, 200, 2),
        (3, 7, 0, 3, 33, 1),
        (2, 11, 0, 0, 64, 2),
        (2, 5, 3, 0, 17, 1),
        (1, 1, 2, 2, 1100, 1),
    ]
]


def embed_ref64(ids, wte, wpe, front, back) -> torch.Tensor:
    """float64 ``[front; wte[ids]; back] + wpe`` by concatenation (independent of the op's code)."""
    B = ids.shape[0]
    parts = [] if front is None else [front.double().expand(B, -1, -1)]
    parts.append(wte.double()[ids])
    if back is not None:
        parts.append(back.double().expand(B, -1, -1))
    x = torch.cat(parts, 1)
    return x + wpe.double()[: x.shape[1]]


def make_embed(B, L, Mf, Mb, d, Bm, dtype, device, mem_dtype=torch.float32, V=50, P=None):
    P = P or Mf + L + Mb + 3
    ids = torch.randint(0, V, (B, L), device=device)
    wte = torch.randn(V, d, device=device).to(dtype)
    wpe = torch.randn(P, d, device=device).to(dtype)
    front = torch.randn(Bm, Mf, d, device=device).to(mem_dtype) if Mf else None
    back = torch.randn(Bm, Mb, d, device=device).to(mem_dtype) if Mb else None
    out = torch.empty(B, Mf + L + Mb, d, device=device, dtype=dtype)
    return ids, wte, wpe, front, back, out


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", EMBED_SHAPES)
def test_segment_embed(backend, device, dtype, shape):
    ids, wte, wpe, front, back, out = make_embed(*shape, dtype, device)
    got = segment_embed(ids, wte, wpe, out, front=front, back=back, backend=backend)
    assert got is out and got.dtype == dtype
    assert_close("out", embed_ref64(ids, wte, wpe, front, back), got, RTOL[dtype])


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("mem_dtype", [torch.bfloat16, torch.float16], ids=["mem-bf16", "mem-fp16"])
def test_segment_embed_memory_dtype(backend, device, mem_dtype):
    """Memory rows in another dtype than the buffer (fp32 buffer, half memory; and the reverse)."""
    ids, wte, wpe, front, back, out = make_embed(2, 6, 3, 4, 40, 2, torch.float32, device, mem_dtype=mem_dtype)
    segment_embed(ids, wte, wpe, out, front=front, back=back, backend=backend)
    assert_close("fp32 out", embed_ref64(ids, wte, wpe, front, back), out, 1e-6)
    ids, wte, wpe, front, back, out = make_embed(2, 6, 3, 4, 40, 1, mem_dtype, device, mem_dtype=torch.float32)
    segment_embed(ids, wte, wpe, out, front=front, back=back, backend=backend)
    assert_close("half out", embed_ref64(ids, wte, wpe, front, back), out, 5e-3)


@pytest.mark.parametrize("backend,device", backend_params())
def test_segment_embed_rounds_once(backend, device):
    """bf16 buffer, fp32 memory: the fp32 sum is rounded once (not memory to bf16, then the sum again)."""
    ids, wte, wpe, front, back, out = make_embed(2, 5, 4, 4, 64, 2, torch.bfloat16, device)
    segment_embed(ids, wte, wpe, out, front=front, back=back, backend=backend)
    exact = embed_ref64(ids, wte, wpe, front, back).float()
    if backend == "triton" and triton_interpret():
        # The interpreter's float32 -> bfloat16 cast truncates instead of rounding to nearest: within one ulp.
        assert ((out.cpu().float() - exact.cpu()).abs() <= exact.cpu().abs() * 2.0**-7).all()
    else:
        assert torch.equal(out.cpu(), exact.to(torch.bfloat16).cpu())


@pytest.mark.parametrize("backend,device", backend_params())
def test_segment_embed_bad_ids_give_nan(backend, device):
    ids, wte, wpe, front, back, out = make_embed(2, 6, 2, 2, 24, 1, torch.float32, device)
    ids[0, 1], ids[1, 4] = -1, wte.shape[0]
    segment_embed(ids, wte, wpe, out, front=front, back=back, backend=backend)
    bad = torch.zeros(2, 10, dtype=torch.bool)
    bad[0, 2 + 1] = bad[1, 2 + 4] = True
    rows_nan = torch.isnan(out.cpu()).all(-1)
    assert torch.equal(rows_nan, bad) and not torch.isnan(out.cpu()[~bad]).any()


@pytest.mark.parametrize("backend,device", backend_params())
def test_segment_embed_buffer_reuse(backend, device):
    """A dirty buffer is fully overwritten (the stream step reuses one per shape)."""
    ids, wte, wpe, front, back, out = make_embed(2, 8, 3, 3, 48, 2, torch.float32, device)
    out.fill_(123.0)
    segment_embed(ids, wte, wpe, out, front=front, back=back, backend=backend)
    assert_close("out", embed_ref64(ids, wte, wpe, front, back), out, 1e-6)


def test_segment_embed_torch_backend_differentiable():
    """The torch backend is plain torch: gradients reach the embeddings and the memory rows."""
    ids, wte, wpe, front, back, out = make_embed(2, 6, 3, 3, 16, 1, torch.float32, "cpu")
    wte.requires_grad_()
    front.requires_grad_()
    got = segment_embed(ids, wte, wpe, out, front=front, back=back, backend="torch")
    got.square().sum().backward()
    want_front = 2 * (embed_ref64(ids, wte.detach(), wpe, front.detach(), back)[:, :3]).sum(0, keepdim=True)
    assert_close("front.grad", want_front, front.grad, 1e-6)
    assert wte.grad is not None and wte.grad.abs().sum() > 0


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.id != "torch"])
def test_fused_backends_refuse_inputs_that_want_gradients(backend, device):
    """The fused kernels have no backward: with an input that requires grad they refuse, rather than return a
    result without a graph; under no_grad they run."""
    ids, wte, wpe, front, back, out = make_embed(2, 5, 2, 2, 16, 1, torch.float32, device)
    x, w, b = ln_inputs(2, 9, 16, device, torch.float32)
    for t in (wte, w):
        t.requires_grad_(True)
    with pytest.raises(ValueError, match=f"segment_embed's {backend} backend is inference-only"):
        segment_embed(ids, wte, wpe, out, front=front, back=back, backend=backend)
    with pytest.raises(ValueError, match=f"rows_layer_norm's {backend} backend is inference-only"):
        rows_layer_norm(x, 3, 4, w, b, LN_EPS, backend=backend)
    with torch.no_grad():
        segment_embed(ids, wte, wpe, out, front=front, back=back, backend=backend)
        rows_layer_norm(x, 3, 4, w, b, LN_EPS, backend=backend)


def test_segment_embed_rows():
    """The functional form (no out buffer): the float32 sums rounded once, NaN rows for bad ids, no front."""
    wte, wpe = torch.randn(50, 16), torch.randn(40, 16)
    ids = torch.randint(0, 50, (2, 7))
    ids[1, 3] = 50
    front, back = torch.randn(1, 3, 16), torch.randn(2, 4, 16)
    for dtype in (torch.float32, torch.bfloat16):
        got = segment_embed_rows(ids, wte.to(dtype), wpe.to(dtype), front, back)
        assert got.dtype == dtype
        good = ids.clamp(max=49)
        exact = embed_ref64(good, wte.to(dtype), wpe.to(dtype), front, back).float().to(dtype)
        exact[1, 3 + 3] = float("nan")
        torch.testing.assert_close(got, exact, rtol=0, atol=0, equal_nan=True)
        assert got[1, 6].isnan().all() and not got[0].isnan().any()
    assert segment_embed_rows(ids[:1, :2], wte, wpe, None, back[:1]).shape == (1, 6, 16)


def test_segment_embed_bad_input():
    ids, wte, wpe, front, back, out = make_embed(2, 6, 3, 3, 16, 1, torch.float32, "cpu", P=12)
    with pytest.raises(TypeError, match="input_ids must have dtype int64"):
        segment_embed(ids.int(), wte, wpe, out, front=front, back=back)
    with pytest.raises(TypeError, match="share one dtype"):
        segment_embed(ids, wte.double(), wpe, out, front=front, back=back)
    with pytest.raises(ValueError, match=r"out must be \[B, Mf \+ L \+ Mb, d\]"):
        segment_embed(ids, wte, wpe, out, front=front)
    with pytest.raises(ValueError, match="wpe only 10 positions"):
        segment_embed(ids, wte, wpe[:10], out, front=front, back=back)
    with pytest.raises(ValueError, match="front must be"):
        segment_embed(ids, wte, wpe, out, front=front.expand(3, -1, -1).contiguous(), back=back)
    with pytest.raises(ValueError, match="d = out.shape"):
        segment_embed(ids, wte[:, :8].contiguous(), wpe, out, front=front, back=back)
    with pytest.raises(ValueError, match="contiguous"):
        segment_embed(ids, wte, wpe, out.transpose(0, 1).contiguous().transpose(0, 1), front=front, back=back)
    with pytest.raises(ValueError, match="must be 2-D"):
        segment_embed(ids[0], wte, wpe, out, front=front, back=back)
    with pytest.raises(TypeError, match="back must be a torch.Tensor"):
        segment_embed(ids, wte, wpe, out, front=front, back=[1.0])
    with pytest.raises(ValueError, match="unknown backend"):
        segment_embed(ids, wte, wpe, out, front=front, back=back, backend="nope")
    with pytest.raises(ValueError, match="one device"):
        segment_embed(ids, wte, wpe, out, front=front.to("meta"), back=back)
    with pytest.raises(ValueError, match="wte must have at least one row"):  # every backend alike
        segment_embed(ids, wte[:0], wpe, out, front=front, back=back)


# (B, T, start, count, d): RMT's write rows at the end, a band in the middle, one row, odd and large d.
ROWS_SHAPES = [
    pytest.param(s, id="B{}-T{}-s{}-c{}-d{}".format(*s))
    for s in [(1, 24, 20, 4, 200), (3, 30, 17, 5, 17), (2, 9, 0, 9, 64), (2, 12, 5, 1, 1100), (1, 7, 3, 2, 8)]
]


LN_EPS = 0.1  # against variances of about 9: a kernel that drops or fixes eps is off by about 1 %


def ln_inputs(B, T, d, device, dtype):
    x = (torch.randn(B, T, d, device=device) * 3 + torch.randn(B, T, 1, device=device)).to(dtype)
    w = torch.randn(d, device=device).to(dtype)
    b = torch.randn(d, device=device).to(dtype)
    return x, w, b


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROWS_SHAPES)
def test_rows_layer_norm(backend, device, dtype, shape):
    B, T, start, count, d = shape
    x, w, b = ln_inputs(B, T, d, device, dtype)
    got = rows_layer_norm(x, start, count, w, b, LN_EPS, backend=backend)
    assert got.dtype == torch.float32 and got.shape == (B, count, d)
    want = rows_layer_norm_ref(x.double(), start, count, w.double(), b.double(), LN_EPS)
    assert_close("out", want, got, 2e-6)


@pytest.mark.parametrize("backend,device", backend_params())
def test_rows_layer_norm_matches_nn_layer_norm(backend, device):
    """fp32: the band equals ``nn.LayerNorm`` applied to the whole tensor, then sliced (RMT's old path)."""
    ln = torch.nn.LayerNorm(96, eps=1e-5).to(device)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
        x = torch.randn(3, 26, 96, device=device) + 0.5
        out = torch.empty(3, 6, 96, device=device)
        got = rows_layer_norm(x, 20, 6, ln.weight, ln.bias, ln.eps, out, backend=backend)
        assert got is out
        assert_close("out", ln(x)[:, 20:], got, 1e-6)


def test_rows_layer_norm_bad_input():
    x, w, b = ln_inputs(2, 10, 16, "cpu", torch.float32)
    with pytest.raises(ValueError, match="exceed x's 10 rows"):
        rows_layer_norm(x, 8, 3, w, b)
    with pytest.raises(ValueError, match="start must be an integer >= 0"):
        rows_layer_norm(x, -1, 3, w, b)
    with pytest.raises(ValueError, match=r"weight and bias must be \[d\]"):
        rows_layer_norm(x, 0, 3, w[:8], b)
    with pytest.raises(ValueError, match="out must be"):
        rows_layer_norm(x, 0, 3, w, b, out=torch.empty(2, 4, 16))
    with pytest.raises(TypeError, match="out must have dtype float32"):
        rows_layer_norm(x, 0, 3, w, b, out=torch.empty(2, 3, 16, dtype=torch.bfloat16))
    for eps in (0.0, float("inf")):
        with pytest.raises(ValueError, match="eps must be a finite number > 0"):
            rows_layer_norm(x, 0, 3, w, b, eps)
    with pytest.raises(ValueError, match="contiguous"):
        rows_layer_norm(x.transpose(1, 2).contiguous().transpose(1, 2), 0, 3, w, b)
    with pytest.raises(ValueError, match="must be 3-D"):
        rows_layer_norm(x[0], 0, 3, w, b)
