"""The thread emulation's own failure paths (tests/ops/cuda_emulation): a kernel that deadlocks or throws in its
threads makes the launch raise, instead of hanging the test run or aborting the process."""
from __future__ import annotations

import pytest
import torch

from tests.ops import cuda_emulation

pytestmark = [
    pytest.mark.skipif(cuda_emulation.skip_reason() is not None, reason=str(cuda_emulation.skip_reason())),
    pytest.mark.skipif(torch.cuda.is_available(), reason="the emulator is not built where a GPU runs the kernels"),
]


def test_divergent_syncthreads_raises(emu):
    with pytest.raises(RuntimeError, match="deadlock: threads missing from a barrier"):
        emu.emulator_self_check("divergent_sync", 300)


def test_exception_in_a_thread_raises(emu):
    with pytest.raises(RuntimeError, match="launched with none"):
        emu.emulator_self_check("missing_smem", 60_000)
