"""The one-command GPU check: build the extension for this GPU, run the tests, run the quick benchmark.

    BABILONG_FAST_RESULTS_DIR=out BABILONG_FAST_GIT_COMMIT=<sha> python3 benchmarks/device_check.py [--part P]

For a GPU machine that already has torch, Triton and nvcc and no network: installs this working
tree with ``pip install --no-deps --no-build-isolation --no-index -e .`` (nothing is downloaded),
then writes ``<date>_<gpu>[_<part>].json`` (environment, build, test counts, every benchmark row) and
``.log`` into ``$BABILONG_FAST_RESULTS_DIR`` (default ``benchmarks/results``).

Parts (``--part``, a comma list; default ``all``): ``tests`` = the GPU tests (ops, engine, models, dispatch;
``tests/data`` and ``tests/train`` are CPU-only and run in CI); ``ops`` = the ``assoc_read`` ops benchmark per
backend and every CUDA kernel variant; ``micro`` = the pytest-benchmark micro-benchmarks of every op; ``models`` =
the models benchmark in six runs: RMT and ARMT at batch 1 (16k / 1M / 10M tokens), Mamba-130m (Triton scan, 16k / 1M
/ 10M), Mamba-130m on the CUDA kernels (fast, 1M / 10M), RMT and ARMT at 128k with lean, HF and compiled steps, ARMT
at 1M per backend of its memory ops, RMT and ARMT at batch 8 (16k / 1M); GPT-2 small / Mamba-130m shapes, bfloat16,
stock where it fits a 15 s budget (Mamba's 40 s), a length predicted past twice its budget not run. ``core`` =
tests,ops,micro; ``all`` = core,models. The build always runs first. Every step has a time limit and the whole check
a deadline counted from the start of this script (``--deadline-s``, default 480 s: eight minutes); a step with under
30 s left is skipped, and a step past its limit gets SIGINT (pytest then writes what it has), then SIGKILL, to its
whole process group. The JSON is rewritten after every step, so a cut check keeps what it did. With a 15-minute
device budget (machine start included), run ``--part core --deadline-s 400`` and then at once, while the machine is
still warm, ``--part models --reuse-build --deadline-s 300``; the later model runs then get what time is left
(``--runs`` picks some of them, run in the order given). ``--reuse-build`` rebuilds when ``csrc/`` differs from what
the installed extension was built from.
"""
from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def run(cmd: list[str], log, timeout: int, env: dict | None = None) -> tuple[int, str, float]:
    """Run a step in its own process group, its output into the log; return (exit code, output, seconds)."""
    log.write(_anonymise(f"\n$ {' '.join(cmd)}\n"))
    log.flush()
    t0 = time.time()
    with tempfile.TemporaryFile("w+", errors="replace") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
        try:
            code, note = proc.wait(timeout=timeout), ""
        except subprocess.TimeoutExpired:
            stop_group(proc)
            code, note = 124, f"\n[timed out after {timeout}s]"
        out.seek(0)
        text = out.read() + note
    log.write(_anonymise(text))
    log.flush()
    return code, text, time.time() - t0


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGINT to ``proc``'s process group (pytest and throughput.py then write what they have), SIGKILL to what is
    left after ``grace_s`` (xdist or compile workers, a test stuck in a CUDA call)."""
    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; its workers must not keep the GPU busy for the next step
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def _anonymise(text: str) -> str:
    """The committed log names no machine's paths: checkout, results folder and temporary files become tags."""
    results = os.environ.get("BABILONG_FAST_RESULTS_DIR")
    if results:
        text = text.replace(os.path.abspath(results), "<results>")
    return re.sub(r"/tmp/[^\s'\"]+", "<tmp>", text.replace(ROOT, "<repo>"))


