"""Kernels' machine code for an H100 (sm_90), read on any machine: registers per thread and the instructions each
loop iteration issues, by opcode.

    python benchmarks/kernel_sass.py                          # the Triton read at GPT-2 small's ARMT shape, bf16
    python benchmarks/kernel_sass.py --dtype float32 --shape 1,522,768,64
    python benchmarks/kernel_sass.py --op write                    # the write's three kernels, B=1, M=10
    python benchmarks/kernel_sass.py --cuda 'assoc_read_kernelIf'   # the built extension's kernels matching a regex

Triton: a stand-in driver compiles the real ``assoc_read`` / ``assoc_write(..., backend="triton")`` launches for
sm_90 and runs nothing (``tests/ops/triton_aot.py``), and ``nvdisasm`` (bundled with Triton) prints the SASS.
CUDA: ``cuobjdump`` (bundled with Triton too) reads the sm_90 code of ``babilong_fast._C``. Every backward branch
closes a loop, counted from its target. No GPU gives timings, so this is a count of work, not a speed: a loop that
issues fewer instructions per dot instruction (``HGMMA`` / ``HMMA`` on tensor cores, ``FFMA`` for exact float32)
has less in the way of the dot. ``benchmarks/NOTES.md`` has the numbers.
"""
from __future__ import annotations

import argparse
import base64
import collections
import importlib.util
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.ops.triton_aot import COMPILE_ONLY, run_compiler_script  # noqa: E402

DUMP = """
import base64
from triton.backends.nvidia.compiler import get_ptxas
_dump_run = JITFunction.run

def _dump(self, *args, **kwargs):
    kernel = _dump_run(self, *args, **kwargs)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        nvdisasm = os.path.join(os.path.dirname(get_ptxas(90).path), "nvdisasm")
        sass = subprocess.run([nvdisasm, "-c", path], capture_output=True, text=True, check=True).stdout
    print("SASS", self.fn.__name__, base64.b64encode(sass.encode()).decode())
    return kernel

JITFunction.run = _dump
import babilong_fast.kernels.assoc_read as _kr
_kr._sm_count = lambda device: 132  # an H100's SMs: the tiles a GPU would pick (the tensors here are on the CPU)
from babilong_fast.ops import assoc_read, assoc_write
B, T, d, n, nu = {shape}
dt = getattr(torch, "{dtype}")
A, z = torch.randn(B, 2 * nu * n, d), torch.rand(B, 2 * nu * n)
"""
CALLS = {
    "read": 'assoc_read(torch.randn(B, T, d, dtype=dt), torch.randn(n, d, dtype=dt), A, z, nu=nu, backend="triton")',
    # a later segment's write (projection, recall, update); T is the number of memory rows
    "write": 'assoc_write(torch.randn(B, T, d, dtype=dt), *[torch.randn(*s, dtype=dt) for s in ((n, d), (d, d), '
             '(1, d), (1,))], A, z, nu=nu, first_segment=False, backend="triton")',
}


def loops(sass: str) -> list[tuple[str, int, collections.Counter, list[str]]]:
    """(label, instructions, opcode counts, labels of the loops inside) of each loop: from a label to the last
    branch back to it. An outer loop's count includes one pass of each loop inside it."""
    labels, ops = {}, []
    for line in sass.splitlines():
        if m := re.match(r"^\s*\.(L_x_\d+):", line):
            labels[m.group(1)] = len(ops)
        elif m := re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line):
            labels[f"0x{int(m.group(1), 16):x}"] = len(ops)  # cuobjdump's branches name addresses
            text = re.sub(r"^@!?U?P\w+\s+", "", m.group(2).strip())  # drop the predicate
            ops.append((text.split()[0].split(".")[0], text))
    found = {}
    for i, (op, text) in enumerate(ops):
        target = re.search(r"(L_x_\d+|0x[0-9a-f]+)", text) if op == "BRA" else None
        if target and labels.get(target.group(1), i + 1) <= i:
            start = labels[target.group(1)]
            found[target.group(1)] = (start, i + 1)
    spans = {label: (a, b) for label, (a, b) in found.items() if b - a > 1}
    return [(label, b - a, collections.Counter(o for o, _ in ops[a:b]),
             [inner for inner, (c, e) in spans.items() if inner != label and a <= c and e <= b])
            for label, (a, b) in spans.items()]


