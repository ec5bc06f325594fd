"""Triton kernel for the Mamba-1 selective scan with an initial state (see ``babilong_fast.ops.selective_scan``).

Recurrence per channel d and state index n (Gu & Dao 2023, https://arxiv.org/abs/2312.00752)::

    dt_t = softplus?(delta_t + delta_bias)
    x_t  = exp(dt_t A) x_{t-1} + dt_t B_t u_t,     x_{-1} = initial_state
    y_t  = (C_t . x_t + D u_t) * silu(z_t)

Three kernels, each with one program per (batch row, block of BD channels) holding that block's ``[BD, N]``
state in registers, so any length runs in constant memory and the last state is the register tile at the end:

- ``chunked`` (:func:`_selective_scan_chunk_fwd_kernel`, the default): walks the sequence in tiles of BT steps.
  Each tile's u, delta, z (``[BT, BD]``) and B, C (``[BT, N]``) are loaded at once, the ``[BT, BD, N]`` pairs
  ``(exp(dt A), dt B u)`` are scanned along the steps with ``tl.associative_scan`` and the state carried from
  the previous tile is added as ``cumprod(exp(dt A)) * h_prev``. L / BT dependent steps instead of L.
- ``statewise`` (``babilong_fast.kernels.selective_scan_statewise``): the same tiles, scanned as ``[BT, BD]``
  once per state index n (N times smaller scans, N of them per tile).
- ``step`` (:func:`_selective_scan_step_fwd_kernel`): one step at a time (latency-bound on a GPU; kept as
  a second implementation to compare against).

Offsets are int64 (10M+ token sequences). :data:`DEFAULT_KERNEL` (:data:`INTERPRETER_KERNEL` in Triton's
interpreter) picks the kernel when the caller does not. On a GPU the tiled kernel and its tile are picked by
timing (:data:`SCAN_TUNER`): which order and tile shape hide the scan's latency best is not known without
measuring it.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from babilong_fast.kernels.config_tuner import ConfigTuner
from babilong_fast.kernels.launch_limits import check_batch
from babilong_fast.kernels.scan_math import channel_block, scan_combine, softplus
from babilong_fast.kernels.selective_scan_statewise import (
    StatewiseScanConfig,
    default_statewise_config,
    statewise_candidates,
    statewise_scan_fwd_kernel,
)

KERNELS = ("chunked", "statewise", "step")
DEFAULT_KERNEL = "chunked"
"""The kernel :func:`selective_scan_fwd` runs on a GPU when neither ``kernel`` nor ``config`` says."""
INTERPRETER_KERNEL = "step"
"""Its default under ``TRITON_INTERPRET=1`` (tensors on the CPU): the interpreter runs ``tl.associative_scan``
one element at a time in Python (about 0.3 ms per state element), 20-50x slower there than the step kernel's
whole-tile numpy steps. The chunked kernel is tested by naming it."""
TUNE_ENV = "BABILONG_FAST_SCAN_TUNE"
"""``0`` / ``off``: no timing, the kernel's default config; ``1`` / ``on``: time on any device whenever a tiled
kernel runs (in the interpreter only where one is named: its default is ``step``); unset / ``auto``: on CUDA
devices only."""
TUNE_MIN_STEPS = 1024
"""Calls with fewer steps use the default config (launch-bound; not worth timing)."""
TUNE_STEPS = 8192
"""Candidates are timed on the call's first ``min(L, TUNE_STEPS)`` steps (the ranking does not depend on L; a
10M-step call would otherwise pay ~44 full scans)."""
SCAN_TUNER = ConfigTuner()
"""The tiled kernels' measured picks, per problem size and flag set (:data:`CANDIDATES`); its ``report()`` is
what a benchmark records."""


@triton.jit(do_not_specialize=["L"])
def _selective_scan_step_fwd_kernel(
    u, delta, A, B, C, D, z, delta_bias, h0, out, hT,
    L, DIM, N, B_DPG, C_DPG,
    stride_u_b, stride_u_d, stride_dt_b, stride_dt_d, stride_z_b, stride_z_d,
    stride_B_b, stride_B_g, stride_B_n, stride_C_b, stride_C_g, stride_C_n,
    BD: tl.constexpr, BN: tl.constexpr,
    B_VARYING: tl.constexpr, C_VARYING: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
):
    i_d, i_b, o_d, o_n, m_d, m_n, m_dn, o_bdn, b_A, b_h, b_D, b_db = channel_block(
        A, D, delta_bias, h0, DIM, N, BD, BN, HAS_D, HAS_DELTA_BIAS, HAS_H0)
    o_dn = o_d[:, None] * N + o_n[None, :]  # [BD, BN] into (dim, N)
    # Time-invariant B, C: one [BD, BN] tile for the whole sequence. Time-varying (batch, G, N, L):
    # per-channel row pointers into the channel's group (G = 1 for the (batch, N, L) layout).
    if B_VARYING:
        p_B = B + i_b * stride_B_b + (o_d // B_DPG)[:, None] * stride_B_g + o_n[None, :] * stride_B_n
    else:
        b_B = tl.load(B + o_dn, mask=m_dn, other=0.0).to(tl.float32)
    if C_VARYING:
        p_C = C + i_b * stride_C_b + (o_d // C_DPG)[:, None] * stride_C_g + o_n[None, :] * stride_C_n
    else:
        b_C = tl.load(C + o_dn, mask=m_dn, other=0.0).to(tl.float32)
    p_u = u + i_b * stride_u_b + o_d * stride_u_d
    p_dt = delta + i_b * stride_dt_b + o_d * stride_dt_d
    p_o = out + (i_b * DIM + o_d) * L
    if HAS_Z:
        p_z = z + i_b * stride_z_b + o_d * stride_z_d

    for t in range(0, L):
        b_u = tl.load(p_u + t, mask=m_d, other=0.0).to(tl.float32)  # [BD]
        b_dt = tl.load(p_dt + t, mask=m_d, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            b_dt += b_db
        if DELTA_SOFTPLUS:
            b_dt = softplus(b_dt)
        if B_VARYING:
            b_B = tl.load(p_B + t, mask=m_dn, other=0.0).to(tl.float32)  # [BD, BN]
        if C_VARYING:
            b_C = tl.load(p_C + t, mask=m_dn, other=0.0).to(tl.float32)
        b_h = tl.exp(b_dt[:, None] * b_A) * b_h + (b_dt * b_u)[:, None] * b_B  # [BD, BN]
        # State columns past N (BN > N) hold 0 * inf = NaN once dt or dt u is infinite: kept out of the sum.
        b_y = tl.sum(tl.where(m_n[None, :], b_h * b_C, 0.0), axis=1)  # [BD]
        if HAS_D:
            b_y += b_D * b_u
        if HAS_Z:
            b_z = tl.load(p_z + t, mask=m_d, other=0.0).to(tl.float32)
            b_y *= b_z * tl.sigmoid(b_z)
        tl.store(p_o + t, b_y.to(out.dtype.element_ty), mask=m_d)

    if STORE_HT:
        tl.store(hT + o_bdn, b_h, mask=m_dn)


@triton.jit
def _chunk_load(p_u, p_dt, p_z, p_B, p_C, t0, L, o_t, m_d, m_n, BT: tl.constexpr, HAS_Z: tl.constexpr,
                B_VARYING: tl.constexpr, B_SHARED: tl.constexpr, C_VARYING: tl.constexpr, C_SHARED: tl.constexpr):
    """One tile's inputs from step t0, fp32: u, delta, z ``[BT, BD]``; time-varying B, C ``[BT, 1, BN]`` (one
    group for the block) or ``[BT, BD, BN]``. Absent ones are 0.0 placeholders; steps past L load 0."""
    o_tt = t0 + o_t  # [BT]
    m_t = o_tt < L
    m_td = m_t[:, None] & m_d[None, :]
    b_u = tl.load(p_u + o_tt[:, None], mask=m_td, other=0.0).to(tl.float32)
    b_dt = tl.load(p_dt + o_tt[:, None], mask=m_td, other=0.0).to(tl.float32)
    b_z = 0.0
    if HAS_Z:
        b_z = tl.load(p_z + o_tt[:, None], mask=m_td, other=0.0).to(tl.float32)
    b_B = 0.0
    if B_VARYING:
        if B_SHARED:
            b_B = tl.load(p_B + o_tt[:, None], mask=m_t[:, None] & m_n[None, :], other=0.0).to(tl.float32)[:, None, :]
        else:
            m_tdn = m_td[:, :, None] & m_n[None, None, :]
            b_B = tl.load(p_B + o_tt[:, None, None], mask=m_tdn, other=0.0).to(tl.float32)
    b_C = 0.0
    if C_VARYING:
        if C_SHARED:
            b_C = tl.load(p_C + o_tt[:, None], mask=m_t[:, None] & m_n[None, :], other=0.0).to(tl.float32)[:, None, :]
        else:
            m_tdn = m_td[:, :, None] & m_n[None, None, :]
            b_C = tl.load(p_C + o_tt[:, None, None], mask=m_tdn, other=0.0).to(tl.float32)
    return b_u, b_dt, b_z, b_B, b_C


@triton.jit(do_not_specialize=["L"])
def _selective_scan_chunk_fwd_kernel(
    u, delta, A, B, C, D, z, delta_bias, h0, out, hT,
    L, DIM, N, B_DPG, C_DPG,
    stride_u_b, stride_u_d, stride_dt_b, stride_dt_d, stride_z_b, stride_z_d,
    stride_B_b, stride_B_g, stride_B_n, stride_C_b, stride_C_g, stride_C_n,
    BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
    B_VARYING: tl.constexpr, C_VARYING: tl.constexpr, B_SHARED: tl.constexpr, C_SHARED: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
):
    # B_SHARED / C_SHARED (time-varying only): all BD channels of this program read the same group, so the
    # tile is loaded once as [BT, BN]; otherwise per channel as [BT, BD, BN].
    i_d, i_b, o_d, o_n, m_d, m_n, m_dn, o_bdn, b_A, b_h, b_D, b_db = channel_block(
        A, D, delta_bias, h0, DIM, N, BD, BN, HAS_D, HAS_DELTA_BIAS, HAS_H0)
    o_dn = o_d[:, None] * N + o_n[None, :]  # [BD, BN] into (dim, N)
    o_t = tl.arange(0, BT)
    # B, C as [BT or 1, BD or 1, BN] views that broadcast against the [BT, BD, BN] state tile.
    if B_VARYING:
        if B_SHARED:
            p_B = B + i_b * stride_B_b + ((i_d * BD) // B_DPG) * stride_B_g + o_n[None, :] * stride_B_n  # [1, BN]
        else:
            p_B = (B + i_b * stride_B_b + ((o_d // B_DPG) * stride_B_g)[None, :, None]
                   + (o_n * stride_B_n)[None, None, :])  # [1, BD, BN]
    else:
        p_B = B  # unused
        b_B = tl.load(B + o_dn, mask=m_dn, other=0.0).to(tl.float32)[None, :, :]
    if C_VARYING:
        if C_SHARED:
            p_C = C + i_b * stride_C_b + ((i_d * BD) // C_DPG) * stride_C_g + o_n[None, :] * stride_C_n
        else:
            p_C = (C + i_b * stride_C_b + ((o_d // C_DPG) * stride_C_g)[None, :, None]
                   + (o_n * stride_C_n)[None, None, :])
    else:
        p_C = C  # unused
        b_C = tl.load(C + o_dn, mask=m_dn, other=0.0).to(tl.float32)[None, :, :]
    p_u = u + i_b * stride_u_b + (o_d * stride_u_d)[None, :]  # [1, BD]; + t along the rows
    p_dt = delta + i_b * stride_dt_b + (o_d * stride_dt_d)[None, :]
    p_o = out + ((i_b * DIM + o_d) * L)[None, :]
    p_z = z + i_b * stride_z_b + (o_d * stride_z_d)[None, :]  # unused without z

    # Software pipelining by hand: the next tile's loads are issued before this tile's scan, so their
    # latency overlaps the arithmetic (nothing in them depends on the state).
    n_u, n_dt, n_z, n_B, n_C = _chunk_load(
        p_u, p_dt, p_z, p_B, p_C, 0, L, o_t, m_d, m_n, BT, HAS_Z, B_VARYING, B_SHARED, C_VARYING, C_SHARED)
    for t0 in range(0, L, BT):
        b_u, b_dt, b_z = n_u, n_dt, n_z
        if B_VARYING:
            b_B = n_B
        if C_VARYING:
            b_C = n_C
        n_u, n_dt, n_z, n_B, n_C = _chunk_load(
            p_u, p_dt, p_z, p_B, p_C, t0 + BT, L, o_t, m_d, m_n, BT, HAS_Z, B_VARYING, B_SHARED, C_VARYING, C_SHARED)
        m_td = ((t0 + o_t) < L)[:, None] & m_d[None, :]  # [BT, BD]
        if HAS_DELTA_BIAS:
            b_dt += b_db[None, :]
        if DELTA_SOFTPLUS:
            b_dt = softplus(b_dt)
        # Steps past L: decay 1, no input, so the last row is the state at L (set, not from dt = 0: 0 * A and
        # 0 * B are NaN where A or B is infinite).
        m_tdn = m_td[:, :, None]
        b_a = tl.where(m_tdn, tl.exp(b_dt[:, :, None] * b_A[None, :, :]), 1.0)  # [BT, BD, BN]
        b_b = tl.where(m_tdn, (b_dt * b_u)[:, :, None] * b_B, 0.0)
        # Prefix over the tile's steps from a zero state: b_a = decay since the tile start, b_b = state.
        b_a, b_b = tl.associative_scan((b_a, b_b), 0, scan_combine)
        b_hs = b_a * b_h[None, :, :] + b_b  # [BT, BD, BN]: every step's state
        # State columns past N (BN > N) hold 0 * inf = NaN once dt or dt u is infinite: kept out of the sum.
        b_y = tl.sum(tl.where(m_n[None, None, :], b_hs * b_C, 0.0), axis=2)  # [BT, BD]
        b_h = tl.sum(tl.where((o_t == BT - 1)[:, None, None], b_hs, 0.0), axis=0)  # last row
        if HAS_D:
            b_y += b_D[None, :] * b_u
        if HAS_Z:
            b_y *= b_z * tl.sigmoid(b_z)
        tl.store(p_o + (t0 + o_t)[:, None], b_y.to(out.dtype.element_ty), mask=m_td)

    if STORE_HT:
        tl.store(hT + o_bdn, b_h, mask=m_dn)


class SelectiveScanConfig(NamedTuple):
    """Launch configuration of the ``step`` kernel :func:`_selective_scan_step_fwd_kernel`: channels per program
    and warps."""

    BD: int
    num_warps: int


class ChunkedScanConfig(NamedTuple):
    """Launch configuration of the ``chunked`` kernel :func:`_selective_scan_chunk_fwd_kernel`: channels per
    program, steps per tile and warps. ``BT`` and ``BD`` are powers of two."""

    BD: int
    BT: int
    num_warps: int


def default_step_config(batch: int, dim: int, N: int, interpreter: bool = False) -> SelectiveScanConfig:
    """Small channel blocks on a GPU (the loop over L is latency-bound, so more programs help; untuned);
    wide blocks in the interpreter, where programs run one after another."""
    BN = triton.next_power_of_2(N)
    BD = max(1, min(64 if interpreter else 32, 2048 // BN, triton.next_power_of_2(dim)))
    if not interpreter and batch * triton.cdiv(dim, BD) < 128 and BD > 8:
        BD = max(8, BD // 2)
    return SelectiveScanConfig(BD, 4 if BD * BN >= 1024 else (2 if BD * BN >= 256 else 1))


def default_chunked_config(batch: int, dim: int, N: int, interpreter: bool = False) -> ChunkedScanConfig:
    """On a GPU (untimed; see :func:`chunked_candidates` for the measured pick): tiles of ``BT * BD * BN``
    <= 4096 state elements, 16 fp32 values per thread and tensor (``BT * BD * BN / 512`` warps: the scan keeps
    about six such tensors live; at 32 per thread ptxas gives the sm_90 kernel 255 registers), BT = 32 steps
    (16 for N > 128), BD = 8 channels for N = 16, halved while there are fewer than 256 programs (batch 1 at
    Mamba-130m's dim 1536 has 192 programs of 8) so that more SMs are busy. In the interpreter, which scans
    element by element: wide channel blocks (fewer programs) and 16 steps (little padding)."""
    BN = triton.next_power_of_2(N)
    if interpreter:
        BT = 16
        return ChunkedScanConfig(max(1, min(64, 16384 // (BT * BN), triton.next_power_of_2(dim))), BT, 1)
    BT = 32 if BN <= 128 else 16
    BD = max(1, min(8, 4096 // (BT * BN), triton.next_power_of_2(dim)))
    while BD > 4 and batch * triton.cdiv(dim, BD) < 256:
        BD //= 2
    return ChunkedScanConfig(BD, BT, _warps(BT * BD * BN))


def _warps(elements: int) -> int:
    """Warps for a tile of ``elements`` state elements: 16 per thread, 1 to 8 warps."""
    return max(1, min(8, elements // 512))


def chunked_candidates(batch: int, dim: int, N: int) -> list[ChunkedScanConfig]:
    """The chunked configs :data:`SCAN_TUNER` times on a GPU: the default first, then tiles of 2048 state elements
    with BT = 32, 64 or 128 steps and of 4096 with 32 or 64 (BT = 16 too for N > 64, where fewer fit: one tile
    at N = 256), as many channels as fill the tile, 16 values per thread (no spills at sm_90 for N <= 16). Few
    channels per program means more programs (batch 1 at dim 1536: 1536 programs of one channel) but longer
    scans; which wins is only known by timing."""
    BN = triton.next_power_of_2(N)
    out = [default_chunked_config(batch, dim, N)]
    max_bd = triton.next_power_of_2(dim)
    for elements, steps in ((2048, (16, 32, 64, 128)), (4096, (16, 32, 64))):
        for BT in steps:
            BD = elements // (BT * BN)
            if BD < 1 or BD > max_bd or (BT == 16 and BN <= 64):
                continue
            out.append(ChunkedScanConfig(BD, BT, _warps(elements)))
    return list(dict.fromkeys(out))


def _b_strides(X: torch.Tensor, dim: int) -> tuple[int, int, int, int]:
    """(channels per group, batch, group, n strides) of a time-varying B or C; unused for (dim, N)."""
    if X.dim() == 2:
        return 1, 0, 0, 0
    if X.dim() == 3:  # (batch, N, L): one group
        return dim, X.stride(0), 0, X.stride(1)
    return dim // X.shape[1], X.stride(0), X.stride(1), X.stride(2)


def block_in_one_group(dpg: int, dim: int, BD: int) -> bool:
    """Whether every block of BD channels lies in one group of ``dpg`` channels (``dpg == dim``: one group),
    so the chunked kernel loads a time-varying B or C tile once as ``[BT, N]`` instead of per channel."""
    return dpg == dim or dpg % BD == 0


def tuning_wanted(device: torch.device) -> bool:
    """Whether the tiled kernels' candidates are timed on ``device`` (:data:`TUNE_ENV`)."""
    mode = os.environ.get(TUNE_ENV, "auto").strip().lower()
    if mode in ("0", "off", "false", "no"):
        return False
    if mode in ("1", "on", "true", "yes"):
        return True
    if mode != "auto":
        raise ValueError(f"{TUNE_ENV} must be 0/off, 1/on or auto, got {mode!r}")
    return device.type == "cuda"


ScanConfig = SelectiveScanConfig | ChunkedScanConfig | StatewiseScanConfig
CONFIG_TYPES = {"chunked": ChunkedScanConfig, "statewise": StatewiseScanConfig, "step": SelectiveScanConfig}
DEFAULT_CONFIGS = {"chunked": default_chunked_config, "statewise": default_statewise_config,
                   "step": default_step_config}
CANDIDATES = {"chunked": chunked_candidates, "statewise": statewise_candidates}
"""Kernels the tuner chooses among; with no ``kernel`` named it times both families."""


def pick_kernel(kernel: str | None, config: ScanConfig | None, interpreter: bool) -> str:
    """The kernel to run: ``kernel`` if given, else the one ``config``'s type belongs to, else
    :data:`INTERPRETER_KERNEL` or :data:`DEFAULT_KERNEL`. Raises on an unknown name or a mismatched config."""
    if kernel is None:
        if config is not None:
            return next(k for k, t in CONFIG_TYPES.items() if isinstance(config, t))
        kernel = INTERPRETER_KERNEL if interpreter else DEFAULT_KERNEL
    if kernel not in KERNELS:
        raise ValueError(f"unknown selective scan kernel {kernel!r}; pick one of {KERNELS}")
    want = CONFIG_TYPES[kernel]
    if config is not None and not isinstance(config, want):
        raise TypeError(f"the {kernel!r} kernel takes a {want.__name__}, got {type(config).__name__}")
    return kernel


TILED_UNSAFE_L = range(2**31 - 2**16, 2**31)
"""Lengths the tiled kernels hand to the step kernel: L is an int32 argument below 2^31 (int64 from it), and their
``for t0 in range(0, L, BT)`` would step t0 past 2^31 - 1, wrap and go on writing (tiles have BT < 2^16 steps).
A loop over tile numbers avoids it but makes a chunked tile spill under Triton 3.6."""


def kernel_for_length(kernel: str, L: int) -> str:
    """``kernel``, or ``"step"`` where a tiled kernel's int32 tile loop would overflow (:data:`TILED_UNSAFE_L`)."""
    return "step" if kernel != "step" and L in TILED_UNSAFE_L else kernel


def selective_scan_fwd(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = True,
    config: ScanConfig | None = None,
    kernel: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the scan. u, delta, z ``[batch, dim, L]`` (last stride 1, any other strides); A ``[dim, N]`` fp32;
    B, C ``[dim, N]``, ``[batch, N, L]`` or ``[batch, G, N, L]``; D, delta_bias ``[dim]``; initial_state
    ``[batch, dim, N]`` fp32 contiguous. Checked by the caller.

    ``kernel``: ``"chunked"``, ``"statewise"`` or ``"step"`` (default: see :func:`pick_kernel`; the step kernel
    for an L in :data:`TILED_UNSAFE_L`). ``config``
    overrides the kernel's configuration (benchmark sweeps). Without one, on a CUDA device, the first call of
    each problem size with at least :data:`TUNE_MIN_STEPS` steps times the tiled kernels' candidates
    (:data:`CANDIDATES`: both families when no ``kernel`` is named, else that one's) and keeps the fastest
    (:data:`SCAN_TUNER`, :data:`TUNE_ENV`); otherwise the kernel's default config runs.

    Returns ``(out [batch, dim, L] in u's dtype, last_state [batch, dim, N] fp32 or None)``.
    """
    interpreter = u.device.type == "cpu"
    named = kernel
    kernel = pick_kernel(kernel, config, interpreter)
    batch, dim, L = u.shape
    check_batch("selective_scan", batch)
    if kernel_for_length(kernel, L) != kernel:
        kernel, config = "step", None
    N = A.shape[1]
    out = torch.empty(batch, dim, L, device=u.device, dtype=u.dtype)
    hT = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32) if return_last_state else None
    B_dpg, *B_strides = _b_strides(B, dim)
    C_dpg, *C_strides = _b_strides(C, dim)
    dummy = u  # stands in for absent optional tensors; never read
    pointers = (
        u, delta, A, B, C,
        dummy if D is None else D, dummy if z is None else z, dummy if delta_bias is None else delta_bias,
        dummy if initial_state is None else initial_state, out, out if hT is None else hT,
    )
    sizes = (dim, N, B_dpg, C_dpg, u.stride(0), u.stride(1), delta.stride(0), delta.stride(1),
             0 if z is None else z.stride(0), 0 if z is None else z.stride(1), *B_strides, *C_strides)
    flags = dict(
        BN=triton.next_power_of_2(N),
        B_VARYING=B.dim() > 2, C_VARYING=C.dim() > 2,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
        DELTA_SOFTPLUS=bool(delta_softplus), HAS_H0=initial_state is not None, STORE_HT=hT is not None,
    )

    def launch(c: ScanConfig, steps: int = L) -> None:
        """The first ``steps`` steps (fewer than L only while timing: out's rows are then packed at stride
        ``steps``, in bounds, and the final launch writes every output again)."""
        grid = (triton.cdiv(dim, c.BD), batch)
        args = (*pointers, steps, *sizes)
        if isinstance(c, SelectiveScanConfig):
            _selective_scan_step_fwd_kernel[grid](*args, BD=c.BD, num_warps=c.num_warps, **flags)
            return
        fn = statewise_scan_fwd_kernel if isinstance(c, StatewiseScanConfig) else _selective_scan_chunk_fwd_kernel
        fn[grid](*args, BD=c.BD, BT=c.BT, B_SHARED=block_in_one_group(B_dpg, dim, c.BD),
                 C_SHARED=block_in_one_group(C_dpg, dim, c.BD), num_warps=c.num_warps, **flags)

    c = config
    families = [k for k in CANDIDATES if named in (None, k)] if kernel in CANDIDATES else []
    if c is None and families and L >= TUNE_MIN_STEPS and tuning_wanted(u.device):
        # One key per problem size and flag set, whatever L (>= TUNE_MIN_STEPS): the tile that wins on one
        # long chunk wins on the next, and a short last chunk does not measure again inside a timed run.
        key = dict(device=str(u.device), batch=batch, dim=dim, N=N, dtype=str(u.dtype), B_dtype=str(B.dtype),
                   C_dtype=str(C.dtype), B_channels_per_group=B_dpg, C_channels_per_group=C_dpg,
                   kernels=",".join(families), **flags)
        if u.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            # no timing inside a CUDA-graph capture; StreamRunner's eager warm-up has cached the pick by then
            c = SCAN_TUNER.cached(key)
        else:
            candidates = [c for k in families for c in CANDIDATES[k](batch, dim, N)]
            c = SCAN_TUNER.pick(key, candidates, lambda c: launch(c, min(L, TUNE_STEPS)), u.device)
    if c is None:
        c = DEFAULT_CONFIGS[kernel](batch, dim, N, interpreter)
    launch(c)
    return out, hT
