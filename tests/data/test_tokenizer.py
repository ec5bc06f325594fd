"""GPT-2 tokenizer: known ids, pure-Python BPE == tiktoken, pre-tokenizer == GPT-2's regex, round trips."""
from __future__ import annotations

import gzip
from importlib import resources

import pytest

from babilong_fast.data.pretokenize import GPT2_PATTERN, split_gpt2
from babilong_fast.data.tokenizer import EOS_ID, GPT2Tokenizer, get_tokenizer

TEXTS = [
    "Hello world",
    "Mary travelled to the bathroom. Where is Mary? ",
    "I'll   go, you'd've said; it's JOHN'S 'quoted' thing'",
    "don't DON'T we'Re 've 'll 'd 'm 's 't",
    "numbers 1234567 3.14159 -42 1,000,000 2nd 10M",
    "tabs\tand\t\tnewlines\n\n\nend \n x  \n",
    "trailing spaces    ",
    "   leading spaces",
    "unicode: café naïve Zoë — “quotes” … ½ ² Ⅻ ٣ 日本語テキスト 한국어 ",
    "emoji 😀👍🏽 and ZWJ 👨‍👩‍👧 sequences",
    "nbsp\u00a0here\u2003em space\u3000ideographic",
    "mixed\r\nline\rendings\x0b\x0c",
    "<|endoftext|> stays text",
    "punctuation!!! ??? ... --- *** ((())) [[x]]",
    "",
    " ",
    "\n",
]


@pytest.fixture(scope="module")
def pure() -> GPT2Tokenizer:
    return GPT2Tokenizer("python")


def _novel_chunk(n: int = 20000) -> str:
    path = resources.files("babilong_fast.data").joinpath("assets", "background", "persuasion.txt.gz")
    with gzip.open(str(path), "rt", encoding="utf-8") as f:
        return f.read(n)


def test_known_ids(pure: GPT2Tokenizer):
    assert pure.encode("Hello world") == [15496, 995]
    assert get_tokenizer().encode("Hello world") == [15496, 995]
    assert pure.eos_id == EOS_ID == 50256
    assert pure.vocab_size == 50257


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_round_trip(pure: GPT2Tokenizer, text: str):
    ids = pure.encode(text)
    assert pure.decode(ids) == text
    assert pure.decode_bytes(ids) == text.encode("utf-8")
    assert pure.count(text) == len(ids)
    assert all(0 <= i < EOS_ID for i in ids)


def test_eos_handling(pure: GPT2Tokenizer):
    assert EOS_ID not in pure.encode("a<|endoftext|>b")
    assert pure.encode("a<|endoftext|>b", allow_eos=True) == pure.encode("a") + [EOS_ID] + pure.encode("b")
    assert pure.decode([15496, EOS_ID]) == "Hello<|endoftext|>"


def test_partial_utf8_decodes_with_replacement(pure: GPT2Tokenizer):
    ids = pure.encode("日")
    assert len(ids) > 1
    assert "\ufffd" in pure.decode(ids[:1])


def test_get_tokenizer_is_cached():
    assert get_tokenizer() is get_tokenizer()


def test_pretokenizer_matches_gpt2_regex():
    regex = pytest.importorskip("regex")
    pattern = regex.compile(GPT2_PATTERN)
    for text in [*TEXTS, _novel_chunk()]:
        assert split_gpt2(text) == pattern.findall(text)


def test_pure_matches_tiktoken(pure: GPT2Tokenizer):
    pytest.importorskip("tiktoken")
    fast = GPT2Tokenizer("tiktoken")
    assert fast.backend == "tiktoken" and pure.backend == "python"
    for text in [*TEXTS, _novel_chunk()]:
        assert pure.encode(text) == fast.encode(text)
        assert fast.decode(fast.encode(text)) == text


def test_pure_matches_tiktoken_on_random_text(pure: GPT2Tokenizer):
    pytest.importorskip("tiktoken")
    import random

    fast = GPT2Tokenizer("tiktoken")
    alphabet = "ab Z9'_-\n\t  .,!é日😀\u00a0sltvedrm"
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40)))
        assert pure.encode(text) == fast.encode(text), repr(text)
