"""Naive ARMT and RMT written from docs/math.md in plain torch, independent of babilong_fast.models' code paths.

They reuse the wrapper's parameters (``model.memory``, ``model.layers[l].W_*``, ``model.backbone``) so the
results can be compared, but call the GPT-2 blocks one by one (ARMT) or the whole LM (RMT) themselves.
"""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

EPS = 1e-5
VOCAB = 100
EOS = VOCAB - 1


def tiny_gpt2(n_positions: int = 96, initializer_range: float = 0.1) -> GPT2LMHeadModel:
    config = GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_positions=n_positions,
        vocab_size=VOCAB,
        bos_token_id=EOS,
        eos_token_id=EOS,
        initializer_range=initializer_range,
    )
    return GPT2LMHeadModel(config).eval()


def phi(u: torch.Tensor, nu: int = 3) -> torch.Tensor:
    """DPFP by its index formula: phi[j*2n + i] = s[i] * s[(i - j - 1) mod 2n]."""
    s = torch.cat([u.clamp_min(0), (-u).clamp_min(0)], -1)
    i = torch.arange(s.shape[-1])
    return torch.cat([s * s[..., (i - j) % s.shape[-1]] for j in range(1, nu + 1)], -1)


def additive_mask(key_mask: torch.Tensor | None, B: int, T: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, T, T]: 0 where row t may attend to column u (u <= t and key u not padding), else dtype's min."""
    allowed = torch.ones(T, T, dtype=torch.bool).tril().expand(B, 1, T, T)
    if key_mask is not None:
        allowed = allowed & key_mask.bool()[:, None, None, :]
    return torch.zeros(B, 1, T, T, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


def run_block(block, h: torch.Tensor, mask4d: torch.Tensor) -> torch.Tensor:
    out = block(h, attention_mask=mask4d)
    return out[0] if isinstance(out, tuple) else out


def naive_gpt2_logits(gpt2, ids: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Blocks called one by one with a hand-built mask: the harness the naive ARMT relies on."""
    tr = gpt2.transformer
    B, T = ids.shape
    h = tr.wte(ids) + tr.wpe(torch.arange(T))
    mask4d = additive_mask(key_mask, B, T, h.dtype)
    for block in tr.h:
        h = run_block(block, h, mask4d)
    return gpt2.lm_head(tr.ln_f(h))


def naive_armt_segment(model, ids, key_mask, A, z, seen: int, write: bool = True):
    """One ARMT segment (docs/math.md §2.7). A, z: lists of per-layer tensors. Returns (logits, A, z)."""
    gpt2, tr = model.backbone, model.backbone.transformer
    B, L = ids.shape
    x = tr.wte(ids)
    if write:
        x = torch.cat([x, model.memory.expand(B, -1, -1)], 1)
        if key_mask is not None:
            key_mask = torch.cat([key_mask, torch.ones(B, model.num_mem_tokens, dtype=key_mask.dtype)], 1)
    T = x.shape[1]
    h = x + tr.wpe(torch.arange(T))
    mask4d = additive_mask(key_mask, B, T, h.dtype)
    A, z = list(A), list(z)
    for layer, (block, p) in enumerate(zip(tr.h, model.layers, strict=True)):
        if seen > 0:
            q = phi(h @ p.W_q.weight.t(), model.nu)
            h = h + (q @ A[layer]) / (q @ z[layer].unsqueeze(-1) + EPS)
        h = run_block(block, h, mask4d)
        if write:
            m = h[:, L:]
            K = phi(m @ p.W_k.weight.t(), model.nu)
            V = m @ p.W_v.weight.t()
            beta = torch.sigmoid(m @ p.W_b.weight.t() + p.W_b.bias)
            if seen == 0:
                Vbar, gamma = torch.zeros_like(V), torch.ones(B, K.shape[1], 1)
            else:
                delta = K @ z[layer].unsqueeze(-1) + EPS
                Vbar = (K @ A[layer]) / delta
                gamma = (1 - delta / ((K * K).sum(-1, keepdim=True) + EPS)).clamp(0, 1).detach()
                if not model.correction:
                    gamma = torch.ones_like(gamma)
            A[layer] = A[layer] + K.transpose(1, 2) @ (beta * (V - Vbar))
            z[layer] = z[layer] + (gamma * K).sum(1)
    logits = gpt2.lm_head(tr.ln_f(h)[:, :L])
    return logits, A, z


def naive_armt_empty(model, B):
    F, d = 2 * model.nu * model.d_mem, model.d_model
    n = len(model.layers)
    return [torch.zeros(B, F, d) for _ in range(n)], [torch.zeros(B, F) for _ in range(n)]


def naive_rmt_segment(model, ids, key_mask, mem, write: bool = True):
    """One RMT-BL segment (docs/math.md §1.1) through the HF LM with inputs_embeds. Returns (logits, next memory)."""
    gpt2 = model.backbone
    B, L = ids.shape
    M = model.num_mem_tokens
    parts = [mem, gpt2.transformer.wte(ids)] + ([mem] if write else [])
    mask = None
    if key_mask is not None:
        ones = torch.ones(B, M, dtype=key_mask.dtype)
        mask = torch.cat([ones, key_mask] + ([ones] if write else []), 1)
    out = gpt2(inputs_embeds=torch.cat(parts, 1), attention_mask=mask, output_hidden_states=True)
    H = out.hidden_states[-1]
    return out.logits[:, M : M + L], (H[:, M + L :] if write else mem)


def shifted_ce(logits, ids, labels_mask):
    keep = labels_mask[:, :-1]
    return torch.nn.functional.cross_entropy(logits[:, :-1][keep], ids[:, 1:][keep])
