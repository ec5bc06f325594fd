from __future__ import annotations

import gc
import random
import tracemalloc
import weakref

import pytest
import torch

from babilong_fast.engine import GEN_ID, StreamRunner, StreamState, as_chunk
from babilong_fast.engine import adapters as adapters_mod
from babilong_fast.engine import progress as progress_mod
from babilong_fast.models import ARMT, RMT, ARMTState
from babilong_fast.models._common import segment_bounds
from tests.helpers import assert_close
from tests.models.naive import EOS, VOCAB, tiny_gpt2
from tests.models.test_armt import expected_with_eos, make_armt
from tests.models.test_rmt import make_rmt

SEG = 16
GEN = VOCAB - 2
CHUNK_SIZES = (1, 7, 33, SEG, 3 * SEG + 5)


def make_model(kind: str) -> ARMT | RMT:
    model = make_armt() if kind == "armt" else make_rmt()
    assert model.segment_size == SEG
    return model


def random_chunks(ids: torch.Tensor, seed: int, as_lists: bool) -> list:
    """``ids [B, N]`` cut into chunks of sizes drawn from CHUNK_SIZES (the last one shorter)."""
    rng = random.Random(seed)
    out, a = [], 0
    while a < ids.shape[1]:
        b = min(a + rng.choice(CHUNK_SIZES), ids.shape[1])
        piece = ids[:, a:b]
        out.append(piece[0].tolist() if as_lists else piece)
        a = b
    return out


def states_equal(a, b) -> bool:
    if isinstance(a, ARMTState):
        return (
            a.segments_seen == b.segments_seen
            and all(torch.equal(x, y) for x, y in zip(a.A, b.A, strict=True))
            and all(torch.equal(x, y) for x, y in zip(a.z, b.z, strict=True))
        )
    return a.segments_seen == b.segments_seen and torch.equal(a.memory, b.memory)


def assert_states_close(got, want, rtol: float = 1e-4) -> None:
    """The streamed state against segment_forward's. The fast step's GPT-2 blocks round differently (one block:
    2e-7 from float64), and this tiny ARMT's recurrence grows A to ~1e3 and round-off with it: after 8 segments
    both paths are 2e-6..3e-5 from the float64 naive math. A wrong segmentation differs by O(1)."""
    assert type(got) is type(want) and got.segments_seen == want.segments_seen
    pairs = zip([*got.A, *got.z], [*want.A, *want.z], strict=True) if isinstance(got, ARMTState) else [
        (got.memory, want.memory)]
    for i, (g, w) in enumerate(pairs):
        assert_close(f"state tensor {i}", w, g, rtol)


def reference(model, full: torch.Tensor, max_new_tokens: int, eos: int):
    """``model.generate`` on the whole input, and the state before its final segment, by segment_forward."""
    want = model.generate(full, max_new_tokens=max_new_tokens, eos_token_id=eos)
    bounds = segment_bounds(full.shape[1], SEG)
    with torch.no_grad():
        state = model.init_state(full.shape[0])
        for a, b in bounds[:-1]:
            _, _, state = model.segment_forward(full[:, a:b], None, state, return_logits=False)
    return want, state, bounds


# (context tokens, question tokens): the whole input context ‖ question ‖ GEN ends on and off a boundary,
# fits one segment, and has a question that spills over one or several segments.
CASES = [
    pytest.param(4 * SEG, 3, id="ctx-multiple"),
    pytest.param(4 * SEG - 4, 3, id="input-multiple"),
    pytest.param(3 * SEG + 7, 0, id="gen-only"),
    pytest.param(SEG - 3, 2, id="one-segment"),
    pytest.param(SEG, 0, id="ctx-one-full"),
    pytest.param(2 * SEG + 1, SEG + 3, id="question-spills"),
    pytest.param(5, 2 * SEG, id="long-question"),
    pytest.param(7 * SEG + 11, 4, id="eight-segments"),
]


