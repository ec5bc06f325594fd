"""Fine-tuning examples: ``context ‖ question ‖ GEN ‖ answer ‖ EOS`` with the loss on the answer, and batches.

The scored predictions are the reference's (docs/math.md §5.1, §1.2): GEN -> a1, ..., a_T -> EOS. ``labels_mask``
marks prediction positions (``RecurrentLM.forward`` scores ``logits[:, t]`` against ``input_ids[:, t+1]`` where
``labels_mask[:, t]``), so it is True on GEN and the answer tokens. The reference sets it on the last
``len(answer) + 2`` tokens and so also scores EOS -> pad on right-padded rows (a quirk that depends on the
batch); here padding is never scored, so a sample's loss does not depend on what it is batched with. The prompt that
``babilong-fast eval`` and ``StreamRunner`` answer is the same ``context ‖ question ‖ GEN``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from babilong_fast.data.tokenizer import EOS_ID
from babilong_fast.engine.stream import GEN_ID


@dataclass(frozen=True)
class Example:
    """One tokenized fine-tuning example.

    Args:
        input_ids: ``context ‖ question ‖ GEN ‖ answer ‖ EOS``.
        labels_mask: True on GEN and the answer ids: the positions whose next token (answer, EOS) is scored.
        segments: the curriculum's segment count it was drawn for.
    """

    input_ids: tuple[int, ...]
    labels_mask: tuple[bool, ...]
    segments: int = 1

    @property
    def num_scored(self) -> int:
        """Predictions scored by the loss: ``len(answer) + 1``."""
        return sum(self.labels_mask)


def format_example(
    context: Sequence[int], question: Sequence[int], answer: Sequence[int], segments: int = 1
) -> Example:
    """``context ‖ question ‖ GEN ‖ answer ‖ EOS`` and its labels mask.

    Args:
        context: context ids (facts hidden in background).
        question: question ids (encoded alone).
        answer: answer ids (encoded alone, at least one).
        segments: recorded on the example.
    """
    if not answer:
        raise ValueError("an example needs at least one answer token")
    ids = (*context, *question, GEN_ID, *answer, EOS_ID)
    n_scored = len(answer) + 1
    mask = (False,) * (len(ids) - n_scored - 1) + (True,) * n_scored + (False,)
    return Example(tuple(int(i) for i in ids), mask, segments)


def collate(examples: Sequence[Example], pad_id: int = EOS_ID) -> dict[str, torch.Tensor]:
    """Right-pad a batch.

    Returns:
        ``input_ids [B, N]`` int64 (padded with ``pad_id``), ``attention_mask [B, N]`` int64 and
        ``labels_mask [B, N]`` bool (False on padding), ``N`` the longest example.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    n = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    attn = torch.zeros(len(examples), n, dtype=torch.long)
    lm = torch.zeros(len(examples), n, dtype=torch.bool)
    for i, e in enumerate(examples):
        k = len(e.input_ids)
        ids[i, :k] = torch.tensor(e.input_ids)
        attn[i, :k] = 1
        lm[i, :k] = torch.tensor(e.labels_mask)
    return {"input_ids": ids, "attention_mask": attn, "labels_mask": lm}


def num_scored(batch: dict[str, torch.Tensor]) -> int:
    """Predictions the loss scores in a collated batch (``labels_mask[:, :-1]`` set)."""
    return int(batch["labels_mask"][:, :-1].sum())
