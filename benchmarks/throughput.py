"""babilong_fast throughput: the models (RMT, ARMT, Mamba; stock vs fast) over input lengths, and ops per backend.

    python benchmarks/throughput.py                      # models, default sizes for this machine
    python benchmarks/throughput.py --lengths 16k,1M --batch 1,8 --dtype bfloat16 --out results/
    python benchmarks/throughput.py --suite ops          # assoc_read per backend (was the default)
    python benchmarks/throughput.py --shape 8,522,768,64 --dtype float32,bfloat16 --json out.json   # ops

Models suite (default). RMT, ARMT and Mamba with random weights, each in two modes on the same input (``context
‖ question ‖ GEN`` then 10 greedy tokens): **stock**, the public implementations' way (RMT/ARMT: a Python loop
of full forwards with full-vocabulary logits and all hidden states kept for every segment, then the answer,
``models_bench.STOCK_EMULATION``; Mamba: Hugging Face ``MambaForCausalLM``, one call on a prefix then one token
per call with its cache, ``mamba_bench.STOCK_DESCRIPTION``), and **fast**, babilong_fast's ``StreamRunner``.
Defaults: on a CPU a tiny GPT-2 (2 layers, d 128, real vocabulary, segment 128) and a tiny Mamba (2 layers, d
128, chunk 2048, stock prefix 4096) at 1k, 4k, 16k tokens, batch 1 (a few minutes on 2 cores); on a GPU GPT-2
small (12 layers, d 768, segment 512) and Mamba-130m's shape (24 layers, d 768, chunk 8192, stock prefix 300k as
the public eval script) at 16k, 128k, 1M, 10M tokens, batch 1 and 8 (``--lengths ...,50M`` for more). Each row:
a short warm-up run per model/mode/batch (the fast mode keeps one ``StreamRunner``, with its CUDA graphs, across its
runs, as an evaluation over many samples does); at each length a first run under ``--long-s`` is a warm-up too
(reported as ``warm_run_s``, not timed), then up to ``--repeats`` timed runs (a repeat only while a run stays
under ``--long-s``; a first run longer than that is the only one, marked ``cold``), median seconds, synchronised
on a GPU; tokens/s = batch x input tokens / seconds; peak
memory = device memory on a GPU (``max_memory_allocated``), peak RSS on a CPU. A run past its wall-clock budget
(``--budget-s`` for stock, ``--fast-budget-s`` for fast) is aborted and reported as skipped, never extrapolated,
and longer lengths of that model/mode/batch are then skipped too; so is a length predicted to take over twice
its budget (linear in tokens through the last two shorter lengths, or for stock through the one shorter length;
not run, no time reported); a GPU run that runs out of memory is reported as failed the same way. Writes a table
with fast/stock ratios, a JSON file (environment, configs, every row) and a PNG plot (with matplotlib) into
``--out`` (default ``benchmarks/results`` on a GPU, a fresh temporary folder on a CPU so that a local run leaves
the repository clean).

Ops suite (``--suite ops``; chosen automatically when ``--shape``, ``--nu`` or ``--sweep`` is given). For each
backend that can run here: median time per call, tokens/s and, on a GPU, the fraction of the roofline (the
larger of bytes / measured copy bandwidth and FLOPs / measured matmul rate of the unit the kernel uses).
Each backend's output is first checked against a float64 reference; a row whose check fails is reported
as failed and never timed.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import babilong_fast  # noqa: E402
import mamba_bench  # noqa: E402
from babilong_fast.ops import assoc_read, assoc_read_ref  # noqa: E402
from bench_utils import (  # noqa: E402
    environment,
    measure_ceilings,
    time_cpu,
    time_cuda_eager,
    time_cuda_graph,
    write_json,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RTOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
CPU_DEFAULT, GPU_DEFAULT = "2,128,256,64", "8,522,768,64"


def assoc_read_cost(B: int, T: int, d: int, n: int, nu: int, dtype: torch.dtype) -> tuple[float, float]:
    """(FLOPs, fewest bytes) of one fused read: h read + out written in h's dtype, A, z, w_q read once, q round trip."""
    F = 2 * nu * n
    e = torch.finfo(dtype).bits // 8
    flops = 2.0 * B * T * d * n + 2.0 * B * T * F * (d + 1) + 3.0 * B * T * d
    bytes_ = 2.0 * B * T * d * e + 4.0 * B * F * (d + 1) + 4.0 * n * d + 2 * 4.0 * B * T * n
    return flops, bytes_


