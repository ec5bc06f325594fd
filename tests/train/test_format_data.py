"""Fine-tuning examples, batches and the curriculum's draws; RecurrentLM.forward's sparse logits and truncated BPTT."""
from __future__ import annotations

import collections

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from babilong_fast.data.tokenizer import EOS_ID, get_tokenizer
from babilong_fast.engine.stream import GEN_ID
from babilong_fast.models import ARMT, RMT
from babilong_fast.train import GeneratedData, NoSamplesError, TrainConfig, check_stages, collate, format_example
from babilong_fast.train.data import draw_segments
from tests.helpers import assert_close


def test_format_example_layout_and_mask():
    ex = format_example([5, 6, 7], [8, 9], [10, 11], segments=2)
    assert ex.input_ids == (5, 6, 7, 8, 9, GEN_ID, 10, 11, EOS_ID)
    # scored predictions: GEN -> 10, 10 -> 11, 11 -> EOS
    assert [ex.input_ids[t + 1] for t, m in enumerate(ex.labels_mask) if m] == [10, 11, EOS_ID]
    assert ex.num_scored == 3 and ex.segments == 2
    with pytest.raises(ValueError, match="answer"):
        format_example([1], [2], [])


def test_collate_pads_and_never_scores_padding():
    a, b = format_example([1, 2, 3, 4], [5], [6]), format_example([1], [5], [6, 7])
    batch = collate([a, b])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].tolist() == [[1] * 8, [1] * 6 + [0, 0]]
    assert batch["input_ids"][1, 6:].tolist() == [EOS_ID, EOS_ID]
    lm = batch["labels_mask"]
    assert lm[0].tolist() == list(a.labels_mask) and lm[1, 6:].sum() == 0
    assert int(lm[:, :-1].sum()) == a.num_scored + b.num_scored


def test_stages_must_increase():
    assert check_stages([1, 2, 4]) == [1, 2, 4]
    for bad in ([2, 1], [1, 1], [], [1, 0], [-1, 1], "1,2"):
        with pytest.raises(ValueError):
            check_stages(bad)
    with pytest.raises(ValueError, match="strictly increasing"):
        check_stages([1, 4, 2])


def test_curriculum_draws_uniform_and_fit():
    counts = collections.Counter(draw_segments(0, 4, k) for k in range(4000))
    assert set(counts) == {1, 2, 3, 4} and min(counts.values()) > 850
    assert [draw_segments(3, 4, k) for k in range(50)] == [draw_segments(3, 4, k) for k in range(50)]
    data = GeneratedData("qa1", 64, seed=0)
    tok = get_tokenizer()
    for k in range(12):
        ex = data.get(3, k)
        n = draw_segments(0, 3, k)
        assert ex.segments == n
        assert n * 64 - 20 < len(ex.input_ids) <= n * 64  # context = n*64 - 20 tokens, then question..EOS
        answer = [ex.input_ids[t + 1] for t, m in enumerate(ex.labels_mask) if m][:-1]
        assert tok.decode(answer) in {"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"}
    assert data.get(3, 5) == GeneratedData("qa1", 64, seed=0).get(3, 5)  # a pure function of the index


def test_task_with_no_samples():
    with pytest.raises(NoSamplesError, match="no sample that fits 1 segment"):
        GeneratedData("qa3", 24, seed=0).get(1, 0)


def _models():
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=97, resid_pdrop=0, embd_pdrop=0,
                     attn_pdrop=0)
    armt = ARMT(GPT2LMHeadModel(cfg), num_mem_tokens=3, d_mem=4, segment_size=16)
    for layer in armt.layers:  # W_v starts at zero (the reference), which would make every write zero
        torch.nn.init.normal_(layer.W_v.weight, std=0.1)
    yield "armt", armt
    yield "rmt", RMT(GPT2LMHeadModel(cfg), num_mem_tokens=3, segment_size=16)


@pytest.mark.parametrize("kind,model", list(_models()), ids=["armt", "rmt"])
def test_sparse_logits_same_loss_and_grads(kind, model):
    ids = torch.randint(0, 97, (3, 45))
    attn = torch.ones_like(ids)
    attn[1, 40:] = 0
    lm = torch.zeros_like(ids, dtype=torch.bool)
    lm[0, 40:44] = lm[1, 20:25] = lm[2, 10:13] = True
    full = model(ids, attn, lm)
    g_full = torch.autograd.grad(full["loss"], list(model.parameters()), allow_unused=True)
    sparse = model(ids, attn, lm, sparse_logits=True)
    g_sparse = torch.autograd.grad(sparse["loss"], list(model.parameters()), allow_unused=True)
    assert sparse["logits"].shape == (int(lm[:, :-1].sum()), 97)
    assert_close("loss", full["loss"], sparse["loss"], 1e-6)
    assert_close("logits", full["logits"][:, :-1][lm[:, :-1]], sparse["logits"], 1e-6)
    for a, b in zip(g_full, g_sparse, strict=True):
        if a is not None:
            assert_close("grad", a, b, 1e-5)
    with pytest.raises(ValueError, match="needs labels_mask"):
        model(ids, sparse_logits=True)


