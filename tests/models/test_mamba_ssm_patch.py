"""``babilong_fast.patch`` on mamba_ssm's ``MambaLMHeadModel`` and ``Mamba``, against mamba_ssm's own code on the CPU.

Gated on an unpacked mamba_ssm source folder (skipped otherwise); nothing of mamba_ssm is copied here. Its
compiled extension ``selective_scan_cuda`` is replaced by a stub module whose every function raises, so that
``import mamba_ssm`` works without the CUDA build. The reference is mamba_ssm's unpatched ``forward`` with its
CUDA calls redirected to its own PyTorch code: ``selective_scan_fn`` -> ``selective_scan_ref``, no
causal_conv1d -> its ``nn.Conv1d`` path, ``selective_state_update = None`` -> ``Mamba.step``'s PyTorch path.
mamba_ssm's Triton LayerNorm/RMSNorm and ``selective_state_update`` enter ``torch.cuda.device`` and cannot run
on a CPU, so most models here use ``nn.LayerNorm`` (``rms_norm=False, fused_add_norm=False``); the released
checkpoints' configuration (``rms_norm=True, fused_add_norm=True``) is run with mamba_ssm's Triton norm entry points
redirected to its ``rms_norm_ref`` / ``layer_norm_ref`` (float32 only: the adapter keeps no residual_in_fp32 cast).

Enable (folders are examples; pip may need ``MAMBA_SKIP_CUDA_BUILD=TRUE`` and ``--no-build-isolation`` to fetch
the sdist without building it)::

    pip download --no-deps --no-binary :all: mamba-ssm==2.3.2.post1 -d DL_DIR
    tar xzf DL_DIR/mamba_ssm-2.3.2.post1.tar.gz -C SRC_PARENT
    pip install einops  # mamba_ssm imports it
    BABILONG_FAST_MAMBA_SSM_SRC=SRC_PARENT/mamba_ssm-2.3.2.post1 python -m pytest tests/models/test_mamba_ssm_patch.py
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch

import babilong_fast
from babilong_fast.engine import StreamRunner
from babilong_fast.models.mamba import compat, parts, ssm_patch
from babilong_fast.models.mamba import layers as mamba_layers
from babilong_fast.patch import is_patched, patch, patch_options, unpatch
from tests.helpers import assert_close, rel_err

ENV_SRC = "BABILONG_FAST_MAMBA_SSM_SRC"
EXTENSION = "selective_scan_cuda"
VOCAB, EOS = 100, 99  # mamba_ssm pads the vocabulary to 104; prompts use ids < 99
T, P, CHUNK = 70, 45, 16  # 5 chunks, the last one short; P: prefill length for the inference_params tests


def _stub_extension() -> types.ModuleType:
    """A stand-in for mamba_ssm's compiled extension: importable, but calling any of its functions fails."""
    stub = types.ModuleType(EXTENSION)

    def attribute(name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def forbidden(*args, **kwargs):
            raise AssertionError(f"{EXTENSION}.{name} was called: the test's stub extension must never run")

        return forbidden

    stub.__getattr__ = attribute
    return stub


@pytest.fixture(scope="module")
def ssm():
    """mamba_ssm imported from ``$BABILONG_FAST_MAMBA_SSM_SRC`` with the stub extension; removed again afterwards."""
    src = os.environ.get(ENV_SRC)
    if not src:
        pytest.skip(f"set {ENV_SRC} to an unpacked mamba_ssm source folder (see this file's docstring)")
    if not (Path(src) / "mamba_ssm" / "__init__.py").is_file():
        pytest.skip(f"{ENV_SRC}={src} holds no mamba_ssm/__init__.py; point it at the unpacked sdist's root")
    pytest.importorskip("einops", reason="mamba_ssm imports einops: pip install einops")
    added_path = src not in sys.path
    loaded = set(sys.modules)
    stubbed = importlib.util.find_spec(EXTENSION) is None
    if added_path:
        sys.path.insert(0, src)
    if stubbed:
        sys.modules[EXTENSION] = _stub_extension()
    compat.mamba_ssm_status.cache_clear()
    try:
        mamba_ssm = importlib.import_module("mamba_ssm")
        from mamba_ssm.models.config_mamba import MambaConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
        from mamba_ssm.modules import mamba_simple
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
        from mamba_ssm.utils.generation import InferenceParams

        yield types.SimpleNamespace(
            version=mamba_ssm.__version__,
            MambaConfig=MambaConfig,
            MambaLMHeadModel=MambaLMHeadModel,
            Mamba=mamba_simple.Mamba,
            mamba_simple=mamba_simple,
            selective_scan_ref=selective_scan_ref,
            InferenceParams=InferenceParams,
            block=importlib.import_module("mamba_ssm.modules.block"),
            mixer_seq=importlib.import_module("mamba_ssm.models.mixer_seq_simple"),
            layer_norm=importlib.import_module("mamba_ssm.ops.triton.layer_norm"),
        )
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "mamba_ssm" and m not in loaded]:
            del sys.modules[name]
        if stubbed:
            sys.modules.pop(EXTENSION, None)
        if added_path:
            sys.path.remove(src)
        compat.mamba_ssm_status.cache_clear()


