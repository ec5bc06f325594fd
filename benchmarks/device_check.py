"""The one-command GPU check: build the extension for this GPU, run the tests, run the quick benchmark.

    BABILONG_FAST_RESULTS_DIR=out BABILONG_FAST_GIT_COMMIT=<sha> python3 benchmarks/device_check.py

For a GPU machine that already has torch, Triton and nvcc and no network: installs this working
tree with ``pip install --no-deps --no-build-isolation --no-index -e .`` (nothing is downloaded),
then writes ``<date>_<gpu>.json`` (environment, build, test counts, every benchmark row) and
``<date>_<gpu>.log`` into ``$BABILONG_FAST_RESULTS_DIR`` (default ``benchmarks/results``).
Each step has a time limit so that the whole check ends inside 8 minutes.
"""
from __future__ import annotations

import datetime
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


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("device_check: torch sees no CUDA device; this check is for a GPU machine")
        return 2
    out_dir = os.environ.get("BABILONG_FAST_RESULTS_DIR", os.path.join(ROOT, "benchmarks", "results"))
    os.makedirs(out_dir, exist_ok=True)
    gpu = torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    stem = f"{datetime.date.today().isoformat()}_{re.sub(r'[^A-Za-z0-9]+', '_', gpu).strip('_')}"
    env = dict(os.environ, PYTHONUNBUFFERED="1", BABILONG_FAST_FORCE_CUDA_BUILD="1")
    env.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    summary: dict = {"gpu": gpu, "capability": f"{major}.{minor}", "arch_list": env["TORCH_CUDA_ARCH_LIST"]}

    with open(os.path.join(out_dir, stem + ".log"), "w") as log:
        code, text, secs = run(["nvcc", "--version"], log, 30)
        summary["nvcc"] = text.strip().splitlines()[-1] if code == 0 else f"nvcc failed ({code})"
        code, text, secs = run([PY, "-m", "pip", "install", "-v", "--no-deps", "--no-build-isolation", "--no-index",
                                "-e", "."], log, 100, env)
        summary["build"] = {"ok": code == 0, "seconds": round(secs, 1)}
        print(f"build: {'ok' if code == 0 else 'FAILED'} in {secs:.0f}s", flush=True)

        # tests/data is CPU-only (tokenizer, generators) and runs in CI; here the kernels and dispatch are tested.
        code, text, secs = run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", "--ignore=tests/data"],
                               log, 240, env)
        counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", text.splitlines()[-1] if text else "")}
        summary["tests"] = {"exit_code": code, "seconds": round(secs, 1), **counts}
        print(f"tests: exit {code}, {counts} in {secs:.0f}s", flush=True)
        failures = [ln for ln in text.splitlines() if ln.startswith(("FAILED", "ERROR"))]
        summary["tests"]["failures"] = failures[:50]

        bench_json = os.path.join(out_dir, stem + "_bench.json")
        code, text, secs = run([PY, "benchmarks/throughput.py", "--suite", "ops", "--shape", "8,522,768,64", "--shape", "1,522,768,64",
                                "--shape", "8,1,768,64", "--dtype", "float32,bfloat16", "--sweep", "--json", bench_json], log, 130, env)
        print(text[-6000:], flush=True)
        summary["benchmark_exit_code"] = code
    bench = {}
    if os.path.exists(bench_json):
        with open(bench_json) as f:
            bench = json.load(f)
        os.remove(bench_json)
    result = {"summary": summary, **bench}
    path = os.path.join(out_dir, stem + ".json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")
    ok = summary["build"]["ok"] and summary["tests"]["exit_code"] == 0 and code == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
