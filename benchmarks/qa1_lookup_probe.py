"""Probe: how fast does a bare 2-layer GPT-2 learn qa1's name-to-location lookup on the facts alone?

    python benchmarks/qa1_lookup_probe.py --compact-vocab --batch 256 --stages 2:400,0:400   # ~96 %, 12 min
    python benchmarks/qa1_lookup_probe.py --compact-vocab --layers 3 --stages 2:700,0:500    # ~99.8 %, 12 min
    python benchmarks/qa1_lookup_probe.py --batch 32 --stages 2:3000                        # mostly a plateau

The curriculum's facts-only stage without memory, background or segments: it isolates the lookup that the
train_proof models must learn first (match the asked name to its fact's location, the latest one when a name
moves twice). ``--stages MAX_FACTS:STEPS,...`` trains on stories with at most MAX_FACTS facts (0: all) for STEPS
steps each, from :class:`babilong_fast.train.GeneratedData` (train split, stage 0); every ``--every`` steps it
prints the mean loss (answer and EOS) and the first-answer-token accuracy (teacher-forced argmax after GEN) on
``--valid-n`` facts-only test samples, overall and on those with two facts. ``--compact-vocab`` renumbers the
ids that occur to a 1024-entry vocabulary: the same task at a fraction of the cost of the 50257-row embedding.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from babilong_fast.data import BabilongGenerator
from babilong_fast.data.lengths import FINETUNE_MARGIN
from babilong_fast.data.tokenizer import EOS_ID
from babilong_fast.train import GeneratedData, collate, format_example
from babilong_fast.train.format import Example

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_proof import sinusoidal_  # noqa: E402

COMPACT = 1024


class Renumber:
    """Maps token ids to 0, 1, 2, .. in order of first use (``--compact-vocab``); identity when off."""

    def __init__(self, on: bool) -> None:
        self.on, self.ids = on, {}

    def id(self, i: int) -> int:
        if not self.on:
            return i
        if len(self.ids) >= COMPACT and i not in self.ids:
            raise RuntimeError(f"more than {COMPACT} distinct ids; run without --compact-vocab")
        return self.ids.setdefault(i, len(self.ids))

    def __call__(self, ex: Example) -> Example:
        return Example(tuple(self.id(i) for i in ex.input_ids), ex.labels_mask, ex.segments) if self.on else ex


def held_out_examples(n: int) -> list[tuple[Example, int]]:
    """``n`` facts-only test examples and their fact counts."""
    out = []
    for s in itertools.islice(BabilongGenerator("qa1", 0, split="test", seed=1, margin=FINETUNE_MARGIN), n):
        out.append((format_example(s.input_ids(), s.question_ids(), s.target_ids()), len(s.facts)))
    return out


def first_token_accuracy(model: GPT2LMHeadModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per sample: is the argmax after GEN (the first scored position) the first answer token?"""
    h = model.transformer(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    rows = torch.arange(len(h))
    gen = batch["labels_mask"].int().argmax(1)
    return model.lm_head(h[rows, gen]).argmax(-1) == batch["input_ids"][rows, gen + 1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", default="2:600,0:900", help="MAX_FACTS:STEPS,... (0: every story)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--compact-vocab", action="store_true")
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--valid-n", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    stages = [tuple(int(v) for v in s.split(":")) for s in args.stages.split(",")]

    torch.manual_seed(args.seed)
    renumber = Renumber(args.compact_vocab)
    valid = [(renumber(e), k) for e, k in held_out_examples(args.valid_n)]
    model = GPT2LMHeadModel(GPT2Config(
        n_layer=args.layers, n_embd=args.width, n_head=args.heads, n_positions=256,
        vocab_size=COMPACT if args.compact_vocab else 50257, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        activation_function="gelu_pytorch_tanh", bos_token_id=None, eos_token_id=None,
    ))
    sinusoidal_(model.transformer.wpe.weight)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, fused=True)
    pad = renumber.id(EOS_ID)
    step, t0, losses = 0, time.perf_counter(), []
    for max_facts, steps in stages:
        data = GeneratedData("qa1", 128, seed=args.seed, max_facts=max_facts or None)
        for k in range(steps):
            for g in opt.param_groups:
                g["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
            b = collate([renumber(data.get(0, k * args.batch + i)) for i in range(args.batch)], pad_id=pad)
            h = model.transformer(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            scored = b["labels_mask"][:, :-1]
            loss = F.cross_entropy(model.lm_head(h[:, :-1][scored]), b["input_ids"][:, 1:][scored])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
            if step % args.every == 0:
                model.eval()
                with torch.no_grad():
                    hit = torch.cat([first_token_accuracy(model, collate([e for e, _ in valid[i:i + 100]], pad_id=pad))
                                     for i in range(0, len(valid), 100)])
                model.train()
                two = torch.tensor([k == 2 for _, k in valid])
                loss = sum(losses[-args.every:]) / args.every
                print(f"step {step:5d}  stories <= {max_facts or 'all'} facts  loss {loss:.3f}"
                      f"  valid {100 * hit.float().mean():5.1f} %  (2 facts {100 * hit[two].float().mean():5.1f} %)"
                      f"  {time.perf_counter() - t0:5.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
