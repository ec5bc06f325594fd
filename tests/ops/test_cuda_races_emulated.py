"""csrc's CUDA kernels under the emulator's serial schedules: a block's threads take turns, in thread order
(``forward``) or reverse order, each running from one sync point (``__syncthreads``, a warp shuffle or mma) to the
next, with shared memory NaN-filled before each block. A shared-memory race, a thread reading what another
writes between the same two sync points (or overwriting what another has still to read), then gives a wrong
result in one of the two orders, whatever the host's interleaving; with free-running host threads it shows only
when the threads happen to interleave badly. One case per kernel and path, each with several blocks and tiles,
against float64. (To run every emulated case this way: ``BFAST_EMU_SCHEDULE=forward`` or ``=reverse``, about
14 min each here.)
"""
from __future__ import annotations

import time

import pytest
import torch

from tests.ops import cuda_emulation
from tests.ops import test_assoc_read_cuda_emulated as read_tests
from tests.ops import test_causal_conv1d_cuda_emulated as conv_tests
from tests.ops import test_memory_kernels_cuda_emulated as memory_tests
from tests.ops import test_selective_scan_cuda_emulated as scan_tests
from tests.ops.test_causal_conv1d import make_inputs as conv_inputs
from tests.ops.test_selective_scan import make_inputs as scan_inputs

pytestmark = [
    pytest.mark.skipif(cuda_emulation.skip_reason() is not None, reason=str(cuda_emulation.skip_reason())),
    pytest.mark.skipif(torch.cuda.is_available(), reason="schedules belong to the emulator; a GPU runs the kernels"),
]


@pytest.fixture(params=["forward", "reverse"])
def serial(emu, request):
    """The emulated kernels with the block's threads taking turns in ``request.param`` order."""
    emu.set_schedule(request.param)
    yield emu
    emu.set_schedule(cuda_emulation.default_schedule())


@pytest.mark.parametrize(
    "serial,stale,stale_blocks",
    [("forward", slice(0, 63), slice(0, 3)), ("reverse", slice(63, 64), slice(3, 4))],
    indirect=["serial"],
)
def test_schedule_shows_a_race(serial, stale, stale_blocks):
    """The emulator's own check: reading a neighbour's shared slot without ``__syncthreads`` reads it unwritten
    (NaN) in each serial order; with the barrier every order reads the written values. Likewise a block reading
    the global slot of the next block (blocks run in reverse under the reverse schedule)."""
    want = torch.arange(1, 65, dtype=torch.float32) % 64  # thread t reads slot t + 1
    racy = serial.emulator_neighbour_read(False)
    assert racy[stale].isnan().all()
    assert torch.equal(racy[~racy.isnan()], want[~racy.isnan()])
    assert torch.equal(serial.emulator_neighbour_read(True), want)
    blocks = serial.emulator_neighbour_block_read()  # across blocks, through global memory
    want_blocks = torch.tensor([1.0, 2.0, 3.0, 0.0])  # block b reads slot b + 1 of 4
    assert blocks[stale_blocks].isnan().all()
    assert torch.equal(blocks[~blocks.isnan()], want_blocks[~blocks.isnan()])


def test_unknown_schedule_raises(emu):
    with pytest.raises(RuntimeError, match="schedule must be"):
        emu.set_schedule("backwards")


def test_schedule_finds_a_deadlock_at_once(serial):
    """Threads left at a barrier with no runnable thread to release them: the turn has nowhere to go, so the
    launch raises at once rather than after the watchdog's timeout (60 s here)."""
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="deadlock: threads missing from a barrier"):
        serial.emulator_self_check("divergent_sync", 60_000)
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("name", read_tests.VARIANTS)
@pytest.mark.parametrize("num_sms", [132, 1])
def test_assoc_read(serial, name, num_sms):
    """T past a tile, d past a column tile, A broadcast; the split reductions (132 SMs) and the unsplit (1)."""
    args = read_tests.make_inputs(2, 37, 136, 8, 3, 2)
    read_tests.check(serial, name, args, 3, 1e-5, num_sms)


@pytest.mark.parametrize("first,correction", [(False, True), (True, True)])
def test_assoc_write(serial, first, correction):
    """Three row chunks (M = 33), two feature chunks (F = 42), d off the tiles, the roll wrapping (nu > 2 d_mem),
    a broadcast state."""
    memory_tests.check_write(serial, (2, 33, 65, 3, 7, 2), torch.float32, first, correction)


def test_segment_embed(serial):
    memory_tests.test_emulated_segment_embed(serial, torch.float32, (3, 13, 5, 5, 17, 3))


def test_rows_layer_norm(serial):
    """d = 1100: several values per thread and all the block's warps in the reduction."""
    memory_tests.test_emulated_rows_layer_norm(serial, torch.float32, (2, 12, 5, 1, 1100))


def test_selective_scan(serial):
    """Two tiles (the carried state's double buffer) of several rounds (N = 3: the warps' double buffer)."""
    args = scan_inputs(1, 2, scan_tests.TILE + 300, 3, "grouped")
    scan_tests.check(args, *scan_tests.scan(serial, args))


def test_causal_conv1d(serial):
    """Three blocks along the row, each staging the inputs before its tile; bias, initial state, SiLU."""
    args = conv_inputs(1, 2, 2 * conv_tests.TILE + 3, 4, True, True, device="cpu")
    conv_tests.check(args, *conv_tests.conv(serial, args, "silu"), "silu")
