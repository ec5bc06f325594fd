"""CUDA kernels of ``csrc/`` run on the CPU under thread emulation (``thread_emulation.h``), so their source is
tested on machines without a GPU. Built with the host C++ compiler as a CPU torch extension; needs the CUDA
toolkit's headers (for the bf16/fp16 types), not a GPU."""
from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
CSRC = HERE.parents[2] / "csrc"


def cuda_include_dir() -> str | None:
    """The CUDA toolkit's include folder (``$CUDA_HOME``, ``$CUDA_PATH``, else /usr/local/cuda*), or None."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda",
             *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    for home in filter(None, homes):
        if os.path.isfile(os.path.join(home, "include", "cuda_bf16.h")):
            return os.path.join(home, "include")
    return None


def missing() -> str | None:
    """Why the emulator cannot be built here, or None."""
    if cuda_include_dir() is None:
        return "no CUDA toolkit headers (set CUDA_HOME)"
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "no host C++ compiler"
    if shutil.which("ninja") is None:
        return "ninja is not on PATH"
    return None


def default_schedule() -> str:
    """How the emulated blocks run their threads unless a test says otherwise: ``$BFAST_EMU_SCHEDULE``, else
    ``threads`` (all at once, as host threads). ``forward`` / ``reverse``: one at a time in thread order or reverse
    order, from one sync point to the next (tests/ops/test_cuda_races_emulated.py)."""
    return os.environ.get("BFAST_EMU_SCHEDULE", "threads")


def load_emulator(build_dir: str) -> ModuleType:
    """Compile (about 45 s on 2 cores) and import the emulated kernels: the CUDA bindings' functions
    (``assoc_read_fwd``, ``assoc_read_fwd_tc``, ``assoc_write_fwd``, ``segment_embed_fwd``,
    ``rows_layer_norm_fwd``, ``selective_scan_fwd``, ``causal_conv1d_fwd``) with their arguments, on CPU
    tensors. The two ``assoc_read`` functions take a last argument ``num_sms`` (default 132, an H100's), the
    SM count their split plans are made for. ``set_schedule(name)`` sets how blocks run their threads
    (:func:`default_schedule`)."""
    from torch.utils.cpp_extension import load

    return load(
        name="babilong_fast_kernels_emulator",
        sources=[str(HERE / "kernels_emulator.cpp")],
        extra_include_paths=[str(CSRC), str(HERE), cuda_include_dir()],
        extra_cflags=["-std=c++20", "-O1"],
        extra_ldflags=["-pthread"],
        build_directory=build_dir,
    )


class OnGpu:
    """The compiled extension with the emulator's calling convention: CPU tensors in, CPU tensors out. Tensor
    arguments are copied to the GPU, and back afterwards (in-place outputs arrive; an input a kernel modified
    shows as modified), so the emulated tests run the real kernels unchanged on a GPU."""

    def __init__(self, ext: ModuleType) -> None:
        self._ext = ext

    def __getattr__(self, name: str):
        import torch

        fn = getattr(self._ext, name)

        def on(x):
            return x.cuda() if isinstance(x, torch.Tensor) else x

        def back(x):
            if isinstance(x, torch.Tensor):
                return x.cpu()
            if isinstance(x, tuple | list):
                return type(x)(back(v) for v in x)
            return x

        def call(*args):
            moved = [on(a) for a in args]
            res = fn(*moved)
            for a, m in zip(args, moved, strict=True):
                if isinstance(a, torch.Tensor):
                    a.copy_(m)
            return back(res)

        return call


def kernels_under_test(build_dir: str):
    """The kernels to test: the real ones on a GPU (through :class:`OnGpu`), else the CPU emulator."""
    import torch

    if torch.cuda.is_available():
        from babilong_fast.backends import load_extension

        return OnGpu(load_extension()[0])
    kernels = load_emulator(build_dir)
    kernels.set_schedule(default_schedule())
    return kernels


def skip_reason() -> str | None:
    """Why the kernel tests cannot run here: no built extension on a GPU machine; no toolchain for the emulator."""
    import torch

    if torch.cuda.is_available():
        from babilong_fast.backends import load_extension

        return None if load_extension()[0] is not None else "the GPU is here but babilong_fast._C is not built"
    return missing()
