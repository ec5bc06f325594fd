"""BABILong data: offline GPT-2 tokenizer (also as a Hugging Face tokenizer), the official metric, seeded bAbI
qa1-qa20 generators, background corpora and the streaming BABILong sample builder."""
from __future__ import annotations

from babilong_fast.data.background import background_sentences
from babilong_fast.data.builder import BabilongSample, FactsTooLongError, build_sample
from babilong_fast.data.corpora import BundledNovels, HFDataset, TextFolder, TextSource
from babilong_fast.data.dataset import BabilongGenerator
from babilong_fast.data.hf_tokenizer import hf_gpt2_tokenizer
from babilong_fast.data.lengths import FINETUNE_MARGIN, PROMPT_MARGIN, input_budget, parse_length
from babilong_fast.data.metric import TASK_LABELS, compare_answers, exact_match_finetuned
from babilong_fast.data.official import OfficialSample, from_hub, load_official, write_official
from babilong_fast.data.tokenizer import EOS_ID, GPT2Tokenizer, get_tokenizer

__all__ = [
    "EOS_ID", "FINETUNE_MARGIN", "PROMPT_MARGIN", "TASK_LABELS", "BabilongGenerator", "BabilongSample", "BundledNovels",
    "FactsTooLongError", "GPT2Tokenizer", "HFDataset", "TextFolder", "TextSource", "background_sentences",
    "build_sample", "compare_answers", "exact_match_finetuned", "get_tokenizer", "hf_gpt2_tokenizer", "input_budget",
    "parse_length",
    "OfficialSample", "from_hub", "load_official", "write_official",
]
