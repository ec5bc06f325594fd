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
    for fn in ("assoc_read_fwd", "assoc_read_fwd_tc", "assoc_write_fwd", "segment_embed_fwd", "rows_layer_norm_fwd",
               "selective_scan_fwd", "causal_conv1d_fwd"):
        assert hasattr(ext, fn), fn
    import babilong_fast

    assert "not built" not in babilong_fast.backends()["cuda"].reason
