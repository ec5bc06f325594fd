"""The one-command GPU check: build the extension for this GPU, run the tests, run the quick benchmark.

    BABILONG_FAST_RESULTS_DIR=out BABILONG_FAST_GIT_COMMIT=<sha> python3 benchmarks/device_check.py [--part P]

For a GPU machine that already has torch, Triton and nvcc and no network: installs this working
tree with ``pip install --no-deps --no-build-isolation --no-index -e .`` (nothing is downloaded),
then writes ``<date>_<gpu>[_<part>].json`` (environment, build, test counts, every benchmark row) and
``.log`` into ``$BABILONG_FAST_RESULTS_DIR`` (default ``benchmarks/results``).

Parts (``--part``, default ``all``): ``core`` = build, GPU tests, the ``assoc_read`` ops benchmark with a
Triton config sweep, the pytest-benchmark micro-benchmarks of every op; ``models`` = build, then the models
benchmark (RMT, ARMT, Mamba; GPT-2 small / Mamba-130m shapes, bfloat16, batch 1, 16k / 1M / 10M tokens,
fast with the ``auto`` and ``triton`` backends, stock where it fits a 30 s budget). Every step has a
time limit and the whole check a deadline (``--deadline-s``, default 570 s) so that one call fits a
10-minute device session; run ``core`` and ``models`` as two calls when both do not fit.
"""
from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def run(cmd: list[str], log, timeout: int, env: dict | None = None) -> tuple[int, str, float]:
    """Run a step, tee its output into the log; return (exit code, output, seconds)."""
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    t0 = time.time()
    try:
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        code, text = res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired as e:
        code, text = 124, f"{e.stdout or ''}{e.stderr or ''}\n[timed out after {timeout}s]"
        text = text if isinstance(text, str) else text.decode(errors="replace")
    log.write(_anonymise(text))
    log.flush()
    return code, text, time.time() - t0


def _anonymise(text: str) -> str:
    """The committed log names no machine's paths: checkout, results folder and temporary files become tags."""
    results = os.environ.get("BABILONG_FAST_RESULTS_DIR")
    if results:
        text = text.replace(os.path.abspath(results), "<results>")
    return re.sub(r"/tmp/[^\s'\"]+", "<tmp>", text.replace(ROOT, "<repo>"))


STEP_LIMITS = {"build": 100, "tests": 220, "ops": 110, "micro": 70, "models": 330}