@pytest.mark.parametrize("B", [1, 2], ids=["B1", "B2"])
@pytest.mark.parametrize("N,Q", CASES)
@pytest.mark.parametrize("kind", ["armt", "rmt"])
def test_stream_matches_generate(kind, N, Q, B):
    model = make_model(kind)
    ctx = torch.randint(0, VOCAB - 2, (B, N))
    question = torch.randint(0, VOCAB - 2, (B, Q))
    full = torch.cat([ctx, question, torch.full((B, 1), GEN)], 1)
    want, want_state, bounds = reference(model, full, 6, -1)
    runner = StreamRunner(model, progress=False)
    chunks = random_chunks(ctx, seed=N * 10 + Q + B, as_lists=B == 1)
    if B == 1:
        chunks.insert(1, [])
        chunks.append(torch.zeros(0, dtype=torch.long))
    q = question[0].tolist() if B == 1 else question
    got = runner.run(chunks, q, max_new_tokens=6, eos_token_id=-1, gen_token_id=GEN)
    assert got.dtype == torch.long and got.shape == (B, 6)
    assert torch.equal(got, want)

    prefilled = runner.state
    assert prefilled.num_tokens == N and 1 <= prefilled.pending.shape[1] <= SEG
    assert prefilled.num_segments == (N - 1) // SEG
    done = runner.finish(q, gen_token_id=GEN)
    a, b = bounds[-1]
    assert torch.equal(done.pending, full[:, a:b])
    assert done.num_tokens == full.shape[1] and done.num_segments == len(bounds) - 1
    assert_states_close(done.model_state, want_state)
    # Answering does not consume the prefilled state: a second answer with an end-of-text is HF's padding.
    eos = int(want[0, 2])
    again = runner.answer(q, max_new_tokens=6, eos_token_id=eos, gen_token_id=GEN)
    assert torch.equal(again, expected_with_eos(want, eos))
    assert runner.state is prefilled


@pytest.mark.parametrize("kind", ["armt", "rmt"])
def test_stream_static_segments_no_logits(kind, monkeypatch):
    """Every write step is a full [B, SEG] segment (the fast stream step); the LM head runs only while decoding."""
    model = make_model(kind)
    calls, head_calls = [], []
    inner = model.segment_forward
    inner_step = adapters_mod.stream_step

    def spy(input_ids, attention_mask, state, **kw):
        calls.append((tuple(input_ids.shape), kw.get("write", True), kw.get("return_logits", True)))
        return inner(input_ids, attention_mask, state, **kw)

    def step_spy(m, ids, state, ws, **kw):  # writes on, no logits by construction
        calls.append((tuple(ids.shape), True, False))
        return inner_step(m, ids, state, ws, **kw)

    model.segment_forward = spy
    monkeypatch.setattr(adapters_mod, "stream_step", step_spy)
    model.backbone.lm_head.register_forward_hook(lambda *a: head_calls.append(1))
    runner = StreamRunner(model, progress=False)
    ctx = torch.randint(0, VOCAB - 2, (2, 5 * SEG + 3))
    state = runner.prefill(random_chunks(ctx, 0, as_lists=False))
    assert len(calls) == 5 and not head_calls
    assert all(c == ((2, SEG), True, False) for c in calls)
    runner.answer([1] * (SEG + 2), state=state, max_new_tokens=3, eos_token_id=-1, gen_token_id=GEN)
    writes = [c for c in calls if c[1]]
    assert len(writes) == 6 and all(c == ((2, SEG), True, False) for c in writes)
    assert [c for c in calls if not c[1]] == [((2, 6 + k), False, False) for k in range(3)]
    assert len(head_calls) == 3


def test_stream_continues_and_rebatches():
    """Two prefill calls equal one; a 1-D tensor, lists and a 2-D tensor of one row mix in one stream."""
    model = make_model("armt")
    ctx = torch.randint(0, VOCAB - 2, (1, 6 * SEG + 9))
    runner = StreamRunner(model, progress=False)
    one = runner.prefill([ctx])
    half = runner.prefill([ctx[0, :40], ctx[0, 40:50].tolist()])
    two = runner.prefill([ctx[:, 50:]], state=half)
    assert two.num_tokens == one.num_tokens and two.num_segments == one.num_segments == 6
    assert torch.equal(two.pending, one.pending) and states_equal(two.model_state, one.model_state)
    assert half.num_tokens == 50 and half.pending.shape[1] == 50 - 3 * SEG
    fresh = runner.init_state(1)
    assert fresh.num_tokens == 0 and fresh.pending.shape == (1, 0)
    three = runner.prefill(random_chunks(ctx, 3, as_lists=True), state=fresh)
    assert states_equal(three.model_state, one.model_state)


class TrackedChunk(list):
    """A list of ids whose lifetime the test can watch (lists take no weak references)."""


