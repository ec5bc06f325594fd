"""Fixtures of the op tests."""
from __future__ import annotations

import pytest

from tests.ops import cuda_emulation


@pytest.fixture(scope="session")
def emu(tmp_path_factory):
    """csrc's CUDA kernels with CPU tensors in and out: compiled on a GPU, else the thread emulator (built once
    per session, about 45 s on 2 cores), its blocks' threads scheduled as ``$BFAST_EMU_SCHEDULE`` says
    (``cuda_emulation.default_schedule``)."""
    return cuda_emulation.kernels_under_test(str(tmp_path_factory.mktemp("kernels_emulator")))
