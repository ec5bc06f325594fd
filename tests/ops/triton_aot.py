"""Compiling the Triton kernels for an H100 (sm_90) without a GPU: Triton's NVIDIA backend down to a cubin with its
bundled ptxas, in a separate process (the test process runs Triton's interpreter, which ``triton.jit`` fixes at
import)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.helpers import HAS_TRITON

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Prepended to a script: a stand-in Triton driver targets sm_90, so every launch through the real op wrappers
# compiles its kernel (``warmup=True``) and launches nothing; each compiled kernel prints one line
# ``STATS <kernel> warps <n> registers <n> spills <bytes>`` from ``ptxas -v`` (PTXAS_STATS).
PTXAS_STATS = textwrap.dedent("""
    import os, re, subprocess, tempfile
    from triton.backends.nvidia.compiler import get_ptxas

    def ptxas_stats(ptx):
        \"\"\"(registers, spilled bytes) of a kernel's PTX, from ptxas -v for sm_90.\"\"\"
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "k.ptx")
            with open(src, "w") as f:
                f.write(ptx)
            info = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", src, "-o", os.path.join(d, "k.cubin")],
                                  capture_output=True, text=True, check=True).stderr
        regs = int(re.search(r"Used (\\d+) registers", info).group(1))
        return regs, int(re.search(r"(\\d+) bytes spill stores", info).group(1))
""")
COMPILE_ONLY = PTXAS_STATS + textwrap.dedent("""
    import sys
    os.environ.pop("TRITON_INTERPRET", None)
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    class CompileOnlyDriver:
        def get_current_device(self): return 0
        def get_current_stream(self, device=None): return 0
        def get_current_target(self): return GPUTarget("cuda", 90, 32)
        def get_active_torch_device(self): return torch.device("cpu")

    driver.set_active(CompileOnlyDriver())
    _run = JITFunction.run

    def _compile_only(self, *args, grid, warmup, **kwargs):
        kernel = _run(self, *args, grid=grid, warmup=True, **kwargs)
        assert kernel is not None and kernel.asm.get("cubin"), self.fn.__name__
        regs, spills = ptxas_stats(kernel.asm["ptx"])
        print("STATS", self.fn.__name__, "warps", kernel.metadata.num_warps, "registers", regs, "spills", spills)
        return kernel

    JITFunction.run = _compile_only
    # every backend counts as usable: CPU tensors reach the Triton wrappers (their data is never read)
    import babilong_fast  # noqa: F401
    sys.modules["babilong_fast.backends"]._usable = lambda name, device: (True, "")
""")


def has_nvidia_backend() -> bool:
    """Triton with its NVIDIA backend (and so ptxas) is installed."""
    if not HAS_TRITON:
        return False
    try:
        from triton.backends import backends

        return "nvidia" in backends
    except ImportError:
        return False


def run_compiler_script(script: str) -> str:
    """``script`` in a fresh Python without the interpreter flag (Triton's NVIDIA backend); its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    return res.stdout
