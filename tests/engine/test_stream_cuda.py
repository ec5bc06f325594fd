"""On a GPU: chunks that live on the host (lists, CPU tensors, a pinned buffer the caller refills between chunks)
stream to the same state and answer as the same ids already on the GPU.

The runner stages each host chunk in pinned memory of its own before the non-blocking copy, so a caller that
reuses its pinned buffer for the next chunk cannot change what the copy reads (issue: a stale or overwritten
chunk would give another state, not an error).
"""
from __future__ import annotations

import pytest
import torch

from babilong_fast.engine import StreamRunner
from babilong_fast.engine.graphs import state_tensors
from tests.engine.test_graphs import EOS, GEN, make
from tests.helpers import requires_cuda
from tests.models.naive import VOCAB

CHUNK = 7  # not a divisor of the segments: chunks straddle segment boundaries


def refilled_pinned(ids: torch.Tensor):
    """``ids [B, N]`` (CPU) as chunks of CHUNK tokens, every one yielded from the same pinned buffer, which is
    overwritten with the next chunk (and the last one with garbage) as soon as the runner asks for it."""
    buf = torch.empty(ids.shape[0], CHUNK, dtype=ids.dtype, pin_memory=True)
    for a in range(0, ids.shape[1], CHUNK):
        piece = ids[:, a : a + CHUNK]
        buf[:, : piece.shape[1]].copy_(piece)
        yield buf[:, : piece.shape[1]]
    buf.fill_(VOCAB - 3)


@requires_cuda
@pytest.mark.parametrize("kind", ["armt", "rmt", "mamba"])
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_host_chunks_equal_device_ids(kind, graphs):
    torch.manual_seed(0)
    model = make(kind).cuda()
    ids = torch.randint(0, VOCAB - 3, (2, 16 * 9 + 5))
    q = torch.tensor([[5, 6, 7]] * 2)
    runner = StreamRunner(model, progress=False, cuda_graphs=graphs)
    want_state = runner.prefill(ids.cuda())
    want = runner.answer(q, state=want_state, max_new_tokens=6, eos_token_id=EOS, gen_token_id=GEN)
    sources = {
        "cpu tensor": [ids],
        "cpu chunks": [ids[:, a : a + CHUNK] for a in range(0, ids.shape[1], CHUNK)],
        "lists": [ids[:, a : a + CHUNK].tolist() for a in range(0, ids.shape[1], CHUNK)],
        "refilled pinned buffer": refilled_pinned(ids),
    }
    for name, chunks in sources.items():
        state = runner.prefill(chunks)
        assert state.num_tokens == ids.shape[1] and torch.equal(state.pending.cpu(), want_state.pending.cpu()), name
        for a, b in zip(state_tensors(state.model_state), state_tensors(want_state.model_state), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)
        got = runner.answer(q, state=state, max_new_tokens=6, eos_token_id=EOS, gen_token_id=GEN)
        assert torch.equal(got, want), name
