"""BABILong sample streaming: generation rate and peak RSS for long samples, on one CPU core.

    python benchmarks/data_throughput.py                         # qa1 at 1M and 10M tokens
    python benchmarks/data_throughput.py --lengths 1M,10M,50M --task qa2 --json out.json

For each length one sample is planned (``BabilongGenerator(...).take(1)``) and streamed end to end with
``iter_chunks(4096)`` (``list[int]`` chunks, as a model runner gets them). Each length is streamed twice:
**cold** is the first stream of the process for that length (it includes building the per-book sentence
index of the books it draws), **warm** the second. Peak memory is the process's peak RSS during the stream
(VmHWM, reset before each stream, or sampled every 5 ms where the kernel cannot reset it); the process is
pinned to one core. The RSS of the longest run against the shortest tells whether memory grows with length.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

from babilong_fast import __version__  # noqa: E402
from babilong_fast.data import BabilongGenerator  # noqa: E402
from babilong_fast.data.babi import ALL_TASKS  # noqa: E402
from babilong_fast.data.lengths import length_name  # noqa: E402
from bench_utils import environment  # noqa: E402
from models_bench import PeakMemory, parse_lengths  # noqa: E402


def stream(sample, chunk: int) -> tuple[int, float, int, int]:
    """(tokens, seconds, peak RSS bytes, RSS at start) of one full pass over ``sample``."""
    with PeakMemory(torch.device("cpu")) as mem:
        t0 = time.perf_counter()
        n = 0
        for c in sample.iter_chunks(chunk):
            n += len(c)
        secs = time.perf_counter() - t0
    return n, secs, mem.peak, mem.base


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="1M,10M", help="comma list (k = 1000, M = 1e6); default 1M,10M")
    p.add_argument("--task", default="qa1", help="qa1 .. qa20 (default qa1)")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--chunk", type=int, default=4096, help="tokens per chunk (default 4096)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if args.chunk < 1:
        p.error(f"--chunk must be a positive number of tokens, got {args.chunk}")
    if args.task not in ALL_TASKS:
        p.error(f"unknown --task {args.task!r}; accepted: {', '.join(ALL_TASKS)}")
    try:
        lengths = parse_lengths(args.lengths)
    except ValueError as e:
        p.error(f"--lengths: {e}")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    rows = []
    print(f"{'length':>7}{'pass':>6}{'tokens':>12}{'plan s':>8}{'stream s':>10}{'M tokens/s':>12}{'peak RSS':>11}"
          f"{'above start':>13}")
    for length in lengths:
        t0 = time.perf_counter()
        sample = BabilongGenerator(args.task, length, split=args.split, seed=args.seed).take(1)[0]
        plan_s = time.perf_counter() - t0
        for phase in ("cold", "warm"):
            n, secs, peak, base = stream(sample, args.chunk)
            if n != sample.num_tokens:
                raise RuntimeError(f"streamed {n} tokens, the sample has {sample.num_tokens}")
            row = {"length": length, "length_name": length_name(length), "pass": phase, "tokens": n,
                   "plan_s": round(plan_s, 4), "stream_s": round(secs, 4), "tokens_per_s": n / secs,
                   "peak_rss_bytes": peak, "start_rss_bytes": base}
            rows.append(row)
            print(f"{row['length_name']:>7}{phase:>6}{n:>12,}{plan_s:>8.2f}{secs:>10.2f}{n / secs / 1e6:>12.2f}"
                  f"{peak / 2**20:>9.0f}MiB{(peak - base) / 2**20:>10.0f}MiB")
    warm = [r for r in rows if r["pass"] == "warm"]
    if len(warm) > 1:
        ratio = warm[-1]["peak_rss_bytes"] / warm[0]["peak_rss_bytes"]
        print(f"peak RSS {warm[-1]['length_name']} / {warm[0]['length_name']} (warm): {ratio:.3f}")
    if args.json:
        doc = {"tool": f"babilong_fast {__version__}", "argv": sys.argv[1:] if argv is None else list(argv),
               "python": platform.python_version(), "machine": platform.machine(), "environment": environment("cpu"),
               "task": args.task, "split": args.split, "chunk": args.chunk, "cores": 1, "rows": rows}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
