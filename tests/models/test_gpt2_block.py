"""gpt2_block_infer against the HF GPT2Block's own forward, run in float64 on the same weights."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

from babilong_fast.models.gpt2_block import gpt2_block_infer, lean_block_unsupported, mlp_activation
from tests.helpers import assert_close, requires_cuda

RTOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def make_block(layer_idx: int = 2, **config) -> GPT2Block:
    """A random GPT-2 block (d 48, 4 heads of 12) with non-zero biases and layer-norm affine terms."""
    cfg = GPT2Config(n_embd=48, n_head=4, n_layer=4, attn_implementation="sdpa", **config)
    torch.manual_seed(layer_idx)
    block = GPT2Block(cfg, layer_idx=layer_idx).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * (0.2 if p.dim() > 1 else 0.5) + (1.0 if p.dim() == 1 else 0.0) * 0.1)
    return block


def reference(block: GPT2Block, h: torch.Tensor) -> torch.Tensor:
    """The block's own forward in float64 (SDPA: causal without a mask)."""
    b64 = copy.deepcopy(block).double()
    with torch.no_grad():
        out = b64(h.double())
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("B,T", [(1, 1), (1, 7), (3, 33)], ids=["B1T1", "B1T7", "B3T33"])
@pytest.mark.parametrize("act", ["gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu"])
def test_matches_block_forward(act, B, T):
    block = make_block(activation_function=act)
    h = torch.randn(B, T, 48)
    with torch.inference_mode():
        out = gpt2_block_infer(block, h)
    assert out.dtype == h.dtype and out.data_ptr() != h.data_ptr()
    assert_close(f"{act} B{B} T{T}", reference(block, h), out, RTOL[torch.float32])


@pytest.mark.parametrize(
    "config", [{"scale_attn_weights": False}, {"scale_attn_by_inverse_layer_idx": True}], ids=["unscaled", "by_layer"]
)
def test_attention_scale_options(config):
    block = make_block(layer_idx=3, **config)
    if type(block.attn).__name__ == "GPT2SdpaAttention":  # transformers 4.4x: its forward ignores the options
        assert "ignores" in lean_block_unsupported(block)
        return
    h = torch.randn(2, 9, 48)
    with torch.inference_mode():
        out = gpt2_block_infer(block, h)
    assert_close(str(config), reference(block, h), out, RTOL[torch.float32])


@pytest.mark.parametrize("B,T,last", [(1, 1, 1), (2, 9, 1), (3, 33, 5), (2, 17, 17)], ids=str)
def test_last_rows(B, T, last):
    """last=R: the block output's last R rows alone (keys and values from all rows), as the full forward gives."""
    block = make_block(activation_function="gelu_new")
    h = torch.randn(B, T, 48)
    before = h.clone()
    with torch.inference_mode():
        out = gpt2_block_infer(block, h, last=last)
    assert out.shape == (B, last, 48) and torch.equal(h, before)
    assert_close(f"B{B} T{T} last {last}", reference(block, h)[:, T - last :], out, RTOL[torch.float32])
    for bad in (0, T + 1, True, 2.0):
        with pytest.raises(ValueError, match="last must be an integer"):
            gpt2_block_infer(block, h, last=bad)


def test_input_not_written():
    block = make_block()
    h = torch.randn(2, 5, 48)
    before = h.clone()
    with torch.inference_mode():
        gpt2_block_infer(block, h)
    assert torch.equal(h, before)


def test_tanh_gelus_become_one_kernel():
    for name in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
        act = make_block(activation_function=name).mlp.act
        x = torch.randn(64, dtype=torch.float64) * 3
        assert not isinstance(mlp_activation(act), torch.nn.Module)
        assert_close(name, act(x), mlp_activation(act)(x), 1e-12)
    relu = make_block(activation_function="relu").mlp.act
    assert mlp_activation(relu) is relu


def test_unsupported_blocks_are_refused():
    class MyBlock(GPT2Block):
        pass

    mine = MyBlock(GPT2Config(n_embd=48, n_head=4), layer_idx=0)
    assert "not transformers' own GPT2Block" in lean_block_unsupported(mine)
    upcast = make_block(reorder_and_upcast_attn=True)
    assert lean_block_unsupported(upcast) == "reorder_and_upcast_attn"
    assert lean_block_unsupported(make_block()) is None
    for block in (mine, upcast):
        with pytest.raises(ValueError, match="cannot run this block"):
            gpt2_block_infer(block, torch.randn(1, 4, 48))


def test_bad_hidden_shape():
    block = make_block()
    for bad in (torch.randn(4, 48), torch.randn(1, 4, 32)):
        with pytest.raises(ValueError, match="h must be"):
            gpt2_block_infer(block, bad)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_block_forward_cuda(dtype):
    block = make_block()
    h = torch.randn(2, 130, 48)
    ref = reference(block, h)
    fast = copy.deepcopy(block).to("cuda", dtype)
    with torch.inference_mode():
        out = gpt2_block_infer(fast, h.to("cuda", dtype))
        tail = gpt2_block_infer(fast, h.to("cuda", dtype), last=10)  # masked SDPA on the GPU's kernels
    assert out.dtype == tail.dtype == dtype
    # TF32 may be on for float32 matmuls on the GPU: half-precision tolerance unless it is off
    fp32_exact = dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    assert_close(f"cuda {dtype}", ref, out, RTOL[torch.float32] if fp32_exact else 1e-2)
    assert_close(f"cuda {dtype} last 10", ref[:, -10:], tail, RTOL[torch.float32] if fp32_exact else 1e-2)

