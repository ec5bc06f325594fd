"""babilong_fast.patch / unpatch on transformers Mamba: outputs as unpatched, chunked prefill, generate from state."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import babilong_fast
from babilong_fast.models.mamba import compat
from babilong_fast.models.mamba import layers as mamba_layers
from babilong_fast.models.mamba.hf_cache import cache_keyword, conv_state, output_cache, recurrent_state
from babilong_fast.patch import is_patched, patch, patch_options, unpatch
from tests.helpers import assert_close, rel_err, requires_triton
from tests.models.mamba_util import hf_greedy, prompt, small_mamba

T = 131


@pytest.fixture
def hf():
    return small_mamba(seed=11)


def spy_chunks(monkeypatch) -> list[int]:
    """From now on, record the width of every chunk our forward runs."""
    widths = []
    inner = mamba_layers.forward_chunk

    def spy(parts, state, input_ids=None, inputs_embeds=None, **kw):
        widths.append((input_ids if inputs_embeds is None else inputs_embeds).shape[1])
        return inner(parts, state, input_ids, inputs_embeds, **kw)

    monkeypatch.setattr(mamba_layers, "forward_chunk", spy)
    return widths


def forbid_hf_mixer(monkeypatch) -> None:
    """From now on, fail if transformers' own mixer runs."""
    from transformers.models.mamba import modeling_mamba

    monkeypatch.setattr(modeling_mamba.MambaMixer, "forward", lambda *a, **k: pytest.fail("transformers' mixer ran"))


def test_patch_forward_equals_unpatched(hf, monkeypatch):
    ids = prompt(2, T)
    with torch.no_grad():
        want = hf(ids)
        want_keep = hf(ids, logits_to_keep=3).logits
    assert babilong_fast.patch(hf, chunk_size=16) is hf
    assert is_patched(hf) and patch_options(hf).chunk_size == 16
    forbid_hf_mixer(monkeypatch)
    widths = spy_chunks(monkeypatch)
    with torch.no_grad():
        got = hf(ids)
        got_keep = hf(ids, logits_to_keep=3).logits
        got_idx = hf(ids, logits_to_keep=torch.tensor([0, 77, 130])).logits
        got_tuple = hf(ids, return_dict=False)
    assert_close("logits", want.logits, got.logits, 1e-4)
    assert_close("logits_to_keep=3", want_keep, got_keep, 1e-4)
    assert_close("logits_to_keep=tensor", want.logits[:, [0, 77, 130]], got_idx, 1e-4)
    assert got_keep.shape == (2, 3, 100) and got.logits.dtype == torch.float32
    assert isinstance(got_tuple, tuple) and torch.equal(got_tuple[0], got.logits)
    assert max(widths) == 16 and sum(widths) == 4 * T
    want_c, got_c = output_cache(want), output_cache(got)
    for i in range(2):  # the cache written by the patched forward holds the same state as transformers'
        assert_close(f"ssm {i}", recurrent_state(want_c, i), recurrent_state(got_c, i), 1e-4)
        assert_close(f"conv {i}", conv_state(want_c, i)[..., 1:], conv_state(got_c, i)[..., 1:], 1e-5)


def test_generate_prefills_once_in_chunks(hf, monkeypatch):
    """generate: one prefill of the prompt in chunks, then one single-token step per new token, from the cache."""
    patch(hf, chunk_size=32)
    forbid_hf_mixer(monkeypatch)
    widths = spy_chunks(monkeypatch)
    got = hf_greedy(hf, prompt(2, T), 12)
    assert widths == [32, 32, 32, 32, 3] + [1] * 11  # ceil(131 / 32) = 5 chunks
    assert got.shape == (2, 12) and len(set(got[0].tolist())) > 3


def test_generate_tokens_equal(hf):
    ids = prompt(2, T)
    want = hf_greedy(hf, ids, 12)
    patch(hf, chunk_size=32)
    assert torch.equal(hf_greedy(hf, ids, 12), want)
    eos = int(want[1, 4])
    unpatch(hf)
    want_eos = hf_greedy(hf, ids, 12, eos=eos)
    patch(hf, chunk_size=7)
    assert torch.equal(hf_greedy(hf, ids, 12, eos=eos), want_eos)


