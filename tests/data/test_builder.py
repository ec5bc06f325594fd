"""Sample builder: exact token lengths, 0k, determinism, chunk-size invariance, fact order and positions,
insertion at sentence boundaries, depth distribution, and errors."""
from __future__ import annotations

import hashlib
import statistics
from array import array
from collections.abc import Iterable

import pytest

from babilong_fast.data.babi import generate
from babilong_fast.data.background import background_sentences
from babilong_fast.data.builder import MIN_CHUNK_CHARS, BabilongSample, FactsTooLongError, build_sample
from babilong_fast.data.tokenizer import get_tokenizer

TOK = get_tokenizer()
STORY = generate("qa2", 1, "test", seed=4)[0]
FACTS = STORY["facts"]


def _build(length: str | int, seed: int = 0, **kw) -> BabilongSample:
    return build_sample(FACTS, STORY["question"], STORY["answer"], length, seed=seed, task="qa2", **kw)


def _check_facts(sample: BabilongSample, ids: list[int]) -> None:
    positions = sample.fact_positions
    assert len(positions) == len(sample.facts)
    end = 0
    for fact, fact_ids, pos in zip(sample.facts, sample.fact_token_ids(), positions, strict=True):
        assert pos >= end
        assert ids[pos:pos + len(fact_ids)] == fact_ids
        assert TOK.decode(ids[pos:pos + len(fact_ids)]) == " " + fact
        end = pos + len(fact_ids)


@pytest.mark.parametrize(
    "length, margin, expected",
    [("1k", 300, 700), ("4k", 300, 3700), (3333, 300, 3033), ("1k", 20, 980), ("2k", 20, 1980)],
)
def test_exact_length_and_facts(length: str | int, margin: int, expected: int) -> None:
    sample = _build(length, seed=1, margin=margin)
    ids = sample.input_ids()
    assert sample.num_tokens == len(ids) == expected
    _check_facts(sample, ids)
    text = sample.text()
    assert text == text.strip() and text == TOK.decode(ids).strip()
    end = 0
    for fact in FACTS:  # in story order (a fact may repeat: search on from the previous one)
        end = text.index(fact, end) + len(fact)


def test_zero_length_is_the_facts_alone() -> None:
    for margin in (300, 20):
        sample = _build("0k", margin=margin)
        assert sample.text() == " ".join(FACTS)
        assert sample.num_tokens == len(sample.input_ids()) == sum(len(f) for f in sample.fact_token_ids())
        assert sample.fact_positions[0] == 0


def test_question_keeps_the_released_trailing_space_and_target_has_none() -> None:
    sample = _build("1k")
    assert not STORY["question"].endswith(" ")  # the bAbI generator gives "Where is the football?"
    assert sample.question == STORY["question"] + " " and sample.target == STORY["answer"]
    assert sample.question_ids() == TOK.encode(STORY["question"]) + [220]  # as "Where is Mary? " in the HF data
    assert build_sample(FACTS, "Where is Mary? ", "garden", "1k").question == "Where is Mary? "
    assert TOK.decode(sample.target_ids()) == STORY["answer"]
    assert sample.fact_token_ids()[0] == TOK.encode(" " + FACTS[0])


def test_same_seed_same_input() -> None:
    a, b, c = _build("4k", seed=7), _build("4k", seed=7), _build("4k", seed=8)
    assert a.input_ids() == b.input_ids() and a.fact_positions == b.fact_positions
    assert a.input_ids() != c.input_ids()


def test_chunk_size_invariance() -> None:
    sample = _build("4k", seed=2)
    ids = sample.input_ids()
    for chunk in (1, 7, 512, 4096, 10_000):
        chunks = list(sample.iter_chunks(chunk))
        assert all(len(c) == chunk for c in chunks[:-1]) and 0 < len(chunks[-1]) <= chunk
        assert [i for c in chunks for i in c] == ids
    with pytest.raises(ValueError):
        next(sample.iter_chunks(0))


def _background_boundaries(sample: BabilongSample) -> list[int]:
    """Cumulative background offsets of the sentence boundaries, replayed from the same stream."""
    bounds, done = [0], 0
    stream = background_sentences(
        sample.background, sample.seed, chunk_chars=max(10 * sample.background_budget, MIN_CHUNK_CHARS)
    )
    for sentence in stream:
        done = min(done + len(sentence), sample.background_budget)
        bounds.append(done)
        if done == sample.background_budget:
            return bounds
    raise AssertionError("unreachable")


