"""nvcc compiles the CUDA kernels that have no GPU test yet for sm_90 (the H100), and ptxas keeps them in
registers: no local-memory spills, and no more registers than their ``__launch_bounds__`` allow."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.ops import cuda_emulation

# (header, kernel instantiation, register cap)
KERNELS = {
    "selective_scan": ("selective_scan/selective_scan_kernel.cuh",
                       "bfast::selective_scan_fwd_kernel<bfast::kScanThreads, bfast::kScanStepsPerThread>"
                       "(const bfast::SelectiveScanParams)", 128),  # __launch_bounds__(128, 4)
    "causal_conv1d": ("causal_conv1d/causal_conv1d_kernel.cuh",
                      "bfast::causal_conv1d_fwd_kernel<bfast::kConvThreads, bfast::kConvStepsPerThread>"
                      "(const bfast::CausalConvParams)", 64),  # 32 registers when written
}


def _nvcc() -> str | None:
    inc = cuda_emulation.cuda_include_dir()
    path = inc and os.path.join(os.path.dirname(inc), "bin", "nvcc")
    return path if path and os.path.isfile(path) else None


@pytest.mark.skipif(_nvcc() is None, reason="no CUDA toolkit (nvcc)")
@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel_compiles_for_sm90_without_spills(tmp_path, name):
    header, instance, cap = KERNELS[name]
    src = tmp_path / f"{name}_sm90.cu"
    src.write_text(f'#include "{header}"\ntemplate __global__ void {instance};\n')
    res = subprocess.run([_nvcc(), "-arch=sm_90", "-O3", "-std=c++20", "--resource-usage", "-I",
                          str(cuda_emulation.CSRC), "-c", str(src), "-o", str(tmp_path / f"{name}.o")],
                         capture_output=True, text=True)
    text = res.stdout + res.stderr
    assert res.returncode == 0, text
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    regs = re.findall(r"Used (\d+) registers", text)
    assert spills and regs, text
    assert spills == [("0", "0")], f"{name} spills: {spills}"
    assert int(regs[0]) <= cap, f"{name}: {regs[0]} registers, more than {cap}"
    print(f"{name}: {regs[0]} registers, no spills")
