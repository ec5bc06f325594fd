"""Explicit recurrent-memory state for RMT and ARMT: plain values passed in and returned, never module attributes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ARMTState:
    """Per-layer associative memory of ARMT after ``segments_seen`` written segments.

    Args:
        A: one ``[B, F, d]`` float32 tensor per layer (``F = 2 * nu * d_mem``).
        z: one ``[B, F]`` float32 tensor per layer.
        segments_seen: segments written so far; 0 means empty memory (no reads, first-segment write rule).
    """

    A: tuple[torch.Tensor, ...]
    z: tuple[torch.Tensor, ...]
    segments_seen: int = 0

    def __post_init__(self):
        object.__setattr__(self, "A", tuple(self.A))
        object.__setattr__(self, "z", tuple(self.z))
        if len(self.A) != len(self.z):
            raise ValueError(f"A and z must have one entry per layer; got {len(self.A)} and {len(self.z)}")
        for i, (a, z) in enumerate(zip(self.A, self.z, strict=True)):
            if a.dim() != 3 or z.dim() != 2 or z.shape != a.shape[:2]:
                raise ValueError(f"layer {i}: A must be [B, F, d] and z [B, F]; got {tuple(a.shape)}, {tuple(z.shape)}")
        if not isinstance(self.segments_seen, int) or self.segments_seen < 0:
            raise ValueError(f"segments_seen must be an integer >= 0, got {self.segments_seen!r}")

    @classmethod
    def zeros(
        cls, num_layers: int, batch_size: int, num_features: int, d_model: int, device: torch.device | str | None = None
    ) -> ARMTState:
        """Empty memory: zeros in float32, ``segments_seen = 0``."""
        f32 = torch.float32  # whatever torch's default dtype is
        A = tuple(torch.zeros(batch_size, num_features, d_model, dtype=f32, device=device) for _ in range(num_layers))
        z = tuple(torch.zeros(batch_size, num_features, dtype=f32, device=device) for _ in range(num_layers))
        return cls(A, z, 0)

    @property
    def batch_size(self) -> int:
        """``B``, the rows of the batch."""
        return self.A[0].shape[0]

    @property
    def num_layers(self) -> int:
        """One ``A`` and ``z`` per GPT-2 block."""
        return len(self.A)

    def detach(self) -> ARMTState:
        """The same values cut from the autograd graph (truncated BPTT, or inference)."""
        return ARMTState(tuple(a.detach() for a in self.A), tuple(z.detach() for z in self.z), self.segments_seen)

    def clone(self) -> ARMTState:
        """A copy whose tensors share no storage with these."""
        return ARMTState(tuple(a.clone() for a in self.A), tuple(z.clone() for z in self.z), self.segments_seen)

    def to(self, device: torch.device | str) -> ARMTState:
        """Move to ``device``; the dtype stays float32."""
        return ARMTState(tuple(a.to(device) for a in self.A), tuple(z.to(device) for z in self.z), self.segments_seen)


@dataclass(frozen=True)
class RMTState:
    """RMT memory after ``segments_seen`` segments.

    Args:
        memory: ``[B, M, d]`` float32: the learned memory at the start, then the post-``ln_f`` write rows.
        segments_seen: segments processed so far.
    """

    memory: torch.Tensor
    segments_seen: int = 0

    def __post_init__(self):
        if self.memory.dim() != 3:
            raise ValueError(f"memory must be [B, M, d], got shape {tuple(self.memory.shape)}")
        if not isinstance(self.segments_seen, int) or self.segments_seen < 0:
            raise ValueError(f"segments_seen must be an integer >= 0, got {self.segments_seen!r}")

    @property
    def batch_size(self) -> int:
        """``B``, the rows of the batch."""
        return self.memory.shape[0]

    def detach(self) -> RMTState:
        """The same values cut from the autograd graph (truncated BPTT, or inference)."""
        return RMTState(self.memory.detach(), self.segments_seen)

    def clone(self) -> RMTState:
        """A copy whose memory shares no storage with this one's."""
        return RMTState(self.memory.clone(), self.segments_seen)

    def to(self, device: torch.device | str) -> RMTState:
        """Move to ``device``; the dtype stays float32."""
        return RMTState(self.memory.to(device), self.segments_seen)
