"""What a trained ARMT writes to its associative memory on qa1, layer by layer.

Streams ``--n`` BABILong qa1 samples of ``--segments`` segments through a model file (``best.pt`` of a
``babilong-fast train`` or ``train_proof`` run) and reports, per layer:

- ``cos next``: cosine of a memory token's write key φ(W_k m) with its key one segment later (same sample);
- ``cos samples``: the same memory token and segment in two different samples;
- ``cos tokens``: two memory tokens of one write;
- ``beta fact`` / ``beta none``: mean write strength β in segments where a fact starts / where none does;
- ``gamma``: mean z-correction γ of the writes after the first;
- ``kept``: cosine between what the first segment's keys recall right after their write and at the end, both
  less their mean over the samples (what is particular to the sample, not the memory's common part).

Keys near 1 in every column make the memory one slot: each write then moves the stored value toward the new
one by β (a moving average), so a fact fades with every later segment unless β is ~0 where there is no fact.

    python benchmarks/armt_memory_probe.py runs/armt/best.pt --segments 8 --n 20
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys

import torch
import torch.nn.functional as F

from babilong_fast.data.dataset import BabilongGenerator
from babilong_fast.data.lengths import FINETUNE_MARGIN
from babilong_fast.models import ARMT
from babilong_fast.models.armt import EPS
from babilong_fast.ops import dpfp
from babilong_fast.ops.assoc_write import write_gates
from babilong_fast.train.kinds import load_trained

COLUMNS = ("cos next", "cos samples", "cos tokens", "beta fact", "beta none", "gamma", "kept")


def _recall(keys: torch.Tensor, A: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``[B, M, F]`` keys against ``A [B, F, d]``, ``z [B, F]``: the normalised recall ``[B, M, d]``."""
    return (keys @ A) / ((keys * z[:, None]).sum(-1, keepdim=True) + EPS)


def sample_writes(model: ARMT, ids: list[int], segment: int) -> list[dict[str, list[torch.Tensor]]]:
    """Stream one sample; per layer the write keys ``[M, F]``, β ``[M]`` and γ ``[M]`` of every segment, and
    ``recall``: what the first write's keys recall right after it and after the last segment (``[2, M, d]``)."""
    L_layers, M = len(model.layers), model.num_mem_tokens
    rows: dict[int, torch.Tensor] = {}  # block i's output, the write rows last

    def keep(i: int):
        def hook(module, args, out):
            rows[i] = out[0] if isinstance(out, tuple) else out
        return hook

    hooks = [block.register_forward_hook(keep(i)) for i, block in enumerate(model.backbone.transformer.h)]
    per_layer = [{"keys": [], "beta": [], "gamma": [], "recall": None} for _ in range(L_layers)]
    first_keys, first_recall = [None] * L_layers, [None] * L_layers
    state = model.init_state(1)
    x = torch.tensor([ids])
    try:
        for a in range(0, x.shape[1], segment):
            seg = x[:, a:a + segment]
            _, _, new = model.segment_forward(seg, None, state, return_logits=False)
            for i, p in enumerate(model.layers):
                m = rows[i][:, seg.shape[1]:seg.shape[1] + M].float()
                k = dpfp(m @ p.W_k.weight.float().T, nu=model.nu)
                beta = torch.sigmoid(m @ p.W_b.weight.float().T + p.W_b.bias.float())[..., 0]
                out = per_layer[i]
                out["keys"].append(k[0])
                out["beta"].append(beta[0])
                if state.segments_seen:
                    _, gamma = write_gates(k, state.z[i], eps=EPS, correction=model.correction)
                    out["gamma"].append(gamma[0])
                else:
                    first_keys[i] = k
                    first_recall[i] = _recall(k, new.A[i], new.z[i])
            state = new
    finally:
        for h in hooks:
            h.remove()
    for i in range(L_layers):
        end = _recall(first_keys[i], state.A[i], state.z[i])
        per_layer[i]["recall"] = torch.cat([first_recall[i], end])
    return per_layer


def probe(model: ARMT, segments: int, n: int, *, split: str = "test", seed: int = 0) -> list[dict[str, float]]:
    """One row of :data:`COLUMNS` per layer, averaged over ``n`` samples of ``segments`` segments."""
    if not isinstance(model, ARMT):
        raise TypeError(f"the probe reads ARMT's associative memory, got {type(model).__name__}")
    if segments < 2 or n < 2:
        raise ValueError(f"need at least 2 segments and 2 samples, got segments={segments}, n={n}")
    seg = model.segment_size
    gen = BabilongGenerator("qa1", segments * seg, split=split, seed=seed, margin=FINETUNE_MARGIN)
    keys, betas, fact_seg, gammas, recalls = [], [], [], [], []
    with torch.no_grad():
        for s in itertools.islice(gen, n):
            writes = sample_writes(model, s.input_ids(), seg)
            has_fact = torch.zeros(len(writes[0]["keys"]), dtype=torch.bool)
            has_fact[[p // seg for p in s.fact_positions]] = True
            keys.append([torch.stack(w["keys"]) for w in writes])     # per layer [S, M, F]
            betas.append([torch.stack(w["beta"]) for w in writes])    # per layer [S, M]
            gammas.append([torch.cat(w["gamma"]) for w in writes])
            recalls.append([w["recall"] for w in writes])
            fact_seg.append(has_fact)
    S = min(k[0].shape[0] for k in keys)
    table = []
    for i in range(len(model.layers)):
        r = torch.stack([rc[i] for rc in recalls])
        r = r - r.mean(0)                                                            # [n, 2, M, d]
        kn = torch.stack([F.normalize(k[i][:S], dim=-1) for k in keys])              # [n, S, M, F]
        M = kn.shape[2]
        within = kn @ kn.transpose(-1, -2)
        b = [bt[i] for bt in betas]
        fact = torch.cat([bi[f].flatten() for bi, f in zip(b, fact_seg, strict=True)])
        none = torch.cat([bi[~f].flatten() for bi, f in zip(b, fact_seg, strict=True)])
        table.append(dict(zip(COLUMNS, [
            (kn[:, 1:] * kn[:, :-1]).sum(-1).mean().item(),
            (kn[1:] * kn[:-1]).sum(-1).mean().item(),
            within[..., ~torch.eye(M, dtype=torch.bool)].mean().item(),
            fact.mean().item() if fact.numel() else float("nan"),
            none.mean().item() if none.numel() else float("nan"),
            torch.cat([g[i] for g in gammas]).mean().item(),
            F.cosine_similarity(r[:, 0], r[:, 1], dim=-1).mean().item(),
        ], strict=True)))
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="an ARMT model file (best.pt, stageN.pt or last.pt of a training run)")
    ap.add_argument("--segments", type=int, default=8, help="segments per sample (default 8)")
    ap.add_argument("--n", type=int, default=20, help="samples (default 20)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the table here")
    args = ap.parse_args(argv)
    model = load_trained(args.model, "armt").eval()
    table = probe(model, args.segments, args.n, split=args.split, seed=args.seed)
    print(f"{'layer':>5}  " + "  ".join(f"{c:>11}" for c in COLUMNS))
    for i, row in enumerate(table):
        print(f"{i:>5}  " + "  ".join(f"{row[c]:>11.3f}" for c in COLUMNS))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "segments": args.segments, "n": args.n, "layers": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
