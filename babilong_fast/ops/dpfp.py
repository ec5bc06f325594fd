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
    s = torch.cat([torch.relu(x), torch.relu(-x)], dim=-1)
    rolled = torch.cat([s.roll(shifts=j, dims=-1) for j in range(1, nu + 1)], dim=-1)
    return torch.cat([s] * nu, dim=-1) * rolled
