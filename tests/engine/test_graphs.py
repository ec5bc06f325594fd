"""CUDA-graph replay of the streaming step (babilong_fast.engine.graphs).

On a CPU the recorder is replaced by :class:`ReplayOnCPU`, which keeps the graph contract (inputs read from
static buffers, outputs written into the same static tensors at every replay), so the runner's data flow
(copy-in, counters, cloning the state it returns, fallback) is checked here; the real ``torch.cuda.CUDAGraph``
is checked on a GPU by the last test.
"""
from __future__ import annotations

import pytest
import torch

from babilong_fast.engine import StreamRunner
from babilong_fast.engine.graphs import StepRunner, clone_state, rebuild_state, state_counters, state_tensors
from babilong_fast.models import MambaLM
from tests.helpers import requires_cuda, requires_ext
from tests.models.mamba_util import small_mamba
from tests.models.naive import VOCAB
from tests.models.test_armt import make_armt
from tests.models.test_rmt import make_rmt

EOS, GEN = VOCAB - 1, VOCAB - 2


class ReplayOnCPU:
    """Stand-in recorder with CUDA-graph semantics: replay recomputes ``fn`` and writes into the captured outputs."""

    def __init__(self):
        self.captures = 0

    def capture(self, fn):
        self.captures += 1
        out = fn()

        def replay():
            for dst, src in zip(state_tensors(out), state_tensors(fn()), strict=True):
                dst.copy_(src)

        return out, replay


class FailingRecorder:
    """Fails as ``torch.cuda.graph`` does: the step's error, then capture_end's, raised while handling it."""

    def capture(self, fn):
        try:
            raise RuntimeError("operation not permitted when stream is capturing")
        finally:
            raise RuntimeError("operation failed due to a previous error during capture")


def make(kind: str):
    if kind == "armt":
        return make_armt()
    if kind == "rmt":
        return make_rmt()
    return MambaLM(small_mamba(vocab_size=VOCAB), chunk_size=16)


def stream(kind: str, recorder=None, enabled=False):
    torch.manual_seed(0)
    runner = StreamRunner(make(kind), progress=False)
    runner._steps = StepRunner(runner.adapter.step, enabled=enabled, backend=recorder)
    ids = torch.randint(0, VOCAB - 2, (2, 16 * 7 + 5), generator=torch.Generator().manual_seed(3))
    state = runner.prefill([ids[:, :40], ids[:, 40:]])
    q = torch.tensor([[5, 6, 7]] * 2)
    first = runner.answer(q, state=state, max_new_tokens=6, eos_token_id=EOS, gen_token_id=GEN)
    again = runner.answer(q, state=state, max_new_tokens=6, eos_token_id=EOS, gen_token_id=GEN)
    return runner, state, first, again


