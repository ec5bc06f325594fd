"""Test setup: Triton's interpreter on machines without a GPU, NaN-poisoned empties, fixed seed (overridable)."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must happen before babilong_fast.kernels is imported: Triton reads it when kernels are defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")


SEED = int(os.environ.get("BABILONG_FAST_TEST_SEED", "42"))


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same seed; BABILONG_FAST_TEST_SEED changes it, to check that no tolerance holds
    only for one draw."""
    torch.manual_seed(SEED)


@pytest.fixture(autouse=True)
def _poison_empty(monkeypatch):
    """Fill new float buffers with NaN so a kernel that leaves an output element unwritten fails."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned(fn):
        def wrapper(*args, **kwargs):
            t = fn(*args, **kwargs)
            if t.is_floating_point() and t.device.type != "meta":
                with torch.no_grad():  # a leaf that requires grad (torch.utils.checkpoint makes one) may be filled
                    t.fill_(float("nan"))
            return t

        return wrapper

    monkeypatch.setattr(torch, "empty", poisoned(empty))
    monkeypatch.setattr(torch, "empty_like", poisoned(empty_like))
