"""Streaming inference: prefill a token stream of any length in constant memory, then answer greedily."""

from babilong_fast.engine.adapters import (
    ADAPTERS,
    LAZY_ADAPTERS,
    ARMTAdapter,
    MambaAdapter,
    RMTAdapter,
    SegmentAdapter,
    make_adapter,
)
from babilong_fast.engine.stream import GEN_ID, StreamRunner, StreamState, as_chunk

__all__ = [
    "ADAPTERS", "ARMTAdapter", "GEN_ID", "LAZY_ADAPTERS", "MambaAdapter", "RMTAdapter", "SegmentAdapter",
    "StreamRunner", "StreamState", "as_chunk", "make_adapter",
]