def unit_for(backend: str, dtype: torch.dtype) -> str:
    """Which matmul unit a backend's inner product runs on (sets the arithmetic ceiling)."""
    if backend == "triton" and dtype != torch.float32:
        return "tf32_TFLOPs"
    return "fp32_TFLOPs"


def bench_assoc_read(shape, nu, dtype, backends, device, repeats, ceilings) -> list[dict]:
    B, T, d, n = shape
    F = 2 * nu * n
    n_sets = 4 if device.type == "cuda" else 1  # rotate inputs so the GPU's L2 cannot hold them all
    sets = []
    for _ in range(n_sets):
        h = torch.randn(B, T, d, device=device).to(dtype)
        w_q = torch.randn(n, d, device=device) / d**0.5
        A, z = torch.randn(B, F, d, device=device), torch.rand(B, F, device=device) + 0.05
        sets.append((h, w_q, A, z))
    h, w_q, A, z = sets[0]
    ref = assoc_read_ref(h.double(), w_q.double(), A.double(), z.double(), nu)
    flops, bytes_ = assoc_read_cost(B, T, d, n, nu, dtype)
    rows = []
    for backend in backends:
        row = {"op": "assoc_read", "backend": backend, "B": B, "T": T, "d": d, "d_mem": n, "nu": nu,
               "dtype": str(dtype).replace("torch.", ""), "flops": flops, "bytes": bytes_}
        status = babilong_fast.backends()[backend]
        if not status.available or (device.type == "cpu" and backend != "torch"):
            row["skipped"] = status.reason if not status.available else "CPU timings are only meaningful for torch"
            rows.append(row)
            continue
        with torch.no_grad():
            try:
                out = assoc_read(h, w_q, A, z, nu=nu, backend=backend)
            except Exception as e:  # recorded, so one backend's failure does not hide the others' numbers
                row["failed"] = f"{type(e).__name__}: {str(e)[:300]}"
                rows.append(row)
                continue
            err = ((out.double() - ref).norm() / ref.norm()).item()
            row["rel_err"] = err
            if not err <= RTOL[dtype]:
                row["failed"] = f"relative error {err:.2e} > {RTOL[dtype]:.0e}"
                rows.append(row)
                continue

            def call(i, backend=backend):
                return assoc_read(*sets[i % n_sets], nu=nu, backend=backend)

            if device.type == "cuda":
                t = time_cuda_graph(call, n_sets, repeats)
                row["eager_s"] = time_cuda_eager(call, repeats)
            else:
                t = time_cpu(call, repeats)
        row.update(seconds=t, tokens_per_s=B * T / t, TFLOPs=flops / t / 1e12, GBps=bytes_ / t / 1e9)
        if ceilings:
            unit = unit_for(backend, dtype)
            t_mem, t_math = bytes_ / (ceilings["copy_GBps"] * 1e9), flops / (ceilings[unit] * 1e12)
            row.update(roofline_s=max(t_mem, t_math), bound="memory" if t_mem >= t_math else f"arithmetic ({unit})",
                       pct_roofline=100 * max(t_mem, t_math) / t)
        rows.append(row)
    return rows


