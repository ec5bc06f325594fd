"""Build script: packages, plus the optional CUDA extension ``babilong_fast._C`` from ``csrc/``.

The extension is built when torch is a CUDA build and nvcc is found; otherwise one line says why
it was skipped. Environment (see docs/env_vars.md): BABILONG_FAST_SKIP_CUDA_BUILD,
BABILONG_FAST_FORCE_CUDA_BUILD, TORCH_CUDA_ARCH_LIST (default "8.0;9.0"), MAX_JOBS, NVCC_THREADS,
CUDA_HOME. Build with ``pip install --no-build-isolation .`` so the installed torch is used.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _is_toolkit(path: str | None) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "include", "cuda_runtime.h")) and os.path.isfile(
        os.path.join(path, "bin", "nvcc")
    )


def _find_cuda_home() -> str | None:
    """CUDA_HOME if it is a toolkit; else the newest toolkit under the usual prefixes.

    torch derives CUDA_HOME from the ``nvcc`` on PATH, which is wrong when that is a wrapper script.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if _is_toolkit(os.environ.get(var)):
            return os.environ[var]
    candidates = ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True), "/opt/cuda"]
    return next((c for c in candidates if _is_toolkit(c)), None)


def _skip(why: str) -> tuple[list, dict, dict]:
    if _flag("BABILONG_FAST_FORCE_CUDA_BUILD"):
        sys.exit(f"babilong_fast: BABILONG_FAST_FORCE_CUDA_BUILD is set but the CUDA extension cannot be built: {why}")
    print(f"babilong_fast: skipping the CUDA extension ({why}); the triton and torch backends still work", flush=True)
    return [], {}, {"requested": False, "reason": why}


def cuda_extension() -> tuple[list, dict, dict]:
    """Return (ext_modules, cmdclass, build info)."""
    if _flag("BABILONG_FAST_SKIP_CUDA_BUILD"):
        if _flag("BABILONG_FAST_FORCE_CUDA_BUILD"):
            sys.exit("babilong_fast: BABILONG_FAST_SKIP_CUDA_BUILD and BABILONG_FAST_FORCE_CUDA_BUILD are both set")
        return _skip("BABILONG_FAST_SKIP_CUDA_BUILD is set")
    cuda_home = _find_cuda_home()
    if cuda_home is None:
        return _skip("no CUDA toolkit (nvcc) found; set CUDA_HOME")
    os.environ["CUDA_HOME"] = cuda_home
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    except ImportError as e:
        return _skip(f"torch is not importable ({e}); install torch first and use pip's --no-build-isolation")
    if torch.version.cuda is None:
        return _skip(f"torch {torch.__version__} is a CPU-only build")
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    sources = sorted(
        os.path.relpath(p, ROOT)
        for p in glob.glob(os.path.join(ROOT, "csrc", "**", "*.c*"), recursive=True)
        if p.endswith((".cpp", ".cu"))
    )
    nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
    if os.environ.get("NVCC_THREADS"):
        nvcc += ["--threads", os.environ["NVCC_THREADS"]]
    ext = CUDAExtension(
        name="babilong_fast._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": ["-O3", "-std=c++20"], "nvcc": nvcc},
    )
    print(f"babilong_fast: building the CUDA extension with {cuda_home} for TORCH_CUDA_ARCH_LIST={archs}", flush=True)
    info = {"requested": True, "reason": f"CUDA {torch.version.cuda}, torch {torch.__version__}, archs {archs}",
            "archs": archs}
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}, info


def csrc_digest() -> str:
    """SHA-256 over csrc/ (babilong_fast/_csrc_digest.py, loaded by path: the package is not importable yet)."""
    path = os.path.join(ROOT, "babilong_fast", "_csrc_digest.py")
    spec = importlib.util.spec_from_file_location("_csrc_digest", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.csrc_digest(ROOT)


def write_build_info(info: dict) -> None:
    """Record whether this install asked for the extension, so a test can demand that it imports."""
    path = os.path.join(ROOT, "babilong_fast", "_build_info.py")
    with open(path, "w") as f:
        f.write('"""Written by setup.py at build time."""\n')
        f.write(f"CUDA_BUILD_REQUESTED = {info['requested']!r}\nREASON = {info['reason']!r}\n")
        f.write(f"CUDA_ARCHS = {info.get('archs')!r}  # TORCH_CUDA_ARCH_LIST of the build\n")
        f.write(f"CSRC_SHA256 = {csrc_digest()!r}  # the csrc/ the build compiled\n")


ext_modules, cmdclass, info = cuda_extension()
write_build_info(info)

setup(
    packages=[
        "babilong_fast", "babilong_fast.ops", "babilong_fast.kernels", "babilong_fast.data", "babilong_fast.data.babi",
        "babilong_fast.models", "babilong_fast.models.mamba", "babilong_fast.engine", "babilong_fast.cli",
        "babilong_fast.train",
    ],
    package_dir={"babilong_fast": "babilong_fast", "babilong_fast.kernels": "kernels"},
    package_data={"babilong_fast.data": ["assets/gpt2.tiktoken", "assets/background/*.txt.gz"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
