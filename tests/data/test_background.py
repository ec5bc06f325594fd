"""Background sources and the seeded sentence stream: determinism, rules of §1.2, errors, bounded memory."""
from __future__ import annotations

import gzip
import itertools
import tracemalloc
from pathlib import Path

import pytest

from babilong_fast.data.background import background_sentences
from babilong_fast.data.corpora import NOVELS, BundledNovels, HFDataset, TextFolder, TextSource
from babilong_fast.data.tokenizer import get_tokenizer

TOK = get_tokenizer()


def _take(stream, n: int) -> list[list[int]]:
    return list(itertools.islice(stream, n))


def test_bundled_splits_are_disjoint_books() -> None:
    train, test = BundledNovels("train"), BundledNovels("test")
    assert isinstance(train, TextSource)
    names = {p.name for p in train.paths}, {p.name for p in test.paths}
    assert not names[0] & names[1]
    assert len(names[0] | names[1]) == len(NOVELS)
    assert len(test.text(0)) > 100_000
    with pytest.raises(ValueError):
        BundledNovels("validation")


def test_stream_is_seeded() -> None:
    a = _take(background_sentences(seed=5), 50)
    assert a == _take(background_sentences(seed=5), 50)
    assert a != _take(background_sentences(seed=6), 50)


def test_sentences_have_leading_space_and_min_tokens() -> None:
    for ids in _take(background_sentences(BundledNovels("train"), seed=1, min_tokens=12), 300):
        assert len(ids) >= 12
        text = TOK.decode(ids)
        assert text.startswith(" ") and not text.startswith("  ")
        assert TOK.encode(text) == ids


def test_sentences_come_from_the_split_books() -> None:
    test_text = " ".join(" ".join(BundledNovels("test").text(i).split()) for i in range(2))
    for ids in _take(background_sentences(BundledNovels("test"), seed=2), 100):
        assert " ".join(TOK.decode(ids).split()) in test_text


def _folder(tmp_path: Path, sentences: list[str], gz: bool = False) -> Path:
    text = " ".join(sentences)
    if gz:
        with gzip.open(tmp_path / "book.txt.gz", "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored")
    return tmp_path


@pytest.mark.parametrize("gz", [False, True], ids=["txt", "txt.gz"])
def test_text_folder_drops_chunk_edges(tmp_path: Path, gz: bool) -> None:
    sentences = [f"Sentence number {k} is long enough to count as background text here." for k in range(8)]
    source = TextFolder(_folder(tmp_path, sentences, gz))
    assert len(source) == 1
    seen = {TOK.decode(ids)[1:] for ids in _take(background_sentences(source, seed=0), 200)}
    assert seen and seen <= set(sentences[1:-1])


def test_text_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextFolder(tmp_path / "missing")
    (tmp_path / "a.md").write_text("no text files")
    with pytest.raises(ValueError, match="no .txt"):
        TextFolder(tmp_path)


def test_short_sentences_only_raise(tmp_path: Path) -> None:
    source = TextFolder(_folder(tmp_path, ["Too short."] * 50))
    with pytest.raises(ValueError, match="no sentence"):
        next(background_sentences(source, seed=0))


def test_empty_or_non_utf8_files_raise_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    with pytest.raises(ValueError, match="empty or too short"):
        next(background_sentences(TextFolder(tmp_path / "empty"), seed=0))
    (tmp_path / "latin1").mkdir()
    (tmp_path / "latin1" / "book.txt").write_bytes("Caf\xe9 au lait, said the narrator. ".encode("latin-1") * 100)
    with pytest.raises(ValueError, match=r"book.txt' is not UTF-8 text .*re-encode"):
        next(background_sentences(TextFolder(tmp_path / "latin1"), seed=0))


def test_hf_dataset_without_datasets_is_explicit() -> None:
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="network"):
            HFDataset("pg19", "test")
    else:
        pytest.skip("datasets is installed; loading would need the network")


def test_stream_memory_is_bounded() -> None:
    stream = background_sentences(seed=3)
    tracemalloc.start()
    try:
        drawn = 0
        for ids in stream:
            drawn += len(ids)
            if drawn >= 300_000:
                break
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6


def test_book_index_windows_equal_splitting_the_chunk() -> None:
    """The per-book index (used for long windows) gives the sentences that splitting the chunk alone gives."""
    import random

    from babilong_fast.data.background import BookIndex, _inner_sentences

    text = BundledNovels("test").text(1)
    index = BookIndex.build(text, TOK, 10)
    rng = random.Random(0)
    for _ in range(60):
        offset, chars = rng.randrange(len(text)), rng.choice([3000, 30_000, 300_000])
        ids, lengths = index.window(offset, chars)
        want = [e for e in (TOK.encode(" " + s) for s in _inner_sentences(text[offset:offset + chars])) if len(e) >= 10]
        assert lengths.tolist() == [len(e) for e in want]
        assert ids.tolist() == [i for e in want for i in e]


def test_long_and_short_windows_both_replay() -> None:
    """Both ways of cutting a round (index for long windows, the chunk alone for short ones) are seeded."""
    for chars in (2000, 1_000_000):
        a = _take(background_sentences(seed=9, chunk_chars=chars), 40)
        assert a == _take(background_sentences(seed=9, chunk_chars=chars), 40)
        assert all(len(s) >= 10 for s in a)
