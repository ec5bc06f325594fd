"""A normal (non-editable) install ships everything: the sdist holds the package, the Triton kernels and csrc/
(headers included, so it can build the extension), and the wheel built from that sdist holds the package with
the kernels as ``babilong_fast.kernels`` and its data assets, and no top-level ``kernels`` module; installed from
that wheel alone, the package generates the samples this checkout does."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from babilong_fast.data.dataset import BabilongGenerator

ROOT = Path(__file__).resolve().parents[1]


def _tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout (the tracked files are what a release ships)")
    done = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    assert done.returncode == 0, f"git ls-files failed: {done.stderr.decode(errors='replace')}"
    return [p for p in done.stdout.decode().split("\0") if p and (ROOT / p).is_file()]


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "BABILONG_FAST_SKIP_CUDA_BUILD": "1"}
    env.pop("BABILONG_FAST_FORCE_CUDA_BUILD", None)
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_sdist_and_wheel_contents(tmp_path: Path) -> None:
    tracked = _tracked_files()
    src = tmp_path / "src"
    for rel in tracked:  # the working tree's tracked files, as a release would take them
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    _run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "sdist")], src)
    (sdist,) = (tmp_path / "sdist").glob("babilong_fast-*.tar.gz")
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tar.extractall(tmp_path / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    shipped = [p for p in tracked if p.startswith(("babilong_fast/", "kernels/", "csrc/"))]
    shipped += ["setup.py", "pyproject.toml", "README.md"]
    assert any(p.endswith(".cuh") for p in shipped) and any(p.endswith(".h") for p in shipped)
    assert sorted(set(shipped) - names) == [], "tracked files missing from the sdist"

    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w",
          str(tmp_path / "wheel"), str(tmp_path / "unpacked" / top)], tmp_path)
    (wheel,) = (tmp_path / "wheel").glob("babilong_fast-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names} == {"babilong_fast", wheel.name.split("-py")[0] + ".dist-info"}
    want = [p for p in tracked if p.startswith("babilong_fast/") and not p.endswith(".so")]
    want += ["babilong_fast/" + p for p in tracked if p.startswith("kernels/") and p.endswith(".py")]
    assert any(p.startswith("babilong_fast/data/assets/") for p in want)
    assert sorted(set(want) - names) == [], "files missing from the wheel"

    # installed from the wheel alone (run from elsewhere), the kernels and the bundled data load from it
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(tmp_path / "site"),
          str(wheel)], tmp_path)
    kernel_module = "babilong_fast.kernels" + (".assoc_read" if importlib.util.find_spec("triton") else "")
    probe = (
        f"import babilong_fast, {kernel_module} as k\n"
        "from babilong_fast.data.dataset import BabilongGenerator\n"
        "s = BabilongGenerator('qa1', '1k', seed=0).take(1)[0]\n"
        "print(babilong_fast.__file__, k.__file__, s.num_tokens, s.target, sep='\\n')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    package, kernel, num_tokens, target = done.stdout.splitlines()[-4:]
    site = str(tmp_path / "site" / "babilong_fast")
    assert package.startswith(site) and kernel.startswith(site)
    want = BabilongGenerator("qa1", "1k", seed=0).take(1)[0]  # this checkout's
    assert (int(num_tokens), target) == (want.num_tokens, want.target)