def main(argv: list[str] | None = None) -> int:
    import argparse

    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("all", "core", "models"), default="all")
    ap.add_argument("--deadline-s", type=float, default=570.0, help="the whole check ends by then (default 570)")
    args = ap.parse_args(argv)
    start = time.time()

    def limit(step: str) -> int:
        return max(5, int(min(STEP_LIMITS[step], args.deadline_s - (time.time() - start) - 10)))

    if not torch.cuda.is_available():
        print("device_check: torch sees no CUDA device; this check is for a GPU machine")
        return 2
    out_dir = os.environ.get("BABILONG_FAST_RESULTS_DIR", os.path.join(ROOT, "benchmarks", "results"))
    os.makedirs(out_dir, exist_ok=True)
    gpu = torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    stem = f"{datetime.date.today().isoformat()}_{re.sub(r'[^A-Za-z0-9]+', '_', gpu).strip('_')}"
    if args.part != "all":
        stem += f"_{args.part}"
    env = dict(os.environ, PYTHONUNBUFFERED="1", BABILONG_FAST_FORCE_CUDA_BUILD="1")
    env.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    summary: dict = {"gpu": gpu, "capability": f"{major}.{minor}", "arch_list": env["TORCH_CUDA_ARCH_LIST"],
                     "part": args.part, "commit": os.environ.get("BABILONG_FAST_GIT_COMMIT")}
    result: dict = {}
    ok = True

    with open(os.path.join(out_dir, stem + ".log"), "w") as log:
        code, text, secs = run(["nvcc", "--version"], log, 30)
        summary["nvcc"] = text.strip().splitlines()[-1] if code == 0 else f"nvcc failed ({code})"
        code, text, secs = run([PY, "-m", "pip", "install", "-v", "--no-deps", "--no-build-isolation", "--no-index",
                                "-e", "."], log, limit("build"), env)
        summary["build"] = {"ok": code == 0, "seconds": round(secs, 1)}
        ok &= code == 0
        print(f"build: {'ok' if code == 0 else 'FAILED'} in {secs:.0f}s", flush=True)

        if args.part in ("all", "core"):
            # tests/data and tests/train are CPU-only and run in CI; here the kernels, models and dispatch are tested.
            code, text, secs = run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", "--ignore=tests/data",
                                    "--ignore=tests/train"], log, limit("tests"), env)
            last = text.strip().splitlines()[-1] if text.strip() else ""
            counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", last)}
            summary["tests"] = {"exit_code": code, "seconds": round(secs, 1), **counts}
            summary["tests"]["failures"] = [ln for ln in text.splitlines() if ln.startswith(("FAILED", "ERROR"))][:50]
            ok &= code == 0
            print(f"tests: exit {code}, {counts} in {secs:.0f}s", flush=True)

            bench_json = os.path.join(out_dir, stem + "_bench.json")
            code, text, secs = run([PY, "benchmarks/throughput.py", "--suite", "ops", "--shape", "8,522,768,64",
                                    "--shape", "1,522,768,64", "--shape", "8,1,768,64", "--dtype", "float32,bfloat16",
                                    "--sweep", "--json", bench_json], log, limit("ops"), env)
            print(text[-6000:], flush=True)
            summary["benchmark_exit_code"] = code
            ok &= code == 0
            result.update(_pop_json(bench_json))

            micro_json = os.path.join(out_dir, stem + "_micro.json")
            if importlib.util.find_spec("pytest_benchmark") is None:
                summary["micro_benchmarks"] = "skipped: pytest-benchmark is not installed here (nothing is downloaded)"
                print(summary["micro_benchmarks"], flush=True)
            else:
                code, text, secs = run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks/ops",
                                        f"--benchmark-json={micro_json}"], log, limit("micro"), env)
                summary["micro_benchmarks_exit_code"] = code
                ok &= code == 0
                micro = _pop_json(micro_json)
                result["micro_benchmarks"] = [
                    {"name": b["name"], "median_s": b["stats"]["median"], **b.get("extra_info", {})}
                    for b in micro.get("benchmarks", [])
                ]
                print(f"micro-benchmarks: exit {code}, {len(result['micro_benchmarks'])} rows in {secs:.0f}s", flush=True)

        if args.part in ("all", "models"):
            models_json = os.path.join(out_dir, stem + "_models_tmp.json")
            code, text, secs = run([PY, "benchmarks/throughput.py", "--models", "rmt,armt,mamba", "--lengths",
                                    "16k,1M,10M", "--batch", "1", "--dtype", "bfloat16", "--backends", "auto,triton",
                                    "--budget-s", "30", "--fast-budget-s", "60", "--repeats", "2", "--json", models_json,
                                    "--out", out_dir, "--no-plot"], log, limit("models"), env)
            print(text[-8000:], flush=True)
            summary["models_exit_code"] = code
            ok &= code == 0
            result["models"] = _pop_json(models_json)
    summary["seconds"] = round(time.time() - start, 1)
    path = os.path.join(out_dir, stem + ".json")
    with open(path, "w") as f:
        json.dump({"summary": summary, **result}, f, indent=2)
    print(f"wrote {path} in {summary['seconds']:.0f}s")
    return 0 if ok else 1


def _pop_json(path: str) -> dict:
    """Read and delete a step's JSON output ({} when the step wrote none)."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        data = json.load(f)
    os.remove(path)
    return data


if __name__ == "__main__":
    sys.exit(main())
