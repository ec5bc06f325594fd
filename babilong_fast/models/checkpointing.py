"""Gradient checkpointing of a GPT-2 backbone whose blocks carry forward hooks (ARMT's read and write).

transformers 5.x checkpoints each block's ``forward`` (``GradientCheckpointingLayer``), so hooks run outside the
checkpoint. transformers 4.x checkpoints ``block.__call__``, hooks included: the backward's recompute then runs
the block without the read (whose hooks are gone by then), and with ``use_reentrant=True`` the write runs under
``no_grad`` and its new state has no graph (silently wrong gradients; ``use_reentrant=False`` raises instead).
:func:`hooks_outside_checkpoints` makes 4.x checkpoint ``forward`` the way 5.x does.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn


def _checkpoints_forward(block: nn.Module) -> bool:
    try:  # imported here: importing babilong_fast must not import transformers
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # transformers < 4.52
        return False
    return isinstance(block, GradientCheckpointingLayer)


def _checkpointed_forward(block: nn.Module, checkpoint):
    forward = type(block).forward

    @functools.wraps(forward)
    def run(*args, **kwargs):
        # kwargs bound, tensors positional: the reentrant checkpoint passes gradients only to positional inputs.
        return checkpoint(functools.partial(forward, block, **kwargs), *args)

    return run


@contextlib.contextmanager
def hooks_outside_checkpoints(transformer: nn.Module) -> Iterator[None]:
    """While open, a checkpointing transformers-4.x ``GPT2Model`` checkpoints each block's ``forward`` (not its
    ``__call__`` with the hooks); a no-op when it does not checkpoint now (flag off, eval mode, no grad) or
    already checkpoints ``forward`` (transformers 5.x)."""
    blocks = list(transformer.h)
    checkpoint = transformer.__dict__.get("_gradient_checkpointing_func")
    active = getattr(transformer, "gradient_checkpointing", False) and transformer.training and torch.is_grad_enabled()
    if not active or checkpoint is None or all(_checkpoints_forward(b) for b in blocks):
        yield
        return
    saved = [block.__dict__.get("forward") for block in blocks]
    transformer.gradient_checkpointing = False
    try:
        for block in blocks:
            block.forward = _checkpointed_forward(block, checkpoint)
        yield
    finally:
        transformer.gradient_checkpointing = True
        for block, previous in zip(blocks, saved, strict=True):
            if previous is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = previous
