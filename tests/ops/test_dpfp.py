from __future__ import annotations

import pytest
import torch

from babilong_fast.ops import dpfp


def dpfp_by_definition(x: torch.Tensor, nu: int) -> torch.Tensor:
    """phi[j*2n + i] = s[i] * s[(i - j - 1) mod 2n], s = [relu(x), relu(-x)], written out element by element."""
    n = x.shape[-1]
    s = torch.cat([x.clamp_min(0), (-x).clamp_min(0)], dim=-1)
    out = torch.empty(*x.shape[:-1], 2 * nu * n, dtype=x.dtype)
    for j in range(nu):
        for i in range(2 * n):
            out[..., j * 2 * n + i] = s[..., i] * s[..., (i - j - 1) % (2 * n)]
    return out


@pytest.mark.parametrize("n,nu", [(1, 1), (5, 3), (8, 2), (3, 9)])
def test_dpfp_matches_definition(n, nu):
    x = torch.randn(4, 3, n, dtype=torch.float64)
    torch.testing.assert_close(dpfp(x, nu), dpfp_by_definition(x, nu), rtol=0, atol=0)


def test_dpfp_index_made_in_inference_mode_serves_autograd():
    """The cached roll index of a first call in inference mode is a normal tensor: a later backward can save it."""
    import importlib

    importlib.import_module("babilong_fast.ops.dpfp")._ROLL_INDEX.clear()
    with torch.inference_mode():
        dpfp(torch.randn(2, 5), 3)
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: dpfp(t, 3), (x,))


def test_dpfp_roll_direction():
    """s = [1, 2, 0, 0] (x = [1, 2]); roll by one toward higher indices gives [0, 1, 2, 0]."""
    phi = dpfp(torch.tensor([1.0, 2.0]), nu=1)
    assert phi.tolist() == [0.0, 2.0, 0.0, 0.0]


def test_dpfp_nonnegative_and_shape():
    phi = dpfp(torch.randn(2, 7, 64))
    assert phi.shape == (2, 7, 384) and bool((phi >= 0).all())


@pytest.mark.parametrize("nu", [0, -1, 1.5, True])
def test_dpfp_bad_nu(nu):
    with pytest.raises(ValueError, match="nu"):
        dpfp(torch.randn(3), nu)
