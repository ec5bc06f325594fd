"""The CUDA kernels that put the batch on grid y or z refuse a batch above 65535 with a ValueError, as the Triton
wrappers do (tests/ops/test_triton_batch_limit.py), not a RuntimeError; the host checks run under the emulator."""
from __future__ import annotations

import pytest
import torch

from tests.ops import cuda_emulation

pytestmark = pytest.mark.skipif(cuda_emulation.skip_reason() is not None, reason=str(cuda_emulation.skip_reason()))
B = 65536  # one above the limit; the other sizes are tiny


def _calls(emu):
    d, n, L, dim, N = 4, 1, 3, 2, 2
    F = 2 * n  # nu = 1
    A, z = torch.randn(B, F, d), torch.rand(B, F)
    w = [torch.randn(*s) for s in ((n, d), (d, d), (1, d), (1,))]
    yield "assoc_write_fwd", lambda: emu.assoc_write_fwd(torch.randn(B, 1, d), *w, A, z, 1, 1e-5, True, False)
    out = torch.empty(B, 3, d)
    yield "segment_embed_fwd", lambda: emu.segment_embed_fwd(torch.zeros(B, 1, dtype=torch.long), torch.randn(5, d),
                                                             torch.randn(3, d), out, torch.randn(1, 1, d),
                                                             torch.randn(B, 1, d))
    yield "rows_layer_norm_fwd", lambda: emu.rows_layer_norm_fwd(out.normal_(), 1, 1, torch.ones(d), torch.zeros(d),
                                                                 1e-5, torch.empty(B, 1, d))
    yield "causal_conv1d_fwd", lambda: emu.causal_conv1d_fwd(torch.randn(B, dim, L), torch.randn(dim, 2), None, None,
                                                             False, True)
    yield "selective_scan_fwd", lambda: emu.selective_scan_fwd(torch.randn(B, dim, L), torch.rand(B, dim, L),
                                                               -torch.rand(dim, N), torch.randn(dim, N),
                                                               torch.randn(dim, N), None, None, None, None, False,
                                                               True)


@pytest.mark.parametrize("op", ["assoc_write_fwd", "segment_embed_fwd", "rows_layer_norm_fwd", "causal_conv1d_fwd",
                                "selective_scan_fwd"])
def test_batch_above_the_grid_limit_is_a_value_error(emu, op):
    call = dict(_calls(emu))[op]
    with pytest.raises(ValueError, match=f"{op}: batch {B} is above 65535, CUDA's grid limit"):
        call()