BIG_VOCAB = 4096


def stream_of(n_segments: int, probe, probe_at: set[int]):
    """Lazily yield random chunks totalling ``n_segments * SEG + 5`` ids; call ``probe(k)`` before chunk k.

    Ids are >= 256, so every id is its own Python int (no small-int cache): holding the stream would cost
    about 40 bytes of traced Python memory per token.
    """
    rng = random.Random(0)
    total, yielded, k = n_segments * SEG + 5, 0, 0
    while yielded < total:
        if k in probe_at:
            probe(k, yielded)
        n = min(rng.choice(CHUNK_SIZES), total - yielded)
        yield TrackedChunk(rng.randrange(256, BIG_VOCAB) for _ in range(n))
        yielded += n
        k += 1


def live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def big_vocab_model(kind: str) -> ARMT | RMT:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=48, vocab_size=BIG_VOCAB,
                                       bos_token_id=BIG_VOCAB - 1, eos_token_id=BIG_VOCAB - 1))
    if kind == "armt":
        return ARMT(gpt2, num_mem_tokens=4, d_mem=8, segment_size=SEG).eval()
    return RMT(gpt2, num_mem_tokens=4, segment_size=SEG).eval()


@pytest.mark.parametrize("kind", ["armt", "rmt"])
def test_stream_memory_bounded(kind):
    """Streaming 250 segments: no chunk is kept, segments run as chunks arrive, live tensors and memory stay flat."""
    runner = StreamRunner(big_vocab_model(kind), progress=False)
    steps = []
    inner = runner.adapter.step
    runner.adapter.step = lambda ids, st: (steps.append(1), inner(ids, st))[1]
    made, freed = [0], [0]
    counts: dict[int, int] = {}

    def probe(k, yielded):
        alive = made[0] - freed[0]
        assert alive <= 1, f"{alive} chunks still alive at chunk {k}"
        assert len(steps) * SEG >= yielded - SEG, "segments are not run while streaming"
        counts[k] = live_tensors()

    def tracked(gen):
        for c in gen:
            made[0] += 1
            weakref.finalize(c, lambda: freed.__setitem__(0, freed[0] + 1))
            yield c

    probe_at = {20, 80, 160}
    state = runner.prefill(tracked(stream_of(250, probe, probe_at)))
    assert state.num_tokens == 250 * SEG + 5 and state.num_segments == 250
    # Live tensors do not grow (one kept per segment adds 77 from chunk 20 to 80). They may fall: tensors an
    # earlier test left (torch.compile's, after tests/models/test_compiled_step.py) can be freed meanwhile.
    assert set(counts) == probe_at and counts[20] >= counts[80] >= counts[160], counts

    traced: dict[int | str, int] = {}

    def probe_mem(k, yielded):
        traced["tokens"] = yielded
        traced["current"] = tracemalloc.get_traced_memory()[0]
        traced["rss"] = rss_bytes()
        tracemalloc.reset_peak()

    tracemalloc.start()
    try:
        state = runner.prefill(stream_of(250, probe_mem, {10}))
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    streamed = state.num_tokens - traced["tokens"]
    assert streamed > 3000
    # Interpreter free lists still fill up a little; holding the stream would add ~40 B per token (> 120 KB).
    growth = current - traced["current"]
    assert growth < 10 * streamed, f"Python memory grew by {growth} B over {streamed} tokens"
    assert peak - traced["current"] < 2**20, "one segment step allocates over 1 MB of Python objects"
    assert rss_bytes() - traced["rss"] < 16 * 2**20