def print_loops(name: str, sass: str, top: int) -> list[tuple]:
    """Prints each loop of one kernel; returns them as ``(kernel, label, instructions, opcode counts, inner)``."""
    found = []
    for label, n, counts, inner in loops(sass):
        found.append((name, label, n, counts, inner))
        ops = ", ".join(f"{op} {k}" for op, k in counts.most_common(top))
        within = f" (one pass of {', '.join(inner)} included)" if inner else ""
        print(f"    loop {label}: {n} instructions per iteration{within}: {ops}")
    return found


def triton_op(op: str, shape: tuple[int, ...], nu: int, dtype: str, top: int) -> list[tuple]:
    out = run_compiler_script(COMPILE_ONLY + DUMP.format(shape=(*shape, nu), dtype=dtype) + CALLS[op])
    found = []
    for line in out.splitlines():
        if line.startswith("STATS "):
            print(line[6:])
        elif line.startswith("SASS "):
            _, name, blob = line.split()
            sass = base64.b64decode(blob).decode()
            print(f"  {name}: {sass.count(chr(10))} lines of SASS")
            found += print_loops(name, sass, top)
    return found


def cuda_kernels(pattern: str, top: int) -> list[tuple]:
    """The loops of the built extension's sm_90 kernels whose (mangled) names match ``pattern``."""
    spec = importlib.util.find_spec("babilong_fast._C")
    if spec is None or not spec.origin:
        raise SystemExit("babilong_fast._C is not built (see README: a CUDA build of torch and nvcc)")
    import triton.backends.nvidia as nv

    cuobjdump = os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump")
    run = [cuobjdump, "-arch", "sm_90", spec.origin]
    regs = dict(re.findall(r"Function (\S+):\s*REG:(\d+)", subprocess.run(
        run[:1] + ["-res-usage"] + run[1:], capture_output=True, text=True, check=True).stdout))
    sass = subprocess.run(run[:1] + ["-sass"] + run[1:], capture_output=True, text=True, check=True).stdout
    found = []
    for part in re.split(r"\n\s*Function : ", sass)[1:]:
        name = part.split("\n", 1)[0].strip()
        if re.search(pattern, name):
            print(f"{name} registers {regs.get(name, '?')}")
            found += print_loops(name, part, top)
    if not found:
        print(f"no loop in a kernel matching {pattern!r}; names: {', '.join(sorted(regs))}")
    return found


def main(argv: list[str] | None = None) -> list[tuple]:
    """Prints, and returns as ``(kernel, label, instructions, opcode counts, inner loops)``, each loop."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", choices=tuple(CALLS), default="read", help="the Triton op (default: read)")
    p.add_argument("--shape", help="B,T,d,d_mem; T = memory rows for the write (default: GPT-2 small's ARMT "
                   "segment, 8,522,768,64 for the read and 1,10,768,64 for the write)")
    p.add_argument("--nu", type=int, default=3)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="bfloat16")
    p.add_argument("--cuda", metavar="REGEX", help="read the built extension's kernels matching REGEX instead")
    p.add_argument("--top", type=int, default=12, help="opcodes listed per loop")
    args = p.parse_args(argv)
    if args.cuda:
        return cuda_kernels(args.cuda, args.top)
    text = args.shape or ("8,522,768,64" if args.op == "read" else "1,10,768,64")
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        p.error(f"--shape must be four positive integers B,T,d,d_mem; got {text!r}")
    return triton_op(args.op, shape, args.nu, args.dtype, args.top)


if __name__ == "__main__":
    main()