def test_cache_interoperates_with_unpatched(hf):
    """Prefill patched, continue unpatched from the cache (and the reverse): transformers reads our state."""
    ids = prompt(1, 90)
    kw = cache_keyword(type(hf))  # transformers 5.17: cache_params
    with torch.no_grad():
        want = hf(ids, use_cache=False).logits[:, 60:]
        for first, second in ((True, False), (False, True), (True, True)):
            (patch if first else unpatch)(hf, **({"chunk_size": 16} if first else {}))
            cache = output_cache(hf(ids[:, :60], use_cache=True))
            (patch if second else unpatch)(hf, **({"chunk_size": 16} if second else {}))
            steps = [hf(ids[:, t : t + 1], use_cache=True, **{kw: cache}).logits for t in range(60, 90)]
            assert_close(f"continued ({first}, {second})", want, torch.cat(steps, 1), 1e-4)
        patch(hf, chunk_size=8)
        cache = output_cache(hf(ids[:, :60], use_cache=True))
        assert_close("continued chunk", want, hf(ids[:, 60:], **{kw: cache}).logits, 1e-4)


def test_cache_read_without_the_getters(hf, monkeypatch):
    """transformers 5.5-5.17 have no Cache.get_conv_state / get_recurrent_state / is_recording_past: the patch reads
    ``cache.layers[i]`` then. Here the getters are taken off the installed Cache to run that path."""
    from transformers.cache_utils import Cache

    for name in ("get_conv_state", "get_recurrent_state", "is_recording_past"):
        if hasattr(Cache, name):
            monkeypatch.delattr(Cache, name)
    ids = prompt(1, 90)
    kw = cache_keyword(type(hf))
    with torch.no_grad():
        want = hf(ids, use_cache=False).logits[:, 60:]
        patch(hf, chunk_size=16)
        cache = output_cache(hf(ids[:, :60], use_cache=True))
        assert recurrent_state(cache, 0) is not None and conv_state(cache, 1) is not None
        assert_close("continued from the layers", want, hf(ids[:, 60:], **{kw: cache}).logits, 1e-4)


def test_refuses_transformers_without_the_linear_cache(hf, monkeypatch):
    from babilong_fast.models.mamba import hf_cache

    monkeypatch.setattr(hf_cache, "linear_cache_supported", lambda: False)
    with pytest.raises(RuntimeError, match="linear-attention cache .*5.5 and later"):
        patch(hf)
    assert not is_patched(hf)


def test_backbone_patch_and_inputs_embeds(hf):
    ids = prompt(2, 50)
    emb = hf.backbone.embeddings(ids).detach()
    with torch.no_grad():
        want = hf.backbone(ids).last_hidden_state
        patch(hf.backbone, chunk_size=8)
        got = hf.backbone(ids)
        got_emb = hf.backbone(inputs_embeds=emb).last_hidden_state
    assert_close("last_hidden_state", want, got.last_hidden_state, 1e-4)
    assert_close("inputs_embeds", want, got_emb, 1e-4)
    assert output_cache(got) is not None
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        hf.backbone(ids, inputs_embeds=emb)


def test_fallbacks_to_the_models_forward(hf, monkeypatch):
    """output_hidden_states, and float64 weights, run transformers' forward, with its results."""
    ids = prompt(2, 40)
    with torch.no_grad():
        want_hidden = hf(ids, output_hidden_states=True).hidden_states
        patch(hf, chunk_size=8)
        widths = spy_chunks(monkeypatch)
        got_hidden = hf(ids, output_hidden_states=True).hidden_states
    assert widths == [] and len(got_hidden) == len(want_hidden)
    for a, b in zip(want_hidden, got_hidden, strict=True):
        assert torch.equal(a, b)
    hf.double()
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got64 = hf(ids).logits
    said = [str(w.message) for w in caught if "babilong_fast patch" in str(w.message)]
    assert said == ["babilong_fast patch: runs transformers' own forward (torch.float64 weights; the fused ops take "
                    "float32, bfloat16 or float16)"]  # once: not again from the backbone it calls
    assert widths == [] and torch.isfinite(got64).all()
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="own forward .torch.float64 weights"):
        hf.backbone(ids)  # the backbone alone says it too
    hf.backbone.register_forward_hook(lambda *a: None)  # the LM calls its hooked backbone, which warns
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="own forward .torch.float64 weights"):
        hf(ids)


