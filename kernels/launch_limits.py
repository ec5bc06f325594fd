"""Sizes the Triton wrappers refuse before launching: a batch past CUDA's grid y/z limit, and projection weights
past the kernels' 32-bit row offsets."""
from __future__ import annotations

import torch

MAX_GRID_YZ = 65535


def check_batch(op: str, batch: int) -> None:
    """ValueError when ``batch`` rows, one grid-y/z index each, pass CUDA's 65535 (the launch would fail with
    "invalid argument"); the CUDA backends refuse the same sizes."""
    if batch > MAX_GRID_YZ:
        raise ValueError(f"{op}: batch {batch} is above {MAX_GRID_YZ}, CUDA's grid limit for the Triton kernel; "
                         "split the batch or use backend='torch'")


def check_weight_fits_int32(name: str, w: torch.Tensor) -> None:
    """The projection kernels index a weight's rows in 32 bits (a 64-bit row index makes their tiles spill under
    Triton 3.6): refuse one of 2^31 elements or more."""
    if w.numel() >= 2**31:
        raise ValueError(f"{name} has {w.numel()} elements; the Triton kernels take fewer than 2^31 "
                         "(use backend='torch' or 'cuda')")
