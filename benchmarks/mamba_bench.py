"""Mamba rows of the model benchmark: Hugging Face ``MambaForCausalLM`` stock against babilong_fast.

Used by :func:`models_bench.run_suite` for ``--models mamba``. Both modes answer the same input as the
RMT/ARMT rows (``context ‖ question ‖ GEN``, then ``max_new_tokens`` greedy tokens with EOS disabled).
"""
from __future__ import annotations

import torch

from babilong_fast.engine import GEN_ID
from babilong_fast.models import MambaLM
from babilong_fast.models.mamba.hf_cache import cache_keyword, linear_cache_supported, output_cache

STOCK_DESCRIPTION = (
    "stock (Mamba) = the public BABILong Mamba baseline's way (ARMT repository, baselines/mamba; docs/math.md §4): "
    "the whole sample materialised as one [B, N] tensor on the device; one Hugging Face MambaForCausalLM call on "
    "the first min(N, prefix) tokens with use_cache=True (full-vocabulary logits for every position, as the "
    "reference's per-chunk loss needs), then one call per remaining token with the cache (HF's cached path "
    "takes single-token steps only), then greedy decoding one token per call from the cache. HF's Mamba "
    "runs its own kernels: mamba_ssm / causal_conv1d when installed, else its PyTorch fallback."
)
FAST_DESCRIPTION = (
    "fast (Mamba) = babilong_fast.engine.StreamRunner over babilong_fast.models.MambaLM(hf_model, chunk_size): "
    "the stream re-blocked into chunks of chunk_size tokens, each run through every layer with "
    "babilong_fast.ops.causal_conv1d and selective_scan carrying the conv and SSM state (no LM head), then "
    "the held-back tokens and the answer decoded greedily from the state."
)
STOCK_CHECK_EVERY = 64


def scan_tuning() -> list[dict]:
    """What the Triton selective scan's tuner timed in this process, fastest first per problem size ([] without
    Triton or when nothing was tuned: on a CPU, or with BABILONG_FAST_SCAN_TUNE=0)."""
    try:
        from babilong_fast.kernels.selective_scan import SCAN_TUNER
    except ImportError:
        return []
    return SCAN_TUNER.report()


def scan_tuning_lines(report: list[dict]) -> list[str]:
    """One line per tuned problem size: the pick, its time and the default's (the first candidate)."""
    lines = []
    for rec in report:
        k, secs = rec["key"], rec["seconds"]
        if not secs:
            lines.append(f"batch {k['batch']}, dim {k['dim']}, N {k['N']}: every candidate failed: {rec['errors']}")
            continue
        default = rec["candidates"][0]  # the default config comes first
        text = f"batch {k['batch']}, dim {k['dim']}, N {k['N']}, {k['dtype']}: {rec['picked']} "
        text += f"{secs[rec['picked']] * 1e3:.3f} ms"
        if default != rec["picked"] and default in secs:
            text += f" (default {default} {secs[default] * 1e3:.3f} ms)"
        lines.append(text + f"; {len(secs)} timed, {len(rec['errors'])} failed")
    return lines


def mamba_config(gpu: bool) -> dict:
    """Mamba-130m's shape on a GPU (random weights); a tiny Mamba with the same vocabulary on a CPU."""
    if gpu:
        return dict(vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=16, expand=2, conv_kernel=4)
    return dict(vocab_size=50280, hidden_size=128, num_hidden_layers=2, state_size=16, expand=2, conv_kernel=4)


def build_mamba(config: dict, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(seed)
    return MambaForCausalLM(MambaConfig(**config)).to(device=device, dtype=dtype).eval()


def _hf_call(model, ids: torch.Tensor, cache, position: int):
    """One ``MambaForCausalLM`` call continuing ``cache`` (``cache=`` in later transformers 5, ``cache_params=``
    before; transformers 4.x also wants ``cache_position``). Its forward takes ``**kwargs``, so a wrong keyword
    would be ignored, not refused: the keyword comes from the signature."""
    if cache is None:
        return model(ids, use_cache=True)
    if cache_keyword(type(model)) == "cache":
        return model(ids, cache=cache, use_cache=True)
    if linear_cache_supported():
        return model(ids, cache_params=cache, use_cache=True)
    pos = torch.arange(position, position + ids.shape[1], device=ids.device)  # transformers 4.x
    return model(ids, cache_params=cache, use_cache=True, cache_position=pos)


def run_stock_mamba(model, inputs, device, watch, max_new_tokens: int, prefix: int) -> torch.Tensor:
    """The public baseline's way (see :data:`STOCK_DESCRIPTION`)."""
    with torch.no_grad():
        gen = torch.full((inputs.B, 1), GEN_ID)
        ids = torch.cat([*inputs.chunks(), inputs.question(), gen], 1).to(device)
        N = ids.shape[1]
        P = min(prefix, N)
        watch.total_segments = 1 + (N - P) + max_new_tokens
        out = _hf_call(model, ids[:, :P], None, 0)
        cache, logits = output_cache(out), out.logits[:, -1]
        del out
        watch.segments = 1
        watch.check()
        for t in range(P, N):
            out = _hf_call(model, ids[:, t:t + 1], cache, t)
            cache, logits = output_cache(out), out.logits[:, -1]
            if (t - P) % STOCK_CHECK_EVERY == 0:
                watch.segments = 1 + t - P
                watch.check()
        new = []
        for k in range(max_new_tokens):
            token = logits.argmax(-1, keepdim=True)
            new.append(token)
            if k + 1 < max_new_tokens:
                out = _hf_call(model, token, cache, N + k)
                cache, logits = output_cache(out), out.logits[:, -1]
        return torch.cat(new, 1)


def run_fast_mamba(
    model, inputs, device, watch, max_new_tokens: int, chunk_size: int, backend: str, runners: dict | None = None
) -> torch.Tensor:
    """``StreamRunner(MambaLM(model))`` over ``inputs``; ``runners`` keeps the wrapper and its runner across calls."""
    from models_bench import run_streamed  # models_bench imports this module

    key = ("mamba-lm", id(model), chunk_size, backend)
    lm = None if runners is None else runners.get(key)
    if lm is None:
        lm = MambaLM(model, chunk_size=chunk_size, backend=backend)
        if runners is not None:
            runners[key] = lm
    return run_streamed(lm, inputs, watch, max_new_tokens, chunk_size, runners=runners)


def stock_bytes_estimate_mamba(config: dict, inputs, prefix: int, dtype: torch.dtype) -> int:
    """Bytes the stock prefix call holds at its peak: float32 logits of every prefix position, plus its
    input-dtype logits and the layers' activations (about 6 d_inner-wide tensors per token)."""
    P = min(prefix, inputs.total_tokens)
    e = torch.finfo(dtype).bits // 8
    d_inner = config["expand"] * config["hidden_size"]
    return inputs.B * P * (config["vocab_size"] * (4 + e) + 6 * d_inner * e)
