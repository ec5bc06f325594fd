"""The Triton launches that put the batch on grid y or z refuse a batch above CUDA's 65535 with a clear error
(a GPU would fail the launch with "invalid argument"); the check comes before any launch, so it runs here too."""
from __future__ import annotations

import pytest
import torch

from babilong_fast.ops import assoc_read, assoc_write, causal_conv1d, rows_layer_norm, segment_embed, selective_scan
from tests.helpers import requires_triton

B = 65536  # one above the limit; the other sizes are tiny, so the tensors are small


def _calls():
    d, n, L, dim, N = 4, 1, 3, 2, 2
    F = 2 * n  # nu = 1
    A, z = torch.randn(B, F, d), torch.rand(B, F)
    yield "assoc_read", lambda: assoc_read(torch.randn(B, 1, d), torch.randn(n, d), A, z, nu=1, backend="triton")
    w = [torch.randn(*s) for s in ((n, d), (d, d), (1, d), (1,))]
    yield "assoc_write", lambda: assoc_write(torch.randn(B, 1, d), *w, A, z, nu=1, backend="triton")
    out = torch.empty(B, 3, d)
    yield "segment_embed", lambda: segment_embed(torch.zeros(B, 1, dtype=torch.long), torch.randn(5, d),
                                                 torch.randn(3, d), out, front=torch.randn(1, 1, d),
                                                 back=torch.randn(B, 1, d), backend="triton")
    yield "rows_layer_norm", lambda: rows_layer_norm(out.normal_(), 1, 1, torch.ones(d), torch.zeros(d),
                                                     backend="triton")
    yield "causal_conv1d", lambda: causal_conv1d(torch.randn(B, dim, L), torch.randn(dim, 2), backend="triton")
    yield "selective_scan", lambda: selective_scan(torch.randn(B, dim, L), torch.rand(B, dim, L), -torch.rand(dim, N),
                                                   torch.randn(dim, N), torch.randn(dim, N), backend="triton")


@requires_triton
@pytest.mark.parametrize("op", [name for name, _ in _calls()])
def test_batch_above_the_grid_limit_is_refused(op):
    call = dict(_calls())[op]
    with pytest.raises(ValueError, match=f"{op}: batch {B} is above 65535"):
        call()
