"""Gradient checkpointing of a GPT-2 backbone whose blocks carry forward hooks (ARMT's read and write).

Which part of a block transformers checkpoints depends on the release: 4.x checkpoints ``block.__call__`` from
``GPT2Model.forward``, 5.17 too (``GradientCheckpointingLayer.__call__``), 5.24 the block's ``forward``. Where
``__call__`` is checkpointed the hooks run inside it: the backward's recompute then runs the block without the
read (whose hooks are gone by then), and with ``use_reentrant=True`` the write runs under ``no_grad`` and its new
state has no graph (silently wrong gradients; ``use_reentrant=False`` raises instead).
:func:`hooks_outside_checkpoints` turns transformers' checkpointing off for the call and checkpoints each block's
``forward`` itself, with transformers' own checkpoint function, whatever the release.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

from babilong_fast._binding import MISSING

_FLAG = "gradient_checkpointing"
_FUNC = "_gradient_checkpointing_func"


@contextlib.contextmanager
def _flag_off(module: nn.Module) -> Iterator[None]:
    """``module.gradient_checkpointing`` False while open (an instance attribute; the previous one restored)."""
    previous = module.__dict__.get(_FLAG, MISSING)
    module.__dict__[_FLAG] = False
    try:
        yield
    finally:
        if previous is MISSING:
            module.__dict__.pop(_FLAG, None)
        else:
            module.__dict__[_FLAG] = previous


def _checkpointed_forward(block: nn.Module, checkpoint):
    forward = type(block).forward

    def body(*args, **kwargs):
        with _flag_off(block):  # also in the backward's recompute, when the flags are on again
            return forward(block, *args, **kwargs)

    @functools.wraps(forward)
    def run(*args, **kwargs):
        # kwargs bound, tensors positional: the reentrant checkpoint passes gradients only to positional inputs.
        return checkpoint(functools.partial(body, **kwargs), *args)

    return run


@contextlib.contextmanager
def hooks_outside_checkpoints(transformer: nn.Module) -> Iterator[None]:
    """While open, a checkpointing ``GPT2Model`` checkpoints each block's ``forward`` (never its ``__call__`` with
    the hooks); a no-op when it does not checkpoint now (flag off, eval mode, no grad)."""
    blocks = list(transformer.h)
    owners = [m for m in (transformer, *blocks) if getattr(m, _FLAG, False) is True]
    checkpoint = next((m.__dict__[_FUNC] for m in owners if _FUNC in m.__dict__), None)
    if not owners or checkpoint is None or not transformer.training or not torch.is_grad_enabled():
        yield
        return
    saved = [block.__dict__.get("forward") for block in blocks]
    with contextlib.ExitStack() as flags:
        for m in owners:
            flags.enter_context(_flag_off(m))
        try:
            for block in blocks:
                block.forward = _checkpointed_forward(block, checkpoint)
            yield
        finally:
            for block, previous in zip(blocks, saved, strict=True):
                if previous is None:
                    block.__dict__.pop("forward", None)
                else:
                    block.forward = previous
