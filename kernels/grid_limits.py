"""CUDA's grid limit for the Triton launches that put the batch on grid y or z."""
from __future__ import annotations

MAX_GRID_YZ = 65535


def check_batch(op: str, batch: int) -> None:
    """ValueError when ``batch`` rows, one grid-y/z index each, pass CUDA's 65535 (the launch would fail with
    "invalid argument"); the CUDA backends refuse the same sizes."""
    if batch > MAX_GRID_YZ:
        raise ValueError(f"{op}: batch {batch} is above {MAX_GRID_YZ}, CUDA's grid limit for the Triton kernel; "
                         "split the batch or use backend='torch'")
