"""README.md's Python examples run as written, in order, in one namespace, and do what their comments say.

Without a GPU the ``assoc_read`` example's tensors are made on the CPU instead (``device="cuda"`` replaced)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from babilong_fast.ops.dpfp import dpfp
from tests.helpers import rel_err

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    """The README's fenced ``python`` blocks, in order."""
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_python_examples_run() -> None:
    blocks = python_blocks()
    assert len(blocks) == 4, "update this test with the README's examples"
    ns: dict = {}
    for i, code in enumerate(blocks):
        if not torch.cuda.is_available():
            code = code.replace('device="cuda"', 'device="cpu"')
        exec(compile(code, f"README.md python block {i}", "exec"), ns)
        if i == 0:  # out = h + dpfp(h w_q^T) A / (dpfp(h w_q^T) z + 1e-5), in h's dtype
            h, w_q, A, z = (ns[k].double() for k in ("h", "w_q", "A", "z"))
            phi = dpfp(h @ w_q.t(), 3)
            want = h + (phi @ A) / (phi @ z.unsqueeze(-1) + 1e-5)
            out = ns["out"]
            assert out.dtype == ns["h"].dtype and out.shape == (8, 522, 768)
            assert rel_err(out, want) < 1e-2
        if i == 1:  # a 10M sample streams exactly 10M - 300 tokens; the metric accepts the right answer
            sample = ns["sample"]
            assert sum(len(c) for c in sample.iter_chunks(1 << 20)) == 10_000_000 - 300
            assert ns["compare_answers"](sample.target, sample.target, sample.question, "qa2")
        if i in (2, 3):  # a greedy answer of token ids after the streamed context
            ids = torch.as_tensor(ns["answer_ids"])
            assert ids.numel() > 0 and not ids.is_floating_point()
    assert ns["out"].shape == (1, 20005)  # the patched Mamba's generate: 20000 prompt + 5 new tokens