def sweep_triton_assoc_read(shape, nu, dtype, device, repeats) -> list[dict]:
    """Time the Triton read kernel over launch configurations (tuning data; each checked first)."""
    from babilong_fast.kernels.assoc_read import AssocReadConfig, _sm_count, assoc_read_fwd, default_config

    B, T, d, n = shape
    sets, ref = input_sets(shape, nu, dtype, device)
    base = default_config(T, d, n, dtype, B, _sm_count(torch.device(device)))
    precisions = ["ieee", "tf32x3"] if dtype == torch.float32 else ["tf32", "ieee"]
    configs = {base}
    configs |= {AssocReadConfig(bt, bd, base.BI, w, st, base.precision)
                for bt in (64, 128) for bd in (64, 128) for w in (4, 8) for st in (2,)}
    configs |= {base._replace(precision=p) for p in precisions}
    rows = []
    for c in sorted(configs):
        row = {"op": "assoc_read_triton_sweep", "backend": "triton", "B": B, "T": T, "d": d, "d_mem": n, "nu": nu,
               "dtype": str(dtype).replace("torch.", ""), "config": c._asdict(), "default": c == base}
        try:
            with torch.no_grad():
                out = assoc_read_fwd(*sets[0], nu, 1e-5, config=c)
                row["rel_err"] = err = ((out.double() - ref).norm() / ref.norm()).item()
                t = time_cuda_graph(lambda i, c=c: assoc_read_fwd(*sets[i % 4], nu, 1e-5, config=c), 4, repeats)
            row.update(seconds=t, accurate=err <= RTOL[dtype])
        except Exception as e:  # a config the compiler rejects (e.g. out of shared memory) is data too
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        rows.append(row)
    ok = sorted((r for r in rows if r.get("accurate") and "config" in r), key=lambda r: r["seconds"])
    print(f"triton sweep {row['dtype']} B,T,d,n={B},{T},{d},{n}: default "
          + ", ".join(f"{r['seconds'] * 1e6:.1f}us" for r in rows if r.get("default") and "seconds" in r))
    for r in ok[:5]:
        print(f"  {r['seconds'] * 1e6:8.1f}us  err {r['rel_err']:.1e}  {r['config']}")
    return rows


def input_sets(shape, nu, dtype, device) -> tuple[list[tuple], torch.Tensor]:
    """Four random input sets (h, w_q, A, z) of one shape, rotated while timing, and the float64 reference of the
    first."""
    B, T, d, n = shape
    F = 2 * nu * n
    sets = [(torch.randn(B, T, d, device=device).to(dtype), torch.randn(n, d, device=device) / d**0.5,
             torch.randn(B, F, d, device=device), torch.rand(B, F, device=device) + 0.05) for _ in range(4)]
    return sets, assoc_read_ref(*(t.double() for t in sets[0]), nu)


def variant_rows(shape, nu, dtype, device, repeats) -> list[dict]:
    """Every CUDA kernel variant of the extension and the Triton pieces, timed on one shape."""
    B, T, d, n = shape
    sets, ref = input_sets(shape, nu, dtype, device)
    return component_rows(sets, ref, nu, dtype, repeats, dict(B=B, T=T, d=d, d_mem=n, nu=nu))


def component_rows(sets, ref, nu, dtype, repeats, shape: dict) -> list[dict]:
    """Time the pieces of the fused read separately (q projection, fused pass) and any extra CUDA variants."""
    from babilong_fast.backends import load_extension
    from babilong_fast.kernels.assoc_read import assoc_query_fwd, assoc_read_main_fwd

    ss = [assoc_query_fwd(s[0], s[1]) for s in sets]  # s = [relu(q), relu(-q)]
    pieces = {
        "triton:query": lambda i: assoc_query_fwd(sets[i % 4][0], sets[i % 4][1]),
        "triton:main": lambda i: assoc_read_main_fwd(sets[i % 4][0], ss[i % 4], *sets[i % 4][2:], nu, 1e-5),
    }
    if dtype != torch.float32:  # w_q in h's dtype, as in a half-precision model: the query's tensor-core dot
        w_half = [s[1].to(dtype) for s in sets]
        pieces["triton:query_w_in_h_dtype"] = lambda i: assoc_query_fwd(sets[i % 4][0], w_half[i % 4])
    ext, _ = load_extension()
    for name in sorted(n for n in dir(ext) if n.startswith("assoc_read_fwd")) if ext else []:
        fn = getattr(ext, name)
        pieces[f"cuda:{name}"] = lambda i, fn=fn: fn(sets[i % 4][0], sets[i % 4][1], *sets[i % 4][2:], nu, 1e-5)
    rows = []
    for name, call in pieces.items():
        row = {"op": "assoc_read_component", "backend": name, "dtype": str(dtype).replace("torch.", ""), **shape}
        try:
            with torch.no_grad():
                if name.startswith("cuda:"):
                    out = call(0)
                    row["rel_err"] = err = ((out.double() - ref).norm() / ref.norm()).item()
                    row["accurate"] = err <= RTOL[dtype]
                row["seconds"] = time_cuda_graph(call, 4, repeats)
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        rows.append(row)
        print(f"  component {name:<28} {row.get('seconds', float('nan')) * 1e6:8.1f}us  "
              + (f"err {row['rel_err']:.1e}" if "rel_err" in row else row.get("error", "")))
    return rows


