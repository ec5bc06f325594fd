"""Offline GPT-2 tokenizer from the bundled BPE ranks; uses ``tiktoken`` when importable, else pure Python.

Both backends give identical ids (tests check this). BABILong counts lengths in GPT-2 tokens.
"""
from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

from babilong_fast.data.bpe import PureBPE, load_ranks
from babilong_fast.data.pretokenize import GPT2_PATTERN

EOS_TOKEN = "<|endoftext|>"
EOS_ID = 50256


def ranks_path() -> Path:
    """Path of the bundled ``gpt2.tiktoken`` rank file."""
    return Path(str(resources.files("babilong_fast.data").joinpath("assets", "gpt2.tiktoken")))


class GPT2Tokenizer:
    """GPT-2 byte-level BPE tokenizer that needs no network.

    Args:
        backend: ``"auto"`` (tiktoken if importable, else pure Python), ``"tiktoken"`` or ``"python"``.
        path: a ``.tiktoken`` rank file; defaults to the bundled GPT-2 ranks.

    Examples::

        >>> tok = GPT2Tokenizer()
        >>> tok.encode("Hello world")
        [15496, 995]
        >>> tok.decode([15496, 995, tok.eos_id])
        'Hello world<|endoftext|>'
    """

    eos_id: int = EOS_ID
    eos_token: str = EOS_TOKEN

    def __init__(self, backend: Literal["auto", "tiktoken", "python"] = "auto", path: str | Path | None = None) -> None:
        ranks = load_ranks(path or ranks_path())
        self._pure = PureBPE(ranks)
        self._tiktoken = None
        if backend != "python":
            try:
                import tiktoken
            except ImportError:
                if backend == "tiktoken":
                    raise
            else:
                self._tiktoken = tiktoken.Encoding(
                    name="gpt2_babilong_fast", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                    special_tokens={EOS_TOKEN: EOS_ID},
                )
        self.backend: str = "tiktoken" if self._tiktoken is not None else "python"
        self.vocab_size: int = len(ranks) + 1

    def encode(self, text: str, allow_eos: bool = False) -> list[int]:
        """Token ids of ``text``.

        Args:
            text: input string.
            allow_eos: map literal ``<|endoftext|>`` to :attr:`eos_id`; otherwise it is encoded as plain text.

        Returns:
            list of ids in ``[0, 50256]``.
        """
        if allow_eos and EOS_TOKEN in text:
            ids: list[int] = []
            for k, part in enumerate(text.split(EOS_TOKEN)):
                if k:
                    ids.append(EOS_ID)
                ids.extend(self.encode(part))
            return ids
        if self._tiktoken is not None:
            return self._tiktoken.encode_ordinary(text)
        return self._pure.encode(text)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Raw bytes of ``ids``; :attr:`eos_id` becomes ``b"<|endoftext|>"``."""
        eos = EOS_TOKEN.encode()
        return b"".join(eos if i == EOS_ID else self._pure.by_id[i] for i in ids)

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 (a cut inside a character) follow ``errors``."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def count(self, text: str) -> int:
        """Number of GPT-2 tokens in ``text``."""
        return len(self.encode(text))


@cache
def get_tokenizer(backend: Literal["auto", "tiktoken", "python"] = "auto") -> GPT2Tokenizer:
    """Shared :class:`GPT2Tokenizer` per backend, built once."""
    return GPT2Tokenizer(backend)
