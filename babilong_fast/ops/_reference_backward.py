"""Autograd for the fused backends: when a call needs it, and a backward that recomputes with the torch reference.

The fused kernels have forwards only. Where a gradient is wanted, each op runs its kernel inside an
``autograd.Function`` whose backward rebuilds the reference's graph from the saved inputs and differentiates it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def fused_needs_autograd(chosen: str, *tensors: torch.Tensor | None) -> bool:
    """A fused backend (not ``"torch"``) is chosen, grad mode is on and an input requires grad."""
    return chosen != "torch" and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def mark_constant_outputs(
    ctx, outputs: Sequence[torch.Tensor | None], depends_on: Sequence[Sequence[int]]
) -> None:
    """Mark as non-differentiable each output whose inputs (``depends_on``: indices into the forward's
    arguments) need no gradient, so that it does not require grad where the reference's would not."""
    for out, deps in zip(outputs, depends_on, strict=True):
        if out is not None and not any(ctx.needs_input_grad[i] for i in deps):
            ctx.mark_non_differentiable(out)


def leaves(saved: Sequence[torch.Tensor | None], needs: Sequence[bool]) -> list[torch.Tensor | None]:
    """Detached copies of the saved inputs that require grad where the forward's inputs needed one."""
    return [None if t is None else t.detach().requires_grad_(need) for t, need in zip(saved, needs, strict=True)]


def reference_grads(
    outputs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None], inputs: Sequence[torch.Tensor | None]
) -> tuple[torch.Tensor | None, ...]:
    """Gradients for ``inputs`` (None where none is wanted) of the reference's ``outputs`` given the incoming
    ``grads``. An output without an incoming gradient, or depending on no input that wants one (no graph: e.g.
    assoc_write's ``z_new`` when only ``w_v`` trains), is left out."""
    pairs = [(o, g) for o, g in zip(outputs, grads, strict=True) if g is not None and o.requires_grad]
    wrt = [t for t in inputs if t is not None and t.requires_grad]
    found = iter(
        torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
        if pairs and wrt else [None] * len(wrt)
    )
    return tuple(next(found) if t is not None and t.requires_grad else None for t in inputs)
