"""StreamRunner on Mamba: chunks of any sizes, answer == transformers' generate on context ‖ question ‖ GEN."""
from __future__ import annotations

import pytest
import torch

from babilong_fast.engine import MambaAdapter, StreamRunner, make_adapter
from babilong_fast.models import MambaLM, MambaState
from babilong_fast.models.mamba import layers as mamba_layers
from tests.engine.test_stream import SEG, live_tensors, random_chunks, rss_bytes, stream_of
from tests.models.mamba_util import EOS, VOCAB, hf_greedy, prompt, small_mamba

GEN = 7  # the separator appended after the question (any id in the small vocabulary)


@pytest.fixture(scope="module")
def hf():
    return small_mamba(seed=5)


def expected(hf, context, question, n=10, eos=EOS):
    full = torch.cat([context, question.expand(context.shape[0], -1), torch.full((context.shape[0], 1), GEN)], 1)
    return hf_greedy(hf, full, n, eos)


@pytest.mark.parametrize("segment_size", [1, 7, 64, 2048])
@pytest.mark.parametrize("as_lists", [False, True])
def test_answer_equals_hf_generate(hf, segment_size, as_lists):
    batch = 1 if as_lists else 2
    context, question = prompt(batch, 203), prompt(1, 9, seed=4)
    runner = StreamRunner(hf, segment_size=segment_size, progress=False)
    assert runner.segment_size == segment_size
    state = runner.prefill(random_chunks(context, seed=segment_size, as_lists=as_lists))
    assert state.num_tokens == 203 and 1 <= state.pending.shape[1] <= segment_size
    assert isinstance(state.model_state, MambaState)
    got = runner.answer(question[0].tolist(), max_new_tokens=10, eos_token_id=EOS, gen_token_id=GEN)
    assert torch.equal(got, expected(hf, context, question))


def test_context_a_multiple_of_the_segment(hf):
    """A context of exactly k segments leaves a full segment pending; the question spills it over."""
    context, question = prompt(1, 64), prompt(1, 5, seed=6)
    runner = StreamRunner(hf, segment_size=16, progress=False)
    state = runner.prefill([context])
    assert state.pending.shape[1] == 16 and state.num_segments == 3
    assert torch.equal(runner.answer(question, gen_token_id=GEN, eos_token_id=EOS), expected(hf, context, question))


def test_state_reused_for_several_questions(hf):
    context = prompt(2, 100)
    runner = StreamRunner(hf, segment_size=32, progress=False)
    state = runner.prefill([context[:, :40], context[:, 40:]])
    saved = [t.clone() for t in state.model_state.conv + state.model_state.ssm]
    for seed in (7, 8, 7):
        q = prompt(1, 6, seed=seed)
        assert torch.equal(runner.answer(q, state=state, gen_token_id=GEN, eos_token_id=EOS), expected(hf, context, q))
    assert all(torch.equal(a, b) for a, b in zip(saved, state.model_state.conv + state.model_state.ssm, strict=True))


def test_answer_eos_padding(hf):
    context, question = prompt(2, 50), prompt(1, 4, seed=9)
    eos = int(expected(hf, context, question)[1, 2])
    runner = StreamRunner(hf, segment_size=8, progress=False)
    runner.prefill([context])
    got = runner.answer(question, max_new_tokens=10, eos_token_id=eos, gen_token_id=GEN)
    assert torch.equal(got, expected(hf, context, question, eos=eos))


def test_mamba_lm_and_adapter_segment_size(hf):
    assert StreamRunner(hf, progress=False).segment_size == 2048
    assert StreamRunner(MambaLM(hf, chunk_size=48), progress=False).segment_size == 48
    assert StreamRunner(MambaLM(hf, chunk_size=48), segment_size=5, progress=False).segment_size == 5
    adapter = make_adapter(hf, 12)
    assert isinstance(adapter, MambaAdapter) and adapter.segment_size == 12 and adapter.vocab_size == 100
    context, question = prompt(1, 70), prompt(1, 3, seed=2)
    runner = StreamRunner(MambaLM(hf, chunk_size=48), progress=False)
    runner.prefill([context])
    assert torch.equal(runner.answer(question, gen_token_id=GEN, eos_token_id=EOS), expected(hf, context, question))