@pytest.mark.parametrize("kind", ["armt", "rmt", "mamba"])
def test_replayed_steps_equal_eager(kind):
    _, eager_state, eager, _ = stream(kind)
    recorder = ReplayOnCPU()
    runner, state, first, again = stream(kind, recorder, enabled=True)
    assert recorder.captures == 1 and runner._steps.graphed_steps >= 4  # 7 segments, 2 eager warm-up
    assert torch.equal(first, eager) and torch.equal(again, eager)  # the returned state is not overwritten
    assert state_counters(state.model_state) == state_counters(eager_state.model_state)
    for a, b in zip(state_tensors(state.model_state), state_tensors(eager_state.model_state), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    graph = next(iter(runner._steps.graphs.values()))
    assert all(a.data_ptr() != b.data_ptr() for a in state_tensors(state.model_state) for b in graph.static_out)


def test_capture_failure_warns_once_and_streams_eagerly():
    _, _, eager, _ = stream("armt")
    with pytest.warns(RuntimeWarning, match="CUDA graph capture of the segment step failed") as rec:
        runner, _, first, again = stream("armt", FailingRecorder(), enabled=True)
    assert len(rec) == 1 and not runner._steps.enabled and runner._steps.graphed_steps == 0
    assert ("(RuntimeError: operation not permitted when stream is capturing; then RuntimeError: operation failed "
            "due to a previous error during capture)") in str(rec[0].message)  # the first error, not only the last
    assert torch.equal(first, eager) and torch.equal(again, eager)


def test_alternating_batch_sizes_reuse_their_graphs():
    """One input buffer per batch size, kept: streams of batch 2, 1, 2, 1 record two graphs, not four."""
    recorder = ReplayOnCPU()
    runner = StreamRunner(make_rmt(), progress=False)
    runner._steps = StepRunner(runner.adapter.step, enabled=True, backend=recorder)
    gen = torch.Generator().manual_seed(5)
    for batch in (2, 1, 2, 1):
        runner.prefill(torch.randint(0, VOCAB - 2, (batch, 16 * 5 + 1), generator=gen))
    assert recorder.captures == 2 and len(runner._steps.graphs) == 2


@pytest.mark.parametrize("change", ["hook", "weights", "none"])
def test_graphs_recorded_before_the_model_changed_are_dropped(change):
    """A CUDA graph replays kernels on the storages it recorded: a hook added later would never run, weights loaded
    with assign=True would not be read. The runner records again when the model changed since, and only then."""
    recorder = ReplayOnCPU()
    model = make_rmt()
    runner = StreamRunner(model, progress=False)
    runner._steps = StepRunner(runner.adapter.step, enabled=True, backend=recorder)
    ids = torch.randint(0, VOCAB - 2, (1, 16 * 5 + 1), generator=torch.Generator().manual_seed(5))
    runner.prefill(ids)
    runner.prefill(ids)
    assert recorder.captures == 1
    if change == "hook":
        model.backbone.transformer.h[0].register_forward_hook(lambda m, i, o: None)
    elif change == "weights":
        model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    runner.prefill(ids)
    assert recorder.captures == (1 if change == "none" else 2)


@pytest.mark.parametrize("kind", ["armt", "rmt", "mamba"])
def test_state_flatten_rebuild(kind):
    model = make(kind)
    state = model.init_state(2)
    tensors, counters = state_tensors(state), state_counters(state)
    assert tensors and all(isinstance(t, torch.Tensor) for t in tensors)
    assert set(counters) <= {"segments_seen", "num_tokens"} and counters
    new = rebuild_state(state, [t + 1 for t in tensors], {k: v + 3 for k, v in counters.items()})
    assert type(new) is type(state)
    assert all(torch.equal(a, b + 1) for a, b in zip(state_tensors(new), tensors, strict=True))
    assert state_counters(new) == {k: v + 3 for k, v in counters.items()}
    copy = clone_state(new)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(state_tensors(copy), state_tensors(new), strict=True))


def test_cuda_graphs_need_cuda():
    with pytest.raises(ValueError, match="cuda_graphs=True needs the model on a CUDA device"):
        StreamRunner(make_armt(), cuda_graphs=True, progress=False)
    with pytest.raises(ValueError, match="graph_warmup"):
        StreamRunner(make_armt(), graph_warmup=0, progress=False)
    assert not StreamRunner(make_armt(), progress=False)._steps.enabled  # off by default on a CPU


def check_real_graph_equals_eager(model) -> None:
    """On a GPU: ``model`` streamed with its step replayed from a CUDA graph gives the eager answer and state."""
    ids = torch.randint(0, VOCAB - 2, (2, 16 * 9 + 3), device="cuda")
    q = torch.tensor([[5, 6, 7]] * 2)
    outs, states = [], []
    for graphs in (False, True):
        runner = StreamRunner(model, progress=False, cuda_graphs=graphs)
        state = runner.prefill(ids)
        outs.append(runner.answer(q, state=state, max_new_tokens=6, eos_token_id=EOS, gen_token_id=GEN))
        states.append(state.model_state)
        if graphs:
            assert runner._steps.enabled, "capture failed (see the warning)"
            assert runner._steps.graphed_steps >= 6
    assert torch.equal(outs[0], outs[1])
    for a, b in zip(state_tensors(states[0]), state_tensors(states[1]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@requires_cuda
@pytest.mark.parametrize("kind", ["armt", "rmt", "mamba"])
def test_real_cuda_graph_equals_eager(kind):
    torch.manual_seed(0)
    check_real_graph_equals_eager(make(kind).cuda())


@requires_ext
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_real_cuda_graph_of_the_mamba_step_on_its_kernels(backend):
    """The Mamba step recorded with the scan and conv kernels (not only the torch reference, which ``auto``
    picks until a device check verifies them)."""
    torch.manual_seed(0)
    check_real_graph_equals_eager(MambaLM(small_mamba(vocab_size=VOCAB), chunk_size=16, backend=backend).cuda())