STEP_LIMITS = {"build": 150, "tests": 150, "ops": 70, "micro": 60}
MIN_STEP_S = 30  # a step with less time left is skipped, not started
PARTS = ("tests", "ops", "micro", "models")
# Most wanted first (pytest keeps a file's first mention), so a cut step has still checked it: the kernel tests
# that decide GPU_VERIFIED_BACKENDS (Triton and CUDA against float64; the *_cuda_emulated files run the compiled
# CUDA kernels on a GPU), then the never-run tensor-core read, compiled steps and CUDA graphs, then the rest.
GPU_TESTS = ["tests/test_extension.py", "tests/engine/test_stream_cuda.py", "tests/ops/test_assoc_read.py",
             "tests/ops/test_assoc_write.py",
             "tests/ops/test_segment_io.py", "tests/ops/test_selective_scan_chunked.py",
             "tests/ops/test_causal_conv1d.py", "tests/ops/test_memory_kernels_cuda_emulated.py",
             "tests/ops/test_selective_scan_cuda_emulated.py", "tests/ops/test_causal_conv1d_cuda_emulated.py",
             "tests/ops/test_assoc_read_cuda_emulated.py", "tests/ops/test_assoc_read_tc.py",
             "tests/models/test_compiled_step.py", "tests/engine/test_graphs.py", "tests/test_patch.py",
             "tests/engine", "tests/ops", "tests/models", "tests/test_backends.py"]
# (name, throughput.py arguments, time limit in seconds): the models benchmark as six runs, most wanted first.
MODEL_RUNS = [
    ("b1", ["--models", "rmt,armt", "--lengths", "16k,1M,10M", "--batch", "1", "--backends", "auto"], 200),
    # Stock prefix 16k: without mamba_ssm, HF scans a prefix in a Python loop that no budget can interrupt
    # (26 s for 16k tokens on the H100), hence its own stock budget; 1M is then skipped by prediction. The fast
    # warm-up also times the scan's eleven candidate tiles (about 11 compiles), hence 140 s.
    ("mamba", ["--models", "mamba", "--lengths", "16k,1M,10M", "--batch", "1", "--backends", "triton",
               "--mamba-prefix", "16384", "--budget-s", "40"], 140),
    # Mamba on the CUDA kernels (csrc/selective_scan, csrc/causal_conv1d), fast rows only: no tuning, no compiles.
    ("mamba_cuda",
     ["--models", "mamba", "--modes", "fast", "--lengths", "1M,10M", "--batch", "1", "--backends", "cuda"],
     70),
    # The fast step: lean GPT-2 blocks (gpt2_block_infer: 10 kernels a block), the step under torch.compile (one
    # graph per part, compiled in the warm-up: tens of seconds per model), the blocks' own forward (17) last:
    # what a cut drops.
    ("steps", ["--models", "rmt,armt", "--modes", "fast", "--lengths", "128k", "--batch", "1", "--backends", "auto",
               "--step", "lean,compiled,hf"], 150),
    # Which kernels speed the model up: ARMT's read and write on each backend (the cuBLAS reference led
    # the fused read at every shape of the first H100 ops run).
    ("armt_backends", ["--models", "armt", "--modes", "fast", "--lengths", "1M", "--batch", "1",
                       "--backends", "torch,cuda,triton"], 70),
    ("b8", ["--models", "rmt,armt", "--lengths", "16k,1M", "--batch", "8", "--backends", "auto"], 110),
]


def parse_parts(text: str) -> list[str]:
    """``all``, ``core`` or a comma list of :data:`PARTS`."""
    out: list[str] = []
    for p in text.split(","):
        names = {"all": PARTS, "core": ("tests", "ops", "micro")}.get(p, (p,))
        for n in names:
            if n not in PARTS:
                raise ValueError(f"unknown part {n!r}: all, core or a comma list of {', '.join(PARTS)}")
            if n not in out:
                out.append(n)
    return out