def test_stream_runs_in_chunks_with_flat_memory(monkeypatch):
    """No forward sees more than one segment; the state's size, live tensors and RSS stay flat with stream length."""
    hf = small_mamba(vocab_size=4096, seed=1)
    runner = StreamRunner(hf, segment_size=SEG, progress=False)
    widest = [0]
    inner = mamba_layers.forward_chunk

    def spy(parts, state, input_ids=None, inputs_embeds=None, **kw):
        widest[0] = max(widest[0], input_ids.shape[1])
        return inner(parts, state, input_ids, inputs_embeds, **kw)

    monkeypatch.setattr(mamba_layers, "forward_chunk", spy)
    monkeypatch.setattr("babilong_fast.models.mamba.lm.forward_chunk", spy)
    counts, rss = {}, {}

    def probe(k, yielded):
        counts[k] = live_tensors()
        rss[k] = rss_bytes()

    probe_at = {20, 120, 300}
    state = runner.prefill(stream_of(500, probe, probe_at))
    assert state.num_tokens == 500 * SEG + 5 and state.num_segments == 500
    assert widest[0] == SEG
    assert len(set(counts.values())) == 1, counts
    assert rss[300] - rss[20] < 16 * 2**20
    sizes = sum(t.numel() for t in state.model_state.conv + state.model_state.ssm)
    short = runner.prefill([prompt(1, 40, vocab_size=4096)])
    assert sizes == sum(t.numel() for t in short.model_state.conv + short.model_state.ssm)


def test_bad_input(hf):
    runner = StreamRunner(hf, segment_size=8, progress=False)
    with pytest.raises(ValueError, match="segment_size must be an integer >= 1"):
        StreamRunner(hf, segment_size=0)
    with pytest.raises(ValueError, match="token ids must lie in"):
        runner.prefill([[1, 2, 100]])
    state = runner.prefill([prompt(2, 20)])
    with pytest.raises(ValueError, match="chunk 0 has batch size 1"):
        runner.prefill([prompt(1, 5)], state)
    with pytest.raises(ValueError, match="question_ids has 3 rows"):
        runner.answer(prompt(3, 2), state=state, gen_token_id=GEN)
    other = StreamRunner(small_mamba(state_size=4), segment_size=8, progress=False).prefill([prompt(2, 20)])
    with pytest.raises(ValueError, match=r"ssm \[2, 64, 8\]"):
        runner.prefill([prompt(2, 5)], other)
    with pytest.raises(TypeError, match="state must be a MambaState"):
        runner.prefill([prompt(2, 5)], type(state)(state.model_state.ssm, state.pending))
    with pytest.raises(TypeError, match="MambaForCausalLM"):
        StreamRunner(torch.nn.Linear(2, 2))


def test_state_moves_to_a_runner_of_shorter_segments(hf):
    """Mamba's segment size is free: a state with more pending tokens than the new runner's segment is re-blocked."""
    context, question = prompt(2, 100), prompt(1, 5, seed=4)
    long_state = StreamRunner(hf, segment_size=64, progress=False).prefill([context[:, :60]])
    assert long_state.pending.shape[1] > 8
    short = StreamRunner(hf, segment_size=8, progress=False)
    state = short.prefill([context[:, 60:]], long_state)
    assert state.num_tokens == 100 and 1 <= state.pending.shape[1] <= 8
    got = short.answer(question[0].tolist(), max_new_tokens=10, eos_token_id=EOS, gen_token_id=GEN)
    assert torch.equal(got, expected(hf, context, question))


