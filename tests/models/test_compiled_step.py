"""The compiled streaming step: its step math against stream_step, then the same under torch.compile (CPU inductor)."""
from __future__ import annotations

import pytest
import torch

from babilong_fast.engine import StreamRunner
from babilong_fast.models.compiled_step import CompiledStep, compiled_step_unsupported
from babilong_fast.models.stream_step import SegmentWorkspace, stream_step
from tests.helpers import assert_close, requires_cuda
from tests.models.naive import VOCAB
from tests.models.test_stream_step import SEG, make_model, state_tensors

N_TOKENS = 6 * SEG + 5  # six full segments and a short one


def eager(fn):
    """A stand-in compiler: the step math run as written (checks the math without compile time)."""
    return fn


def run_pair(model, ids, compile_fn, regional=True):
    """stream_step's states and CompiledStep's, segment by segment, each chain fed by its own states."""
    step = CompiledStep(model, SegmentWorkspace(), compile_fn, regional=regional)
    ws = SegmentWorkspace()
    pairs = []
    with torch.inference_mode():
        ref = fast = model.init_state(ids.shape[0])
        for a in range(0, ids.shape[1], SEG):
            seg = ids[:, a : a + SEG]
            ref, fast = stream_step(model, seg, ref, ws), step(seg, fast)
            pairs.append((ref, fast))
    return step, pairs


def check_pairs(pairs, rtol=1e-5):
    for k, (ref, fast) in enumerate(pairs):
        assert type(fast) is type(ref) and fast.segments_seen == ref.segments_seen == k + 1
        for i, (r, f) in enumerate(zip(state_tensors(ref), state_tensors(fast), strict=True)):
            assert f.dtype == torch.float32
            assert_close(f"segment {k} tensor {i}", r, f, rtol)


