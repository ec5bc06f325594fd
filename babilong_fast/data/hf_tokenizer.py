"""A Hugging Face ``GPT2TokenizerFast`` built offline from the bundled BPE ranks.

The ranks file (tiktoken format) holds the same vocabulary as Hugging Face's ``gpt2`` tokenizer; this
module writes it in Hugging Face's layout (``vocab.json`` + ``merges.txt``) so ``transformers`` code that
wants a tokenizer object works without the hub, and so tests can check that both give identical ids.
"""
from __future__ import annotations

import inspect
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from babilong_fast.data.bpe import load_ranks
from babilong_fast.data.tokenizer import EOS_ID, EOS_TOKEN, ranks_path

if TYPE_CHECKING:  # transformers is optional: imported when called
    from transformers import GPT2TokenizerFast


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (used in ``vocab.json`` and ``merges.txt``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def _split_in_two(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The merge that created ``token``: BPE on its bytes using only lower ranks stops at two parts."""
    limit = ranks[token]
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, best_rank = -1, limit
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise ValueError(f"rank file is not a BPE vocabulary: token {token!r} has no two-part merge")
    return parts[0], parts[1]


def hf_vocab_merges(ranks_file: str | os.PathLike | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's ``vocab`` (token text -> id, end-of-text included) and ``merges`` (in rank order) from ranks.

    Args:
        ranks_file: ``.tiktoken`` ranks; default the bundled GPT-2 ranks.
    """
    ranks = load_ranks(ranks_file or ranks_path())
    enc = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(enc[x] for x in b)

    vocab = {text(tok): rank for tok, rank in ranks.items()}
    vocab[EOS_TOKEN] = EOS_ID
    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    merges = [tuple(map(text, _split_in_two(tok, ranks))) for tok, _ in by_rank if len(tok) > 1]
    return vocab, merges  # type: ignore[return-value]


def write_hf_files(out_dir: str | os.PathLike, ranks_file: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` (Hugging Face's GPT-2 layout) from a tiktoken rank file.

    Args:
        out_dir: folder to write into (created if missing).
        ranks_file: ``.tiktoken`` ranks; default the bundled GPT-2 ranks.

    Returns:
        ``(vocab_path, merges_path)``.
    """
    vocab, merges = hf_vocab_merges(ranks_file)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = out / "vocab.json", out / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_path.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab_path, merges_path


def hf_gpt2_tokenizer() -> GPT2TokenizerFast:
    """``transformers.GPT2TokenizerFast`` for GPT-2 built from the bundled ranks (no network).

    Works with transformers 4.x (vocab/merges files) and 5.x (vocab/merges given directly).

    Raises:
        ImportError: ``transformers`` (with ``tokenizers``) is not installed.
    """
    from transformers import GPT2TokenizerFast

    special = {"eos_token": EOS_TOKEN, "bos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "model_max_length": 1024}
    if "vocab" in inspect.signature(GPT2TokenizerFast.__init__).parameters:  # transformers >= 5
        vocab, merges = hf_vocab_merges()
        return GPT2TokenizerFast(vocab=vocab, merges=merges, **special)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_path, merges_path = write_hf_files(tmp)
        return GPT2TokenizerFast(vocab_file=str(vocab_path), merges_file=str(merges_path), **special)
