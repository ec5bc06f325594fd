"""Kernels per streaming segment step: what a GPU would launch, counted on any machine.

    python benchmarks/step_kernels.py                       # GPT-2 small's shape (12 layers, d 768), fp32, CPU
    python benchmarks/step_kernels.py --layers 2 --width 128 --json out.json

Runs one steady-state :func:`~babilong_fast.models.stream_step.stream_step` of RMT (16 memory tokens) and ARMT
(10 memory tokens, d_mem 64, associative ops on the torch backend) on a random-weight GPT-2 at segment 512,
with GPT-2 blocks run by their own forward (``hf``) and by
:func:`~babilong_fast.models.gpt2_block.gpt2_block_infer` (``lean``), and counts the aten ops that reach a
device kernel (a ``TorchDispatchMode`` that skips views, allocations and eval-mode dropout, which launch
nothing). At batch 1 a segment step is launch- and small-kernel-bound (``benchmarks/NOTES.md``), so fewer
kernels is the first lever a GPU-free machine can check; the device check measures the time.
"""
from __future__ import annotations

import argparse
import collections
import json

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ops that allocate, alias or (in eval mode) return their input: no kernel
NO_KERNEL = {
    "aten.empty.memory_format", "aten.empty_strided.default", "aten.detach.default", "aten.lift_fresh.default",
    "aten.dropout.default", "aten.alias.default",
}


class KernelCounter(TorchDispatchMode):
    """Counts the non-view aten ops dispatched inside it, by name (``self.counts``)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if not func.is_view and name not in NO_KERNEL and not name.startswith("aten.sym_"):
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def build(kind: str, layers: int, width: int, heads: int, segment: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    from babilong_fast.models import ARMT, RMT

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=width, n_head=heads, attn_implementation="sdpa"))
    if kind == "armt":
        return ARMT(gpt2, num_mem_tokens=10, d_mem=64, segment_size=segment, backend="torch").eval()
    return RMT(gpt2, num_mem_tokens=16, segment_size=segment).eval()


def count_step(model, lean: bool, segment: int) -> collections.Counter[str]:
    """Kernels of the third segment's step (the first two set up buffers and leave ARMT's first-segment rule)."""
    from babilong_fast.models.stream_step import SegmentWorkspace, stream_step

    ws = SegmentWorkspace(lean_blocks=lean)
    ids = torch.randint(0, model.backbone.config.vocab_size, (1, segment))
    with torch.inference_mode():
        state = model.init_state(1)
        for _ in range(2):
            state = stream_step(model, ids, state, ws)
        with KernelCounter() as counter:
            stream_step(model, ids, state, ws)
    return counter.counts


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--segment", type=int, default=512)
    p.add_argument("--json", default=None, help="write the counts here")
    args = p.parse_args(argv)
    rows = []
    for kind in ("rmt", "armt"):
        model = build(kind, args.layers, args.width, args.heads, args.segment)
        for blocks in ("hf", "lean"):
            counts = count_step(model, blocks == "lean", args.segment)
            total = sum(counts.values())
            rows.append({"model": kind, "blocks": blocks, "kernels": total, "per_layer": round(total / args.layers, 1),
                         "by_op": dict(counts.most_common())})
    print(f"kernels per segment step (batch 1, {args.layers} layers, width {args.width}, segment {args.segment})")
    print(f"{'model':<6}{'blocks':<8}{'kernels':>9}{'per layer':>11}")
    for r in rows:
        print(f"{r['model']:<6}{r['blocks']:<8}{r['kernels']:>9}{r['per_layer']:>11}")
    result = {"config": vars(args) | {"json": None}, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
