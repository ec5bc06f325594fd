"""Shared benchmark helpers: environment record, timers, measured device ceilings."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import torch


def write_json(path: str, data: object) -> None:
    """``data`` as indented JSON at ``path``, replaced atomically: a kill mid-write leaves the previous file, never
    a cut one."""
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=2)
    os.replace(path + ".tmp", path)


def git_commit() -> str:
    """Commit of the working tree (``BABILONG_FAST_GIT_COMMIT`` wins: the device copy has no .git)."""
    if os.environ.get("BABILONG_FAST_GIT_COMMIT"):
        return os.environ["BABILONG_FAST_GIT_COMMIT"]
    try:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout, whatever the cwd
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=repo).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=repo)
        return sha + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_in_checkout(package_file: str) -> bool:
    """Whether the imported package's ``__init__.py`` is this checkout's (the source tree, an editable install,
    a strict editable install's links), not another installed copy's."""
    mine = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "babilong_fast", "__init__.py")
    try:
        return os.path.samefile(package_file, mine)
    except OSError:
        return False


def environment(device: torch.device | str | None = None) -> dict:
    """Device (``device``'s, default the GPU when there is one), versions and commit, for every results file."""
    import babilong_fast

    gpu = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device if gpu and device is not None else None) if gpu
        else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "backends": {k: {"available": v.available, "reason": v.reason} for k, v in babilong_fast.backends().items()},
        "babilong_fast": babilong_fast.__version__,
        # the commit is this checkout's: it describes the code timed only when the imported package is from it
        "package_in_checkout": package_in_checkout(babilong_fast.__file__),
    }
    info["triton"], info["transformers"] = installed_version("triton"), installed_version("transformers")
    # HF's Mamba (the stock Mamba rows) runs these packages' CUDA kernels when installed, else a PyTorch fallback
    info["mamba_ssm"], info["causal_conv1d"] = installed_version("mamba_ssm"), installed_version("causal_conv1d")
    return info


def installed_version(package: str) -> str | None:
    """Installed version of ``package`` (None when it is not installed), without importing it."""
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def time_cpu(fn: Callable[[int], object], repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn(i)`` over ``repeats`` calls after ``warmup``; ``i`` picks an input set."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_cuda_eager(fn: Callable[[int], object], repeats: int, warmup: int = 3) -> float:
    """Median seconds per call, launched from Python as a user would (host overhead included)."""
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    times = []
    for i in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(i)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def time_cuda_graph(fn: Callable[[int], object], n_sets: int, repeats: int, calls_per_replay: int = 8) -> float:
    """Median seconds per call of device work alone: calls captured in a CUDA graph, replays timed with events."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(n_sets):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls_per_replay):
            fn(i % n_sets)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / calls_per_replay)
    return statistics.median(times)


def measure_ceilings() -> dict:
    """Measured device ceilings: copy bandwidth (bytes read + written) and matmul rates (fp32 FMA, TF32, bf16)."""
    if not torch.cuda.is_available():
        return {}
    out = {}
    src = torch.randn(256 * 1024 * 1024, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    t = time_cuda_eager(lambda i, dst=dst, src=src: dst.copy_(src), repeats=10)
    out["copy_GBps"] = 2 * src.numel() * 4 / t / 1e9
    del src, dst
    n = 8192
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    for name, dtype, tf32 in (("fp32_TFLOPs", torch.float32, False), ("tf32_TFLOPs", torch.float32, True),
                              ("bf16_TFLOPs", torch.bfloat16, False)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
        t = time_cuda_eager(lambda i, a=a, b=b: a @ b, repeats=5, warmup=2)
        out[name] = 2 * n**3 / t / 1e12
    torch.backends.cuda.matmul.allow_tf32 = old_tf32
    return out
