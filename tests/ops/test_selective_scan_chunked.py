"""The tiled Triton selective-scan kernels, ``chunked`` and ``statewise`` (tiles of BT steps, ``tl.associative_scan``
within a tile; statewise scans once per state index), and the tuner that picks between their tiles.

In the interpreter that scan runs element by element in Python (~0.3 ms per scanned state element), so the
shapes and tiles here are tiny: small BT and BD give many tiles and several channel blocks cheaply.
The ``step`` kernel is covered by tests/ops/test_selective_scan.py (the interpreter's default) and here
where both are compared.
"""
from __future__ import annotations

import textwrap

import pytest
import torch

from babilong_fast.ops import selective_scan, selective_scan_ref
from tests.helpers import HAS_CUDA, assert_close, assert_same_nonfinite, requires_triton
from tests.ops.test_selective_scan import (
    OPTIONS,
    make_inputs,
    ref64,
    run_chunked,
    with_infinite_decay,
    with_infinite_input,
)
from tests.ops.triton_aot import PTXAS_STATS, has_nvidia_backend, run_compiler_script

pytestmark = [pytest.mark.triton, requires_triton]
DEVICE = "cuda" if HAS_CUDA else "cpu"
RTOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def _kernels():
    from babilong_fast.kernels import selective_scan as k

    return k


TILED = ["chunked", "statewise"]


def tiled_config(kind, BD, BT):
    return _kernels().CONFIG_TYPES[kind](BD, BT, 1)


def run_chunk_kernel(args, BD, BT, dtype=torch.float32, kind="chunked"):
    out, last = _kernels().selective_scan_fwd(**args, config=tiled_config(kind, BD, BT))
    assert out.dtype == dtype and last.dtype == torch.float32
    return out, last


# (layout of B, layout of C, options): every layout with everything on, each option alone.
CASES = [
    pytest.param(b, c, "all", id=f"{b}-{c}-all")
    for b, c in (("invariant", "invariant"), ("varying", "varying"), ("grouped", "grouped"),
                 ("varying", "grouped"), ("invariant", "varying"))
] + [pytest.param("varying", "varying", opt, id=f"varying-{opt}") for opt in ("plain", "D", "z", "bias-softplus")]


@pytest.mark.parametrize("kind", TILED)
@pytest.mark.parametrize("layout,layout_c,opt", CASES)
def test_chunked_kernel_options(layout, layout_c, opt, kind):
    """batch 2, dim 6 in blocks of 4 (the second partial), L = 37 in tiles of 8 (the last partial)."""
    args = make_inputs(2, 6, 37, 4, layout, OPTIONS[opt], device=DEVICE, groups=3, layout_c=layout_c)
    want, want_last = ref64(args)
    out, last = run_chunk_kernel(args, BD=4, BT=8, kind=kind)
    assert_close("out", want, out, 1e-5)
    assert_close("last_state", want_last, last, 1e-5)


# (batch, dim, L, N, BD, BT): L below, at and above one tile; N = 16, odd N (masked state columns), N = 1.
LENGTHS = [
    pytest.param(s, id="b{}-d{}-L{}-N{}-BD{}-BT{}".format(*s))
    for s in [(2, 5, 1, 5, 4, 8), (1, 5, 7, 5, 4, 8), (1, 3, 37, 16, 4, 8), (1, 5, 100, 5, 4, 8),
              (2, 3, 16, 1, 2, 16), (1, 3, 300, 4, 4, 16)]
]


@pytest.mark.parametrize("kind", TILED)
@pytest.mark.parametrize("shape", LENGTHS)
def test_chunked_kernel_lengths(shape, kind):
    """Lengths that are and are not multiples of BT, up to 300 steps (19-38 tiles): the carried state."""
    batch, dim, L, N, BD, BT = shape
    args = make_inputs(batch, dim, L, N, "grouped", device=DEVICE, groups=dim, layout_c="varying")
    want, want_last = ref64(args)
    out, last = run_chunk_kernel(args, BD, BT, kind=kind)
    assert_close("out", want, out, 1e-5)
    assert_close("last_state", want_last, last, 1e-5)