@pytest.mark.parametrize("seed", range(3))
def test_facts_sit_at_first_boundary_after_their_offset(seed: int) -> None:
    sample = _build("2k", seed=seed)
    bounds = _background_boundaries(sample)
    fact_lens = [len(f) for f in sample.fact_token_ids()]
    for j, (pos, offset) in enumerate(zip(sample.fact_positions, sample._offsets, strict=True)):
        background_offset = pos - sum(fact_lens[:j])
        assert background_offset == min(b for b in bounds if b >= offset)
    ids = sample.input_ids()
    kept = [i for k, i in enumerate(ids)
            if not any(p <= k < p + n for p, n in zip(sample.fact_positions, fact_lens, strict=True))]
    assert len(kept) == sample.background_budget


def test_fact_depth_is_uniform() -> None:
    story = generate("qa4", 1, "test", seed=0)[0]
    depths = []
    for seed in range(150):
        s = build_sample(story["facts"][:1], story["question"], story["answer"], 3000, seed=seed)
        depths.append(s.fact_positions[0] / s.background_budget)
    assert abs(statistics.mean(depths) - 0.5) < 0.08
    quarters = [sum(q / 4 <= d < (q + 1) / 4 for d in depths) for q in range(4)]
    assert min(quarters) >= 20, quarters


def _stream_digest(sample: BabilongSample, chunk: int, positions: Iterable[int] = ()) -> tuple[int, str, list]:
    """Length, SHA-256 and the ids at ``positions`` (16 tokens each) of the streamed input."""
    h, total = hashlib.sha256(), 0
    wanted = {p: [] for p in positions}
    for c in sample.iter_chunks(chunk):
        h.update(array("I", c).tobytes())
        for p, got in wanted.items():
            if total + len(c) > p and len(got) < 16:
                got.extend(c[max(0, p + len(got) - total):][: 16 - len(got)])
        total += len(c)
    windows = [wanted[p] for p in positions]
    return total, h.hexdigest(), windows


def test_128k_streaming() -> None:
    sample = _build("128k", seed=11)
    n1, d1, _ = _stream_digest(sample, 4096)
    assert n1 == sample.num_tokens == 127_700
    fact_ids = sample.fact_token_ids()
    n2, d2, windows = _stream_digest(sample, 1000, sample.fact_positions)
    assert (n2, d2) == (n1, d1)
    for got, want in zip(windows, fact_ids, strict=True):
        assert got[: len(want)] == want


def test_materialising_large_samples_is_refused() -> None:
    with pytest.raises(ValueError, match="iter_chunks"):
        _build("10M").input_ids()


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown length"):
        _build("4kb")
    with pytest.raises(ValueError, match="non-negative"):
        _build(-100)
    with pytest.raises(ValueError, match="margin"):
        _build(300)
    for margin in (-5, 2.5):
        with pytest.raises(ValueError, match="margin must be a non-negative int"):
            _build("1k", margin=margin)
    with pytest.raises(ValueError, match="too small for the facts"):
        _build(310, drop_long_stories=False)
    with pytest.raises(FactsTooLongError):
        _build(310)
    with pytest.raises(ValueError, match="at least one fact"):
        build_sample([], "Where is Mary?", "garden", "1k")


def test_long_story_rule() -> None:
    facts = ["Mary went to the garden."] * 11
    assert build_sample(facts, "Where is Mary?", "garden", 300 + 96).num_tokens == 96
    with pytest.raises(FactsTooLongError):
        build_sample(facts, "Where is Mary?", "garden", 300 + 95)
    assert build_sample(facts, "Where is Mary?", "garden", 300 + 95, drop_long_stories=False).num_tokens == 95
    assert issubclass(FactsTooLongError, ValueError)


def test_too_many_fact_tokens_is_a_story_to_skip() -> None:
    """Few lines but more fact tokens than the budget: skipped like a long story (not a stream-ending error)."""
    facts = ["Mary travelled to the " + "very " * 20 + "big hallway."] * 2
    n = sum(len(get_tokenizer().encode(" " + f)) for f in facts)
    assert 3 <= (n - 1) // 8  # the line rule passes at a budget of n - 1
    with pytest.raises(FactsTooLongError, match="too small for the facts"):
        build_sample(facts, "Where is Mary?", "hallway", 300 + n - 1)
    with pytest.raises(ValueError, match="too small for the facts") as e:
        build_sample(facts, "Where is Mary?", "hallway", 300 + n - 1, drop_long_stories=False)
    assert type(e.value) is ValueError
    assert build_sample(facts, "Where is Mary?", "hallway", 300 + n).num_tokens == n
