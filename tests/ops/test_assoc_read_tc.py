"""Every extension variant ``assoc_read_fwd*`` (FFMA and 3xTF32 tensor cores) against the float64 reference."""
from __future__ import annotations

import itertools

import pytest
import torch

from babilong_fast.backends import load_extension
from babilong_fast.ops import assoc_read_ref
from tests.helpers import assert_close, requires_ext

pytestmark = [requires_ext, pytest.mark.cuda]

RTOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
KNOWN_VARIANTS = ("assoc_read_fwd", "assoc_read_fwd_tc")


def _variants() -> list[str]:
    """The extension's assoc_read forward variants plus the known ones (a known one that is missing fails)."""
    ext = load_extension()[0]
    found = {name for name in dir(ext) if name.startswith("assoc_read_fwd")} if ext is not None else set()
    return sorted(found | set(KNOWN_VARIANTS))


FNS = [pytest.param(name, id=name) for name in _variants()]


def _ids(shape, batch_a=None):
    tag = "B{}-T{}-d{}-n{}-nu{}".format(*shape)
    return tag if batch_a is None else f"{tag}-Ab{batch_a}"


# float32: the full grid of odd and real sizes (T past one tile, d not a multiple of 16, F = 26 or 78).
FP32_SHAPES = [
    pytest.param(s, id=_ids(s))
    for s in itertools.product((1, 8), (1, 5, 522, 1000), (768, 200, 17), (64, 13), (1, 3))
]
# float16 / bfloat16: the real shape and the oddest one, every batch and sequence length.
HALF_SHAPES = [
    pytest.param((B, T, d, n, nu), id=_ids((B, T, d, n, nu)))
    for B, T, (d, n, nu) in itertools.product((1, 8), (1, 5, 522, 1000), ((768, 64, 3), (17, 13, 1)))
]
# A and z with batch 1, broadcast over B = 8 (tiles then span batch boundaries).
BROADCAST_SHAPES = [
    pytest.param((8, T, d, n, nu), id=_ids((8, T, d, n, nu), 1))
    for T, (d, n, nu) in itertools.product((5, 522), ((768, 64, 3), (200, 13, 1), (17, 64, 3)))
]
HALF = [pytest.param(torch.bfloat16, id="bfloat16"), pytest.param(torch.float16, id="float16")]


def make_inputs(B, T, d, n, nu, batch_a=None, dtype=torch.float32):
    F = 2 * nu * n
    Ba = B if batch_a is None else batch_a
    h = torch.randn(B, T, d, device="cuda").to(dtype)
    w_q = torch.randn(n, d, device="cuda") / d**0.5
    A = torch.randn(Ba, F, d, device="cuda")
    z = torch.rand(Ba, F, device="cuda") + 0.05
    return h, w_q, A, z


def run_variant(name, h, w_q, A, z, nu, eps=1e-5):
    """Calls the variant after leaving a NaN-filled block of out's size in the CUDA cache, so an output
    element the kernel never writes shows up as NaN (the C++ torch::empty is not NaN-poisoned by conftest)."""
    poison = torch.full((h.numel(),), float("nan"), dtype=h.dtype, device=h.device)
    del poison
    return getattr(load_extension()[0], name)(h, w_q, A, z, nu, eps)


def check(name, shape, dtype, batch_a=None):
    B, T, d, n, nu = shape
    h, w_q, A, z = make_inputs(B, T, d, n, nu, batch_a, dtype)
    out = run_variant(name, h, w_q, A, z, nu)
    assert out.dtype == dtype and out.shape == h.shape and out.device == h.device
    ref = assoc_read_ref(h.double(), w_q.double(), A.double(), z.double(), nu)
    assert_close(f"{name} out", ref, out, RTOL[dtype])


@pytest.mark.parametrize("name", FNS)
@pytest.mark.parametrize("shape", FP32_SHAPES)
def test_assoc_read_fwd_variants_fp32(name, shape):
    check(name, shape, torch.float32)


@pytest.mark.parametrize("name", FNS)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("shape", HALF_SHAPES)
def test_assoc_read_fwd_variants_half(name, dtype, shape):
    check(name, shape, dtype)


@pytest.mark.parametrize("name", FNS)
@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="float32"), *HALF])
@pytest.mark.parametrize("shape", BROADCAST_SHAPES)
def test_assoc_read_fwd_variants_broadcast(name, dtype, shape):
    check(name, shape, dtype, batch_a=1)


@pytest.mark.parametrize("name", FNS)
def test_assoc_read_fwd_variants_large_values(name):
    """A state 1e3 times larger and a tiny key scale: the 3xTF32 split must stay relative, not absolute."""
    h, w_q, A, z = make_inputs(2, 70, 96, 16, 3)
    A, w_q = A * 1e3, w_q * 1e-2
    out = run_variant(name, h, w_q, A, z, 3)
    ref = assoc_read_ref(h.double(), w_q.double(), A.double(), z.double(), 3)
    assert_close(f"{name} out", ref, out, 1e-5)


def test_tc_variant_is_built():
    assert "assoc_read_fwd_tc" in dir(load_extension()[0])


def test_tc_variant_rejects_bad_input():
    fn = load_extension()[0].assoc_read_fwd_tc
    h, w_q, A, z = make_inputs(2, 5, 16, 4, 3)
    with pytest.raises(RuntimeError, match="assoc_read_fwd_tc: A must have shape"):
        fn(h, w_q, A[:, :-1].contiguous(), z, 3, 1e-5)
    with pytest.raises(RuntimeError, match="assoc_read_fwd_tc: A must be float32"):
        fn(h, w_q, A.double(), z, 3, 1e-5)
    with pytest.raises(RuntimeError, match="assoc_read_fwd_tc: h must be a CUDA tensor"):
        fn(h.cpu(), w_q, A, z, 3, 1e-5)
    with pytest.raises(RuntimeError, match="assoc_read_fwd_tc: z must be contiguous"):
        fn(h, w_q, A, torch.randn(24, 2, device="cuda").t(), 3, 1e-5)


def test_tc_variant_too_large_n():
    """The q tile lives in shared memory: an n that does not fit must fail with a clear message."""
    fn = load_extension()[0].assoc_read_fwd_tc
    h, w_q, A, z = make_inputs(1, 3, 8, 512, 1)
    with pytest.raises(RuntimeError, match="shared memory"):
        fn(h, w_q, A, z, 1, 1e-5)
