"""scripts/constraints.txt pins every package scripts/setup_env.sh installs (torch aside: TORCH_SPEC), for every
Python version it names, so the README's two commands install the versions the tests passed with."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ["3.10", "3.11", "3.12", "3.13", "3.14"]


def _installed_names() -> set[str]:
    text = (ROOT / "scripts" / "setup_env.sh").read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("pip_q ") and "$TORCH_SPEC" in ln]
    return {re.split(r"[<>=!~]", w.strip('"'))[0].lower() for w in line.split()[1:] if "$" not in w}


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
        name, version = req.strip().split("==")
        assert name.lower() not in pins, f"{name} pinned twice for Python {python}"
        pins[name.lower()] = version
    return pins


def test_constraints_pin_what_setup_env_installs() -> None:
    names = _installed_names()
    assert {"transformers", "triton", "numpy", "pytest"} <= names
    for python in VERSIONS:
        pins = _pins(python)
        assert sorted(n.replace("_", "-") for n in names - set(pins)) == [], f"unpinned on Python {python}"
