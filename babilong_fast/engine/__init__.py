"""Streaming inference: prefill a token stream of any length in constant memory, then answer greedily."""

from babilong_fast.engine.adapters import ADAPTERS, ARMTAdapter, RMTAdapter, SegmentAdapter, make_adapter
from babilong_fast.engine.stream import GEN_ID, StreamRunner, StreamState, as_chunk

__all__ = [
    "ADAPTERS", "ARMTAdapter", "GEN_ID", "RMTAdapter", "SegmentAdapter", "StreamRunner", "StreamState", "as_chunk",
    "make_adapter",
]
