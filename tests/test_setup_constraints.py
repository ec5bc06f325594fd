"""scripts/constraints.txt pins every package scripts/setup_env.sh installs (torch aside: TORCH_SPEC), for every
Python version it names, so the README's two commands install the versions the tests passed with."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ["3.10", "3.11", "3.12", "3.13", "3.14"]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503, as pip compares names


def _installed_names() -> set[str]:
    """Packages named by every ``pip_q`` call of setup_env.sh (words with ``$`` are variables or flags)."""
    text = (ROOT / "scripts" / "setup_env.sh").read_text().replace("\\\n", " ")
    calls = [ln.split()[1:] for ln in text.splitlines() if ln.startswith("pip_q ")]
    assert calls, "no pip_q call found in setup_env.sh"
    return {_norm(re.split(r"[<>=!~ ]", w.strip('"'))[0]) for words in calls for w in words if "$" not in w}


def _pins(python: str) -> dict[str, str]:
    """name -> version pinned for ``python`` (markers of the form python_version <op> "X.Y", joined by and)."""
    def holds(marker: str) -> bool:
        for op, v in re.findall(r'python_version\s*([<>=!]=?)\s*"([\d.]+)"', marker):
            a, b = tuple(map(int, python.split("."))), tuple(map(int, v.split(".")))
            if not {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b, "!=": a != b}[op]:
                return False
        return True

    pins: dict[str, str] = {}
    for raw in (ROOT / "scripts" / "constraints.txt").read_text().splitlines():
        req, _, marker = raw.split("#")[0].partition(";")
        if not req.strip() or not holds(marker):
            continue
        assert req.count("==") == 1, f"not an exact pin: {raw!r}"
        name, version = (part.strip() for part in req.split("=="))
        assert _norm(name) not in pins, f"{name} pinned twice for Python {python}"
        pins[_norm(name)] = version
    return pins


def test_constraints_pin_what_setup_env_installs() -> None:
    names = _installed_names()
    assert {"transformers", "triton", "numpy", "pytest", "pytest-benchmark"} <= names
    for python in VERSIONS:
        assert sorted(names - set(_pins(python))) == [], f"unpinned on Python {python}"