@pytest.mark.parametrize("kind,model", list(_models()), ids=["armt", "rmt"])
def test_truncated_bptt_same_loss_cut_gradient(kind, model):
    ids = torch.randint(0, 97, (2, 40))  # 3 segments of 16
    lm = torch.zeros_like(ids, dtype=torch.bool)
    lm[:, 35:39] = True  # scored only in the last segment
    full = model(ids, labels_mask=lm)
    trunc = model(ids, labels_mask=lm, detach_every=1)
    assert_close("loss", full["loss"], trunc["loss"], 1e-6)
    # the initial memory only reaches the last segment through the state: cut by detach_every=1
    g_full = torch.autograd.grad(full["loss"], model.memory, allow_unused=True)[0]
    assert g_full is not None and g_full.abs().sum() > 0
    g = torch.autograd.grad(trunc["loss"], model.memory, allow_unused=True)[0]
    assert g is None or g.abs().sum() == 0
    # detaching every 2 segments keeps the path from segment 2 into segment 3
    two = model(ids, labels_mask=lm, detach_every=2)
    assert_close("loss", full["loss"], two["loss"], 1e-6)
    with pytest.raises(ValueError, match="detach_every"):
        model(ids, labels_mask=lm, detach_every=0)


def test_official_files_as_training_data(tmp_path):
    from babilong_fast.data.dataset import BabilongGenerator
    from babilong_fast.data.official import write_official
    from babilong_fast.train import OfficialData

    for n in (1, 2):
        write_official(BabilongGenerator("qa1", 64 * n, split="train", margin=20).take(4), tmp_path, 64 * n, "qa1")
    data = OfficialData(str(tmp_path), "qa1", 64, seed=0)
    tok = get_tokenizer()
    for k in range(8):
        ex = data.get(2, k)
        assert len(ex.input_ids) <= ex.segments * 64
        answer = [ex.input_ids[t + 1] for t, m in enumerate(ex.labels_mask) if m][:-1]
        assert tok.decode(answer) in {"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"}
    k = next(k for k in range(100) if draw_segments(0, 3, k) == 3)
    assert data.length_for(3) == "128" and len(data.get(3, k).input_ids) <= 3 * 64  # no 192 file: the next below
    with pytest.raises(NoSamplesError, match="0k or below"):
        data.get(0, 0)  # the facts alone need a 0k file
    with pytest.raises(NoSamplesError, match="has 64, 128"):
        OfficialData(str(tmp_path), "qa1", 32, seed=0).get(1, 0)  # nothing at 32 tokens or below


def test_official_records_each_pass_in_its_own_order(tmp_path):
    """Each pass over a file's records reads every record once, in an order of its own per stage and pass (stage 2
    no longer re-reads stage 1's records in stage 1's order)."""
    from babilong_fast.data.dataset import BabilongGenerator
    from babilong_fast.data.official import write_official
    from babilong_fast.train import OfficialData

    write_official(BabilongGenerator("qa1", 64, split="train", margin=20).take(8), tmp_path, 64, "qa1")
    data, tok = OfficialData(str(tmp_path), "qa1", 64, seed=0), get_tokenizer()
    records = {tok.decode(ex.input_ids) for ex in (data._example(1, j) for j in range(8))}
    assert len(records) == 8
    passes = {(stage, p): [tok.decode(data.get(stage, k).input_ids) for k in range(8 * p, 8 * p + 8)]
              for stage in (1, 2) for p in (0, 1)}  # stage 2 draws 1 or 2 segments: both read the 64 file
    assert all(sorted(order) == sorted(records) for order in passes.values())
    assert len({tuple(order) for order in passes.values()}) == 4


def test_a_stage_no_file_serves_fails_before_training(tmp_path):
    """The 192-token file (no margin) cannot serve 3 segments of 64 with question and answer (stage 3 of the
    curriculum): refused before any step, not at the first draw of 3 segments."""
    from babilong_fast.data.dataset import BabilongGenerator
    from babilong_fast.data.official import write_official
    from babilong_fast.train import train
    from tests.train.common import tiny_config

    for n, margin in ((1, 20), (2, 20), (3, 0)):
        write_official(BabilongGenerator("qa1", 64 * n, split="train", margin=margin).take(4), tmp_path, 64 * n, "qa1")
    cfg = tiny_config(stages=[1, 3], train_data=str(tmp_path), pool_size=None)
    with pytest.raises(NoSamplesError, match="fits 3 segment"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "log.csv").exists()