# (dim, groups, BD): the block reads one group (loaded once as [BT, N]) or straddles groups (per channel).
GROUPINGS = [
    pytest.param(8, 2, 4, True, id="d8-G2-BD4-shared"),
    pytest.param(6, 3, 2, True, id="d6-G3-BD2-shared"),
    pytest.param(6, 3, 4, False, id="d6-G3-BD4-straddling"),
    pytest.param(6, 2, 4, False, id="d6-G2-BD4-straddling"),
    pytest.param(7, 1, 4, True, id="d7-G1-BD4-shared-partial"),
]


@pytest.mark.parametrize("kind", TILED)
@pytest.mark.parametrize("dim,groups,BD,shared", GROUPINGS)
def test_chunked_kernel_groups(dim, groups, BD, shared, kind):
    k = _kernels()
    assert k.block_in_one_group(dim // groups, dim, BD) == shared
    args = make_inputs(2, dim, 19, 3, "grouped", device=DEVICE, groups=groups)
    want, want_last = ref64(args)
    out, last = k.selective_scan_fwd(**args, config=tiled_config(kind, BD, 8))
    assert_close("out", want, out, 1e-5)
    assert_close("last_state", want_last, last, 1e-5)


@pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, id="bfloat16"),
                                   pytest.param(torch.float16, id="float16")])
@pytest.mark.parametrize("layout", ["invariant", "varying", "grouped"])
@pytest.mark.parametrize("kind", TILED)
def test_chunked_kernel_half(dtype, layout, kind):
    args = make_inputs(2, 6, 29, 4, layout, device=DEVICE, dtype=dtype, groups=2)
    want, want_last = ref64(args)
    out, last = run_chunk_kernel(args, BD=4, BT=8, dtype=dtype, kind=kind)
    assert_close("out", want, out, RTOL[dtype])
    assert_close("last_state", want_last, last, 1e-5)  # float32 state from exact inputs


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's 0 * inf
@pytest.mark.parametrize("kind", TILED)
@pytest.mark.parametrize("layout", ["invariant", "grouped"])
def test_chunked_kernel_infinite_decay(layout, kind):
    """A = -inf: the steps past L in the last tile stay identities (their dt = 0 gave 0 * -inf = NaN)."""
    args = with_infinite_decay(make_inputs(2, 6, 13, 4, layout, device=DEVICE, groups=2))
    want, want_last = ref64(args)
    out, last = run_chunk_kernel(args, BD=4, BT=8, kind=kind)
    assert_close("out", want, out, 1e-5)
    assert_close("last_state", want_last, last, 1e-5)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's 0 * inf
@pytest.mark.parametrize("kind", TILED)
@pytest.mark.parametrize("layout", ["invariant", "grouped"])
def test_chunked_kernel_infinite_input(layout, kind):
    """An infinite u or delta: +inf outputs as in the reference, not NaN from the tile's state columns past N = 3."""
    args = with_infinite_input(2, 6, 13, 3, layout, with_z=True, device=DEVICE)
    want, want_last = ref64(args)
    assert torch.isinf(want).any() and torch.isinf(want_last).any()
    out, last = run_chunk_kernel(args, BD=4, BT=8, kind=kind)
    assert_same_nonfinite("out", want, out, 1e-5)
    assert_same_nonfinite("last_state", want_last, last, 1e-5)


def test_all_kernels_agree():
    """Every kernel on one input (default configurations), each against float64 and against the step kernel."""
    k = _kernels()
    args = make_inputs(1, 6, 40, 5, "grouped", device=DEVICE, groups=2, layout_c="varying")
    want, want_last = ref64(args)
    res = {name: k.selective_scan_fwd(**args, kernel=name) for name in k.KERNELS}
    for name, (out, last) in res.items():
        assert_close(f"{name} out", want, out, 1e-5)
        assert_close(f"{name} last_state", want_last, last, 1e-5)
    for name in ("chunked", "statewise"):
        assert_close(f"{name} vs step", res["step"][0], res[name][0], 1e-5)


@pytest.fixture(params=TILED)
def chunked_default(monkeypatch, request):
    """The op's triton backend running a tiled kernel here too (on a GPU the tuner picks one of them)."""
    k = _kernels()
    monkeypatch.setattr(k, "INTERPRETER_KERNEL", request.param)
    monkeypatch.setattr(k, "DEFAULT_KERNEL", request.param)


