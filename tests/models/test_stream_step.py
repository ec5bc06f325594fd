from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from babilong_fast.models import ARMT, RMT, ARMTState, RMTState
from babilong_fast.models import stream_step as stream_step_module
from babilong_fast.models._common import segment_bounds
from babilong_fast.models.stream_step import SegmentWorkspace, fast_step_unsupported, stream_step
from tests.helpers import assert_close, make_memory_matter, requires_triton
from tests.models.naive import EOS, VOCAB

SEG, M = 16, 4
N_TOKENS = 8 * SEG - 5  # eight segments, the last one 11 tokens


def make_model(kind: str, attn: str, n_layer: int = 2) -> ARMT | RMT:
    """A tiny model on a real HF GPT-2 with the given attention implementation; ARMT with W_v random."""
    config = GPT2Config(
        n_layer=n_layer, n_embd=64, n_head=4, n_positions=64, vocab_size=VOCAB, bos_token_id=EOS, eos_token_id=EOS,
        initializer_range=0.1, attn_implementation=attn,
    )
    gpt2 = GPT2LMHeadModel(config).eval()
    assert gpt2.config._attn_implementation == attn
    if kind == "rmt":
        return RMT(gpt2, num_mem_tokens=M, segment_size=SEG).eval()
    model = ARMT(gpt2, num_mem_tokens=M, d_mem=8, segment_size=SEG)
    make_memory_matter(model)
    return model.eval()


def state_tensors(state: ARMTState | RMTState) -> list[torch.Tensor]:
    return [state.memory] if isinstance(state, RMTState) else [*state.A, *state.z]


def run_both(model, ids, backend=None, lean_blocks=True, teacher_forced=False):
    """segment_forward's states and stream_step's, segment by segment: each chain fed by its own states, or with
    ``teacher_forced`` both fed segment_forward's (each step checked alone)."""
    ws = SegmentWorkspace(lean_blocks=lean_blocks)
    with torch.inference_mode():
        ref = fast = model.init_state(ids.shape[0])
        pairs = []
        for a, b in segment_bounds(ids.shape[1], SEG):
            fast = stream_step(model, ids[:, a:b], ref if teacher_forced else fast, ws, backend=backend)
            ref = model.segment_forward(ids[:, a:b], None, ref, write=True, return_logits=False)[2]
            pairs.append((ref, fast))
    return pairs


@pytest.mark.parametrize("lean", [True, False], ids=["lean_blocks", "hf_blocks"])
@pytest.mark.parametrize("B", [1, 3], ids=["B1", "B3"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["armt", "rmt"])
def test_stream_step_matches_segment_forward(kind, attn, B, lean):
    """With transformers' blocks the step does segment_forward's arithmetic: the chains agree to 1e-5 (in fact
    exactly) over eight segments, each fed by its own states. So do RMT's with the lean blocks, whose float32
    sums are ordered differently (about 3e-7 per step; their arithmetic is checked against float64 in
    test_gpt2_block.py). ARMT's memory amplifies such differences: on these random models, along a chain up to
    4e-4 after eight segments, and up to 1.2e-4 in a single step (the worst of 120 draws per transformers
    release, 5.5 and 5.24). So ARMT's lean steps are checked one by one, each fed segment_forward's state, within
    1e-3; wiring mistakes are far above it (no causal mask in the last block: 3.7e-2; write rows off by one: 0.43)."""
    model = make_model(kind, attn)
    ids = torch.randint(0, VOCAB, (B, N_TOKENS))
    one_by_one = lean and kind == "armt"
    pairs = run_both(model, ids, lean_blocks=lean, teacher_forced=one_by_one)
    assert len(pairs) == 8
    for k, (ref, fast) in enumerate(pairs):
        assert type(fast) is type(ref) and fast.segments_seen == ref.segments_seen == k + 1
        for i, (r, f) in enumerate(zip(state_tensors(ref), state_tensors(fast), strict=True)):
            assert f.dtype == torch.float32 and f.shape == r.shape
            assert_close(f"segment {k} tensor {i}", r, f, 1e-3 if one_by_one else 1e-5)
    # The memory really carries information: states differ between segments, and W_v made ARMT's A non-trivial.
    last = state_tensors(pairs[-1][1])[0]
    assert not torch.allclose(last, state_tensors(pairs[-2][1])[0])


@requires_triton
@pytest.mark.parametrize("kind", ["armt", "rmt"])
def test_stream_step_triton_segment_ops(kind):
    """The same chain with the Triton segment ops (the interpreter on CPU); three segments, batch 2."""
    model = make_model(kind, "sdpa", n_layer=1)
    ids = torch.randint(0, VOCAB, (2, 3 * SEG - 3))
    for k, (ref, fast) in enumerate(run_both(model, ids, backend="triton")):
        for i, (r, f) in enumerate(zip(state_tensors(ref), state_tensors(fast), strict=True)):
            assert_close(f"segment {k} tensor {i}", r, f, 1e-5)


@pytest.mark.parametrize("lean", [True, False], ids=["lean_blocks", "hf_blocks"])
def test_stream_step_reuses_its_buffer(lean, monkeypatch):
    """One block-input buffer per shape: the same storage on every call, a new one for a new shape."""
    model = make_model("rmt", "sdpa", n_layer=1)
    ws = SegmentWorkspace(lean_blocks=lean)
    seen = []
    hook = model.backbone.transformer.h[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].data_ptr()))
    lean_block = stream_step_module.gpt2_block_infer
    spy = lambda b, h, **kw: seen.append(h.data_ptr()) or lean_block(b, h, **kw)  # noqa: E731
    monkeypatch.setattr(stream_step_module, "gpt2_block_infer", spy)
    with torch.inference_mode():
        state = model.init_state(2)
        for _ in range(3):
            state = stream_step(model, torch.randint(0, VOCAB, (2, SEG)), state, ws)
        stream_step(model, torch.randint(0, VOCAB, (2, 5)), state, ws)
    hook.remove()
    assert len(seen) == 4
    assert seen[0] == seen[1] == seen[2] != seen[3]
    assert len(ws._buffers) == 2


