from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import babilong_fast
from babilong_fast.backends import GPU_VERIFIED_OPS, BackendUnavailableError, resolve_backend
from babilong_fast.ops import assoc_read


def test_backends_report():
    report = babilong_fast.backends()
    assert set(report) == {"cuda", "triton", "torch"}
    assert report["torch"].available
    for status in report.values():
        assert status.reason, f"{status.name} gives no reason"


def test_auto_picks_torch_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv("BABILONG_FAST_BACKEND", raising=False)
    assert resolve_backend("op", "auto", torch.device("cpu")) == "torch"


def test_env_var_overrides_auto(monkeypatch):
    monkeypatch.setenv("BABILONG_FAST_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("op", "auto", torch.device("cpu")) == "triton"
    assert resolve_backend("op", "torch", torch.device("cpu")) == "torch"


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        resolve_backend("op", "fast", torch.device("cpu"))


def test_cuda_backend_on_cpu_tensors_says_how():
    with pytest.raises(BackendUnavailableError, match="cuda"):
        assoc_read(torch.randn(1, 2, 8), torch.randn(2, 8), torch.rand(1, 12, 8), torch.rand(1, 12), backend="cuda")


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        resolve_backend("op", "triton", torch.device("cpu"))


def test_import_needs_neither_triton_nor_extension():
    code = (
        "import sys; sys.modules['triton'] = None; sys.modules['babilong_fast._C'] = None\n"
        "import torch, babilong_fast\n"
        "r = babilong_fast.backends()\n"
        "assert not r['triton'].available and not r['cuda'].available, r\n"
        "x = babilong_fast.ops.assoc_read(torch.randn(1, 2, 8), torch.randn(2, 8), torch.rand(1, 12, 8), torch.rand(1, 12))\n"
        "print('ok', tuple(x.shape))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "ok (1, 2, 8)" in res.stdout


def test_op_without_a_backend(monkeypatch):
    monkeypatch.delenv("BABILONG_FAST_BACKEND", raising=False)
    with pytest.raises(BackendUnavailableError, match="has no 'cuda' backend yet"):
        resolve_backend("op", "cuda", torch.device("cpu"), implemented=("triton", "torch"))
    assert resolve_backend("op", "auto", torch.device("cpu"), implemented=("torch",)) == "torch"


def test_auto_keeps_unverified_ops_on_torch(monkeypatch):
    """Ops whose kernels have not passed on a GPU yet stay on the reference under auto, even for CUDA tensors."""
    monkeypatch.delenv("BABILONG_FAST_BACKEND", raising=False)
    assert "assoc_write" not in GPU_VERIFIED_OPS
    assert resolve_backend("assoc_write", "auto", torch.device("cuda"), implemented=("triton", "torch")) == "torch"