def test_chunked_through_the_op(chunked_default):
    """selective_scan(backend="triton") in calls of 1, 7 and all steps, carrying last_state between calls."""
    args = make_inputs(2, 6, 23, 4, "varying", device=DEVICE)
    want, want_last = ref64(args)
    for chunk in (1, 7, None):
        out, last = run_chunked(args, chunk, "triton")
        assert_close(f"out (chunk {chunk})", want, out, 1e-5)
        assert_close(f"last_state (chunk {chunk})", want_last, last, 1e-5)


def test_chunked_strided_views(chunked_default):
    """u and z as halves of one xz tensor (Mamba's in_proj output); channel strides of 2 * dim * L."""
    xz = torch.randn(2, 12, 9, device=DEVICE)
    x, z = xz.chunk(2, dim=1)
    args = make_inputs(2, 6, 9, 4, "varying", device=DEVICE)
    args.update(u=x, z=z)
    assert_close("out", ref64(args)[0], selective_scan(**args, backend="triton"), 1e-5)


def test_chunked_grad_through_the_op(chunked_default):
    """The autograd path (chunked forward, reference backward) returns the float64 gradients."""
    args = make_inputs(1, 4, 10, 3, "invariant", device=DEVICE)
    leaves = {k: v.clone().requires_grad_() if k in ("u", "delta", "initial_state") else v for k, v in args.items()}
    out, last = selective_scan(**leaves, return_last_state=True, backend="triton")
    g = torch.randn_like(out)
    ((out * g).sum() + last.sum()).backward()
    l64 = {k: v.detach().double().requires_grad_() if k in ("u", "delta", "initial_state") else v
           for k, v in args.items()}
    o64, h64 = selective_scan_ref(**l64, return_last_state=True)
    ((o64 * g.double()).sum() + h64.sum()).backward()
    for name in ("u", "delta", "initial_state"):
        assert_close(f"grad {name}", l64[name].grad, leaves[name].grad, 1e-5)


def test_pick_kernel():
    k = _kernels()
    assert k.pick_kernel(None, None, interpreter=False) == k.DEFAULT_KERNEL == "chunked"
    assert k.pick_kernel(None, None, interpreter=True) == k.INTERPRETER_KERNEL
    assert k.pick_kernel(None, k.SelectiveScanConfig(8, 1), interpreter=False) == "step"
    assert k.pick_kernel(None, k.ChunkedScanConfig(8, 32, 1), interpreter=True) == "chunked"
    assert k.pick_kernel(None, k.StatewiseScanConfig(8, 32, 1), interpreter=False) == "statewise"
    assert k.ChunkedScanConfig(8, 32, 1) != k.StatewiseScanConfig(8, 32, 1)  # the tuner keeps both apart
    assert k.pick_kernel("step", None, interpreter=False) == "step"
    with pytest.raises(ValueError, match="unknown selective scan kernel 'fast'"):
        k.pick_kernel("fast", None, interpreter=False)
    with pytest.raises(TypeError, match="the 'chunked' kernel takes a ChunkedScanConfig"):
        k.pick_kernel("chunked", k.SelectiveScanConfig(8, 1), interpreter=False)
    with pytest.raises(TypeError, match="the 'statewise' kernel takes a StatewiseScanConfig"):
        k.pick_kernel("statewise", k.ChunkedScanConfig(8, 32, 1), interpreter=False)