def test_padding_mask_runs_chunked(hf, monkeypatch):
    """A padding mask with zeros runs our chunks with transformers' masking (mixer input and conv output zeroed);
    left-padded batched generate gives transformers' tokens; a mask of the wrong shape is a clear error."""
    ids = prompt(2, 40)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    new = 6
    with torch.no_grad():
        want = hf(ids).logits
        want_mask = hf(ids, attention_mask=mask).logits
        gen_kw = dict(attention_mask=mask, max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
        want_gen = hf.generate(ids, **gen_kw)[:, -new:]
        patch(hf, chunk_size=8)
        forbid_hf_mixer(monkeypatch)
        widths = spy_chunks(monkeypatch)
        got_mask = hf(ids, attention_mask=mask).logits
        assert widths == [8] * 5
        ones = hf(ids, attention_mask=torch.ones_like(ids)).logits
        got_gen = hf.generate(ids, **gen_kw)[:, -new:]
    assert_close("masked logits", want_mask, got_mask, 1e-4)
    assert_close("all-ones mask", want, ones, 1e-4)
    assert rel_err(want_mask[1], want[1]) > 1e-3, "the mask must change the padded row"
    assert torch.equal(got_gen, want_gen)
    with pytest.raises(ValueError, match=r"attention_mask must be \[batch, length\] = \(2, 40\)"):
        hf(ids, attention_mask=torch.ones(2, 41, dtype=torch.long))


def test_patched_forward_under_autocast(hf):
    """bf16 autocast in a float32 model: the conv input is bf16, the carried conv state float32. Logits as close to
    the float32 ones as transformers' own under autocast (2x its error), the state carried across chunks."""
    ids = prompt(2, 50)
    with torch.no_grad():
        want = hf(ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            own = hf(ids).logits
        patch(hf, chunk_size=8, backend="torch")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = hf(ids).logits
    assert_close("patched under autocast", want, got, max(2 * rel_err(own, want), 1e-3))


def test_training_loss_and_grads_equal(hf):
    ids = prompt(2, 30)
    hf.train()
    loss = hf(ids, labels=ids).loss
    loss.backward()
    want = {n: p.grad.clone() for n, p in hf.named_parameters()}
    hf.zero_grad()
    patch(hf, chunk_size=7, backend="torch")
    got = hf(ids, labels=ids).loss
    got.backward()
    assert_close("loss", loss, got, 1e-5)
    for n, p in hf.named_parameters():
        assert_close(f"grad {n}", want[n], p.grad, 1e-4)


@requires_triton
def test_training_continues_from_a_cache_on_the_fused_ops(hf):
    """A loss on a chunk that continues a cache: the fused ops' autograd saves the starting state, which the
    forward's cache write must not overwrite (it did: an in-place error in backward). Gradients as torch's."""
    ids = prompt(2, 20)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf.to(device).train()
    ids = ids.to(device)
    grads = {}
    for backend in ("torch", "triton"):
        with torch.no_grad():
            cache = output_cache(hf(ids[:, :10], use_cache=True))
        patch(hf, chunk_size=4, backend=backend)
        hf(ids[:, 10:], cache=cache, use_cache=True, labels=ids[:, 10:]).loss.backward()
        grads[backend] = {n: p.grad.clone() for n, p in hf.named_parameters()}
        hf.zero_grad()
        unpatch(hf)
    for n, want in grads["torch"].items():
        assert_close(f"grad {n}", want, grads["triton"][n], 1e-4)


def _halve(module, args, out):
    if isinstance(out, torch.Tensor):
        return out * 0.5
    out["last_hidden_state"] = out["last_hidden_state"] * 0.5  # the backbone's MambaOutput
    return out


def _scale_by_length(module, args, out):  # as transformers' NEFTune hook: depends on the length it is given
    return out * (1 + out.shape[1] / 100)


@pytest.mark.parametrize("where, hook", [
    ("layers.0", _halve), ("", _halve), ("layers.1.norm", _scale_by_length), ("norm_f", _scale_by_length),
    ("embeddings", _scale_by_length),
])
def test_hooks_outside_the_mixers_are_kept(hf, where, hook):
    """Hooks on a block (never called by the chunks), a norm (called per chunk), the backbone (not called by the
    patched LM) or the embedding (a hook that reads the length): the patched LM gives the hooked model's logits."""
    ids = prompt(2, 40)
    target = hf.backbone.get_submodule(where)
    with torch.no_grad():
        plain = hf(ids).logits
        target.register_forward_hook(hook)
        want = hf(ids).logits
        assert rel_err(want, plain) > 1e-3, "the hook must matter"
        patch(hf, chunk_size=8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a fallback to transformers' forward says so
            got = hf(ids).logits
    assert_close(f"hook on backbone.{where}", want, got, 1e-4)


def test_offloaded_model_runs_transformers_forward(hf):
    """accelerate's CPU offload replaces the modules' forwards (weights loaded on call, on meta otherwise): the
    patched forward runs transformers' own, with a warning, instead of reading meta weights."""
    accelerate = pytest.importorskip("accelerate")
    ids = prompt(2, 30)
    with torch.no_grad():
        want = hf(ids).logits
        patch(hf, chunk_size=8)
        accelerate.cpu_offload(hf, execution_device=torch.device("cpu"))
        with pytest.warns(RuntimeWarning, match="has its forward replaced"):
            got = hf(ids).logits
    assert_close("offloaded", want, got, 1e-5)


def test_tuple_output_holds_a_passed_cache(hf):
    """return_dict=False holds a cache passed in even with use_cache=False, as transformers' tuples do."""
    ids = prompt(2, 20)
    kw = cache_keyword(type(hf))
    with torch.no_grad():
        want = [hf(ids, use_cache=True), None, None]
        want[1] = hf(ids[:, 10:11], use_cache=False, return_dict=False, **{kw: output_cache(want[0])})
        want[2] = hf.backbone(ids[:, 10:11], use_cache=False, return_dict=False, **{kw: output_cache(want[0])})
        patch(hf, chunk_size=8)
        cache = output_cache(hf(ids, use_cache=True))
        got = hf(ids[:, 10:11], use_cache=False, return_dict=False, **{kw: cache})
        got_backbone = hf.backbone(ids[:, 10:11], use_cache=False, return_dict=False, **{kw: cache})
    for w, g in ((want[1], got), (want[2], got_backbone)):
        assert [type(v).__name__ for v in g] == [type(v).__name__ for v in w] == ["Tensor", "DynamicCache"]
        assert_close("tuple", w[0], g[0], 1e-4)


def test_gradient_checkpointing_returns_no_cache(hf):
    """Training with gradient checkpointing, transformers creates and returns no cache even with use_cache=True."""
    ids = prompt(2, 20)
    (getattr(hf, "activation_checkpointing_enable", None) or hf.gradient_checkpointing_enable)()  # 5.x renames
    hf.train()
    want = hf(ids, labels=ids, use_cache=True)
    patch(hf, chunk_size=8)
    got = hf(ids, labels=ids, use_cache=True)
    assert output_cache(want) is None and output_cache(got) is None
    assert_close("loss", want.loss, got.loss, 1e-5)


def test_gradient_checkpointing_with_a_passed_cache_runs_as_transformers(hf):
    """Checkpointed blocks of recent transformers neither read nor write a passed cache: the patched model must
    not either (it read and wrote it: other logits, and the caller's cache changed)."""
    import copy

    from babilong_fast.models.mamba.hf_cache import checkpointing_drops_cache

    if not checkpointing_drops_cache(type(hf.backbone.layers[0])):
        pytest.skip("this transformers' checkpointed blocks keep the cache (the patched forward carries it)")
    ids = prompt(2, 12)
    with torch.no_grad():
        cache = output_cache(hf(ids[:, :8], use_cache=True))
    (getattr(hf, "activation_checkpointing_enable", None) or hf.gradient_checkpointing_enable)()
    hf.train()
    runs = []
    for patched in (False, True):
        if patched:
            patch(hf, chunk_size=3, backend="torch")
        c = copy.deepcopy(cache)
        out = hf(ids[:, 8:], **{cache_keyword(type(hf)): c}, labels=ids[:, 8:])
        runs.append((out.logits.detach(), recurrent_state(c, 0).clone()))
    assert_close("logits", runs[0][0], runs[1][0], 1e-5)
    assert torch.equal(runs[0][1], runs[1][1]), "the cache must change exactly as transformers changes it"


def test_subclasses_with_their_own_forward_are_not_skipped(hf, monkeypatch):
    """An LM subclass's forward runs (its backbone still chunked); a mixer or block subclass with its own forward
    makes the patch run transformers' forward, with a warning; MambaLM refuses them."""
    from transformers import MambaForCausalLM
    from transformers.models.mamba.modeling_mamba import MambaBlock, MambaMixer

    from babilong_fast.models import MambaLM

    class HalfLogits(MambaForCausalLM):  # its own signature: labels second, positional
        def forward(self, input_ids, labels=None, **kwargs):
            out = super().forward(input_ids, labels=labels, **kwargs)
            out.logits = out.logits / 2
            return out

    class DoubleMixer(MambaMixer):
        def forward(self, hidden_states, *args, **kwargs):
            return 2 * super().forward(hidden_states, *args, **kwargs)

    class QuietBlock(MambaBlock):
        def forward(self, hidden_states, *args, **kwargs):
            return super().forward(hidden_states, *args, **kwargs)

    ids = prompt(2, 20)
    lm = HalfLogits(hf.config).eval()
    lm.load_state_dict(hf.state_dict())
    with torch.no_grad():
        want = lm(ids, ids)
        patch(lm, chunk_size=6)
        widths = spy_chunks(monkeypatch)
        got = lm(ids, ids)
        assert widths == [6, 6, 6, 2], "the subclass's forward calls the patched backbone, which runs in chunks"
        assert_close("LM subclass", want.logits, got.logits, 1e-5)
        assert_close("LM subclass loss", want.loss, got.loss, 1e-5)
    with pytest.raises(ValueError, match="HalfLogits, whose own forward"):
        MambaLM(lm)

    class TaggedBlock(MambaBlock):  # no forward of its own (transformers 5.24 still puts a wrapper in its dict)
        tag = "mine"

    model = small_mamba(seed=11).eval()
    for layer in model.backbone.layers:
        layer.__class__ = TaggedBlock
    MambaLM(model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        want = model(ids).logits
        patch(model, chunk_size=6)
        assert_close("block subclass without a forward", want, model(ids).logits, 1e-5)
    for cls, where in ((DoubleMixer, "mixer"), (QuietBlock, None)):
        model = small_mamba(seed=11).eval()
        for layer in model.backbone.layers:
            (layer.mixer if where else layer).__class__ = cls
        with torch.no_grad():
            want = model(ids).logits
            patch(model, chunk_size=6)
            with pytest.warns(RuntimeWarning, match=f"{cls.__name__}, whose own forward would be skipped"):
                got = model(ids).logits
        assert torch.equal(want, got)
        with pytest.raises(ValueError, match=f"{cls.__name__}, whose own forward"):
            MambaLM(model)


def test_empty_batch_and_negative_logits_to_keep(hf):
    """As transformers: B = 0 gives empty logits; an int logits_to_keep of -k keeps positions k.. (its [-k:])."""
    ids = prompt(1, 11)
    with torch.no_grad():
        want = hf(ids, logits_to_keep=-2).logits
        patch(hf, chunk_size=4)
        got = hf(ids, logits_to_keep=-2).logits
        assert got.shape == want.shape == (1, 9, hf.config.vocab_size)
        assert_close("logits", want, got, 1e-5)
        assert hf(ids[:0]).logits.shape == (0, 11, hf.config.vocab_size)


@pytest.mark.parametrize("reentrant, every_n", [(False, 1), (True, 1), (False, 2)],
                         ids=["non-reentrant", "reentrant", "every-2nd-layer"])
def test_gradient_checkpointing_checkpoints_as_transformers(hf, monkeypatch, reentrant, every_n):
    """With transformers' gradient checkpointing on, each chunk's layers are checkpointed as transformers' blocks
    are (recomputed in the backward pass, not stored; each block's own setting), with the same gradients."""
    import inspect

    ids = prompt(2, 20)
    kwargs = {"use_reentrant": reentrant}
    if hasattr(hf, "activation_checkpointing_enable"):  # transformers 5.x renames it
        if every_n > 1 and "every_n_layers" not in inspect.signature(hf.activation_checkpointing_enable).parameters:
            pytest.skip("this transformers has no every_n_layers")
        extra = {"every_n_layers": every_n} if every_n > 1 else {}
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, **extra)
    elif every_n > 1:
        pytest.skip("this transformers has no every_n_layers")
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    checkpointed = sum(bool(getattr(b, "gradient_checkpointing", False)) for b in hf.backbone.layers)
    assert 0 < checkpointed <= len(hf.backbone.layers) and (every_n == 1) == (checkpointed == len(hf.backbone.layers))
    hf.train()
    hf(ids, labels=ids).loss.backward()
    want = {n: p.grad.clone() for n, p in hf.named_parameters()}
    hf.zero_grad()
    patch(hf, chunk_size=8)
    calls = []
    real = mamba_layers.mixer_forward
    monkeypatch.setattr(mamba_layers, "mixer_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    chunks = 3  # of 8 over 20 tokens
    loss = hf(ids, labels=ids).loss
    assert len(calls) == len(hf.backbone.layers) * chunks
    loss.backward()
    assert len(calls) == (len(hf.backbone.layers) + checkpointed) * chunks  # checkpointed layers ran again
    for n, p in hf.named_parameters():
        assert_close(n, want[n], p.grad, 1e-4)
    hf.eval()
    calls.clear()
    hf(ids, labels=ids).loss.backward()
    assert len(calls) == len(hf.backbone.layers) * chunks  # not training: no checkpointing, as transformers


def test_unpatch_restores(hf):
    keys = set(hf.state_dict())
    other = small_mamba(seed=12)
    patch(hf, chunk_size=16)
    assert "forward" in hf.__dict__ and "forward" in hf.backbone.__dict__
    assert "forward" not in other.__dict__, "other models of the class are untouched"
    assert set(hf.state_dict()) == keys
    patch(hf, chunk_size=4, backend="torch")  # again: new options, no double wrapping
    assert patch_options(hf).chunk_size == 4 and patch_options(hf.backbone).backend == "torch"
    assert babilong_fast.unpatch(hf) is hf and not is_patched(hf)
    assert "forward" not in hf.__dict__ and "forward" not in hf.backbone.__dict__
    assert patch_options(hf.backbone) is None
    assert unpatch(hf) is hf  # not patched: a no-op


def test_patched_model_deepcopies_and_saves(hf, tmp_path):
    """deepcopy and torch.save/load keep a patched model patched, bound to itself; unpatch then works on each."""
    import copy

    ids = prompt(2, 30)
    with torch.no_grad():
        want = hf(ids).logits
    patch(hf, chunk_size=8, backend="torch")
    for twin in (copy.deepcopy(hf), None):
        if twin is None:
            torch.save(hf, tmp_path / "patched.pt")
            twin = torch.load(tmp_path / "patched.pt", weights_only=False)
        assert is_patched(twin) and patch_options(twin.backbone).chunk_size == 8
        assert twin.__dict__["forward"].args[0] is twin and twin.backbone.__dict__["forward"].args[0] is twin.backbone
        with torch.no_grad():
            assert_close("copy", want, twin(ids).logits, 1e-4)
        unpatch(twin)
        assert "forward" not in twin.__dict__ and "forward" not in twin.backbone.__dict__ and not is_patched(twin)
        with torch.no_grad():
            assert_close("copy unpatched", want, twin(ids).logits, 1e-5)
    assert is_patched(hf)


def test_nested_patch_is_refused(hf):
    """The LM and its backbone cannot both be patched (their records would tangle); either alone works."""
    patch(hf.backbone)
    with pytest.raises(ValueError, match="backbone .MambaModel. is patched on its own"):
        patch(hf)
    unpatch(hf.backbone)
    patch(hf)
    with pytest.raises(ValueError, match="already patched as part of the model that holds it"):
        patch(hf.backbone)
    unpatch(hf)
    assert "forward" not in hf.__dict__ and "forward" not in hf.backbone.__dict__


def _wrap_forward(module, scale):
    """An instance forward around the current one that scales its output, as accelerate's hooks wrap it."""
    inner = module.forward

    def forward(*args, **kwargs):
        out = inner(*args, **kwargs)
        return type(out)({k: v * scale if k in ("logits", "last_hidden_state") else v for k, v in out.items()})

    module.forward = forward
    return inner


@pytest.mark.parametrize("where", ["model", "backbone"])
def test_a_forward_replaced_on_the_instance_is_not_hidden(hf, where):
    """A forward already replaced on the instance (accelerate's device-map or offload hooks) was bound over and
    skipped: patch refuses it. One replaced after patching was dropped by unpatch: unpatch refuses it until it is
    removed; then it unpatches."""
    module = hf if where == "model" else hf.backbone
    name = "the model" if where == "model" else "the model's backbone"
    ids = prompt(2, 30)
    with torch.no_grad():
        want = hf(ids).logits
    inner = _wrap_forward(module, 0.5)
    with pytest.raises(ValueError, match=f"{name} has its forward replaced on the instance"):
        patch(hf)
    assert not is_patched(hf) and "forward" not in (hf.backbone if where == "model" else hf).__dict__
    module.forward = inner
    del module.forward  # the class's again
    patch(hf, chunk_size=8)
    ours = module.__dict__["forward"]
    _wrap_forward(module, 0.5)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the LM calls a wrapped backbone as a module
        assert_close("hooked", want * 0.5, hf(ids).logits, 1e-4)
    with pytest.raises(ValueError, match=f"{name} has its forward replaced since it was patched"):
        unpatch(hf)
    assert is_patched(hf) and patch_options(hf.backbone) is not None
    module.forward = ours  # the hook removed
    unpatch(hf)
    assert "forward" not in hf.__dict__ and "forward" not in hf.backbone.__dict__
    with torch.no_grad():
        assert_close("unpatched", want, hf(ids).logits, 1e-6)


def test_unpatch_of_a_module_patched_as_part_of_its_model_is_refused(hf):
    """unpatch(lm.backbone) did nothing and said nothing while the backbone stayed patched."""
    patch(hf)
    with pytest.raises(ValueError, match="patched as part of the model that holds it; unpatch that model instead"):
        unpatch(hf.backbone)
    assert not is_patched(hf.backbone) and patch_options(hf.backbone) is not None
    unpatch(hf)
    assert unpatch(hf.backbone) is hf.backbone  # not patched: a no-op


def test_bad_input(hf):
    with pytest.raises(TypeError, match="babilong_fast.patch supports MambaForCausalLM, MambaModel"):
        patch(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="got Linear"):
        unpatch(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        patch(hf, chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        patch(hf, chunk_size=2.5)
    with pytest.raises(ValueError, match="backend must be"):
        patch(hf, backend="jax")
    assert not is_patched(hf)


def test_import_is_lazy():
    code = textwrap.dedent("""
        import sys, babilong_fast
        assert "transformers" not in sys.modules and "babilong_fast.patch" not in sys.modules
        assert callable(babilong_fast.patch) and callable(babilong_fast.unpatch)
        assert "transformers" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture
def fresh_registry(monkeypatch):
    import babilong_fast.patch as patch_module

    monkeypatch.setattr(patch_module, "PATCHERS", {})
    monkeypatch.setattr(patch_module, "_builtins_loaded", False)
    compat.mamba_ssm_status.cache_clear()
    yield
    compat.mamba_ssm_status.cache_clear()


def test_broken_mamba_ssm_warns_once(hf, tmp_path, monkeypatch, fresh_registry):
    """mamba_ssm installed without its compiled extension: one warning, Hugging Face Mamba still patched."""
    pkg = tmp_path / "mamba_ssm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import selective_scan_cuda\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mamba_ssm", raising=False)
    with pytest.warns(RuntimeWarning, match="compiled CUDA extension cannot be loaded.*selective_scan_cuda"):
        patch(hf, chunk_size=8)
    assert compat.mamba_ssm_status()[0] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unpatch(hf)
        patch(small_mamba(seed=2), chunk_size=8)
    ids = prompt(1, 20)
    with torch.no_grad():
        assert_close("patched", small_mamba(seed=11)(ids).logits, hf(ids).logits, 1e-4)
    with pytest.raises(TypeError, match="supports MambaForCausalLM, MambaModel models"):
        patch(torch.nn.Linear(2, 2))
    for not_a_model in (None, "mamba"):  # not even a Module: the same message, not an AttributeError
        for fn in (patch, unpatch):
            with pytest.raises(TypeError, match=f"supports MambaForCausalLM.*got {type(not_a_model).__name__}"):
                fn(not_a_model)


def test_mamba_ssm_not_installed_is_silent(monkeypatch, fresh_registry):
    monkeypatch.setattr(compat.importlib.util, "find_spec", lambda name: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        usable, reason = compat.mamba_ssm_status()
    assert not usable and "not installed" in reason
