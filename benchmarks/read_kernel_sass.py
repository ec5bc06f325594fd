"""The Triton associative read's machine code for an H100 (sm_90), read on any machine: registers per thread and
the instructions each loop iteration issues, by opcode.

    python benchmarks/read_kernel_sass.py                          # GPT-2 small's ARMT read, B=8, T=522, bf16
    python benchmarks/read_kernel_sass.py --dtype float32 --shape 1,522,768,64

A stand-in Triton driver compiles the real ``assoc_read(..., backend="triton")`` launches for sm_90 and runs
nothing (``tests/ops/triton_aot.py``); ``nvdisasm`` (bundled with Triton) prints the SASS, and every backward
branch closes a loop, counted from its target label. No GPU gives timings, so this is a count of work, not a
speed: the main loop of a tile that issues fewer instructions per ``tl.dot`` (``HGMMA`` for TF32, ``FFMA`` for
exact float32) has less in the way of the dot. ``benchmarks/NOTES.md`` has the numbers.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
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
from babilong_fast.ops import assoc_read
B, T, d, n, nu = {shape}
dt = getattr(torch, "{dtype}")
A, z = torch.randn(B, 2 * nu * n, d), torch.rand(B, 2 * nu * n)
assoc_read(torch.randn(B, T, d, dtype=dt), torch.randn(n, d, dtype=dt), A, z, nu=nu, backend="triton")
"""


def loops(sass: str) -> list[tuple[str, int, collections.Counter, list[str]]]:
    """(label, instructions, opcode counts, labels of the loops inside) of each loop: from a label to the last
    branch back to it. An outer loop's count includes one pass of each loop inside it."""
    labels, ops = {}, []
    for line in sass.splitlines():
        if m := re.match(r"^\s*\.(L_x_\d+):", line):
            labels[m.group(1)] = len(ops)
        elif m := re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(.*?);", line):
            text = re.sub(r"^@!?U?P\w+\s+", "", m.group(1).strip())  # drop the predicate
            ops.append((text.split()[0].split(".")[0], text))
    found = {}
    for i, (op, text) in enumerate(ops):
        target = re.search(r"(L_x_\d+)", text) if op == "BRA" else None
        if target and labels.get(target.group(1), i + 1) <= i:
            start = labels[target.group(1)]
            found[target.group(1)] = (start, i + 1)
    spans = {label: (a, b) for label, (a, b) in found.items() if b - a > 1}
    return [(label, b - a, collections.Counter(o for o, _ in ops[a:b]),
             [inner for inner, (c, e) in spans.items() if inner != label and a <= c and e <= b])
            for label, (a, b) in spans.items()]


def main(argv: list[str] | None = None) -> list[tuple]:
    """Prints, and returns as ``(kernel, label, instructions, opcode counts, inner loops)``, each loop."""
    import base64

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="8,522,768,64", help="B,T,d,d_mem (default: GPT-2 small's ARMT segment)")
    p.add_argument("--nu", type=int, default=3)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="bfloat16")
    p.add_argument("--top", type=int, default=12, help="opcodes listed per loop")
    args = p.parse_args(argv)
    shape = tuple(int(x) for x in args.shape.split(","))
    if len(shape) != 4 or min(shape) < 1:
        p.error(f"--shape must be four positive integers B,T,d,d_mem; got {args.shape!r}")
    out = run_compiler_script(COMPILE_ONLY + DUMP.format(shape=(*shape, args.nu), dtype=args.dtype))
    found = []
    for line in out.splitlines():
        if line.startswith("STATS "):
            print(line[6:])
        elif line.startswith("SASS "):
            _, name, blob = line.split()
            sass = base64.b64decode(blob).decode()
            print(f"  {name}: {sass.count(chr(10))} lines of SASS")
            for label, n, counts, inner in loops(sass):
                found.append((name, label, n, counts, inner))
                top = ", ".join(f"{op} {k}" for op, k in counts.most_common(args.top))
                within = f" (one pass of {', '.join(inner)} included)" if inner else ""
                print(f"    loop {label}: {n} instructions per iteration{within}: {top}")
    return found


if __name__ == "__main__":
    main()