def main(argv: list[str] | None = None) -> int:
    start = time.time()  # the deadline counts the torch import too
    import argparse

    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="all", help="all, core or a comma list of " + ", ".join(PARTS))
    ap.add_argument("--deadline-s", type=float, default=480.0,
                    help="the whole check ends by then (default 480: the 8 minutes issue 2 allows)")
    ap.add_argument("--reuse-build", action="store_true",
                    help="skip the build when an earlier call on this machine installed babilong_fast with its "
                         "extension")
    ap.add_argument("--runs", default=None,
                    help="models part: a comma list of " + ", ".join(n for n, _, _ in MODEL_RUNS) + ", run in the "
                         "order given (default all, in that order)")
    args = ap.parse_args(argv)
    try:
        parts = parse_parts(args.part)
    except ValueError as e:
        ap.error(str(e))
    known = [n for n, _, _ in MODEL_RUNS]
    runs = known if args.runs is None else [r for r in args.runs.split(",") if r]
    if not runs or any(r not in known for r in runs):
        ap.error(f"--runs takes a comma list of {', '.join(known)}; got {args.runs!r}")

    def limit(step: str | int) -> int:
        """The step's time limit: its cap, or the time left (less 10 s for the grace of a stop); 0: skip it."""
        cap = STEP_LIMITS[step] if isinstance(step, str) else step
        left = int(min(cap, args.deadline_s - (time.time() - start) - 10))
        return left if left >= MIN_STEP_S else 0

    if not torch.cuda.is_available():
        print("device_check: torch sees no CUDA device; this check is for a GPU machine")
        return 2
    out_dir = os.environ.get("BABILONG_FAST_RESULTS_DIR", os.path.join(ROOT, "benchmarks", "results"))
    os.makedirs(out_dir, exist_ok=True)
    gpu = torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    stem = f"{datetime.date.today().isoformat()}_{re.sub(r'[^A-Za-z0-9]+', '_', gpu).strip('_')}"
    if args.part != "all":
        stem += "_" + "_".join(parts)
    if args.runs is not None and "models" in parts:
        stem += "_" + "_".join(runs)  # a later call for some runs does not overwrite the first call's file
    env = dict(os.environ, PYTHONUNBUFFERED="1", BABILONG_FAST_FORCE_CUDA_BUILD="1")
    env.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    from bench_utils import git_commit, installed_version, write_json

    summary: dict = {"gpu": gpu, "capability": f"{major}.{minor}", "arch_list": env["TORCH_CUDA_ARCH_LIST"],
                     "parts": parts, "runs": runs, "commit": git_commit(), "python": sys.version.split()[0],
                     "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                     "triton": installed_version("triton"), "transformers": installed_version("transformers")}
    result: dict = {}
    ok = True
    path = os.path.join(out_dir, stem + ".json")
    done_files: list[str] = []

    def save() -> None:
        """The results so far, replaced atomically (a check cut at any point keeps its finished steps); the
        steps' own JSON files are removed once their rows are in it."""
        summary["seconds"] = round(time.time() - start, 1)
        write_json(path, {"summary": summary, **result})
        while done_files:
            os.remove(done_files.pop())

    def skipped(step: str) -> bool:
        if limit(step):
            return False
        summary.setdefault("skipped", []).append(f"{step}: under {MIN_STEP_S} s left of --deadline-s")
        print(f"{step}: skipped, under {MIN_STEP_S} s left", flush=True)
        save()
        return True

    with open(os.path.join(out_dir, stem + ".log"), "w") as log:
        code, text, secs = run(["nvcc", "--version"], log, 30)
        summary["nvcc"] = text.strip().splitlines()[-1] if code == 0 else f"nvcc failed ({code})"
        built = args.reuse_build and run([PY, "-c", REUSE_CHECK], log, 60, env)[0] == 0
        if built:
            code, secs = 0, 0.0
        else:
            code, text, secs = run([PY, "-m", "pip", "install", "-v", "--no-deps", "--no-build-isolation",
                                    "--no-index", "-e", "."], log, max(limit("build"), MIN_STEP_S), env)
        summary["build"] = {"ok": code == 0, "seconds": round(secs, 1), "reused": bool(built)}
        ok &= code == 0
        print(f"build: {'reused' if built else ('ok' if code == 0 else 'FAILED')} in {secs:.0f}s", flush=True)
        save()

        if "tests" in parts and not skipped("tests"):
            # Spread over processes where pytest-xdist is installed (the GPU is shared; tests are small), test by
            # test: whole files would leave one worker with all of test_compiled_step's compiles. One line per
            # test (-v), so a step stopped by its time limit still names what failed and what never ran.
            xdist = ["-n", "8", "--dist", "load"] if importlib.util.find_spec("xdist") else []
            per_test = ["--timeout", "60"] if importlib.util.find_spec("pytest_timeout") else []
            code, text, secs = run([PY, "-m", "pytest", "-v", "-rfE", "-p", "no:cacheprovider", *xdist, *per_test,
                                    *GPU_TESTS], log, limit("tests"), env)
            last = text.strip().splitlines()[-1] if text.strip() else ""
            counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", last)}
            if not counts:  # cut short: count the per-test lines instead
                for k in ("PASSED", "FAILED", "SKIPPED", "ERROR"):
                    counts[k.lower()] = len(re.findall(rf" {k} tests/", text))
            summary["tests"] = {"paths": GPU_TESTS, "exit_code": code, "seconds": round(secs, 1), **counts}
            summary["tests"]["failures"] = [ln.strip() for ln in text.splitlines()
                                            if re.search(r"(^|\s)(FAILED|ERROR)\s+tests/|^(FAILED|ERROR) ", ln)][:50]
            ok &= code == 0
            print(f"tests: exit {code}, {counts} in {secs:.0f}s", flush=True)
            for ln in summary["tests"]["failures"]:
                print("  " + ln[:300], flush=True)
            save()

        if "models" in parts:
            result["models"] = []
            by_name = {r[0]: r for r in MODEL_RUNS}
            for name, extra, cap in (by_name[r] for r in dict.fromkeys(runs)):
                if not limit(cap):
                    result["models"].append({"run": name, "skipped": f"under {MIN_STEP_S} s left of --deadline-s"})
                    print(f"models {name}: skipped, under {MIN_STEP_S} s left", flush=True)
                    save()
                    continue
                models_json = os.path.join(out_dir, f"{stem}_run_{name}.tmp.json")
                common = ["--dtype", "bfloat16", "--budget-s", "15", "--fast-budget-s", "90", "--repeats", "1",
                          "--long-s", "15", "--json", models_json, "--out", out_dir, "--no-plot"]
                # the run's own flags last: argparse keeps the last value, so they win over the common ones
                code, text, secs = run([PY, "benchmarks/throughput.py", *common, *extra], log, limit(cap), env)
                print(text[-5000:], flush=True)
                summary[f"models_{name}_exit_code"] = code
                ok &= code == 0
                # A run cut short by its time limit still leaves the rows it finished (saved after each row).
                result["models"].append({"run": name, "exit_code": code, "seconds": round(secs, 1),
                                         **_read_json(models_json, done_files)})
                save()

        if "ops" in parts and not skipped("ops"):
            bench_json = os.path.join(out_dir, stem + "_bench.json")
            code, text, secs = run([PY, "benchmarks/throughput.py", "--suite", "ops", "--shape", "8,522,768,64",
                                    "--shape", "1,522,768,64", "--shape", "8,1,768,64", "--dtype", "float32,bfloat16",
                                    "--json", bench_json], log, limit("ops"), env)
            print(text[-6000:], flush=True)
            summary["benchmark_exit_code"] = code
            ok &= code == 0
            result.update(_read_json(bench_json, done_files))
            save()

        if "micro" in parts and not skipped("micro"):
            micro_json = os.path.join(out_dir, stem + "_micro.json")
            if importlib.util.find_spec("pytest_benchmark") is None:
                summary["micro_benchmarks"] = "skipped: pytest-benchmark is not installed here (nothing is downloaded)"
                print(summary["micro_benchmarks"], flush=True)
            else:
                code, text, secs = run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks/ops",
                                        f"--benchmark-json={micro_json}"], log, limit("micro"), env)
                summary["micro_benchmarks_exit_code"] = code
                ok &= code == 0
                micro = _read_json(micro_json, done_files)
                result["micro_benchmarks"] = [
                    {"name": b["name"], "median_s": b["stats"]["median"], **b.get("extra_info", {})}
                    for b in micro.get("benchmarks", [])
                ]
                n_rows = len(result["micro_benchmarks"])
                print(f"micro-benchmarks: exit {code}, {n_rows} rows in {secs:.0f}s", flush=True)
            save()
    save()
    print(f"wrote {path} in {summary['seconds']:.0f}s")
    return 0 if ok else 1


# --reuse-build: the installed extension imports and was built from this csrc/ (an archive of a newer commit over
# the same folder keeps the old .so, which must not be timed under the new commit).
REUSE_CHECK = (
    "import babilong_fast._C, babilong_fast._build_info as b\n"
    "from babilong_fast._csrc_digest import csrc_digest\n"
    "assert getattr(b, 'CSRC_SHA256', None) == csrc_digest('.'), 'csrc/ changed since the build'\n"
)


def _read_json(path: str, done: list[str]) -> dict:
    """A step's JSON output ({} when it wrote none; its error when a kill cut the file); ``path`` is added to
    ``done`` to be removed once the check's own JSON holds it."""
    if not os.path.exists(path):
        return {}
    done.append(path)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"json_error": f"{os.path.basename(path)}: {type(e).__name__}: {e}"}


if __name__ == "__main__":
    sys.exit(main())
