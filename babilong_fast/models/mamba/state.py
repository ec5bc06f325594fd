"""Explicit Mamba state: every layer's conv window and SSM state, a plain value passed in and returned."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MambaState:
    """The state of a Mamba-1 LM after ``num_tokens`` tokens.

    Args:
        conv: one ``[B, d_inner, d_conv - 1]`` tensor per layer, in the conv input's dtype: the last
            ``d_conv - 1`` inputs of the layer's causal conv (zeros before the first token).
        ssm: one ``[B, d_inner, d_state]`` float32 tensor per layer: the selective-scan state.
        num_tokens: tokens consumed so far (informational; the maths never reads it).
    """

    conv: tuple[torch.Tensor, ...]
    ssm: tuple[torch.Tensor, ...]
    num_tokens: int = 0

    def __post_init__(self):
        object.__setattr__(self, "conv", tuple(self.conv))
        object.__setattr__(self, "ssm", tuple(self.ssm))
        if len(self.conv) != len(self.ssm) or not self.conv:
            raise ValueError(
                f"conv and ssm must have one entry per layer (at least one); got {len(self.conv)} and {len(self.ssm)}"
            )
        for i, (c, s) in enumerate(zip(self.conv, self.ssm, strict=True)):
            if not isinstance(c, torch.Tensor) or not isinstance(s, torch.Tensor):
                raise TypeError(f"layer {i}: conv and ssm must be tensors, got {type(c).__name__}, {type(s).__name__}")
            if c.dim() != 3 or s.dim() != 3 or c.shape[:2] != s.shape[:2]:
                raise ValueError(
                    f"layer {i}: conv must be [B, d_inner, d_conv - 1] and ssm [B, d_inner, d_state] with the same "
                    f"B and d_inner; got {tuple(c.shape)} and {tuple(s.shape)}"
                )
            if s.dtype != torch.float32:
                raise TypeError(f"layer {i}: the ssm state must be float32, got {s.dtype}")
        if not isinstance(self.num_tokens, int) or self.num_tokens < 0:
            raise ValueError(f"num_tokens must be an integer >= 0, got {self.num_tokens!r}")

    @classmethod
    def zeros(
        cls,
        num_layers: int,
        batch_size: int,
        d_inner: int,
        d_state: int,
        d_conv: int,
        conv_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> MambaState:
        """The state before the first token: all zeros (conv in ``conv_dtype``, ssm in float32)."""
        conv = tuple(
            torch.zeros(batch_size, d_inner, d_conv - 1, dtype=conv_dtype, device=device) for _ in range(num_layers)
        )
        ssm = tuple(torch.zeros(batch_size, d_inner, d_state, device=device) for _ in range(num_layers))
        return cls(conv, ssm, 0)

    @property
    def batch_size(self) -> int:
        """``B``, the rows of the batch."""
        return self.ssm[0].shape[0]

    @property
    def num_layers(self) -> int:
        """One conv and one SSM state per Mamba block."""
        return len(self.ssm)

    def detach(self) -> MambaState:
        """The same values cut from the autograd graph (truncated BPTT, or inference)."""
        return MambaState(tuple(c.detach() for c in self.conv), tuple(s.detach() for s in self.ssm), self.num_tokens)

    def clone(self) -> MambaState:
        """A copy whose tensors share no storage with these."""
        return MambaState(tuple(c.clone() for c in self.conv), tuple(s.clone() for s in self.ssm), self.num_tokens)

    def to(self, device: torch.device | str) -> MambaState:
        """Move to ``device``; dtypes are kept."""
        return MambaState(
            tuple(c.to(device) for c in self.conv), tuple(s.to(device) for s in self.ssm), self.num_tokens
        )