@pytest.mark.parametrize("regional", [True, False], ids=["regional", "whole"])
@pytest.mark.parametrize("B", [1, 3], ids=["B1", "B3"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["armt", "rmt"])
def test_step_math_matches_stream_step(kind, attn, B, regional):
    model = make_model(kind, attn)
    step, pairs = run_pair(model, torch.randint(0, VOCAB, (B, N_TOKENS)), eager, regional)
    assert len(pairs) == 7 and step.compiled_calls == 5  # not the first segment, not the short last one
    check_pairs(pairs)


@pytest.mark.parametrize("kind", ["armt", "rmt"])
def test_step_math_bfloat16(kind):
    """bfloat16 weights, float32 state: the step math rounds as stream_step does, within half precision."""
    model = make_model(kind, "sdpa").to(torch.bfloat16)
    step, pairs = run_pair(model, torch.randint(0, VOCAB, (2, 4 * SEG)), eager)
    assert step.compiled_calls == 3
    check_pairs(pairs, rtol=1e-2)


@pytest.mark.parametrize("kind", ["armt", "rmt"])
@pytest.mark.parametrize("regional", [True, False], ids=["regional", "whole"])
def test_torch_compile(kind, regional):
    """torch.compile(fullgraph=True): a graph break would fail here; regional: one layer graph serves every
    layer but the last; whole: the step is one graph. The states match the eager step's."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = make_model(kind, "sdpa", n_layer=3)  # two layers share the layer graph
    step, pairs = run_pair(model, torch.randint(0, VOCAB, (2, 4 * SEG)), None, regional=regional)
    assert step.compiled_calls == 3
    # regional RMT: the block input, the block, the last block (write rows only), ln_f on the write rows;
    # ARMT: the block input, the layer, the last layer
    assert counters["stats"]["unique_graphs"] == ((4 if kind == "rmt" else 3) if regional else 1)
    check_pairs(pairs)


def eager_compile(fn):
    """torch.compile with dynamo's own checks (fullgraph, recompiles) but no code generation: fast."""
    return torch.compile(fn, backend="eager", dynamic=False, fullgraph=True)


@pytest.mark.parametrize("kind", ["armt", "rmt"])
def test_recompile_limit_falls_back_to_eager(kind):
    """Past dynamo's recompile limit (a graph per batch size) the step warns once and runs eagerly, states right."""
    torch._dynamo.reset()
    model = make_model(kind, "sdpa")
    step, ws = CompiledStep(model, SegmentWorkspace(), eager_compile), SegmentWorkspace()
    limit = torch._dynamo.config.recompile_limit
    with torch.inference_mode(), pytest.warns(UserWarning, match="torch.compile gave up") as caught:
        for B in range(1, limit + 3):
            ids = torch.randint(0, VOCAB, (B, SEG))
            first = stream_step(model, ids, model.init_state(B), ws)
            ref, fast = stream_step(model, ids, first, ws), step(ids, first)
            assert fast.segments_seen == ref.segments_seen == 2
            for i, (r, f) in enumerate(zip(state_tensors(ref), state_tensors(fast), strict=True)):
                assert_close(f"B{B} tensor {i}", r, f, 1e-5)
    assert len([w for w in caught if "gave up" in str(w.message)]) == 1
    assert step.compiled_calls == limit
    assert any(name in step.eager_reason for name in ("RecompileLimit", "CacheLimit")), step.eager_reason


def test_layer_dependent_attention_scale_compiles_the_whole_step():
    """scale_attn_by_inverse_layer_idx: a scale per layer would need a graph per layer, so one graph for the step."""
    model = make_model("rmt", "sdpa", n_layer=3)
    for block in model.backbone.transformer.h:
        block.attn.scale_attn_by_inverse_layer_idx = True
    with torch.inference_mode():
        why = compiled_step_unsupported(model)
    if why is not None:  # transformers 4.4x's SDPA class ignores the option
        pytest.skip(why)
    torch._dynamo.reset()
    step, pairs = run_pair(model, torch.randint(0, VOCAB, (2, 4 * SEG)), eager_compile, regional=True)
    assert step.regional is False and step.compiled_calls == 3 and step.eager_reason is None
    check_pairs(pairs)


def test_falls_back_where_the_math_does_not_apply():
    model = make_model("armt", "sdpa")
    step = CompiledStep(model, SegmentWorkspace(), eager)
    ids = torch.randint(0, VOCAB, (1, SEG))
    with torch.inference_mode():
        state = step(ids, model.init_state(1))  # first segment: stream_step
        state = step(ids[:, :5], state)  # short segment
        assert step.compiled_calls == 0
        block = model.backbone.transformer.h[0]
        block.attn.reorder_and_upcast_attn = True
        assert "reorder_and_upcast_attn" in compiled_step_unsupported(model)
        step(ids, state)
        assert step.compiled_calls == 0
        block.attn.reorder_and_upcast_attn = False
        step(ids, state)
        assert step.compiled_calls == 1
    model.train()
    assert "training" in compiled_step_unsupported(model)
    with pytest.raises(TypeError, match="ARMT or RMT"):
        CompiledStep(torch.nn.Linear(2, 2), SegmentWorkspace())


def test_stream_runner_compile():
    """StreamRunner(compile=True) answers as the eager runner; Mamba has no compiled step."""
    model = make_model("rmt", "sdpa")
    ctx = torch.randint(0, VOCAB - 2, (2, 5 * SEG + 3))
    question = torch.randint(0, VOCAB - 2, (2, 3))
    kw = dict(max_new_tokens=4, eos_token_id=-1, gen_token_id=VOCAB - 1)
    want = StreamRunner(model, progress=False).run([ctx], question, **kw)
    runner = StreamRunner(model, progress=False, compile=True)
    got = runner.run([ctx], question, **kw)
    assert torch.equal(got, want) and runner.adapter.compiled.compiled_calls >= 3
    assert runner.adapter.compiled.regional is False  # no CUDA graph to hide the calls between the parts
    from transformers import MambaConfig, MambaForCausalLM

    mamba = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, state_size=4))
    with pytest.raises(ValueError, match="compile=True runs ARMT and RMT"):
        StreamRunner(mamba, progress=False, compile=True)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["armt", "rmt"])
def test_compiled_step_in_a_cuda_graph(kind):
    """On a GPU: the compiled step recorded in the runner's CUDA graph answers as the eager runner does."""
    torch._dynamo.reset()  # earlier tests' graphs would count toward the recompile limit (then it runs eagerly)
    model = make_model(kind, "sdpa").cuda()
    ctx = torch.randint(0, VOCAB - 2, (2, 6 * SEG + 3))
    question = torch.randint(0, VOCAB - 2, (2, 3))
    kw = dict(max_new_tokens=4, eos_token_id=-1, gen_token_id=VOCAB - 1)
    plain = StreamRunner(model, progress=False, cuda_graphs=False)
    want = plain.run([ctx], question, **kw)
    runner = StreamRunner(model, progress=False, compile=True)
    got = runner.run([ctx], question, **kw)
    assert runner._steps.enabled, "CUDA graph capture failed (its warning gives the first error)"
    assert torch.equal(got.cpu(), want.cpu())
    assert runner.adapter.compiled.compiled_calls >= 2 and runner._steps.graphed_steps >= 3
    assert runner.adapter.compiled.regional is True  # per-layer graphs, recorded in the step's CUDA graph
    want_state, got_state = state_tensors(plain.state.model_state), state_tensors(runner.state.model_state)
    for i, (w, g) in enumerate(zip(want_state, got_state, strict=True)):
        assert_close(f"state tensor {i}", w, g, 1e-4)
