"""Hugging Face's GPT2TokenizerFast, built from our bundled ranks, gives the same ids as our tokenizer."""
from __future__ import annotations

import random

import pytest

from babilong_fast.data.hf_tokenizer import bytes_to_unicode, hf_vocab_merges, write_hf_files
from babilong_fast.data.tokenizer import EOS_ID, get_tokenizer
from tests.data.test_tokenizer import TEXTS, _novel_chunk

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def hf():
    from babilong_fast.data.hf_tokenizer import hf_gpt2_tokenizer

    return hf_gpt2_tokenizer()


def test_vocab_and_merges_shape():
    vocab, merges = hf_vocab_merges()
    assert len(vocab) == 50257 and vocab["<|endoftext|>"] == EOS_ID
    assert len(merges) == 50000  # GPT-2: 256 byte tokens + 50000 merges + end-of-text
    assert merges[0] == ("Ġ", "t")  # GPT-2's first merge
    assert sorted(vocab.values()) == list(range(50257))
    assert len(set(bytes_to_unicode().values())) == 256


@pytest.mark.parametrize("text", TEXTS)
def test_hf_matches_ours(hf, text: str):
    ours = get_tokenizer().encode(text, allow_eos=True)  # HF maps a literal <|endoftext|> to the special id
    assert hf(text, add_special_tokens=False)["input_ids"] == ours
    assert hf.decode(ours) == text


def test_hf_matches_ours_on_novel_and_random_text(hf):
    novel = _novel_chunk(30000)
    assert hf(novel)["input_ids"] == get_tokenizer().encode(novel)
    rng = random.Random(0)
    alphabet = "ab cD\n\t'sé日😀1,.-  "
    for _ in range(50):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
        assert hf(s)["input_ids"] == get_tokenizer().encode(s), repr(s)


def test_end_of_text_is_special(hf):
    assert hf("a<|endoftext|>b")["input_ids"] == get_tokenizer().encode("a<|endoftext|>b", allow_eos=True)
    assert hf.eos_token_id == EOS_ID


def test_written_files_load_in_hf(tmp_path):
    from transformers import GPT2TokenizerFast

    vocab, merges = write_hf_files(tmp_path)
    assert merges.read_text(encoding="utf-8").splitlines()[1] == "Ġ t"
    tok = GPT2TokenizerFast.from_pretrained(str(tmp_path))  # a local folder: no network
    assert tok("Hello world")["input_ids"] == [15496, 995]


def test_cached_hub_gpt2_if_present():
    """Where the user's Hugging Face cache already holds ``gpt2`` (never downloaded here), ids agree with it."""
    from transformers import AutoTokenizer

    try:
        hub = AutoTokenizer.from_pretrained("gpt2", local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means: not cached
        pytest.skip(f"gpt2 tokenizer not in the local Hugging Face cache ({type(e).__name__})")
    for text in [*TEXTS, _novel_chunk(5000)]:
        assert hub(text)["input_ids"] == get_tokenizer().encode(text, allow_eos=True)