@pytest.fixture(autouse=True)
def reference_path(ssm, monkeypatch):
    """mamba_ssm's forward on its own PyTorch code, and a patch registry that sees mamba_ssm as usable."""
    ms = ssm.mamba_simple
    monkeypatch.setattr(ms, "selective_scan_fn", ssm.selective_scan_ref)
    monkeypatch.setattr(ms, "mamba_inner_fn", _forbidden("mamba_ssm's mamba_inner_fn"))
    monkeypatch.setattr(ms, "causal_conv1d_fn", None)
    monkeypatch.setattr(ms, "causal_conv1d_update", None)
    monkeypatch.setattr(ms, "selective_state_update", None)
    import babilong_fast.patch as patch_module

    monkeypatch.setattr(patch_module, "PATCHERS", {})
    monkeypatch.setattr(patch_module, "_builtins_loaded", False)
    compat.mamba_ssm_status.cache_clear()


def _forbidden(what: str):
    def fail(*args, **kwargs):
        pytest.fail(f"{what} ran")

    return fail


# Mixer sizes other than the defaults (d_conv 4, expand 2, dt_rank ceil(d_model / 16), in/out_proj without bias).
OTHER_MIXER = {"d_conv": 3, "expand": 3, "dt_rank": 5, "bias": True, "conv_bias": False}


def small_lm(ssm, seed: int = 0, residual_in_fp32: bool = True, dtype: torch.dtype = torch.float32, **config):
    """A random mamba_ssm ``MambaLMHeadModel`` (2 layers, d_model 32, d_state 8) in eval mode; weights redrawn
    so that greedy decoding varies from token to token. ``config``: more MambaConfig fields (``ssm_cfg`` merged)."""
    torch.manual_seed(seed)
    config = {"rms_norm": False, "fused_add_norm": False, **config}
    ssm_cfg = {"d_state": 8, **config.pop("ssm_cfg", {})}
    cfg = ssm.MambaConfig(
        d_model=32, n_layer=2, vocab_size=VOCAB, ssm_cfg=ssm_cfg, residual_in_fp32=residual_in_fp32, **config
    )
    model = ssm.MambaLMHeadModel(cfg, dtype=dtype).eval()  # A_log and D stay float32, as mamba_ssm makes them
    _randomize(model)
    return model