def print_table(rows: list[dict]) -> None:
    head = (f"{'op':<11}{'backend':<8}{'dtype':<10}{'B,T,d,n':<16}{'time':>11}{'eager':>11}{'tokens/s':>12}"
            f"{'TFLOP/s':>9}{'GB/s':>8}{'%roof':>7}  bound / note")
    print(head)
    print("-" * len(head))
    for r in rows:
        shape = f"{r['B']},{r['T']},{r['d']},{r['d_mem']}"
        lead = f"{r['op']:<11}{r['backend']:<8}{r['dtype']:<10}{shape:<16}"
        if "seconds" not in r:
            dashes = f"{'-':>11}{'-':>11}{'-':>12}{'-':>9}{'-':>8}{'-':>7}  "
            print(lead + dashes + r.get("skipped", r.get("failed", "")))
            continue
        eager = f"{r['eager_s'] * 1e6:9.1f}us" if "eager_s" in r else f"{'-':>11}"
        pct = f"{r['pct_roofline']:6.1f}%" if "pct_roofline" in r else f"{'-':>7}"
        figures = f"{r['seconds'] * 1e6:9.1f}us{eager}{r['tokens_per_s']:12.3g}{r['TFLOPs']:9.2f}{r['GBps']:8.0f}{pct}"
        print(lead + figures + "  " + r.get("bound", ""))
    by_key = {(r["dtype"], r["B"], r["T"], r["d"]): {} for r in rows}
    for r in rows:
        if "seconds" in r:
            by_key[(r["dtype"], r["B"], r["T"], r["d"])][r["backend"]] = r["seconds"]
    for key, t in by_key.items():
        if "torch" in t:
            ratios = ", ".join(f"{b} {t['torch'] / s:.2f}x" for b, s in t.items() if b != "torch")
            if ratios:
                print(f"speed-up over torch ({key[0]}, B={key[1]}, T={key[2]}, d={key[3]}): {ratios}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=("models", "ops", "all"), default=None,
                   help="models (default), ops, or both; ops when --shape/--nu/--sweep is given")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None,
                   help="ops: comma list of float32,bfloat16,float16 (default float32 on CPU, "
                        "float32,bfloat16 on GPU); "
                        "models: one of them (default float32)")
    p.add_argument("--backends", default=None,
                   help="ops: comma list of cuda,triton,torch (default all); models: ARMT's and Mamba's backends in "
                        "fast mode, one fast row each (default auto; stock always uses torch)")
    p.add_argument("--repeats", type=_positive(int), default=None,
                   help="timed runs, median reported (ops: default 50 GPU / 5 CPU; models: default 2, after a "
                        "warm-up run at each length that takes under --long-s)")
    p.add_argument("--json", default=None, help="ops: write the environment, ceilings and every row here; "
                                                "models: the JSON path (default <out>/<date>_<device>_models.json)")
    g = p.add_argument_group("ops suite")
    g.add_argument("--shape", action="append",
                   help=f"B,T,d,d_mem (repeatable); default {CPU_DEFAULT} on CPU, {GPU_DEFAULT} on GPU")
    g.add_argument("--nu", type=_positive(int), default=None, help="DPFP order (default 3)")
    g.add_argument("--sweep", action="store_true", help="GPU only: also time the Triton kernel over launch configs")
    g = p.add_argument_group("models suite")
    g.add_argument("--models", default="rmt,armt,mamba", help="comma list of rmt, armt, mamba (default all three)")
    g.add_argument("--modes", default="stock,fast", help="comma list of stock, fast (default both)")
    g.add_argument("--step", default="lean",
                   help="RMT/ARMT fast mode: comma list of lean (GPT-2 blocks by gpt2_block_infer, fewer kernels), "
                        "hf (the blocks' own forward) and compiled (StreamRunner(compile=True): the step traced by "
                        "torch.compile, tens of seconds to compile in the warm-up), one fast row each (default lean)")
    g.add_argument("--lengths", default=None,
                   help="comma list of input lengths such as 16k,128k,1M,10M,50M (k = 1000); "
                        "default 1k,4k,16k on CPU, 16k,128k,1M,10M on GPU")
    g.add_argument("--batch", default=None, help="comma list of batch sizes (default 1 on CPU, 1,8 on GPU)")
    g.add_argument("--budget-s", type=_positive(float), default=None,
                   help="wall-clock budget of one stock run; past it the run is aborted and reported as skipped "
                        "(default 200 on CPU, 300 on GPU)")
    g.add_argument("--fast-budget-s", type=_positive(float), default=None,
                   help="the same for fast runs (default 120 on CPU, 540 on GPU)")
    g.add_argument("--long-s", type=_positive(float), default=None,
                   help="no further repeat after a run this long (default 10 s on CPU, 30 s on GPU)")
    g.add_argument("--max-new-tokens", type=_positive(int), default=10,
                   help="greedy answer tokens (EOS disabled; default 10)")
    g.add_argument("--data", choices=("random", "babilong"), default="random",
                   help="random ids (default: model cost only) or qa1 BABILong samples streamed by babilong_fast.data")
    g.add_argument("--stock-answer", choices=("state", "generate"), default="state",
                   help="stock answer: decode from the memory the forward built (default, one pass) or run "
                        "model.generate over the whole input again (RMT-BL's forward + generate validation)")
    g.add_argument("--config", choices=("auto", "tiny", "small"), default="auto",
                   help="backbone: tiny GPT-2 / tiny Mamba (CPU default) or GPT-2 small / Mamba-130m (GPU default)")
    g.add_argument("--mamba-prefix", type=_positive(int), default=None,
                   help="Mamba stock: tokens in the first call before one-token steps (the public eval script's "
                        "first_seg_len; default 300000 on GPU, 4096 on CPU)")
    g.add_argument("--mamba-chunk", type=_positive(int), default=None,
                   help="Mamba fast: tokens per chunk (default 8192 on GPU, 2048 on CPU)")
    g.add_argument("--no-warmup", action="store_true", help="skip the warm-up run (tests only)")
    g.add_argument("--out", default=None,
                   help="output folder when --json is not given (default benchmarks/results on GPU, a temp folder "
                        "on CPU)")
    g.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    if args.suite is None:  # from the parsed values: argparse also takes abbreviations such as --sha
        args.suite = "ops" if args.shape or args.nu is not None or args.sweep else "models"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"unknown --device {args.device!r} (cpu, cuda, cuda:N)")
    if device.type not in ("cpu", "cuda"):
        p.error(f"--device takes cpu, cuda or cuda:N, got {args.device!r}")
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        p.error(f"--device {args.device}: torch sees {torch.cuda.device_count()} CUDA device(s); use --device cpu")
    _check_output_paths(p, args)
    args.parser = p
    return args


