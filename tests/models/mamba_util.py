"""Small random Hugging Face Mamba models for the Mamba tests (no hub access)."""
from __future__ import annotations

import torch
from transformers import MambaConfig, MambaForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()  # transformers' "falling back to the reference kernel" notes

VOCAB = 100
EOS = 99  # never in the prompts below (ids < 99); generation may produce it


def small_mamba(
    vocab_size: int = VOCAB,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    state_size: int = 8,
    seed: int = 0,
    std: float = 0.5,
    **config,
) -> MambaForCausalLM:
    """A random ``MambaForCausalLM`` in eval mode. Weight matrices are redrawn with ``std`` so that greedy
    decoding varies from token to token (the default init repeats one token), which makes token checks bite."""
    torch.manual_seed(seed)
    cfg = MambaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, state_size=state_size,
        eos_token_id=EOS, pad_token_id=EOS, **config,
    )
    model = MambaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, std)
            elif name.endswith("conv1d.bias") or name.endswith("D"):
                p.normal_(0, 1)
    return model


def prompt(batch: int, length: int, seed: int = 1, vocab_size: int = VOCAB) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, min(vocab_size, EOS), (batch, length), generator=g)


def hf_greedy(model: MambaForCausalLM, ids: torch.Tensor, max_new_tokens: int, eos: int = EOS) -> torch.Tensor:
    """Transformers' greedy ``generate`` (new tokens only), rows finished with ``eos`` padded with it."""
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=eos, pad_token_id=eos,
        )
    return out[:, ids.shape[1]:]
