"""BABILong data: offline GPT-2 tokenizer, the official metric, and seeded bAbI qa1-qa5 generators."""
from __future__ import annotations

from babilong_fast.data.metric import TASK_LABELS, compare_answers, exact_match_finetuned
from babilong_fast.data.tokenizer import EOS_ID, GPT2Tokenizer, get_tokenizer

__all__ = ["EOS_ID", "TASK_LABELS", "GPT2Tokenizer", "compare_answers", "exact_match_finetuned", "get_tokenizer"]
