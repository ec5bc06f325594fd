from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys

import pytest
import torch

import babilong_fast
from babilong_fast.backends import BACKENDS, GPU_VERIFIED_BACKENDS, BackendUnavailableError, resolve_backend
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


def test_unknown_backend(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend 'fast' \\(from backend\\)"):
        resolve_backend("op", "fast", torch.device("cpu"))
    monkeypatch.setenv("BABILONG_FAST_BACKEND", "bogus")
    with pytest.raises(ValueError, match="unknown backend 'bogus' \\(from BABILONG_FAST_BACKEND\\)"):
        resolve_backend("op", "auto", torch.device("cpu"))


def test_disable_env_forces_torch_under_auto(monkeypatch):
    """Resolution only (nothing runs), so a CUDA device works here without a GPU: every backend counts as usable."""
    monkeypatch.delenv("BABILONG_FAST_BACKEND", raising=False)
    monkeypatch.delenv("BABILONG_FAST_DISABLE", raising=False)
    monkeypatch.setattr(sys.modules["babilong_fast.backends"], "_usable", lambda name, device: (True, ""))
    cuda = torch.device("cuda")
    picked = resolve_backend("assoc_read", "auto", cuda)
    assert picked == "cuda"
    for value in ("1", "TRUE", "on", " yes "):
        monkeypatch.setenv("BABILONG_FAST_DISABLE", value)
        assert resolve_backend("assoc_read", "auto", cuda) == "torch", value
    monkeypatch.setenv("BABILONG_FAST_DISABLE", "0")
    assert resolve_backend("assoc_read", "auto", cuda) == picked


def test_disable_env_wins_over_backend_env(monkeypatch):
    """The kill switch beats ``BABILONG_FAST_BACKEND``; an explicit ``backend=`` argument beats both."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("BABILONG_FAST_BACKEND", "triton")
    cpu = torch.device("cpu")
    assert resolve_backend("op", "auto", cpu) == "triton"
    monkeypatch.setenv("BABILONG_FAST_DISABLE", "1")
    assert resolve_backend("op", "auto", cpu) == "torch"
    assert resolve_backend("op", "triton", cpu) == "triton"
    monkeypatch.setenv("BABILONG_FAST_BACKEND", "bogus")  # still checked
    with pytest.raises(ValueError, match="from BABILONG_FAST_BACKEND"):
        resolve_backend("op", "auto", cpu)


def test_cuda_backend_on_cpu_tensors_says_how():
    with pytest.raises(BackendUnavailableError, match="cuda"):
        assoc_read(torch.randn(1, 2, 8), torch.randn(2, 8), torch.rand(1, 12, 8), torch.rand(1, 12), backend="cuda")


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        resolve_backend("op", "triton", torch.device("cpu"))


@pytest.mark.parametrize("value", ["1", "true", "YES", "on", "y", "0", "no", "t", " 1"])
def test_triton_interpret_is_read_as_triton_reads_it(value, monkeypatch):
    """Our switch and Triton's own must agree, or the backend report says one thing while Triton does another."""
    triton = pytest.importorskip("triton")
    from babilong_fast.backends import triton_interpret

    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert triton_interpret() == bool(triton.knobs.runtime.interpret)


def test_interpreter_set_after_the_kernels_were_imported_is_refused():
    """Kernels imported without ``TRITON_INTERPRET=1`` were made for the GPU (``triton.jit`` decides at import):
    setting it later gives a clear error, not Triton's "0 active drivers" from inside a launch."""
    pytest.importorskip("triton")
    code = (
        "import os, torch\n"
        "import babilong_fast, babilong_fast.kernels.assoc_read\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "print(babilong_fast.backends()['triton'].reason)\n"
        "from babilong_fast.ops import assoc_read\n"
        "h, w, A, z = torch.randn(1, 5, 16), torch.randn(4, 16), torch.randn(1, 24, 16), torch.rand(1, 24)\n"
        "try:\n"
        "    assoc_read(h, w, A, z, backend='triton')\n"
        "except babilong_fast.BackendUnavailableError as e:\n"
        "    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    imported = re.compile(r"babilong_fast\.kernels \((.*\bassoc_read\b.*)\) was imported before TRITON_INTERPRET=1")
    assert len(lines) == 2 and all(imported.search(ln) for ln in lines), lines


def test_interpreter_error_names_the_broken_pairs():
    """Triton < 3.7's interpreter with numpy >= 2.4 (triton-lang/triton#9171) is refused with the fix."""
    from babilong_fast.backends import interpreter_error

    assert "triton>=3.7 or numpy<2.4" in interpreter_error("3.6.0", "2.4.6")
    assert "numpy 2.10.1" in interpreter_error("3.2.0", "2.10.1")
    for ok in (("3.7.0", "2.4.6"), ("3.6.0", "2.3.5"), ("3.8.0+git1a2b", "2.5.2"), ("3.10.0", "2.5.0")):
        assert interpreter_error(*ok) == "", ok


def test_broken_interpreter_is_unavailable_with_the_fix(monkeypatch):
    pytest.importorskip("triton")
    bk = importlib.import_module("babilong_fast.backends")  # the package's ``backends`` is the function

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(bk, "interpreter_error", lambda: "Triton 3.6.0's interpreter fails; install triton>=3.7")
    if not torch.cuda.is_available():
        assert not bk.backends()["triton"].available and "triton>=3.7" in bk.backends()["triton"].reason
    with pytest.raises(BackendUnavailableError, match="triton>=3.7"):
        resolve_backend("op", "triton", torch.device("cpu"))


def test_import_needs_neither_triton_nor_extension():
    code = (
        "import sys; sys.modules['triton'] = None; sys.modules['babilong_fast._C'] = None\n"
        "import torch, babilong_fast\n"
        "r = babilong_fast.backends()\n"
        "assert not r['triton'].available and not r['cuda'].available, r\n"
        "x = babilong_fast.ops.assoc_read(\n"
        "    torch.randn(1, 2, 8), torch.randn(2, 8), torch.rand(1, 12, 8), torch.rand(1, 12))\n"
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
    assert "assoc_write" not in GPU_VERIFIED_BACKENDS
    assert resolve_backend("assoc_write", "auto", torch.device("cuda"), implemented=("triton", "torch")) == "torch"


def test_source_checkout_maps_only_the_kernels_package(tmp_path):
    """Without an install's finder (python -S reads no .pth file), babilong_fast.kernels comes from ../kernels and
    nothing else in the checkout root (setup.py) becomes a babilong_fast submodule."""
    import os
    import site

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (f"import sys; sys.path[:0] = [{root!r}]; sys.path += {site.getsitepackages()!r}\n"
            "import importlib.util, babilong_fast.kernels as k\n"
            "print(k.__file__); print(importlib.util.find_spec('babilong_fast.setup'))")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [os.path.join(root, "kernels", "__init__.py"), "None"]


def test_auto_skips_a_backend_not_verified_for_the_op(monkeypatch):
    """assoc_read's Triton kernel has not passed on a GPU since its rewrite: without the CUDA extension, auto takes
    the reference for CUDA tensors, not Triton; with it, the verified CUDA kernels."""
    monkeypatch.delenv("BABILONG_FAST_BACKEND", raising=False)
    monkeypatch.delenv("BABILONG_FAST_DISABLE", raising=False)
    be = sys.modules["babilong_fast.backends"]
    assert GPU_VERIFIED_BACKENDS["assoc_read"] == {"cuda"}
    cuda = torch.device("cuda")
    monkeypatch.setattr(be, "_usable", lambda name, device: (name != "cuda", "not built"))
    assert resolve_backend("assoc_read", "auto", cuda) == "torch"
    assert resolve_backend("assoc_read", "triton", cuda) == "triton"
    monkeypatch.setattr(be, "_usable", lambda name, device: (True, ""))
    assert resolve_backend("assoc_read", "auto", cuda) == "cuda"


def test_auto_says_why_it_leaves_unverified_kernels_alone(monkeypatch, caplog):
    """The one log line per (op, device, choice) names the usable kernels auto skipped and how to use them."""
    monkeypatch.delenv("BABILONG_FAST_BACKEND", raising=False)
    monkeypatch.delenv("BABILONG_FAST_DISABLE", raising=False)
    be = sys.modules["babilong_fast.backends"]
    monkeypatch.setattr(be, "_usable", lambda name, device: (name != "cuda", "not built"))
    monkeypatch.setattr(be, "_logged", set())
    with caplog.at_level("INFO", logger="babilong_fast"):
        assert resolve_backend("assoc_write", "auto", torch.device("cuda"), implemented=BACKENDS) == "torch"
    assert "assoc_write on cuda tensors uses the torch backend (its triton kernels have not passed" in caplog.text
    assert "backend='triton' uses them" in caplog.text


@pytest.mark.parametrize("archs,capability,runs", [
    ("8.0;9.0", (9, 0), True), ("8.0;9.0", (8, 9), True), ("8.0;9.0", (10, 0), False), ("8.0;9.0", (12, 0), False),
    ("9.0a", (9, 0), True), ("8.0;9.0+PTX", (12, 0), True), ("8.6", (8, 0), False), ("8.0 9.0", (7, 5), False),
    (None, (7, 0), True), ("Hopper", (10, 0), True),
])
def test_cuda_backend_needs_machine_code_for_the_gpu(archs, capability, runs, monkeypatch):
    """The default build (sm_80, sm_90, no PTX) cannot launch on Blackwell: auto must not pick it there."""
    from babilong_fast import backends as be_mod

    be = sys.modules["babilong_fast.backends"]
    assert be_mod is be.backends  # the package's ``backends`` is the function; the module is in sys.modules
    msg = be.arch_problem(archs, capability)
    assert (msg == "") == runs
    if not runs:
        assert f"TORCH_CUDA_ARCH_LIST=\"{capability[0]}.{capability[1]}\"" in msg
        monkeypatch.setattr(be, "load_extension", lambda: (object(), ""))
        monkeypatch.setattr(be, "_built_archs", lambda: archs)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        assert be._usable("cuda", torch.device("cuda")) == (False, msg)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # and backends() reports it so
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")
        status = be.backends()["cuda"]
        assert not status.available and status.reason == msg