def small_mixer(ssm, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    mixer = ssm.Mamba(d_model=32, d_state=8, layer_idx=0, **kwargs).eval()
    _randomize(mixer)
    return mixer


def _randomize(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
            elif name.endswith(("conv1d.bias", ".D")) or name == "D":
                p.normal_(0, 1)
            elif "norm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)


def prompt(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, EOS, (batch, length), generator=g)


def spy_chunks(monkeypatch) -> list[int]:
    """From now on, record the width of every chunk our LM forward runs."""
    widths = []
    inner = mamba_layers.forward_chunk

    def spy(parts_, state, input_ids=None, inputs_embeds=None, **kw):
        widths.append((input_ids if inputs_embeds is None else inputs_embeds).shape[1])
        return inner(parts_, state, input_ids, inputs_embeds, **kw)

    monkeypatch.setattr(mamba_layers, "forward_chunk", spy)
    return widths


def greedy_by_full_forwards(model, ids: torch.Tensor, max_new_tokens: int, eos: int) -> torch.Tensor:
    """Greedy tokens by re-running the whole sequence each step; a row that emitted ``eos`` is padded with it."""
    seq, out = ids, []
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = model(seq).logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            out.append(nxt)
            done |= nxt == eos
            seq = torch.cat([seq, nxt[:, None]], 1)
            if bool(done.all()):
                break
    return torch.stack(out, 1)


def states(params, num_layers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [tuple(t.clone() for t in params.key_value_memory_dict[i]) for i in range(num_layers)]


def norms_on_reference(ssm, monkeypatch) -> None:
    """Point mamba_ssm's Triton norm entry points (``layer_norm_fn``, ``rms_norm_fn``) at its PyTorch
    ``layer_norm_ref`` / ``rms_norm_ref``; float32 models only (no residual_in_fp32 cast is made here)."""
    ln = ssm.layer_norm

    def on_ref(default_rms: bool):
        def norm(x, weight, bias, residual=None, eps=1e-6, dropout_p=0.0, prenorm=False, residual_in_fp32=False,
                 is_rms_norm=default_rms, **unused):
            assert x.dtype == torch.float32 and dropout_p == 0.0 and not any(v is not None for v in unused.values())
            ref = ln.rms_norm_ref if is_rms_norm else ln.layer_norm_ref
            return ref(x, weight, bias, residual=residual, eps=eps, prenorm=prenorm)

        return norm

    for module in (ssm.block, ssm.mixer_seq):
        monkeypatch.setattr(module, "layer_norm_fn", on_ref(False))
    monkeypatch.setattr(ln, "rms_norm_fn", on_ref(True))


# ---- tests -------------------------------------------------------------------------------------------------


def test_status_usable_and_patchers_registered(ssm):
    usable, reason = compat.mamba_ssm_status()
    assert usable and reason == f"mamba_ssm {ssm.version}"
    import babilong_fast.patch as patch_module

    patch_module._load_builtins()
    assert patch_module.PATCHERS[parts.SSM_LM] is ssm_patch.bindings
    assert patch_module.PATCHERS[parts.SSM_MIXER] is ssm_patch.bindings


def test_lm_logits_equal_reference(ssm, monkeypatch):
    model = small_lm(ssm)
    ids = prompt(2, T)
    with torch.no_grad():
        want = model(ids).logits
        want_last = {n: model(ids, num_last_tokens=n).logits for n in (1, 3, 20, T + 5)}
    assert babilong_fast.patch(model, chunk_size=CHUNK) is model
    monkeypatch.setattr(ssm.Mamba, "forward", _forbidden("mamba_ssm's Mamba.forward"))
    widths = spy_chunks(monkeypatch)
    with torch.no_grad():
        got = model(ids)
        got_last = {n: model(ids, num_last_tokens=n).logits for n in want_last}
    assert got._fields == ("logits",) and got.logits.dtype == want.dtype
    assert_close("logits", want, got.logits, 1e-4)
    for n, w in want_last.items():
        assert got_last[n].shape == w.shape == (2, min(n, T), 104), n
        assert_close(f"num_last_tokens={n}", w, got_last[n], 1e-4)
    assert widths == [16, 16, 16, 16, 6] * 5
    assert all("forward" not in m.__dict__ for m in model.modules() if m is not model)


def test_lm_rms_norm_fused_add_norm_config(ssm, monkeypatch):
    """The released checkpoints' configuration: RMSNorm, fused add + norm (mamba_ssm's fused path, on its refs)."""
    norms_on_reference(ssm, monkeypatch)
    model = small_lm(ssm, seed=9, rms_norm=True, fused_add_norm=True)
    assert type(model.backbone.norm_f).__name__ == "RMSNorm" and model.backbone.fused_add_norm
    ids = prompt(2, T, seed=6)
    with torch.no_grad():
        want, want_last = model(ids).logits, model(ids, num_last_tokens=3).logits
        want_gen = model.generate(ids[:, :40], max_length=48, top_k=1)
        patch(model, chunk_size=CHUNK)
        got, got_last = model(ids).logits, model(ids, num_last_tokens=3).logits
        got_gen = model.generate(ids[:, :40], max_length=48, top_k=1)
    assert_close("rms/fused logits", want, got, 1e-4)
    assert_close("rms/fused num_last_tokens=3", want_last, got_last, 1e-4)
    assert torch.equal(want_gen, got_gen) and len(set(want_gen[0, 40:].tolist())) > 3


@pytest.mark.parametrize("residual_in_fp32", [True, False], ids=["fp32_residual", "bf16_residual"])
def test_lm_bfloat16_dtype_flow(ssm, residual_in_fp32):
    """bfloat16 weights (A_log, D float32, as mamba_ssm makes them): measured against the same weights in float32,
    the patched forward's error is no larger than mamba_ssm's own bfloat16 forward's; states stay where and in the
    dtype mamba_ssm keeps them."""
    model = small_lm(ssm, dtype=torch.bfloat16, residual_in_fp32=residual_in_fp32)
    ids = prompt(2, 40)
    with torch.no_grad():
        truth = copy.deepcopy(model).float()(ids).logits
        want = model(ids).logits
        patch(model, chunk_size=CHUNK)
        got = model(ids).logits
        params = ssm.InferenceParams(max_seqlen=40, max_batch_size=2)
        model(ids[:, :30], inference_params=params)
    assert got.dtype == want.dtype == torch.bfloat16
    ref_err = rel_err(want, truth)
    assert 1e-3 < ref_err < 0.1, ref_err  # bfloat16 rounding is visible, nothing is broken
    assert rel_err(got, truth) <= 1.25 * ref_err, (rel_err(got, truth), ref_err)
    conv, ssm_state = params.key_value_memory_dict[0]
    assert conv.dtype == torch.bfloat16 and ssm_state.dtype == torch.bfloat16


@pytest.mark.parametrize("sizes", [{}, OTHER_MIXER], ids=["default", "other_sizes"])
def test_mixer_patched_alone_equals_reference(ssm, monkeypatch, sizes):
    mixer = small_mixer(ssm, **sizes)
    h = torch.randn(2, T, 32)
    with torch.no_grad():
        want = mixer(h)
        p_want = ssm.InferenceParams(max_seqlen=T, max_batch_size=2)
        want_ip = mixer(h[:, :P], inference_params=p_want)
        p_want.seqlen_offset = P
        want_step = mixer(h[:, P : P + 1], inference_params=p_want)
    patch(mixer, chunk_size=CHUNK)
    calls = []
    inner = ssm_patch.mixer_forward
    monkeypatch.setattr(ssm_patch, "mixer_forward", lambda m, x, *a: calls.append(x.shape[1]) or inner(m, x, *a))
    with torch.no_grad():
        got = mixer(h)
        assert calls == [16, 16, 16, 16, 6]
        # with inference_params the patched mixer runs mamba_ssm's own forward (and step), as unpatched
        p_got = ssm.InferenceParams(max_seqlen=T, max_batch_size=2)
        got_ip = mixer(h[:, :P], inference_params=p_got)
        p_got.seqlen_offset = P
        got_step = mixer(h[:, P : P + 1], inference_params=p_got)
    assert_close("mixer", want, got, 1e-4)
    assert calls == [16, 16, 16, 16, 6], "inference_params calls do not run our chunked path"
    assert torch.equal(want_ip, got_ip) and torch.equal(want_step, got_step)
    for a, b in zip(p_want.key_value_memory_dict[0], p_got.key_value_memory_dict[0], strict=True):
        assert torch.equal(a, b)


def test_patch_unpatch_round_trip(ssm):
    model, other = small_lm(ssm, seed=3), small_lm(ssm, seed=4)
    mixer = small_mixer(ssm)
    keys, mixer_keys = set(model.state_dict()), set(mixer.state_dict())
    ids, h = prompt(1, 40), torch.randn(1, 40, 32)
    with torch.no_grad():
        want, want_mixer = model(ids).logits, mixer(h)
        patch(model, chunk_size=CHUNK)
        patch(mixer, chunk_size=8)
        assert is_patched(model) and is_patched(mixer)
        assert "forward" in model.__dict__ and "forward" not in other.__dict__
        assert "forward" not in model.backbone.__dict__, "the LM patch binds the LM's forward only"
        assert set(model.state_dict()) == keys and set(mixer.state_dict()) == mixer_keys
        patch(model, chunk_size=7, backend="torch")  # again: new options, no double wrapping
        assert patch_options(model).chunk_size == 7 and patch_options(model).backend == "torch"
        assert_close("repatched", want, model(ids).logits, 1e-4)
        assert babilong_fast.unpatch(model) is model and unpatch(mixer) is mixer
        assert not is_patched(model) and "forward" not in model.__dict__ and patch_options(model) is None
        assert "forward" not in mixer.__dict__
        assert torch.equal(model(ids).logits, want) and torch.equal(mixer(h), want_mixer)
    assert unpatch(model) is model  # not patched: a no-op


@pytest.mark.parametrize("sizes", [{}, OTHER_MIXER], ids=["default", "other_sizes"])
def test_inference_params_chunked_prefill_then_continue(ssm, sizes):
    """Prefill in chunks, then one multi-token call from the same InferenceParams, equals one call on the whole
    input; the stored states equal mamba_ssm's and are updated in place (mamba_ssm's CUDA-graph decoding keeps them)."""
    model = small_lm(ssm, seed=5, ssm_cfg=sizes)
    ids = prompt(2, T, seed=2)
    with torch.no_grad():
        want = model(ids).logits
        p_ref = ssm.InferenceParams(max_seqlen=T, max_batch_size=2)
        model(ids[:, :P], inference_params=p_ref)
        want_states = states(p_ref, 2)
        patch(model, chunk_size=CHUNK)
        params = ssm.InferenceParams(max_seqlen=T, max_batch_size=2)
        first = model(ids[:, :P], inference_params=params).logits
        got_states = states(params, 2)
        tensors = [params.key_value_memory_dict[i] for i in range(2)]
        params.seqlen_offset += P
        second = model(ids[:, P:], inference_params=params).logits
    assert_close("prefill", want[:, :P], first, 1e-4)
    assert_close("continued", want[:, P:], second, 1e-4)
    for i in range(2):
        (wc, ws), (gc, gs) = want_states[i], got_states[i]
        assert gc.shape == wc.shape and gs.shape == ws.shape and gs.dtype == ws.dtype
        assert_close(f"conv {i}", wc[..., 1:], gc[..., 1:], 1e-5)  # mamba_ssm's step never reads column 0
        assert_close(f"ssm {i}", ws, gs, 1e-4)
        assert all(a is b for a, b in zip(tensors[i], params.key_value_memory_dict[i], strict=True))
    with torch.no_grad():  # a params reset to offset 0 starts from zeros again (mamba_ssm's prefill rule)
        params.seqlen_offset = 0
        assert_close("reset", want[:, :P], model(ids[:, :P], inference_params=params).logits, 1e-4)


@pytest.mark.parametrize("order", ["ours_then_mamba_ssm", "mamba_ssm_then_ours"])
def test_inference_params_interoperate(ssm, order):
    """A prefill by one side continues on the other: our state is where and how mamba_ssm's step reads it."""
    model = small_lm(ssm, seed=6)
    ids = prompt(2, T, seed=3)
    with torch.no_grad():
        want = model(ids).logits[:, P:]
        params = ssm.InferenceParams(max_seqlen=T, max_batch_size=2)
        if order == "ours_then_mamba_ssm":
            patch(model, chunk_size=CHUNK)
            model(ids[:, :P], inference_params=params)
            unpatch(model)
        else:
            model(ids[:, :P], inference_params=params)
            patch(model, chunk_size=CHUNK)
        got = []
        for t in range(P, T):  # one token per call, as mamba_ssm's generate decodes
            params.seqlen_offset = t
            got.append(model(ids[:, t : t + 1], inference_params=params, num_last_tokens=1).logits)
    assert_close(order, want, torch.cat(got, 1), 1e-4)


def test_mamba_ssm_generate_equals_reference(ssm, monkeypatch):
    """mamba_ssm's own ``generate`` (greedy) on the patched model: one chunked prefill, then one-token steps."""
    model = small_lm(ssm, seed=7)
    ids = prompt(2, 40, seed=4)
    n = 10
    want = model.generate(ids, max_length=40 + n, top_k=1)
    assert torch.equal(want[:, 40:], greedy_by_full_forwards(model, ids, n, eos=-1))
    patch(model, chunk_size=CHUNK)
    monkeypatch.setattr(ssm.Mamba, "forward", _forbidden("mamba_ssm's Mamba.forward"))
    widths = spy_chunks(monkeypatch)
    got = model.generate(ids, max_length=40 + n, top_k=1)
    assert torch.equal(got, want), (got[:, 40:], want[:, 40:])
    assert widths == [16, 16, 8] + [1] * (n - 1)
    assert len(set(want[0, 40:].tolist())) > 3


def test_stream_runner_equals_greedy_full_forwards(ssm):
    model = small_lm(ssm, seed=8)
    context, question, gen = prompt(2, 53, seed=5), [5, 6, 7], 8
    full = torch.cat([context, torch.tensor([question + [gen]]).expand(2, -1)], 1)
    free = greedy_by_full_forwards(model, full, 8, eos=-1)
    eos = int(free[1, 4])  # row 1 stops early: the answer is padded with EOS after it
    want = greedy_by_full_forwards(model, full, 8, eos=eos)
    runner = StreamRunner(model, segment_size=CHUNK, progress=False)
    got = runner.run([context[:, :20], context[:, 20:]], question, max_new_tokens=8, eos_token_id=eos, gen_token_id=gen)
    assert torch.equal(got, want), (got, want)
    assert runner.state.num_segments == 3 and runner.state.num_tokens == 53
    assert len(set(free[0].tolist())) > 3


@pytest.mark.parametrize(
    "config",
    [
        {"d_intermediate": 16},
        {"ssm_cfg": {"layer": "Mamba2", "headdim": 16}},
        {"attn_layer_idx": [1], "attn_cfg": {"num_heads": 2}},
    ],
    ids=["mlp", "mamba2", "attention"],
)
def test_unsupported_models_are_refused(ssm, config):
    model = small_lm(ssm, **config)
    with pytest.raises(TypeError, match="has an MLP|mixer is a (Mamba2|MHA); only Mamba-1"):
        patch(model)
    assert not is_patched(model) and "forward" not in model.__dict__


def test_backbone_hooks_and_subclass_forwards_run_mamba_ssm_forward(ssm):
    """The patched LM never calls its MixerModel: hooks on it, or a subclass's own forward, make it run mamba_ssm's
    forward (with a warning) so they are not skipped; a mixer keyword (Mamba-1 takes none) goes to mamba_ssm too."""
    ids = prompt(2, 20)

    def same_once_patched(model, *args, warns: str):
        with torch.no_grad():
            want = model(*args).logits
            patch(model, chunk_size=CHUNK)
            with pytest.warns(RuntimeWarning, match=warns):
                got = model(*args).logits
        assert torch.equal(want, got)
        return model

    model = small_lm(ssm)
    model.backbone.register_forward_hook(lambda module, args, out: out * 0.5)
    same_once_patched(model, ids, warns="the backbone has hooks")

    class Doubled(ssm.Mamba):
        def forward(self, hidden_states, *args, **kwargs):
            return 2 * super().forward(hidden_states, *args, **kwargs)

    model = small_lm(ssm)
    for layer in model.backbone.layers:
        layer.mixer.__class__ = Doubled
    same_once_patched(model, ids, warns="Doubled, whose own forward would be skipped")
    with torch.no_grad(), pytest.raises(TypeError):
        model(ids, not_a_mixer_keyword=1)  # mamba_ssm's own error, not silently dropped

    class Narrow(ssm.MambaLMHeadModel):  # its own, narrower signature gets the call as made
        def forward(self, input_ids, inference_params=None, **kwargs):
            return super().forward(input_ids, inference_params=inference_params, **kwargs)

    model = small_lm(ssm)
    model.__class__ = Narrow
    same_once_patched(model, ids, None, warns="Narrow, whose own forward would be skipped")
