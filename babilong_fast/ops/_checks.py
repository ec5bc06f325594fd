"""Argument checks shared by the ops: fail early, in Python, naming the argument."""
from __future__ import annotations

import math

import torch

HALF_AND_FLOAT = (torch.float32, torch.bfloat16, torch.float16)


def check_tensor(
    name: str,
    x: object,
    ndim: int,
    dtypes: tuple[torch.dtype, ...] | None = None,
    contiguous: bool = True,
) -> torch.Tensor:
    """Check that ``x`` is a tensor of rank ``ndim``, with an allowed dtype, densely laid out."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype {allowed}; got {str(x.dtype).replace('torch.', '')}")
    if contiguous and not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous (got strides {x.stride()}); pass {name}.contiguous()")
    return x


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    """All tensors on one device; return it."""
    devices = {n: t.device for n, t in tensors.items()}
    first = next(iter(devices.values()))
    for n, d in devices.items():
        if d != first:
            where = ", ".join(f"{k} on {v}" for k, v in devices.items())
            raise ValueError(f"all tensors must be on one device, but {n} is on {d} ({where})")
    return first


def check_positive_int(name: str, v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    return v


def check_positive_float(name: str, v: object) -> float:
    """``v`` as a float; ValueError unless it is a finite number > 0."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)
