"""DPFP feature map (Schlag et al. 2021), as used by ARMT's associative memory."""
from __future__ import annotations

import torch


def dpfp(x: torch.Tensor, nu: int = 3) -> torch.Tensor:
    """Deterministic parameter-free projection of order ``nu``.

    With ``s = [relu(x), relu(-x)]`` (length ``2n``) and ``roll`` the cyclic shift toward
    higher indices (``torch.roll`` semantics), ``phi = [s * roll(s, 1), ..., s * roll(s, nu)]``,
    so ``phi[..., j*2n + i] = s[i] * s[(i - j - 1) % 2n]``.

    Args:
        x: ``[..., n]`` any floating dtype.
        nu: order of the map, ``>= 1``.

    Returns:
        ``[..., 2 * nu * n]`` in ``x``'s dtype, all entries ``>= 0``.

    Examples::
        >>> dpfp(torch.randn(2, 64)).shape
        torch.Size([2, 384])
    """
    if not isinstance(nu, int) or isinstance(nu, bool) or nu < 1:
        raise ValueError(f"nu must be an integer >= 1, got {nu!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (the feature axis)")
    s = torch.relu(torch.cat([x, -x], dim=-1))
    rolled = s[..., _roll_index(s.shape[-1], nu, s.device)]  # [..., nu, 2n]: row j is roll(s, j + 1)
    return (s.unsqueeze(-2) * rolled).flatten(-2)  # five kernels in all, whatever nu


_ROLL_INDEX: dict[tuple, torch.Tensor] = {}


def _roll_index(m: int, nu: int, device: torch.device) -> torch.Tensor:
    """``[nu, m]`` int64, ``[j, i] = (i - j - 1) % m``; cached per device, so that later calls (and a CUDA graph
    recorded after the first) copy nothing from the host. Made outside inference mode, so that autograd may
    save it; not cached while torch.compile traces (fake tensors)."""
    key = (m, nu, device)
    idx = _ROLL_INDEX.get(key)
    if idx is None:
        with torch.inference_mode(False):
            # made on the device: under torch.compile a host-made index would be a host copy in every call
            i, j = torch.arange(m, device=device), torch.arange(nu, device=device).unsqueeze(1)
            idx = (i - j - 1) % m
        if not torch.compiler.is_compiling() and type(idx) is torch.Tensor:
            _ROLL_INDEX[key] = idx
    return idx