def test_default_chunked_config():
    """The GPU defaults: powers of two, at most 4096 state elements per tile, 16 per thread, >= 256 programs
    where possible."""
    k = _kernels()
    assert k.default_chunked_config(1, 1536, 16) == k.ChunkedScanConfig(BD=4, BT=32, num_warps=4)  # Mamba-130m
    assert k.default_chunked_config(4, 1536, 16) == k.ChunkedScanConfig(BD=8, BT=32, num_warps=8)
    for batch, dim, N in ((1, 5, 1), (2, 100, 7), (1, 4096, 64), (1, 64, 256)):
        c = k.default_chunked_config(batch, dim, N)
        BN = 1 << (N - 1).bit_length()
        assert c.BT * c.BD * BN <= 4096 and c.BD & (c.BD - 1) == 0 and c.BT & (c.BT - 1) == 0
        assert c.num_warps == max(1, min(8, c.BT * c.BD * BN // 512))


def test_chunked_candidates():
    """The default first, no repeats, powers of two, 16 state elements per thread, <= 4096 per tile."""
    k = _kernels()
    for batch, dim, N in ((1, 1536, 16), (8, 1536, 16), (1, 5, 1), (2, 100, 7), (1, 1024, 256)):
        cands = k.chunked_candidates(batch, dim, N)
        assert cands[0] == k.default_chunked_config(batch, dim, N) and len(set(cands)) == len(cands)
        BN = 1 << (N - 1).bit_length()
        for c in cands:
            assert c.BD & (c.BD - 1) == 0 and c.BT & (c.BT - 1) == 0 and c.BT * c.BD * BN <= 4096
    assert len(k.chunked_candidates(1, 1536, 16)) == 5
    assert k.ChunkedScanConfig(1, 128, 4) in k.chunked_candidates(1, 1536, 16)  # one channel per program


def test_statewise_candidates():
    """The default first, no repeats, powers of two, 4 [BT, BD] pairs per thread."""
    k = _kernels()
    for batch, dim, N in ((1, 1536, 16), (8, 1536, 16), (1, 1, 1), (2, 100, 7)):
        cands = k.statewise_candidates(batch, dim, N)
        assert cands[0] == k.default_statewise_config(batch, dim, N) and len(set(cands)) == len(cands)
        for c in cands:
            assert c.BD & (c.BD - 1) == 0 and c.BT & (c.BT - 1) == 0 and c.BT * c.BD == 128 * c.num_warps
            assert c.BD <= max(1, 1 << (dim - 1).bit_length())
    assert len(k.statewise_candidates(1, 1536, 16)) == 6 and len(k.statewise_candidates(1, 1, 1)) == 2


@pytest.fixture
def tuner(monkeypatch):
    """Tuning on here too, from 8 steps, timed on 9, with a fresh record."""
    k = _kernels()
    monkeypatch.setenv(k.TUNE_ENV, "1")
    monkeypatch.setattr(k, "TUNE_MIN_STEPS", 8)
    monkeypatch.setattr(k, "TUNE_STEPS", 9)  # timed on a prefix; the final launch writes every output
    monkeypatch.setattr(k, "SCAN_TUNER", k.ConfigTuner(repeats=1))
    return k.SCAN_TUNER


def test_tuned_scan_matches_reference(tuner, monkeypatch):
    """The measured pick runs every candidate on the call's inputs, then the fastest; the result is the scan's
    and a second call of the same size reuses the pick (no timing)."""
    k = _kernels()
    cands = [k.ChunkedScanConfig(4, 8, 1), k.ChunkedScanConfig(2, 16, 1), k.ChunkedScanConfig(8, 4, 1)]
    monkeypatch.setitem(k.CANDIDATES, "chunked", lambda batch, dim, N: cands)
    args = make_inputs(2, 6, 21, 4, "grouped", device=DEVICE, groups=2, layout_c="varying")
    want, want_last = ref64(args)
    out, last = k.selective_scan_fwd(**args, kernel="chunked")
    assert_close("out", want, out, 1e-5)
    assert_close("last_state", want_last, last, 1e-5)
    (rep,) = tuner.report()
    assert set(rep["seconds"]) == {repr(c) for c in cands} and not rep["errors"]
    assert rep["picked"] == next(iter(rep["seconds"]))  # the fastest
    assert rep["key"]["batch"] == 2 and rep["key"]["dim"] == 6 and rep["key"]["N"] == 4 and rep["key"]["HAS_Z"]
    assert rep["key"]["kernels"] == "chunked"  # a named kernel: its own tiles only
    timed = tuner.timer
    monkeypatch.setattr(tuner, "timer", lambda *a: pytest.fail("timed again"))
    args2 = make_inputs(2, 6, 9, 4, "grouped", device=DEVICE, groups=2, layout_c="varying")  # same size, new L
    assert_close("out (cached pick)", ref64(args2)[0], k.selective_scan_fwd(**args2, kernel="chunked")[0], 1e-5)
    monkeypatch.setattr(tuner, "timer", timed)


def test_tuning_times_both_tiled_kernels_when_none_is_named(tuner, monkeypatch):
    """With no kernel named (the GPU default), chunked and statewise tiles compete; the result is the scan's."""
    k = _kernels()
    cands = {"chunked": [k.ChunkedScanConfig(4, 8, 1)], "statewise": [k.StatewiseScanConfig(4, 8, 1)]}
    for name, c in cands.items():
        monkeypatch.setitem(k.CANDIDATES, name, lambda batch, dim, N, c=c: c)
    monkeypatch.setattr(k, "INTERPRETER_KERNEL", "chunked")  # as on a GPU: a tiled kernel by default
    args = make_inputs(1, 8, 12, 3, "grouped", device=DEVICE, groups=2)
    out, _ = k.selective_scan_fwd(**args)
    assert_close("out", ref64(args)[0], out, 1e-5)
    (rep,) = tuner.report()
    assert rep["key"]["kernels"] == "chunked,statewise" and len(rep["seconds"]) == 2
    assert rep["candidates"] == [repr(cands["chunked"][0]), repr(cands["statewise"][0])]


def test_tuning_skips_short_calls_explicit_configs_and_the_step_kernel(tuner):
    k = _kernels()
    args = make_inputs(1, 4, 7, 4, "varying", device=DEVICE)  # 7 < TUNE_MIN_STEPS
    k.selective_scan_fwd(**args, kernel="chunked")
    long = make_inputs(1, 4, 9, 4, "varying", device=DEVICE)
    k.selective_scan_fwd(**long, config=k.ChunkedScanConfig(4, 8, 1))
    k.selective_scan_fwd(**long, kernel="step")
    assert tuner.report() == []


def test_tuning_wanted(monkeypatch):
    k = _kernels()
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.delenv(k.TUNE_ENV, raising=False)
    assert k.tuning_wanted(gpu) and not k.tuning_wanted(cpu)
    for off in ("0", "off", "False"):
        monkeypatch.setenv(k.TUNE_ENV, off)
        assert not k.tuning_wanted(gpu)
    monkeypatch.setenv(k.TUNE_ENV, "on")
    assert k.tuning_wanted(cpu)
    monkeypatch.setenv(k.TUNE_ENV, "fast")
    with pytest.raises(ValueError, match="BABILONG_FAST_SCAN_TUNE must be 0/off, 1/on or auto, got 'fast'"):
        k.tuning_wanted(gpu)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_tuned_scan_on_the_gpu(monkeypatch):
    """The real tuner (CUDA events) on a Mamba-130m-sized layer, one candidate per tiled kernel to keep the
    compiles few; inside a CUDA-graph capture the pick is reused, not timed."""
    k = _kernels()
    monkeypatch.setattr(k, "SCAN_TUNER", k.ConfigTuner())
    monkeypatch.setitem(k.CANDIDATES, "chunked", lambda batch, dim, N: [k.ChunkedScanConfig(1, 128, 4)])
    monkeypatch.setitem(k.CANDIDATES, "statewise", lambda batch, dim, N: [k.default_statewise_config(batch, dim, N)])
    args = make_inputs(1, 1536, 1024, 16, "varying", device=DEVICE, dtype=torch.bfloat16)
    want, want_last = ref64(args)
    out, last = k.selective_scan_fwd(**args)
    assert_close("out", want, out, 1e-2)
    assert_close("last_state", want_last, last, 1e-5)
    (rep,) = k.SCAN_TUNER.report()
    assert len(rep["seconds"]) == 2 and all(s > 0 for s in rep["seconds"].values()), rep
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out, _ = k.selective_scan_fwd(**args)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(g_out, out) and len(k.SCAN_TUNER.report()) == 1


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_every_tuning_candidate_on_the_gpu():
    """Each tile the tuner may pick at Mamba-130m's shape gives the float64 answer on the GPU (the interpreter
    ignores num_warps, so multi-warp tiles are checked only here); about 11 compiles."""
    k = _kernels()
    args = make_inputs(1, 1536, 1024, 16, "varying", device=DEVICE, dtype=torch.bfloat16)
    want, want_last = ref64(args)
    configs = k.chunked_candidates(1, 1536, 16) + k.statewise_candidates(1, 1536, 16)
    assert len(configs) == 11
    for c in configs:
        out, last = k.selective_scan_fwd(**args, config=c)
        assert_close(f"out {c}", want, out, 1e-2)
        assert_close(f"last_state {c}", want_last, last, 1e-5)


# Compile both kernels for an H100 (sm_90) ahead of time, without a GPU (tests/ops/triton_aot.py).
COMPILE_PRELUDE = textwrap.dedent("""
    import os
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from babilong_fast.kernels import selective_scan as k

    flags = ["B_VARYING", "C_VARYING", "HAS_D", "HAS_Z", "HAS_DELTA_BIAS", "DELTA_SOFTPLUS", "HAS_H0", "STORE_HT"]

    def compile(fn, dtype, consts, num_warps, stride="i64"):
        ptrs = dict(u=dtype, delta=dtype, z=dtype, out=dtype, B=dtype, C=dtype, A="fp32", D="fp32",
                    delta_bias="fp32", h0="fp32", hT="fp32")
        sig = {n: "constexpr" if n in consts else ("*" + ptrs[n]) if n in ptrs else
               stride if n.startswith("stride") else "i32" for n in fn.arg_names}
        c = triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": num_warps})
        assert c.asm["cubin"], fn
        return c
""")
AOT_SCRIPT = COMPILE_PRELUDE + textwrap.dedent("""
    on = {f: True for f in flags}
    off = {f: False for f in flags}
    for batch, dim, N in ((1, 1536, 16), (4, 1536, 16), (1, 1024, 256)):
        c = k.default_chunked_config(batch, dim, N)
        BN = triton.next_power_of_2(N)
        for dtype, fl, shared in (("bf16", on, True), ("fp32", on, False), ("fp16", off, False)):
            consts = dict(fl, BT=c.BT, BD=c.BD, BN=BN, B_SHARED=shared, C_SHARED=shared)
            compile(k._selective_scan_chunk_fwd_kernel, dtype, consts, c.num_warps)
            print("chunked", dtype, c.BT, c.BD, BN, "ok")
        s = k.default_step_config(batch, dim, N)
        compile(k._selective_scan_step_fwd_kernel, "bf16", dict(on, BD=s.BD, BN=BN), s.num_warps)
        print("step bf16", s.BD, BN, "ok")
""")



# Every tuning candidate of both tiled kernels at Mamba-130m's batch-1 shape, through ptxas -v for sm_90: none
# may spill registers (chunked: 16 values per thread and tile tensor; at 32 ptxas gives 255 registers and spills).
SPILL_SCRIPT = COMPILE_PRELUDE + PTXAS_STATS + textwrap.dedent("""
    for c in k.chunked_candidates(1, 1536, 16) + k.statewise_candidates(1, 1536, 16):
        statewise = isinstance(c, k.StatewiseScanConfig)
        fn = k.statewise_scan_fwd_kernel if statewise else k._selective_scan_chunk_fwd_kernel
        consts = dict({f: True for f in flags}, BT=c.BT, BD=c.BD, BN=16, B_SHARED=True, C_SHARED=True)
        ck = compile(fn, "bf16", consts, c.num_warps, stride="i32")  # i32 strides, as Triton passes any below 2^31
        regs, spills = ptxas_stats(ck.asm["ptx"])
        print(c, "registers", regs, "spills", spills)
""")



@pytest.mark.skipif(not has_nvidia_backend(), reason="needs Triton's NVIDIA backend (ptxas)")
def test_kernels_compile_for_sm90():
    out = run_compiler_script(AOT_SCRIPT)
    assert out.count(" ok") == 12, out


@pytest.mark.skipif(not has_nvidia_backend(), reason="needs Triton's NVIDIA backend (ptxas)")
def test_tuning_candidates_do_not_spill_on_sm90():
    """The chunked tiles (the default kernel) spill nothing; a statewise tile at most 8 bytes (two registers):
    Triton 3.8 spills none, 3.6 (the GPU image's) 4 bytes in two of them."""
    lines = run_compiler_script(SPILL_SCRIPT).splitlines()
    spills = [int(ln.rsplit(" ", 1)[1]) for ln in lines]
    assert len(lines) == 5 + 6 and spills[:5] == [0] * 5 and max(spills[5:]) <= 8, lines
