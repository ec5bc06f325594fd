"""What training needs from each model kind: build, loss, greedy answering, save and load.

- ``armt`` / ``rmt``: :class:`~babilong_fast.models.ARMT` / :class:`~babilong_fast.models.RMT` on a GPT-2;
  loss from ``RecurrentLM.forward`` (full or truncated BPTT, optionally the LM head only on scored positions);
  answers from :class:`~babilong_fast.engine.StreamRunner`; files from :func:`~babilong_fast.models.save_model`,
  which ``babilong-fast eval`` reads.
- ``mamba``: Hugging Face ``MambaForCausalLM``; the loss runs its backbone and, with ``sparse_logits``, the LM
  head on the scored positions only (else its own forward with ``labels`` ``-100`` except on the answer, whose
  logits over a 16k-token micro-batch of 8 take 13 GB in bf16); answers from
  :class:`~babilong_fast.engine.StreamRunner` too; saved by ``save_model`` (``kind: "mamba"``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from babilong_fast.models._common import scored_lm_loss
from babilong_fast.models.checkpoint import hf_model_type, load_model, model_kind, save_model
from babilong_fast.train.config import TrainConfig, check_positions


def _pretrained(cls: Any, path: str, model_type: str) -> nn.Module:
    """``cls.from_pretrained(path)`` from local files; ValueError when the folder's config names another model type
    (transformers would load none of its weights, warn, and train a random model)."""
    found = hf_model_type(path)
    if found is not None and found != model_type:  # no config.json: from_pretrained says so
        raise ValueError(f"backbone_path {path!r} holds a {found!r} model; this kind needs a {model_type!r} one")
    return cls.from_pretrained(path, local_files_only=True)


def _build_gpt2(cfg: TrainConfig) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    if cfg.backbone_path:
        return _pretrained(GPT2LMHeadModel, cfg.backbone_path, "gpt2")
    return GPT2LMHeadModel(GPT2Config(**cfg.backbone))


def build_model(cfg: TrainConfig) -> nn.Module:
    """A fresh model of ``cfg.kind`` (weights from ``torch``'s current RNG, or ``cfg.backbone_path``)."""
    if cfg.kind == "mamba":
        from transformers import MambaConfig, MambaForCausalLM

        if cfg.backbone_path:
            return _pretrained(MambaForCausalLM, cfg.backbone_path, "mamba")
        return MambaForCausalLM(MambaConfig(**cfg.backbone))
    from babilong_fast.models import ARMT, RMT

    backbone = _build_gpt2(cfg)
    check_positions(cfg, backbone.config.n_positions)
    if cfg.kind == "armt":
        return ARMT(
            backbone, num_mem_tokens=cfg.num_mem_tokens, d_mem=cfg.d_mem, segment_size=cfg.segment_size,
            backend=cfg.backend,
        )
    return RMT(backbone, num_mem_tokens=cfg.num_mem_tokens, segment_size=cfg.segment_size)


def loss_and_count(model: nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> tuple[torch.Tensor, int]:
    """``(sum of the token cross-entropies on the scored positions, their number)`` of one micro-batch.

    Summed rather than averaged so that micro-batches and processes can be combined into the token mean of the
    global batch (the reference's loss) whatever the split.
    """
    count = int(batch["labels_mask"][:, :-1].sum())
    if cfg.kind == "mamba":
        ids, lm = batch["input_ids"], batch["labels_mask"]
        if cfg.sparse_logits:
            hidden = model.backbone(input_ids=ids, attention_mask=batch["attention_mask"], use_cache=False)[0]
            return scored_lm_loss(hidden, model.lm_head, ids, lm, reduction="sum")[0], count
        labels = torch.full_like(ids, -100)
        labels[:, 1:] = torch.where(lm[:, :-1], ids[:, 1:], labels[:, 1:])
        out = model(input_ids=ids, attention_mask=batch["attention_mask"], labels=labels, use_cache=False)
        return out.loss.float() * count, count
    out = model(
        batch["input_ids"], batch["attention_mask"], batch["labels_mask"],
        detach_every=cfg.detach_every, sparse_logits=cfg.sparse_logits,
    )
    return out["loss"] * count, count


class LossModule(nn.Module):
    """``model`` whose forward returns only the summed loss of a batch: the module DistributedDataParallel wraps.

    DDP with ``find_unused_parameters`` walks the graph from the forward's outputs; returning the loss alone
    (not the logits or the final memory state) marks exactly the parameters the loss does not reach as unused.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels_mask: torch.Tensor) -> torch.Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels_mask": labels_mask}
        return loss_and_count(self.model, batch, self.cfg)[0]


def make_runner(model: nn.Module, kind: str):
    """The :class:`~babilong_fast.engine.StreamRunner` that answers ``context ‖ question ‖ GEN`` for ``model``
    (ARMT, RMT or Hugging Face Mamba alike; ``kind`` is checked by the caller)."""
    from babilong_fast.engine.stream import StreamRunner

    return StreamRunner(model, progress=False)


def save_trained(model: nn.Module, cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the model file (:func:`~babilong_fast.models.save_model`; ``babilong-fast eval`` reads it)."""
    if model_kind(model) != cfg.kind:
        raise TypeError(f"a {cfg.kind} run cannot save a {type(model).__name__}")
    return save_model(model, path)


def load_trained(path: str | os.PathLike, kind: str, map_location: Any = "cpu") -> nn.Module:
    """Load a model file written by :func:`save_trained`; CheckpointError if it holds another kind."""
    return load_model(path, map_location=map_location, kind=kind)