def test_stream_step_returned_states_do_not_alias():
    """Earlier states stay valid after later steps (the buffer is reused, the states are not)."""
    model = make_model("rmt", "eager", n_layer=1)
    ws = SegmentWorkspace()
    with torch.inference_mode():
        s1 = stream_step(model, torch.randint(0, VOCAB, (1, SEG)), model.init_state(1), ws)
        kept = s1.memory.clone()
        stream_step(model, torch.randint(0, VOCAB, (1, SEG)), s1, ws)
    assert torch.equal(s1.memory, kept)


@pytest.mark.parametrize("kind", ["armt", "rmt"])
def test_stream_step_falls_back(kind, monkeypatch):
    """Training mode, gradients on, or an attention kernel the fast step does not handle: segment_forward runs."""
    model = make_model(kind, "sdpa", n_layer=1)
    calls = []
    inner = model.segment_forward

    def spy(*args, **kw):
        calls.append(kw)
        if model.backbone.config._attn_implementation == "flash_attention_2":  # cannot run here: record only
            return None, None, "fell back"
        return inner(*args, **kw)

    monkeypatch.setattr(model, "segment_forward", spy)
    ids = torch.randint(0, VOCAB, (2, SEG))
    with torch.inference_mode():
        assert fast_step_unsupported(model) is None
        stream_step(model, ids, model.init_state(2))
    assert calls == []
    with torch.no_grad():
        assert fast_step_unsupported(model) is None
        stream_step(model, ids, model.init_state(2))
        assert calls == []
        model.train()
        assert "training" in fast_step_unsupported(model)
        stream_step(model, ids, model.init_state(2))
        assert calls == [{"write": True, "return_logits": False}]
        model.eval()
    assert "gradients" in fast_step_unsupported(model)
    stream_step(model, ids, model.init_state(2))
    assert len(calls) == 2
    monkeypatch.setattr(model.backbone.config, "_attn_implementation", "flash_attention_2", raising=False)
    with torch.no_grad():
        assert "flash_attention_2" in fast_step_unsupported(model)
        assert stream_step(model, ids, model.init_state(2)) == "fell back"
    assert len(calls) == 3


def test_stream_step_bad_input():
    model = make_model("armt", "sdpa", n_layer=1)
    with torch.inference_mode():
        state = model.init_state(2)
        with pytest.raises(ValueError, match="exceeds the backbone's 64 positions"):
            stream_step(model, torch.randint(0, VOCAB, (2, 64 - M + 1)), state)
        with pytest.raises(ValueError, match=r"state A must be \[3 or 1"):
            stream_step(model, torch.randint(0, VOCAB, (3, SEG)), state)
        with pytest.raises(TypeError, match="integer token ids"):
            stream_step(model, torch.rand(2, SEG), state)
        with pytest.raises(TypeError, match="RMTState"):
            stream_step(make_model("rmt", "sdpa", n_layer=1), torch.randint(0, VOCAB, (2, SEG)), state)
