"""Which micro-benchmark rows run on this machine (shared by the ``test_*_bench.py`` files here)."""
from __future__ import annotations

import pytest
import torch

import babilong_fast

GPU = torch.cuda.is_available()


def skip_unless_timed_here(backend: str, dtype: torch.dtype | None = None) -> None:
    """Skip a row whose backend cannot run here; on a CPU only the torch backend, in float32, is timed."""
    status = babilong_fast.backends()[backend]
    if not status.available or (not GPU and backend != "torch"):
        pytest.skip(f"{backend}: {status.reason if not status.available else 'CPU timings only for torch'}")
    if not GPU and dtype is not None and dtype != torch.float32:
        pytest.skip("CPU timings in float32 only")