def _check_output_paths(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--json a writable file path, --out a folder (created): usage errors now, not a traceback after the first
    row."""
    folder = os.path.dirname(os.path.abspath(args.json)) if args.json else args.out
    if args.json and os.path.isdir(args.json):
        p.error(f"--json {args.json!r} is a folder; give a file path (or --out for a folder)")
    if args.out and not args.json and os.path.exists(args.out) and not os.path.isdir(args.out):
        p.error(f"--out {args.out!r} is a file; give a folder")
    if folder:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            p.error(f"cannot create the output folder {folder!r}: {e.strerror}")
        if not os.access(folder, os.W_OK):
            p.error(f"the output folder {folder!r} is not writable")


def comma_choices(p: argparse.ArgumentParser, what: str, text: str, allowed: tuple[str, ...]) -> list[str]:
    """A comma list of ``allowed`` names, in order, each once; an empty or unknown one is a usage error."""
    names = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names:
        p.error(f"no {what} given in {text!r} ({', '.join(allowed)})")
    for name in names:
        if name not in allowed:
            p.error(f"unknown {what} {name!r} ({', '.join(allowed)})")
    return names


def _positive(kind: type) -> Callable[[str], int | float]:
    """An argparse type: a number of ``kind`` above zero."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value
    return parse


def short_commit(commit: str) -> str:
    """The first 12 hex digits, and whether the working tree differed from them."""
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def select_device(text: str) -> torch.device:
    """``text`` as a device, made the current CUDA device: synchronize, the peak-memory counters and CUDA graph
    capture act on the current device, so ``cuda:1`` would otherwise be timed and measured on ``cuda:0``."""
    device = torch.device(text)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    select_device(args.device)
    env = environment(args.device)
    print(f"babilong_fast throughput ({args.suite}) | {env['device']} | torch {env['torch']} | "
          f"triton {env['triton']} | transformers {env['transformers']} | commit {short_commit(env['commit'])}")
    if not env["package_in_checkout"]:
        print(f"warning: the babilong_fast imported ({env['babilong_fast']}) is not this checkout's, so the commit "
              "above may not be the code timed (install it with pip install -e .)", file=sys.stderr)
    if args.suite == "ops":
        def save(rows: list[dict], ceilings: dict) -> None:  # after every group: a run cut short keeps its rows
            write_json(args.json, {"environment": env, "ceilings": ceilings, "rows": rows})

        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        rows, ceilings = run_ops(args, save if args.json else None)
        if args.json:
            print(f"wrote {args.json}")
        return 1 if any("failed" in r for r in rows) else 0  # sweep rows carry "accurate" instead
    ops = None
    if args.suite == "all":
        json_path, args.json = args.json, None
        ops_rows, ceilings = run_ops(args)
        ops = {"ceilings": ceilings, "rows": ops_rows}
        args.json = json_path
    code = run_models(args, env, ops)
    return code or (1 if ops and any("failed" in r for r in ops["rows"]) else 0)


def run_ops(args, on_rows: Callable[[list[dict], dict], None] | None = None) -> tuple[list[dict], dict]:
    """The ops suite's rows and measured ceilings; ``on_rows(rows, ceilings)`` after each group of rows."""
    p = args.parser
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    nu = 3 if args.nu is None else args.nu
    try:
        shapes = [tuple(int(v) for v in s.split(",")) for s in (args.shape or [GPU_DEFAULT if gpu else CPU_DEFAULT])]
    except ValueError:
        p.error(f"--shape takes four positive integers B,T,d,d_mem; got {args.shape}")
    for s in shapes:
        if len(s) != 4 or min(s) < 1:
            p.error(f"--shape takes four positive integers B,T,d,d_mem; got {s}")
    dtype_names = comma_choices(p, "--dtype", args.dtype or ("float32,bfloat16" if gpu else "float32"),
                                tuple(DTYPES))
    dtypes = [DTYPES[name] for name in dtype_names]
    backends = comma_choices(p, "backend", args.backends or "cuda,triton,torch", ("cuda", "triton", "torch"))
    repeats = args.repeats or (50 if gpu else 5)
    ceilings = measure_ceilings() if gpu else {}
    if ceilings:
        print("measured ceilings: " + ", ".join(f"{k} {v:.0f}" for k, v in ceilings.items()))
    rows: list[dict] = []

    def add(new_rows: list[dict]) -> None:
        rows.extend(new_rows)
        if on_rows is not None:
            on_rows(rows, ceilings)

    for shape in shapes:
        for dtype in dtypes:
            add(bench_assoc_read(shape, nu, dtype, backends, device, repeats, ceilings))
    print_table(rows)
    if gpu and babilong_fast.backends()["triton"].available:
        for shape in shapes:
            for dtype in dtypes:
                print(f"variants {str(dtype).replace('torch.', '')} B,T,d,n={','.join(map(str, shape))}:")
                add(variant_rows(shape, nu, dtype, device, repeats))
    if args.sweep and gpu and babilong_fast.backends()["triton"].available:
        for dtype in dtypes:
            add(sweep_triton_assoc_read(shapes[0], nu, dtype, device, repeats))
    return rows, ceilings


def run_models(args, env: dict, ops: dict | None) -> int:
    import datetime
    import re
    import tempfile
    import time

    import models_bench as mb

    p = args.parser
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    big = args.config == "small" or (args.config == "auto" and gpu)
    try:
        lengths = mb.parse_lengths(args.lengths or ("16k,128k,1M,10M" if gpu else "1k,4k,16k"))
    except ValueError as e:
        p.error(str(e))
    batch_text = args.batch or ("1,8" if gpu else "1")
    try:
        batches = sorted({int(b) for b in batch_text.split(",") if b.strip()})
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        p.error(f"--batch takes a comma list of positive integers, got {batch_text!r}")
    models = comma_choices(p, "model", args.models, ("rmt", "armt", "mamba"))
    modes = comma_choices(p, "mode", args.modes, ("stock", "fast"))
    steps = comma_choices(p, "--step", args.step, ("lean", "hf", "compiled"))
    dtype_name = args.dtype or "float32"
    if dtype_name not in DTYPES:
        p.error(f"--dtype for the models suite is one of {', '.join(DTYPES)}, got {dtype_name!r}")
    backends = comma_choices(p, "backend", args.backends or "auto", ("auto", "cuda", "triton", "torch"))
    statuses = babilong_fast.backends()
    for name in backends:  # a usage error, not rows that all fail
        if name != "auto" and not statuses[name].available:
            p.error(f"--backends {name}: unavailable here ({statuses[name].reason})")
    cfg = mb.Settings(
        models=models, modes=modes, lengths=lengths, batches=batches, dtype=DTYPES[dtype_name], backends=backends,
        device=device, budget_s=args.budget_s or (300.0 if gpu else 200.0),
        fast_budget_s=args.fast_budget_s or (540.0 if gpu else 120.0), repeats=args.repeats or 2,
        long_s=args.long_s or (30.0 if gpu else 10.0), max_new_tokens=args.max_new_tokens, data=args.data,
        stock_answer=args.stock_answer, warmup=not args.no_warmup, steps=steps)
    backbone = mb.backbone_config(big)
    wrappers = {name: mb.wrapper_config(name, big) for name in ("rmt", "armt")}
    prefix = args.mamba_prefix or (300_000 if gpu else 4096)
    chunk = args.mamba_chunk or (8192 if big else 2048)
    if prefix < 1 or chunk < 1:
        p.error("--mamba-prefix and --mamba-chunk take positive integers")
    wrappers["mamba"] = {"config": mamba_bench.mamba_config(big), "chunk_size": chunk, "prefix": prefix}
    if args.json:  # no folder of our own then: a temporary one would be left behind empty
        json_path = args.json
    else:
        out_dir = args.out or (os.path.join(os.path.dirname(os.path.abspath(__file__)), "results") if gpu
                               else tempfile.mkdtemp(prefix="babilong_fast_bench_"))
        stem = f"{datetime.date.today().isoformat()}_{re.sub(r'[^A-Za-z0-9]+', '_', env['device']).strip('_')}_models"
        json_path = os.path.join(out_dir, stem + ".json")
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    png_path = os.path.splitext(json_path)[0] + ".png"
    print(f"backbone {'GPT-2 small' if big else 'tiny GPT-2'} {backbone}; "
          f"rmt {wrappers['rmt']}; armt {wrappers['armt']}")
    if "mamba" in models:
        print(f"mamba {'Mamba-130m shape' if big else 'tiny'} {wrappers['mamba']}")
    print(f"lengths {[mb.length_name(n) for n in lengths]}, batch {batches}, {dtype_name}, data {args.data}, "
          f"budget stock {cfg.budget_s:g} s / fast {cfg.fast_budget_s:g} s, repeats <= {cfg.repeats}, "
          f"torch threads {torch.get_num_threads()}")
    print(mb.table_header())
    print("-" * len(mb.table_header()))
    t0 = time.perf_counter()

    def result_of(rows: list[dict], info: dict, complete: bool) -> dict:
        wall = time.perf_counter() - t0
        mem_method = next((r["mem_method"] for r in rows if "mem_method" in r), "cuda" if gpu else "vmhwm")
        return {
            "suite": "models",
            "environment": env,
            "settings": {"argv": sys.argv[1:], "models": models, "modes": modes, "lengths": lengths, "batches": batches,
                         "dtype": dtype_name,
                         "backends": backends, "steps": steps, "device": str(device), "budget_s": cfg.budget_s,
                         "fast_budget_s": cfg.fast_budget_s, "repeats": cfg.repeats, "long_s": cfg.long_s,
                         "max_new_tokens": cfg.max_new_tokens, "eos_disabled": True, "data": args.data,
                         "stock_answer": args.stock_answer, "warmup": cfg.warmup, "chunk_tokens": mb.CHUNK_TOKENS,
                         "context_margin": mb.FINETUNE_MARGIN, "torch_threads": torch.get_num_threads(),
                         "wall_s": round(wall, 1)},
            "configs": {"backbone": backbone, "rmt": wrappers["rmt"], "armt": wrappers["armt"],
                        "mamba": wrappers["mamba"], "models": info},
            "modes": {"stock": mb.STOCK_EMULATION, "fast": mb.FAST_DESCRIPTION,
                      "stock_mamba": mamba_bench.STOCK_DESCRIPTION, "fast_mamba": mamba_bench.FAST_DESCRIPTION},
            "memory": mb.MEM_NOTE[mem_method],
            "complete": complete,
            "rows": rows,
            **({"ops": ops} if ops is not None else {}),
            **({"scan_tuning": tuning} if (tuning := mamba_bench.scan_tuning()) else {}),
        }

    def save(rows: list[dict], info: dict, complete: bool) -> None:
        # Written after every row too (atomically), so a run cut short by a time limit still leaves its rows.
        write_json(json_path, result_of(rows, info, complete))

    rows, info = mb.run_suite(cfg, backbone, wrappers, on_row=lambda r, i: save(r, i, False))
    ratios = mb.ratio_lines(rows)
    if ratios:
        print("\nfast / stock:")
        for line in ratios:
            print("  " + line)
    tuned = mamba_bench.scan_tuning_lines(mamba_bench.scan_tuning())
    if tuned:
        print("\nselective scan tile, timed on the first long chunk (scan_tuning in the JSON):")
        for line in tuned:
            print("  " + line)
    save(rows, info, True)
    print(f"\nwrote {json_path}")
    mem_method = next((r["mem_method"] for r in rows if "mem_method" in r), "cuda" if gpu else "vmhwm")
    if not args.no_plot:
        backbones = []  # only the backbones of the models that ran
        if {"rmt", "armt"} & set(models):
            backbones.append("GPT-2 small" if big else "tiny GPT-2")
        if "mamba" in models:
            backbones.append("Mamba-130m" if big else "tiny Mamba")
        title = (f"babilong_fast: {' / '.join(m.upper() for m in models)}, {' / '.join(backbones)}, "
                 f"{dtype_name}, {env['device']}")
        try:
            why = mb.plot(rows, png_path, title, {"cuda": "device memory", "vmhwm": "process RSS",
                                                  "sampled": "process RSS"}[mem_method])
        except Exception as e:  # the JSON is written: a plot (matplotlib < 3.7, say) must not fail the run
            why = f"plotting failed ({type(e).__name__}: {e})"
        print(f"wrote {png_path}" if why is None else f"no plot: {why}")
    print(f"models suite wall time {time.perf_counter() - t0:.0f} s")
    # Exact in float32 (a failure otherwise); in half precision stock and fast round differently, so a
    # differing greedy token on random weights is reported, not failed.
    bad = [r for r in rows if r.get("answer_matches_stock") is False and r["dtype"] == "float32"]
    # A run that raised (or whose warm-up did) is a broken benchmark; running out of device memory is a result.
    broken = [r for r in rows if not r.get("failed", "out of device memory").startswith("out of device memory")
              or r.get("skipped", "").startswith("the warm-up failed")]
    if broken:
        print(f"{len(broken)} row(s) failed with an error (see above)", file=sys.stderr)
    return 1 if bad or broken else 0


if __name__ == "__main__":
    sys.exit(main())