def test_babilong_sample_end_to_end():
    """A real qa1 sample of 2000 tokens (margin 20) streamed through a tiny random ARMT on the GPT-2 vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from babilong_fast.data import EOS_ID, BabilongGenerator

    sample = BabilongGenerator("qa1", 2000, margin=20, split="test", seed=0).take(1)[0]
    assert sample.num_tokens == 1980
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=160, initializer_range=0.1)
    S = 128
    model = ARMT(GPT2LMHeadModel(config), num_mem_tokens=4, d_mem=8, segment_size=S).eval()
    runner = StreamRunner(model, segment_size=S, progress=False)
    got = runner.run(sample, chunk_tokens=100, max_new_tokens=4)
    assert got.dtype == torch.long and got.shape[0] == 1 and 1 <= got.shape[1] <= 4
    assert runner.state.num_tokens == 1980 and runner.state.num_segments == 1980 // S
    q = sample.question_ids()
    done = runner.finish(q)
    total = 1980 + len(q) + 1
    assert done.num_tokens == total and done.num_segments == (total - 1) // S
    assert int(done.pending[0, -1]) == GEN_ID and done.pending[0, -1 - len(q) : -1].tolist() == q
    full = torch.tensor([sample.input_ids() + q + [GEN_ID]])
    assert torch.equal(got, model.generate(full, max_new_tokens=4, eos_token_id=EOS_ID))


def test_progress_bar_and_log_line(capsys, monkeypatch):
    model = make_model("rmt")
    ctx = torch.randint(0, VOCAB - 2, (1, 3 * SEG + 2))
    StreamRunner(model).prefill([ctx], total_tokens=ctx.shape[1])
    assert "tok" in capsys.readouterr().err
    StreamRunner(model, progress=False).prefill([ctx])
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress_mod, "tqdm", None)
    monkeypatch.setattr(progress_mod, "LOG_EVERY_S", 0.0)
    StreamRunner(model).prefill(random_chunks(ctx, 1, as_lists=True), total_tokens=ctx.shape[1])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) > 2 and all("tok/s" in line for line in lines)
    assert f"{ctx.shape[1]}/{ctx.shape[1]} tokens, 3 segments" in lines[-1]


def test_progress_counts_tokens_inside_one_big_chunk(capsys, monkeypatch):
    """A whole tensor is one chunk: the line still counts its tokens segment by segment, not at the end."""
    monkeypatch.setattr(progress_mod, "tqdm", None)
    monkeypatch.setattr(progress_mod, "LOG_EVERY_S", 0.0)
    ctx = torch.randint(0, VOCAB - 2, (1, 4 * SEG + 3))
    StreamRunner(make_model("rmt")).prefill(ctx, total_tokens=ctx.shape[1])
    counts = [int(line.split("prefill ")[1].split("/")[0]) for line in capsys.readouterr().err.strip().splitlines()]
    assert len(set(counts)) >= 4 and counts[-1] == ctx.shape[1], counts


def test_float64_weights_are_refused_where_the_kernels_have_none():
    with pytest.raises(ValueError, match="got float64: pass dtype=torch.float32"):
        StreamRunner(make_model("armt").double(), progress=False)
    StreamRunner(make_model("armt").double(), dtype=torch.float32, progress=False)
    StreamRunner(make_model("rmt").double(), progress=False)  # RMT runs no custom kernel: float64 streams
    model = make_model("armt")
    with pytest.raises(ValueError, match="got float64"):
        StreamRunner(model, dtype=torch.float64, progress=False)
    assert next(model.parameters()).dtype == torch.float32  # refused before the model was converted


@pytest.mark.parametrize("kind", ["armt", "rmt"])
def test_a_model_put_back_in_training_mode_is_refused(kind):
    """Dropout on after the runner set eval mode gave answers that changed from run to run; refused now."""
    model = make_model(kind)
    runner = StreamRunner(model, progress=False)
    ctx, q = torch.randint(0, VOCAB - 2, (1, 2 * SEG + 3)), [5, 6]
    kw = {"gen_token_id": None, "eos_token_id": EOS, "max_new_tokens": 3}
    want = runner.run(ctx, q, **kw)
    state = runner.prefill(ctx)
    model.train()
    for call in (lambda: runner.run(ctx, q, **kw), lambda: runner.prefill(ctx),
                 lambda: runner.decode(state, eos_token_id=EOS)):
        with pytest.raises(ValueError, match="is in training mode .* call model.eval"):
            call()
    model.eval()
    assert torch.equal(runner.run(ctx, q, **kw), want)
    model.backbone.transformer.h[0].train()  # one module is enough for dropout
    with pytest.raises(ValueError, match="or a module in it"):
        runner.run(ctx, q, **kw)


def test_dtype_and_device_arguments():
    try:
        torch.ones(2, 2, dtype=torch.bfloat16) @ torch.ones(2, 2, dtype=torch.bfloat16)
    except RuntimeError:
        pytest.skip("bfloat16 matmul unsupported on this CPU")
    model = make_model("armt")
    runner = StreamRunner(model, device="cpu", dtype=torch.bfloat16, progress=False)
    assert model.memory.dtype == torch.bfloat16 and runner.device.type == "cpu"
    out = runner.run([torch.randint(0, VOCAB - 2, (2, 2 * SEG + 3))], [1, 2], max_new_tokens=2, gen_token_id=GEN,
                     eos_token_id=EOS)
    assert out.shape[0] == 2
    assert all(a.dtype == torch.float32 for a in runner.state.model_state.A)


def test_run_checks_the_answer_before_the_stream():
    """What would fail after a long stream fails before it: question ids out of the vocabulary, max_new_tokens < 1,
    and (a sample's length being known) an answer that would run past the backbone's positions after the exact
    final segment, which a full segment's worst case would refuse wrongly."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from babilong_fast.data import BabilongGenerator

    sample = BabilongGenerator("qa1", 1000, margin=20, split="test", seed=0).take(1)[0]
    S, P = 128, 160
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=P, initializer_range=0.1)
    model = ARMT(GPT2LMHeadModel(config), num_mem_tokens=4, d_mem=4, segment_size=S).eval()
    n = sample.num_tokens + len(sample.question_ids()) + 1
    last = n - S * ((n - 1) // S)
    assert last < S, "the case needs a short final segment"
    calls = []
    for bad, match in (({"question_ids": [1, 50257]}, r"\[0, 50257\)"), ({"max_new_tokens": 0}, "max_new_tokens"),
                       ({"max_new_tokens": P - last + 2}, "positions")):
        runner = StreamRunner(model, progress=False)
        runner._prefill = lambda *a, **k: calls.append(1)  # must not be reached
        with pytest.raises(ValueError, match=match):
            runner.run(sample, chunk_tokens=100, **bad)
    assert not calls
    got = StreamRunner(model, progress=False).run(sample, chunk_tokens=100, max_new_tokens=P - last + 1,
                                                  eos_token_id=None)
    assert got.shape == (1, P - last + 1)  # the longest answer that fits, decoded


def test_stream_errors():
    model = make_model("armt")
    runner = StreamRunner(model, progress=False)
    with pytest.raises(ValueError, match="empty stream"):
        runner.prefill([])
    with pytest.raises(ValueError, match="empty stream"):
        runner.prefill(iter([[], torch.zeros(2, 0, dtype=torch.long)]))
    with pytest.raises(ValueError, match="batch size"):
        runner.prefill([torch.zeros(2, 5, dtype=torch.long), torch.zeros(3, 40, dtype=torch.long)])
    with pytest.raises(ValueError, match="batch size"):
        runner.prefill([[1, 2]], state=runner.prefill([torch.zeros(2, 5, dtype=torch.long)]))
    with pytest.raises(TypeError, match="integers"):
        runner.prefill([[1.5, 2.0]])
    with pytest.raises(TypeError, match="integers"):
        runner.prefill([[1, 2], torch.rand(1, 4)])
    with pytest.raises(TypeError, match="integers"):
        runner.prefill([torch.ones(1, 3, dtype=torch.bool)])
    with pytest.raises(TypeError, match="token ids"):
        runner.prefill([["a", "b"]])
    with pytest.raises(TypeError, match=r"pass \[ids\]"):
        runner.prefill([1, 2, 3])
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        runner.prefill([[1, 100]])
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        runner.prefill([[-1]])
    with pytest.raises(ValueError, match=r"\[n\] or \[B, n\]"):
        runner.prefill([torch.zeros(1, 1, 3, dtype=torch.long)])
    with pytest.raises(TypeError, match="StreamRunner supports ARMT, RMT"):
        StreamRunner(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="StreamRunner supports"):
        StreamRunner(tiny_gpt2())
    with pytest.raises(ValueError, match="does not match the model's segment_size=16"):
        StreamRunner(model, segment_size=32)
    with pytest.raises(ValueError, match="segment_size must be"):
        StreamRunner(model, segment_size=0)
    fresh = StreamRunner(model, progress=False)
    with pytest.raises(ValueError, match="call prefill"):
        fresh.answer([1])
    with pytest.raises(TypeError, match="StreamState"):
        fresh.answer([1], state="nope")
    with pytest.raises(TypeError, match="ARMTState"):
        fresh.prefill([[1]], state=StreamState(make_model("rmt").init_state(1), torch.zeros(1, 0, dtype=torch.long)))
    with pytest.raises(ValueError, match="nothing to answer"):
        fresh.answer([], state=fresh.init_state(1), gen_token_id=None)
    state = runner.prefill([torch.zeros(2, 5, dtype=torch.long)])
    with pytest.raises(ValueError, match="rows"):
        runner.answer(torch.zeros(3, 2, dtype=torch.long), gen_token_id=GEN)
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        runner.answer([1])  # the default GEN id is outside this tiny vocabulary
    with pytest.raises(ValueError, match="positions"):
        runner.answer([1], state=state, max_new_tokens=200, gen_token_id=GEN)
    with pytest.raises(ValueError, match="max_new_tokens"):
        runner.answer([1], state=state, max_new_tokens=0, gen_token_id=GEN)
    with pytest.raises(ValueError, match="question_ids is required"):
        runner.run([[1, 2]])


def test_as_chunk():
    assert as_chunk([]) is None
    assert as_chunk([3, 4]).shape == (1, 2)
    assert as_chunk([[1, 2], [3, 4]]).shape == (2, 2)
    assert as_chunk(torch.arange(3, dtype=torch.int32)).dtype == torch.int32
    with pytest.raises(TypeError):
        as_chunk([[1, 2], [3]])


def test_gen_id_is_gpt2_gen():
    from babilong_fast.data import get_tokenizer

    assert get_tokenizer().encode("GEN") == [GEN_ID]


def test_run_checks_everything_before_the_stream():
    """The end token's type, the question's rows and (a tensor's length being known) the answer's fit fail before
    any segment runs."""
    model = make_model("armt")
    ctx = torch.randint(0, VOCAB - 2, (2, 5 * SEG + 3))
    runner = StreamRunner(model, progress=False)
    steps = []
    runner._steps.step = lambda *a: steps.append(1)  # no segment may run
    for bad, err, match in (
        ({"eos_token_id": [EOS]}, TypeError, "eos_token_id"),
        ({"eos_token_id": "x"}, TypeError, "eos_token_id"),
        ({"question_ids": torch.zeros(3, 2, dtype=torch.long)}, ValueError, "question_ids has 3 rows, the stream 2"),
        ({"max_new_tokens": 200}, ValueError, "positions"),
    ):
        kwargs = {"question_ids": [1, 2], "gen_token_id": GEN, "eos_token_id": EOS, **bad}
        with pytest.raises(err, match=match):
            runner.run(ctx, **kwargs)
        with pytest.raises(err, match=match):  # a chunk iterator with its length given
            runner.run(iter([ctx[:, :40], ctx[:, 40:]]), total_tokens=ctx.shape[1], **kwargs)
    assert not steps
    state = StreamRunner(model, progress=False).prefill([ctx])
    with pytest.raises(TypeError, match="eos_token_id"):
        runner.answer([1, 2], state=state, eos_token_id=1.0, gen_token_id=GEN)
    assert not steps  # the question's spill-over segments did not run either


def test_numpy_chunks():
    """A numpy array is one chunk as a tensor is (never iterated row by row); uint16 / uint32 token files work."""
    np = pytest.importorskip("numpy")
    model = make_model("rmt")
    ctx = torch.randint(0, VOCAB - 2, (2, 3 * SEG + 5))
    runner = StreamRunner(model, progress=False)
    want = runner.run(ctx, [1, 2], gen_token_id=GEN, eos_token_id=None, max_new_tokens=3)
    assert torch.equal(runner.run(ctx.numpy(), [1, 2], gen_token_id=GEN, eos_token_id=None, max_new_tokens=3), want)
    for dtype in (np.uint16, np.uint32, np.uint64, np.int32):
        arr = ctx.numpy().astype(dtype)
        got = runner.run([arr[:, :20], arr[:, 20:]], np.array([1, 2], dtype=dtype), gen_token_id=GEN,
                         eos_token_id=None, max_new_tokens=3)
        assert torch.equal(got, want), dtype
    one = runner.prefill(ctx[0].numpy())
    assert one.num_tokens == ctx.shape[1] and one.batch_size == 1
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        runner.prefill([np.array([1, 2**16 - 1], dtype=np.uint16)])
    with pytest.raises(TypeError, match=r"pass \[ids\]"):
        runner.prefill([np.int64(3)])


def test_given_lengths_and_foreign_states_are_checked():
    np = pytest.importorskip("numpy")
    runner = StreamRunner(make_model("armt"), progress=False)
    ctx = torch.randint(0, VOCAB - 2, (1, 40))
    with pytest.raises(ValueError, match="total_tokens=99, but the chunks held 40 tokens"):
        runner.run(iter([ctx]), [1], total_tokens=99, gen_token_id=GEN, eos_token_id=EOS, max_new_tokens=2)
    out = runner.run(iter([ctx]), [1], total_tokens=40, gen_token_id=np.int64(GEN), eos_token_id=np.int64(EOS),
                     max_new_tokens=2)  # numpy ids are ids
    assert out.shape[0] == 1
    state = runner.prefill([ctx])
    long = StreamState(state.model_state, torch.zeros(1, SEG + 1, dtype=torch.long), 40, 1)
    with pytest.raises(ValueError, match=f"holds {SEG + 1} tokens, more than segment_size={SEG}"):
        runner.prefill([[1]], long)  # ARMT segments as trained: never re-segmented


def test_results_are_ordinary_tensors():
    """Like generate's, the answer can be edited in place (it is not an inference tensor)."""
    runner = StreamRunner(make_model("armt"), progress=False)
    out = runner.run([torch.randint(0, VOCAB - 2, (1, 2 * SEG + 3))], [1], gen_token_id=GEN, eos_token_id=EOS,
                     max_new_tokens=3)
    assert not out.is_inference()
    out[out == EOS] = 0


def test_errors_name_the_argument():
    runner = StreamRunner(make_model("armt"), progress=False)
    runner.prefill([[1, 2, 3]])
    for question, err, match in (
        ("Where is Mary?", TypeError, "question_ids must be a sequence of token ids"),
        ([1, 100], ValueError, r"question_ids: token ids must lie in \[0, 100\)"),
        ([[1, 2], [3]], TypeError, "question_ids is not a sequence of integer token ids of equal-length rows"),
    ):
        with pytest.raises(err, match=match):
            runner.answer(question, gen_token_id=GEN)
    with pytest.raises(ValueError, match=r"gen_token_id: token ids must lie in \[0, 100\)"):
        runner.answer([1], gen_token_id=500)
    with pytest.raises(TypeError, match="gen_token_id must be an int"):
        runner.answer([1], gen_token_id=1.5)
    with pytest.raises(TypeError, match="chunks must be an iterable"):
        runner.prefill(None)
    assert runner.prefill([[[]], [[1, 2]]]).num_tokens == 2  # [[]]: an empty chunk, not a float one


def test_failed_prefill_forgets_the_old_stream_and_closes_its_bar(monkeypatch):
    import babilong_fast.engine.stream as stream_mod

    opened = []

    class Recorder(progress_mod.Progress):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.closed = False
            opened.append(self)

        def close(self):
            self.closed = True
            super().close()

    monkeypatch.setattr(stream_mod, "Progress", Recorder)
    runner = StreamRunner(make_model("armt"), progress=False)
    runner.prefill([[1, 2, 3]])
    rmt_state = StreamState(make_model("rmt").init_state(1), torch.zeros(1, 0, dtype=torch.long))
    for chunks, state in (([[1, 200]], None), ([[1]], "nope"), ([[1]], rmt_state)):
        with pytest.raises((TypeError, ValueError)):
            runner.prefill(chunks, state)
        assert runner.state is None  # answer() cannot silently answer the earlier stream
        with pytest.raises(ValueError, match="call prefill"):
            runner.answer([1], gen_token_id=GEN)
    assert all(bar.closed for bar in opened)


def test_progress_continues_from_the_state(capsys, monkeypatch):
    monkeypatch.setattr(progress_mod, "tqdm", None)
    monkeypatch.setattr(progress_mod, "LOG_EVERY_S", 0.0)
    runner = StreamRunner(make_model("rmt"))
    ctx = torch.randint(0, VOCAB - 2, (1, 50))
    half = runner.prefill([ctx[:, :20]], total_tokens=50)
    runner.prefill([ctx[:, 20:]], half, total_tokens=50)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("babilong_fast: prefill 50/50 tokens, 3 segments")


def test_float64_rmt_streams_a_float32_state():
    model = make_model("rmt").double()
    state = StreamRunner(model, progress=False).prefill([torch.randint(0, VOCAB - 2, (1, 3 * SEG + 1))])
    assert state.model_state.memory.dtype == torch.float32
