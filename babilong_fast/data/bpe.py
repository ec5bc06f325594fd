"""Pure-Python byte-level BPE over tiktoken-format ranks (the fallback when ``tiktoken`` is missing)."""
from __future__ import annotations

import base64
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from babilong_fast.data.pretokenize import split_gpt2


def load_ranks(path: str | Path) -> dict[bytes, int]:
    """Read a ``.tiktoken`` file: one ``<base64 token> <rank>`` pair per line."""
    ranks: dict[bytes, int] = {}
    for line in Path(path).read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


class PureBPE:
    """Byte-level BPE: the lowest-ranked adjacent pair is merged until no pair is in the vocabulary.

    Args:
        ranks: token bytes -> id; every single byte must be present.
        cache_size: entries of the per-pre-token LRU cache.
    """

    def __init__(self, ranks: dict[bytes, int], cache_size: int = 1 << 16) -> None:
        self.ranks = ranks
        self.by_id = {i: b for b, i in ranks.items()}
        self._encode_piece = lru_cache(maxsize=cache_size)(self._bpe)

    def _bpe(self, piece: bytes) -> tuple[int, ...]:
        ranks = self.ranks
        if piece in ranks:
            return (ranks[piece],)
        parts = [piece[i : i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            best, best_rank = -1, None
            for i in range(len(parts) - 1):
                rank = ranks.get(parts[i] + parts[i + 1])
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = i, rank
            if best_rank is None:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        return tuple(ranks[p] for p in parts)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, with no special tokens."""
        ids: list[int] = []
        for piece in split_gpt2(text):
            ids.extend(self._encode_piece(piece.encode("utf-8")))
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenated bytes of ``ids`` (all must be ordinary, non-special ids)."""
        return b"".join(self.by_id[i] for i in ids)
