"""MambaLM: Hugging Face Mamba run in chunks with an explicit state, against transformers' own forward/generate."""
from __future__ import annotations

import pytest
import torch

from babilong_fast.models import MambaLM, MambaState
from babilong_fast.models.mamba import mamba_parts, mixer_forward
from babilong_fast.models.mamba.hf_cache import conv_state, output_cache, recurrent_state
from tests.helpers import assert_close, rel_err, requires_ext, requires_triton
from tests.models.mamba_util import EOS, hf_greedy, prompt, small_mamba

T = 150  # odd w.r.t. every chunk size below


@pytest.fixture(scope="module")
def hf():
    return small_mamba()


def hf_logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.mark.parametrize("chunk", [1, 7, 64, T])
def test_chunked_forward_equals_hf(hf, chunk):
    """Chunks of 1, 7, 64 and all tokens: logits equal transformers' one-shot forward (fp32, CPU)."""
    ids = prompt(2, T)
    want = hf_logits(hf, ids)
    lm = MambaLM(hf, chunk_size=chunk)
    with torch.no_grad():
        last, state = lm(ids, logits="last")
        every, _ = lm(ids, logits="all")
        none, state2 = lm(ids, logits="none")
    assert last.shape == (2, 1, hf.config.vocab_size) and last.dtype == torch.float32 and none is None
    assert_close("last logits", want[:, -8:][:, -1:], last, 1e-4)
    assert_close("final positions", want[:, -8:], every[:, -8:], 1e-4)
    assert_close("all logits", want, every, 1e-4)
    assert state.num_tokens == T
    for a, b in zip(state.ssm, state2.ssm, strict=True):
        assert torch.equal(a, b)


def test_state_continues_and_matches_hf_cache(hf):
    """forward(a) then forward(b, state) == forward(a ‖ b); the state equals transformers' cache after a prefill."""
    ids = prompt(2, T)
    lm = MambaLM(hf, chunk_size=16)
    with torch.no_grad():
        _, st = lm(ids[:, :61], logits="none")
        tail, st_full = lm(ids[:, 61:], st, logits="all")
        cache = output_cache(hf(ids, use_cache=True))
    assert_close("continued logits", hf_logits(hf, ids)[:, 61:], tail, 1e-4)
    assert st_full.num_tokens == T
    d_conv = hf.config.conv_kernel
    for i in range(hf.config.num_hidden_layers):
        assert_close(f"ssm {i}", recurrent_state(cache, i), st_full.ssm[i], 1e-4)
        assert_close(f"conv {i}", conv_state(cache, i)[..., 1:], st_full.conv[i], 1e-5)
        assert st_full.conv[i].shape == (2, hf.config.intermediate_size, d_conv - 1)
        assert st_full.ssm[i].dtype == torch.float32


def test_forward_does_not_modify_state(hf):
    lm = MambaLM(hf, chunk_size=8)
    with torch.no_grad():
        _, st = lm(prompt(1, 20), logits="none")
        before = st.clone()
        lm(prompt(1, 30, seed=2), st)
    for a, b in zip(before.conv + before.ssm, st.conv + st.ssm, strict=True):
        assert torch.equal(a, b)


def test_mixer_forward_equals_hf_mixer(hf):
    parts = mamba_parts(hf)
    h = torch.randn(2, 23, hf.config.hidden_size)
    with torch.no_grad():
        want = parts.mixers[1](h)
        out, conv, ssm = mixer_forward(parts.mixers[1], h, None, None)
        o1, c1, s1 = mixer_forward(parts.mixers[1], h[:, :10], None, None)
        o2, _, _ = mixer_forward(parts.mixers[1], h[:, 10:], c1, s1)
    assert_close("mixer", want, out, 1e-5)
    assert_close("mixer in two calls", want, torch.cat([o1, o2], 1), 1e-5)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_greedy_equals_hf_generate(hf, chunk):
    ids = prompt(2, 70)
    want = hf_greedy(hf, ids, 12)
    got = MambaLM(hf, chunk_size=chunk).generate(ids, max_new_tokens=12, eos_token_id=EOS)
    assert len(set(want[0].tolist())) > 3, "the test model should not repeat one token"
    assert torch.equal(got, want)


def test_greedy_continues_from_prefilled_state(hf):
    """The prompt's head prefilled into a state, then generate(tail, state=...) == HF generate(head ‖ tail)."""
    ids = prompt(2, 90)
    lm = MambaLM(hf, chunk_size=16)
    with torch.no_grad():
        _, st = lm(ids[:, :77], logits="none")
    assert torch.equal(lm.generate(ids[:, 77:], 10, EOS, state=st), hf_greedy(hf, ids, 10))


def test_greedy_eos_padding_equals_hf(hf):
    """A row that emits eos is padded with it, as transformers pads with pad_token_id = eos."""
    ids = prompt(2, 40)
    free = hf_greedy(hf, ids, 10)
    eos = int(free[0, 3])  # row 0 stops at its 4th token
    want = hf_greedy(hf, ids, 10, eos=eos)
    got = MambaLM(hf, chunk_size=9).generate(ids, 10, eos_token_id=eos)
    assert torch.equal(got, want)
    assert (got[0, 3:] == eos).all()


@requires_triton
@pytest.mark.triton
def test_triton_backend():
    """The Triton kernels (the interpreter on CPU) on the model's strided operands, state carried across chunks."""
    hf = small_mamba(hidden_size=16, num_hidden_layers=1, state_size=4, seed=2)
    ids = prompt(1, 13)
    want = hf_logits(hf, ids)  # on the CPU: on a GPU, cuDNN's conv would use TF32 (about 1e-3)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf.to(device)
    with torch.no_grad():
        got, _ = MambaLM(hf, chunk_size=5, backend="triton")(ids.to(device))
    assert_close("triton logits", want, got, 1e-4)


