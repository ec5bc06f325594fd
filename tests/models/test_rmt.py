from __future__ import annotations

import pytest
import torch

from babilong_fast.models import RMT, RMTState
from tests.helpers import assert_close
from tests.models.naive import VOCAB, naive_rmt_segment, shifted_ce, tiny_gpt2
from tests.models.test_armt import expected_with_eos, labels_mask_last

SEG, M = 16, 4


def make_rmt() -> RMT:
    return RMT(tiny_gpt2(), num_mem_tokens=M, segment_size=SEG).eval()


def naive_forward(model, ids, mask):
    B, N = ids.shape
    mem = model.memory.unsqueeze(0).expand(B, -1, -1)
    logits, mems = [], []
    for a in range(0, N, SEG):
        seg_mask = None if mask is None else mask[:, a : a + SEG]
        seg_logits, mem = naive_rmt_segment(model, ids[:, a : a + SEG], seg_mask, mem)
        logits.append(seg_logits)
        mems.append(mem)
    return torch.cat(logits, 1), mems


@pytest.mark.parametrize(
    "N,pad",
    [(3 * SEG, False), (2 * SEG + 7, False), (2 * SEG + 7, True), (SEG - 3, False)],
    ids=["full", "short-last", "short-last-padded", "one-segment"],
)
def test_rmt_matches_naive(N, pad):
    model = make_rmt()
    B = 2
    ids = torch.randint(0, VOCAB, (B, N))
    mask = None
    if pad:
        mask = torch.ones_like(ids)
        mask[1, -3:] = 0
    lmask = labels_mask_last(ids)
    with torch.no_grad():
        want_logits, want_mems = naive_forward(model, ids, mask)
        out = model(ids, attention_mask=mask, labels_mask=lmask)
        state = model.init_state(B)
        for s, a in enumerate(range(0, N, SEG)):
            seg_mask = None if mask is None else mask[:, a : a + SEG]
            _, hidden, state = model.segment_forward(ids[:, a : a + SEG], seg_mask, state)
            assert state.segments_seen == s + 1 and state.memory.dtype == torch.float32
            assert hidden.shape == (B, min(SEG, N - a), 64)
            assert_close(f"memory after segment {s}", want_mems[s], state.memory, 1e-5)
    assert_close("logits", want_logits, out["logits"], 1e-5)
    assert_close("loss", shifted_ce(want_logits, ids, lmask), out["loss"], 1e-5)
    assert_close("final memory", want_mems[-1], out["state"].memory, 1e-5)


def test_rmt_gradients_full_bptt():
    """Loss in the last of 3 segments: the learned memory gets its gradient through two memory hand-offs."""
    model = make_rmt()
    ids = torch.randint(0, VOCAB, (2, 2 * SEG + 5))
    lmask = labels_mask_last(ids)
    model(ids, labels_mask=lmask)["loss"].backward()
    got = model.memory.grad.clone()
    assert got.abs().max() > 0
    wte_grad = model.backbone.transformer.wte.weight.grad.clone()
    model.zero_grad()
    logits, _ = naive_forward(model, ids, None)
    shifted_ce(logits, ids, lmask).backward()
    assert_close("dmemory", model.memory.grad, got, 1e-4)
    assert_close("dwte", model.backbone.transformer.wte.weight.grad, wte_grad, 1e-4)
    # Control: cutting the state before the last segment leaves the memory parameter without a gradient.
    model.zero_grad()
    _, _, state = model.segment_forward(ids[:, :SEG], None, model.init_state(2))
    logits, _, _ = model.segment_forward(ids[:, SEG : 2 * SEG], None, state.detach())
    logits.sum().backward()
    assert model.memory.grad is None


def naive_greedy(model, ids, max_new):
    B, N = ids.shape
    mem = model.memory.unsqueeze(0).expand(B, -1, -1)
    starts = list(range(0, N, SEG))
    for a in starts[:-1]:
        _, mem = naive_rmt_segment(model, ids[:, a : a + SEG], None, mem)
    cur = ids[:, starts[-1] :]
    out = []
    for _ in range(max_new):
        logits, _ = naive_rmt_segment(model, cur, None, mem, write=False)
        nxt = logits[:, -1].argmax(-1)
        out.append(nxt)
        cur = torch.cat([cur, nxt[:, None]], 1)
    return torch.stack(out, 1)


@pytest.mark.parametrize("N", [2 * SEG + 5, SEG - 2], ids=["three-seg", "one-seg"])
def test_rmt_generate_matches_naive(N):
    model = make_rmt()
    ids = torch.randint(0, VOCAB - 1, (2, N))
    with torch.no_grad():
        want = naive_greedy(model, ids, 6)
    got = model.generate(ids, max_new_tokens=6, eos_token_id=-1)
    assert got.dtype == torch.long and torch.equal(got, want)
    eos = int(want[1, 1])
    assert torch.equal(model.generate(ids, max_new_tokens=6, eos_token_id=eos), expected_with_eos(want, eos))


def test_rmt_bf16_backbone_keeps_fp32_state():
    try:
        torch.ones(2, 2, dtype=torch.bfloat16) @ torch.ones(2, 2, dtype=torch.bfloat16)
    except RuntimeError:
        pytest.skip("bfloat16 matmul unsupported on this CPU")
    model = make_rmt()
    ref = make_rmt()
    ref.load_state_dict(model.state_dict())
    model = model.to(torch.bfloat16)
    ids = torch.randint(0, VOCAB, (2, 2 * SEG + 3))
    with torch.no_grad():
        out, want = model(ids), ref(ids)
    assert model.init_state(2).memory.dtype == torch.float32
    assert out["state"].memory.dtype == torch.float32 and out["logits"].dtype == torch.bfloat16
    assert_close("memory (bf16 backbone vs fp32)", want["state"].memory, out["state"].memory, 0.05)


def test_rmt_state_helpers_and_bad_input():
    model = make_rmt()
    state = model.init_state(3)
    assert state.memory.shape == (3, M, 64) and state.memory.requires_grad and state.segments_seen == 0
    assert not state.detach().memory.requires_grad
    assert state.clone().memory.data_ptr() != state.memory.data_ptr()
    ids = torch.randint(0, VOCAB, (2, 20))
    with pytest.raises(TypeError, match="input_ids"):
        model(ids.tolist())
    with pytest.raises(ValueError, match=rf"input_ids must lie in \[0, {VOCAB}\)"):
        model(ids + VOCAB)
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 21))
    with pytest.raises(TypeError, match="state"):
        model.segment_forward(ids, None, model.init_state(2).memory)
    with pytest.raises(ValueError, match="state"):
        model.segment_forward(ids, None, state)
    with pytest.raises(ValueError, match=rf"input_ids must lie in \[0, {VOCAB}\)"):  # not the embedding's IndexError
        model.segment_forward(ids - VOCAB, None, model.init_state(2))
    with pytest.raises(ValueError, match="the state is on meta but the input ids on cpu"):  # not torch.cat's error
        model.segment_forward(ids, None, model.init_state(2, "meta"))
    with pytest.raises(ValueError, match="positions"):
        model.generate(torch.randint(0, VOCAB, (1, SEG)), max_new_tokens=80)
    with pytest.raises(ValueError, match="positions"):
        RMT(tiny_gpt2(), num_mem_tokens=16, segment_size=80)
    with pytest.raises(TypeError, match="backbone"):
        RMT(object())
    with pytest.raises(ValueError, match="memory"):
        RMTState(torch.zeros(2, 3))
