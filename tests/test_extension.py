"""The compiled extension must import wherever the install asked for it."""
from __future__ import annotations

import importlib

import pytest


def test_extension_imports_when_built():
    try:
        info = importlib.import_module("babilong_fast._build_info")
    except ImportError:
        pytest.skip("babilong_fast was not installed through setup.py (no build record)")
    if not info.CUDA_BUILD_REQUESTED:
        pytest.skip(f"no CUDA build was requested: {info.REASON}")
    ext = importlib.import_module("babilong_fast._C")
    assert hasattr(ext, "assoc_read_fwd")
    import babilong_fast

    assert "not built" not in babilong_fast.backends()["cuda"].reason
