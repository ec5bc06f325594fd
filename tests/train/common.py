"""Tiny training configs shared by the training tests."""
from __future__ import annotations

from babilong_fast.train import TrainConfig

TINY_GPT2 = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 80, "vocab_size": 50257}


def tiny_config(kind: str = "armt", dropout: float = 0.0, **over) -> TrainConfig:
    """A run of a few seconds: 1-layer, 32-wide backbone, 64-token segments, stages 1 and 2."""
    backbone = {**TINY_GPT2, "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout}
    if kind == "mamba":
        backbone = {"hidden_size": 32, "num_hidden_layers": 1, "state_size": 4, "expand": 2, "conv_kernel": 4,
                    "vocab_size": 50257}
    d = dict(
        kind=kind, task="qa1", backbone=backbone, num_mem_tokens=4, d_mem=8, segment_size=64, stages=[1, 2],
        steps=[3, 5], batch_size=4, micro_batch_size=2, lr=3e-3, warmup=1, eval_every=2, eval_n=4, eval_seed=1,
        patience=None, save_every=2, pool_size=64, seed=5, device="cpu", bf16=False,
    )
    d.update(over)
    return TrainConfig(**d).check()