def test_hooks_added_after_the_runner_are_refused():
    """A hook (or an adapter) added once the runner exists was silently skipped: the runner re-reads the model's
    modules before each stream and refuses it, as it refuses one present at construction; so does MambaLM."""
    hf = small_mamba()
    runner = StreamRunner(hf, segment_size=SEG, progress=False)
    ids = torch.randint(0, VOCAB, (1, 3 * SEG + 1))
    kw = {"gen_token_id": None, "eos_token_id": EOS, "max_new_tokens": 3}
    want = runner.run(ids, [1], **kw)
    state = runner.prefill(ids)
    handle = hf.backbone.layers[1].mixer.register_forward_hook(lambda m, i, o: o * 3)
    for call in (lambda: runner.run(ids, [1], **kw), lambda: runner.decode(state, eos_token_id=EOS)):
        with pytest.raises(ValueError, match="would skip this"):
            call()
    handle.remove()
    assert torch.equal(runner.run(ids, [1], **kw), want)
    lm = MambaLM(hf, chunk_size=SEG)
    handle = hf.backbone.norm_f.register_forward_pre_hook(lambda m, i: None)
    with pytest.raises(ValueError, match="norm_f has hooks"):
        lm(ids)
    handle.remove()


@pytest.mark.parametrize("where", ["model", "backbone"])
@pytest.mark.parametrize("how", ["forward_hook", "pre_hook", "backward_hook", "instance_forward"])
def test_hooks_on_the_model_or_its_backbone_are_refused(where, how):
    """MambaLM runs the LM's and the backbone's parts, never the modules themselves: a hook or a replaced forward
    there (accelerate's device-map hooks set one) was skipped silently; it is refused, and runs again once removed."""
    hf = small_mamba()
    ids = torch.randint(0, VOCAB, (1, 2 * SEG + 1))
    module = hf if where == "model" else hf.backbone
    want = MambaLM(hf, chunk_size=SEG)(ids, logits="last")[0]
    handle = {
        "forward_hook": lambda: module.register_forward_hook(lambda m, i, o: o),
        "pre_hook": lambda: module.register_forward_pre_hook(lambda m, i: None),
        "backward_hook": lambda: module.register_full_backward_hook(lambda m, gi, go: None),
        "instance_forward": lambda: setattr(module, "forward", lambda *a, inner=module.forward, **k: inner(*a, **k)),
    }[how]()
    why = f"the {where} has {'its forward replaced' if how == 'instance_forward' else 'hooks'}"
    with pytest.raises(ValueError, match=why):
        MambaLM(hf, chunk_size=SEG)
    with pytest.raises(ValueError, match=why):
        StreamRunner(hf, segment_size=SEG, progress=False)
    if how == "instance_forward":
        del module.forward
    else:
        handle.remove()
    assert torch.equal(MambaLM(hf, chunk_size=SEG)(ids, logits="last")[0], want)


def test_the_model_is_reread_once_per_call_and_not_per_continued_chunk(monkeypatch):
    """The re-read walks every module: once per run / answer / decode / new stream, not per segment, not for each
    chunk of a continued stream (prefill(chunk, state)), not again inside the decoding."""
    calls = []
    monkeypatch.setattr(MambaLM, "refresh", lambda self: calls.append(1))
    runner = StreamRunner(small_mamba(), segment_size=SEG, progress=False)
    ids = torch.randint(0, VOCAB, (1, 5 * SEG + 1))
    kw = {"gen_token_id": None, "eos_token_id": EOS, "max_new_tokens": 3}
    runner.run(ids, [1], **kw)
    assert len(calls) == 1
    state = runner.prefill(ids[:, :SEG])
    for k in range(1, 5):
        state = runner.prefill(ids[:, k * SEG:(k + 1) * SEG], state)
    assert len(calls) == 2
    runner.answer([1], state=state, **kw)
    assert len(calls) == 3


def test_an_adapter_without_refresh_still_streams():
    """Adapters registered by users predate refresh(): the runner does without it."""
    runner = StreamRunner(small_mamba(), segment_size=SEG, progress=False)
    ids = torch.randint(0, VOCAB, (1, 2 * SEG + 1))
    kw = {"gen_token_id": None, "eos_token_id": EOS, "max_new_tokens": 3}
    want = runner.run(ids, [1], **kw)

    class Plain:  # the adapter's methods, without refresh
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            if name == "refresh":
                raise AttributeError(name)
            return getattr(self.inner, name)

    runner.adapter = Plain(runner.adapter)
    assert torch.equal(runner.run(ids, [1], **kw), want)
