"""BabilongGenerator: seeded streams per task, split and length, long-story skipping, and a 1M-token sample
streamed in bounded memory."""
from __future__ import annotations

import time
import tracemalloc

import pytest

from babilong_fast.data.babi import TASKS, generate
from babilong_fast.data.dataset import BabilongGenerator


@pytest.mark.parametrize("task", TASKS)
def test_generator_samples(task: str) -> None:
    samples = BabilongGenerator(task, "1k", split="test", seed=3).take(3)
    babi = generate(task, 20, "test", seed=3)
    for s in samples:
        assert s.task == task and s.num_tokens == 700 == len(s.input_ids())
        assert any(b["facts"] == list(s.facts) and b["answer"] == s.target for b in babi)
        ids = s.input_ids()
        for pos, f in zip(s.fact_positions, s.fact_token_ids(), strict=True):
            assert ids[pos:pos + len(f)] == f


def test_generator_is_deterministic_and_split_aware() -> None:
    a = BabilongGenerator("qa1", "2k", split="train", seed=1).take(2)
    b = BabilongGenerator("qa1", "2k", split="train", seed=1).take(2)
    c = BabilongGenerator("qa1", "2k", split="test", seed=1).take(2)
    assert [s.input_ids() for s in a] == [s.input_ids() for s in b]
    assert a[0].background.name == "austen/train" and c[0].background.name == "austen/test"
    assert a[0].text() != c[0].text()


def test_generator_margin_and_zero_length() -> None:
    s = BabilongGenerator("qa1", "1k", margin=20).take(1)[0]
    assert len(s.input_ids()) == 980
    z = BabilongGenerator("qa3", "0k").take(1)[0]
    assert z.text() == " ".join(z.facts)


def test_generator_skips_long_stories() -> None:
    gen = BabilongGenerator("qa3", 500, split="test", seed=0)
    samples = gen.take(10)
    assert gen.skipped > 0
    assert all(len(s.facts) + 1 <= 200 // 8 and s.num_tokens == 200 for s in samples)


def test_generator_skips_stories_with_too_many_fact_tokens() -> None:
    gen = BabilongGenerator("qa18", 60, margin=20, split="test", seed=0)
    samples = gen.take(60)  # the stream used to end with a ValueError after 31 samples
    assert len(samples) == 60 and gen.skipped > 0 and all(s.num_tokens == 40 for s in samples)


def test_generator_errors() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        BabilongGenerator("qa21", "1k")
    with pytest.raises(ValueError, match="split"):
        BabilongGenerator("qa1", "1k", split="dev")
    with pytest.raises(ValueError, match="margin"):
        BabilongGenerator("qa1", 250)
    with pytest.raises(ValueError, match="margin must be a non-negative int, got -1"):
        BabilongGenerator("qa1", "1k", margin=-1)  # would give 1001-token samples of a 1k length
    with pytest.raises(ValueError, match="unknown length"):
        BabilongGenerator("qa1", "1 k")
    with pytest.raises(ValueError, match="too long"):
        BabilongGenerator("qa3", 330).take(1)


def test_1m_sample_streams_in_bounded_memory() -> None:
    sample = BabilongGenerator("qa2", "1M", split="test", seed=0).take(1)[0]
    fact_ids = sample.fact_token_ids()
    tracemalloc.start()
    try:
        start = time.perf_counter()
        total, first = 0, None
        for chunk in sample.iter_chunks(4096):
            first = first if first is not None else chunk[:8]
            total += len(chunk)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == sample.num_tokens == 999_700
    assert len(sample.fact_positions) == len(fact_ids)
    assert peak < 50e6, f"peak traced memory {peak / 1e6:.1f} MB"
    assert elapsed < 60, f"{total / elapsed:.0f} tokens/s"
