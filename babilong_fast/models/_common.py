"""Shared pieces of the RMT and ARMT wrappers: input checks, left-aligned segmentation, the BABILong loss."""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from babilong_fast.models.plain_modules import hooked_or_replaced


def check_backbone(backbone: object) -> nn.Module:
    """A GPT-2 LM (``GPT2LMHeadModel``): ``.transformer`` (``.h``, ``.wte``, ``.wpe``, ``.ln_f``) and ``.lm_head``."""
    tr = getattr(backbone, "transformer", None)
    if (
        not isinstance(backbone, nn.Module)
        or tr is None
        or not all(hasattr(tr, a) for a in ("h", "wte", "wpe", "ln_f"))
        or not hasattr(backbone, "lm_head")
    ):
        raise TypeError(f"backbone must be a transformers GPT2LMHeadModel, got {type(backbone).__name__}")
    return backbone


def check_positive(name: str, v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    return v


def check_input_ids(input_ids: object, name: str = "input_ids") -> torch.Tensor:
    """A ``[B, N]`` integer tensor, ``N >= 1``: one row per sample, all of the same length; returned as int64
    (embedding lookups and the loss take no other id dtype)."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(
            f"{name} must be a [B, N] torch.Tensor of token ids (samples of equal length), "
            f"got {type(input_ids).__name__}"
        )
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.dim() != 2 or input_ids.shape[0] < 1 or input_ids.shape[1] < 1:
        raise ValueError(f"{name} must be [B, N] with B >= 1 and N >= 1, got shape {tuple(input_ids.shape)}")
    return input_ids.long()


def check_token_range(ids: torch.Tensor, vocab_size: int, name: str = "input_ids") -> None:
    """ValueError unless every id lies in ``[0, vocab_size)`` (one device sync on a GPU)."""
    if ids.numel():
        lo, hi = (int(v) for v in torch.aminmax(ids))
        if lo < 0 or hi >= vocab_size:
            raise ValueError(
                f"{name} must lie in [0, {vocab_size}) (the backbone's vocabulary), got ids in [{lo}, {hi}]")


def check_state_device(have: torch.device, want: torch.device) -> None:
    """ValueError unless the memory state is on the input's device."""
    if have != want:
        raise ValueError(f"the state is on {have} but the input ids on {want}: move it (state.to(device))")


def check_backbone_unhooked(model: str, backbone: nn.Module) -> None:
    """ValueError for hooks, or a replaced ``forward``, on the GPT-2 LM or its ``transformer``: ARMT and RMT call
    their parts (embeddings, blocks, ``ln_f``, ``lm_head``), never these modules, so those would be skipped."""
    for name, module in (("backbone", backbone), ("backbone.transformer", backbone.transformer)):
        why = hooked_or_replaced(module, name)
        if why:
            raise ValueError(f"{model} calls the backbone's embeddings, blocks, ln_f and lm_head, never {name} "
                             f"itself, so this would be skipped: {why}; put the hooks on those parts instead")


def check_mask(mask: object, input_ids: torch.Tensor, name: str) -> torch.Tensor | None:
    """``None`` or a ``[B, N]`` tensor matching ``input_ids``, on its device, of 0 and 1 (checked on the CPU)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.shape != input_ids.shape:
        raise ValueError(f"{name} must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(mask.shape)}")
    if mask.device != input_ids.device:
        raise ValueError(f"{name} is on {mask.device} but input_ids is on {input_ids.device}")
    if mask.device.type == "cpu" and mask.dtype != torch.bool and ((mask != 0) & (mask != 1)).any():
        # e.g. labels passed where the mask goes (forward(input_ids, attention_mask, labels_mask): no labels)
        raise ValueError(f"{name} must hold 0 and 1 only (or bools), got values such as "
                         f"{mask[(mask != 0) & (mask != 1)][:3].tolist()}")
    return mask


def segment_bounds(n: int, segment_size: int) -> list[tuple[int, int]]:
    """Left-aligned segments ``[0, s), [s, 2s), ...``; the last one holds the remainder."""
    return [(i, min(i + segment_size, n)) for i in range(0, n, segment_size)]


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, labels_mask: torch.Tensor | None) -> torch.Tensor:
    """Token-mean cross-entropy of ``logits[:, :-1]`` against ``input_ids[:, 1:]`` where ``labels_mask[:, :-1]``.

    This is RMT/ARMT's ``process_outputs`` (docs/math.md §1.2): the shift is applied to the logits of all
    segments concatenated, and the mask selects prediction positions. ``labels_mask=None`` scores all positions.
    """
    shifted = logits[:, :-1]
    labels = input_ids[:, 1:]
    if labels_mask is not None:
        keep = labels_mask[:, :-1].bool()
        shifted, labels = shifted[keep], labels[keep]
    return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]).float(), labels.reshape(-1))


def scored_lm_loss(
    hidden: torch.Tensor, lm_head: nn.Module, input_ids: torch.Tensor, labels_mask: torch.Tensor,
    reduction: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`lm_loss` with the LM head run on the scored positions only: ``hidden [B, N, d]`` before the head.

    Returns ``(loss, logits [K, V])`` for the ``K`` positions where ``labels_mask[:, :-1]`` is set.
    """
    keep = labels_mask[:, :-1].bool()
    logits = lm_head(hidden[:, :-1][keep].to(lm_head.weight.dtype))
    return F.cross_entropy(logits.float(), input_ids[:, 1:][keep], reduction=reduction), logits


def check_token_id(name: str, token_id: object) -> None:
    """TypeError unless ``token_id`` is an int (numpy's too) or None."""
    if token_id is not None and (isinstance(token_id, bool) or not isinstance(token_id, numbers.Integral)):
        raise TypeError(f"{name} must be an int or None, got {token_id!r}")


def greedy_loop(
    step, batch_size: int, device: torch.device, max_new_tokens: int, eos_token_id: int | None
) -> torch.Tensor:
    """Greedy decoding: ``step(generated [B, t]) -> next-token logits [B, V]``.

    A row that has produced ``eos_token_id`` keeps producing it (HF's padding with ``pad = eos``);
    the loop stops when every row has. ``eos_token_id=None``: no end token, always ``max_new_tokens``.
    Returns the new tokens ``[B, <= max_new_tokens]``.
    """
    check_token_id("eos_token_id", eos_token_id)
    eos_token_id = None if eos_token_id is None else int(eos_token_id)
    out = torch.empty(batch_size, 0, dtype=torch.long, device=device)
    if eos_token_id is None:
        for _ in range(max_new_tokens):
            out = torch.cat([out, step(out).argmax(-1)[:, None]], 1)
        return out
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        nxt = step(out).argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
        out = torch.cat([out, nxt[:, None]], 1)
        done |= nxt == eos_token_id
        if bool(done.all()):
            break
    return out
