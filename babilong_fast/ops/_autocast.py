"""The references' products in the precision they promise, also inside a caller's ``torch.autocast``."""
from __future__ import annotations

import contextlib

import torch


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """A context with autocast off for ``device``'s type: under bf16 autocast a float32 ``@`` would run in bf16,
    and the ARMT state (sums over ~10^4 segments) must be updated and read in float32 (docs/math.md §2.5)."""
    if device.type in ("cuda", "cpu") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