def test_official_files_for_512_token_segments(tmp_path):
    """The presets' 512-token segments read the official 0k/1k/2k files (n * 512 has no file of its own), and
    stage 0 keeps its facts: every record fits whole, nothing is cut."""
    from babilong_fast.data.dataset import BabilongGenerator
    from babilong_fast.data.official import write_official
    from babilong_fast.train import OfficialData

    for length in ("0k", "1k", "2k"):
        write_official(BabilongGenerator("qa1", length, split="test", seed=2).take(3), tmp_path, length, "qa1")
    data = OfficialData(str(tmp_path), "qa1", 512, seed=0)
    assert [data.length_for(n) for n in (0, 1, 2, 3, 4, 8)] == ["0k", "0k", "1k", "1k", "2k", "2k"]
    tok = get_tokenizer()
    for stage in (0, 4):
        for k in range(6):
            ex = data.get(stage, k)
            text = tok.decode(ex.input_ids)
            assert len(ex.input_ids) <= max(ex.segments, 1) * 512 and "Where is" in text
            assert text.index("Where is") > 20  # facts (and background) before the question


def test_stage_zero_is_the_facts_alone():
    assert check_stages([0, 1, 2]) == [0, 1, 2]
    with pytest.raises(ValueError, match="0 only first"):
        check_stages([1, 0])
    data = GeneratedData("qa1", 64, seed=0)
    tok = get_tokenizer()
    for k in range(3):  # stories short enough for one segment (a longer one is redrawn: the draw's next attempt)
        ex = data.get(0, k)
        assert ex.segments == 0
        text = tok.decode(ex.input_ids)
        tried = [b for a in range(20) for b in data.samples(GeneratedData.draw_key(0, k, None), a)]
        story = next(s for s in tried if text.startswith(" " + " ".join(s["facts"]) + s["question"]))
        n_facts = sum(len(tok.encode(" " + f)) for f in story["facts"])
        question = tok.encode(story["question"] + " ")  # the question keeps the released data's trailing space
        assert len(ex.input_ids) == n_facts + len(question) + 1 + ex.num_scored


def test_max_facts_keeps_only_short_stories():
    short, full = GeneratedData("qa1", 64, seed=0, max_facts=2), GeneratedData("qa1", 64, seed=0)
    tok = get_tokenizer()
    n_facts = [tok.decode(short.get(0, k).input_ids).count(".") for k in range(20)]  # stage 0: facts alone
    assert n_facts == [2] * 20
    assert max(tok.decode(full.get(0, k).input_ids).count(".") for k in range(20)) > 2
    kept = [b for k in range(10) for b in short.samples(f"0/{k}")]
    every = [b for k in range(10) for b in full.samples(f"0/{k}")]
    assert kept == [b for b in every if len(b["facts"]) <= 2] and len(kept) < len(every)  # a filter, same stories
    with pytest.raises(NoSamplesError, match="at most 1 facts"):
        GeneratedData("qa1", 64, seed=0, max_facts=1).get(0, 0)
    with pytest.raises(ValueError, match="max_facts"):
        TrainConfig(max_facts=0).check()


@pytest.mark.parametrize("pool_size", [None, 2000], ids=["fresh", "pool"])
def test_draws_do_not_take_each_others_samples(pool_size):
    """A story with no sample that fits is replaced by the draw's next story, not by the next draw's (which made
    239 of 400 tiny-preset draws copies of the one before). Stage 0 (facts alone, no background): the text is the
    sample, and a qa1 story's 8- and 10-fact samples do not fit 64 tokens."""
    data = GeneratedData("qa1", 64, seed=0, pool_size=pool_size)
    texts = [data.get(0, k).input_ids for k in range(120)]
    assert len(set(texts)) >= 118  # 2-fact samples can coincide by chance


def test_stages_draw_other_stories():
    """Stage n's k-th draw is not stage 1's k-th story again with more background (stage 2 then opened on
    examples it had just trained on); a pool, by design, does reuse its entries."""
    tok = get_tokenizer()

    def question_and_answer(data, stage, k):
        text = tok.decode(data.get(stage, k).input_ids)
        return text[text.rindex("Where is"):]  # the question, GEN, the answer and EOS

    fresh, pool = GeneratedData("qa2", 64, seed=0), GeneratedData("qa2", 64, seed=0, pool_size=3)
    same = sum(question_and_answer(fresh, 1, k) == question_and_answer(fresh, 2, k) for k in range(30))
    assert same < 10  # qa2 has 6 places and few people: some questions and answers coincide by chance
    one_segment = [k for k in range(10) if draw_segments(0, 2, k) == 1]  # stage 1 draws 1 segment only
    assert one_segment and all(pool.get(1, k) == pool.get(2, k) for k in one_segment)