@requires_ext
@pytest.mark.cuda
@pytest.mark.ext
def test_cuda_backend():
    """backend="cuda": the scan's and conv's CUDA kernels on the model's strided operands, across chunks."""
    hf = small_mamba(hidden_size=16, num_hidden_layers=1, state_size=4, seed=2)
    ids = prompt(1, 13)
    want = hf_logits(hf, ids)
    hf.to("cuda")
    with torch.no_grad():
        got, _ = MambaLM(hf, chunk_size=5, backend="cuda")(ids.to("cuda"))
    assert_close("cuda logits", want, got, 1e-4)


def test_bfloat16_model():
    """bf16 weights: conv state in bf16, SSM state float32, logits against the float64 model within 1.25x the error
    of transformers' own bf16 forward (the init, hence the error, differs between transformers releases)."""
    hf = small_mamba(seed=3)
    ids = prompt(1, 40)
    want = hf_logits(hf.double(), ids)
    hf_bf16 = hf.to(torch.bfloat16)
    own = hf_logits(hf_bf16, ids)
    err_own = rel_err(own, want)
    lm = MambaLM(hf_bf16, chunk_size=16)
    with torch.no_grad():
        logits, st = lm(ids)
    assert st.conv[0].dtype == torch.bfloat16 and st.ssm[0].dtype == torch.float32
    assert_close("bf16 logits", want, logits, 1.25 * err_own)


def test_autocast_state_continues(hf):
    """Under bf16 autocast an fp32 model's state stays in the weights' dtype, so forward / generate continue from
    it (it came back in bf16 and was refused), close to the one-shot autocast run."""
    ids = prompt(1, 40)
    lm = MambaLM(hf, chunk_size=8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        whole, _ = lm(ids, logits="all")
        _, st = lm(ids[:, :21], logits="none")
        tail, st2 = lm(ids[:, 21:], st, logits="all")
        lm.generate(ids[:, 21:], max_new_tokens=2, state=st)
    assert st.conv[0].dtype == st2.conv[0].dtype == torch.float32 and st.ssm[0].dtype == torch.float32
    assert_close("continued under autocast", whole[:, 21:].float(), tail.float(), 3e-2)


def test_mamba_130m_configuration():
    """Mamba-130m's shape (d_model 768, 24 layers, d_state 16, d_conv 4, expand 2, vocab 50280), random weights:
    within twice transformers' own float32 error against float64, same greedy tokens."""
    from transformers import MambaConfig, MambaForCausalLM

    cfg = MambaConfig(vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=16, conv_kernel=4, expand=2)
    hf = MambaForCausalLM(cfg).eval()
    ids = torch.randint(0, 50280, (1, 9))
    lm = MambaLM(hf, chunk_size=4)
    assert lm.parts.dims.d_inner == 1536 and lm.parts.num_layers == 24
    with torch.no_grad():
        want32 = hf(ids, use_cache=False).logits
        got, st = lm(ids)
        tokens = lm.generate(ids, 2, eos_token_id=0)
        want64 = hf.double()(ids, use_cache=False).logits
    hf.float()
    err_hf = rel_err(want32, want64)
    assert_close("130m logits vs float64", want64, got, 2 * err_hf + 1e-6)
    assert st.ssm[0].shape == (1, 1536, 16) and st.conv[0].shape == (1, 1536, 3)
    assert torch.equal(tokens, hf_greedy(hf, ids, 2, eos=0))


def test_bad_input(hf):
    lm = MambaLM(hf, chunk_size=8)
    ids = prompt(2, 10)
    good = lm.init_state(2)
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        MambaLM(hf, chunk_size=0)
    with pytest.raises(ValueError, match="backend must be"):
        MambaLM(hf, backend="jax")
    with pytest.raises(TypeError, match="expected a Mamba-1 language model"):
        MambaLM(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="needs a model with an LM head"):
        MambaLM(hf.backbone)
    with pytest.raises(TypeError, match="state must be a MambaState"):
        lm(ids, state=(good.conv, good.ssm))
    with pytest.raises(ValueError, match=r"conv must be \[2, 64, 3\]"):
        lm(ids, state=lm.init_state(3))  # batch 3 state, batch 2 ids
    with pytest.raises(ValueError, match="state has 1 layers, the model 2"):
        lm(ids, state=MambaState(good.conv[:1], good.ssm[:1]))
    wrong_n = MambaState(good.conv, tuple(torch.zeros(2, 64, 4) for _ in good.ssm))
    with pytest.raises(ValueError, match=r"ssm \[2, 64, 8\]"):
        lm(ids, state=wrong_n)
    with pytest.raises(TypeError, match="ssm state must be float32"):
        MambaState(good.conv, tuple(s.double() for s in good.ssm))
    with pytest.raises(TypeError, match="conv must have the model's dtype"):
        lm(ids, state=MambaState(tuple(c.bfloat16() for c in good.conv), good.ssm))
    with pytest.raises(ValueError, match="same B and d_inner"):
        MambaState(good.conv, tuple(torch.zeros(1, 64, 8) for _ in good.ssm))
    with pytest.raises(ValueError, match="token ids must lie in"):
        lm(torch.tensor([[1, 100]]))
    with pytest.raises(TypeError, match="integer token ids"):
        lm(ids.float())
    with pytest.raises(ValueError, match=r"must be \[B, N\]"):
        lm(ids[0])
    with pytest.raises(ValueError, match="logits must be"):
        lm(ids, logits="first")
    with pytest.raises(ValueError, match="max_new_tokens"):
        lm.generate(ids, max_new_tokens=0)
