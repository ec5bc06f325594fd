"""Backend discovery and the single dispatch rule shared by every op.

Backends: ``cuda`` (the compiled extension ``babilong_fast._C``), ``triton`` (kernels in
``babilong_fast.kernels``) and ``torch`` (the pure-PyTorch reference, any device).
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import torch

Backend = Literal["auto", "cuda", "triton", "torch"]
BACKENDS: tuple[str, ...] = ("cuda", "triton", "torch")
ENV_BACKEND = "BABILONG_FAST_BACKEND"
ENV_DISABLE = "BABILONG_FAST_DISABLE"

# Per op, the fused backends whose kernels, as they are now, have passed their tests on a GPU
# (benchmarks/results/). Under ``auto`` the others stay on the torch reference until a device check has run
# them; ``backend="triton"`` still selects them. (assoc_read's Triton kernel passed on the H100 and was
# rewritten since, without a GPU.)
GPU_VERIFIED_BACKENDS: Mapping[str, frozenset[str]] = MappingProxyType({"assoc_read": frozenset({"cuda"})})

_log = logging.getLogger("babilong_fast")
_logged: set[tuple[str, str, str]] = set()

CUDA_INSTALL_HINT = (
    "install with a CUDA build of torch and nvcc present: "
    "`BABILONG_FAST_FORCE_CUDA_BUILD=1 pip install --no-build-isolation -e .`"
)


class BackendUnavailableError(RuntimeError):
    """Raised when a backend is asked for explicitly but cannot run here."""


@dataclass(frozen=True)
class BackendStatus:
    """Availability of one backend. ``reason`` says why not (or what it runs on)."""

    name: str
    available: bool
    reason: str


def triton_interpret() -> bool:
    """True when Triton kernels run in the interpreter (``TRITON_INTERPRET=1``) on CPU tensors."""
    # read as Triton's knobs read it (3.6 and 3.8): these words in any case, no surrounding spaces (" 1" is off)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on", "y")


@functools.lru_cache(maxsize=1)
def load_extension():
    """Import ``babilong_fast._C``; return ``(module or None, error text)``."""
    try:
        return importlib.import_module("babilong_fast._C"), ""
    except ImportError as e:
        return None, f"{type(e).__name__}: {e}"


def extension_function(name: str):
    """The compiled extension's function ``name``. Raises :class:`BackendUnavailableError` when the extension is
    not built, or was built from an older checkout that lacks ``name``."""
    ext, err = load_extension()
    if ext is None:
        raise BackendUnavailableError(f"babilong_fast._C is not built ({err}); {CUDA_INSTALL_HINT}")
    fn = getattr(ext, name, None)
    if fn is None:
        raise BackendUnavailableError(
            f"babilong_fast._C was built before it had {name}; rebuild it (pip install --no-build-isolation -e .)"
        )
    return fn


@functools.lru_cache(maxsize=1)
def _triton_import_error() -> str:
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"{type(e).__name__}: {e}"
    return ""


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = (version.split("+")[0].split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


@functools.lru_cache(maxsize=8)
def interpreter_error(triton_version: str | None = None, numpy_version: str | None = None) -> str:
    """Why Triton's interpreter cannot run these kernels here ("" when it can): before Triton 3.7 it takes a
    loop bound's value with ``int()`` of a one-element array, which numpy 2.4 made an error (triton-lang/triton
    issue 9171). Versions default to the installed ones."""
    if triton_version is None:
        import triton

        triton_version = triton.__version__
    if numpy_version is None:
        import numpy

        numpy_version = numpy.__version__
    if _major_minor(triton_version) < (3, 7) and _major_minor(numpy_version) >= (2, 4):
        return (
            f"Triton {triton_version}'s interpreter fails with numpy {numpy_version} (numpy 2.4 refuses int() of a "
            "one-element array, which it uses for loop bounds); install triton>=3.7 or numpy<2.4"
        )
    return ""


_KERNELS_PREFIX = "babilong_fast.kernels."


def _compiled_kernel_modules() -> list[str]:
    """The imported ``babilong_fast.kernels`` modules whose kernels were made for the GPU, not the interpreter
    (``triton.jit`` decides when the module is imported; the kernels are plain ``triton.jit`` functions)."""
    from triton.runtime.jit import JITFunction

    return [name.removeprefix(_KERNELS_PREFIX) for name, mod in list(sys.modules.items())
            if name.startswith(_KERNELS_PREFIX) and mod is not None
            and any(isinstance(obj, JITFunction) for obj in vars(mod).values())]


def _interpreter_problem() -> str:
    """Why the kernels cannot run in the interpreter now ("" when they can)."""
    compiled = _compiled_kernel_modules()
    if compiled:
        return (f"babilong_fast.kernels ({', '.join(compiled)}) was imported before TRITON_INTERPRET=1 was set, "
                "so its kernels take only CUDA tensors; set it before the first import (or start a new process)")
    return interpreter_error()


def _cuda_status() -> BackendStatus:
    ext, err = load_extension()
    if ext is None:
        return BackendStatus("cuda", False, f"extension babilong_fast._C not built ({err}); {CUDA_INSTALL_HINT}")
    if not torch.cuda.is_available():
        return BackendStatus("cuda", False, "extension built, but torch sees no CUDA device")
    err = arch_problem(_built_archs(), torch.cuda.get_device_capability())  # the current device, as auto uses
    if err:
        return BackendStatus("cuda", False, err)
    return BackendStatus("cuda", True, f"extension built; device {torch.cuda.get_device_name()}")


def _triton_status() -> BackendStatus:
    err = _triton_import_error()
    if err:
        return BackendStatus("triton", False, f"triton not importable ({err}); `pip install triton`")
    if torch.cuda.is_available():
        return BackendStatus("triton", True, f"GPU {torch.cuda.get_device_name()}")
    if triton_interpret():
        err = _interpreter_problem()
        if err:
            return BackendStatus("triton", False, err)
        return BackendStatus("triton", True, "interpreter (TRITON_INTERPRET=1), CPU tensors only when asked for")
    return BackendStatus("triton", False, "no CUDA device; set TRITON_INTERPRET=1 to run kernels on CPU tensors")


def backends() -> dict[str, BackendStatus]:
    """Report every backend's availability here, and why one is unavailable.

    Examples::
        >>> import babilong_fast
        >>> status = babilong_fast.backends()
        >>> sorted(status), status["torch"].available
        (['cuda', 'torch', 'triton'], True)
    """
    return {
        "cuda": _cuda_status(),
        "triton": _triton_status(),
        "torch": BackendStatus("torch", True, "pure-PyTorch reference, any device"),
    }


def check_backend(backend: object) -> Backend:
    """``backend`` if it is ``"auto"`` or one of :data:`BACKENDS`, else a ValueError listing them."""
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown backend {backend!r}: backend must be 'auto', {', '.join(map(repr, BACKENDS))}")
    return backend  # type: ignore[return-value]


def _built_archs() -> str | None:
    try:
        return importlib.import_module("babilong_fast._build_info").CUDA_ARCHS
    except (ImportError, AttributeError):  # a build from before the archs were recorded
        return None


def arch_problem(archs: str | None, capability: tuple[int, int]) -> str:
    """Why an extension built for ``archs`` (a ``TORCH_CUDA_ARCH_LIST``) cannot run on a GPU of ``capability``,
    or "" when it can (or when ``archs`` is unknown or not understood). Machine code for ``X.Y`` runs on ``X.Z``
    with ``Z >= Y`` (``X.Ya``: on ``X.Y`` only); ``+PTX`` is compiled at load time for any newer GPU."""
    if not archs:
        return ""
    major, minor = capability
    for entry in re.split(r"[;,\s]+", archs.strip()):
        m = re.fullmatch(r"(\d+)\.(\d+)([af]?)(\+PTX)?", entry)
        if m is None:
            return ""  # a named arch such as "Hopper": not checked
        a_major, a_minor, specific, ptx = int(m[1]), int(m[2]), m[3], m[4]
        if (a_major, a_minor) == (major, minor) or (ptx and (a_major, a_minor) <= (major, minor)):
            return ""
        if not specific and a_major == major and a_minor <= minor:
            return ""
    return (f"babilong_fast._C was built for TORCH_CUDA_ARCH_LIST={archs!r}, which does not run on this GPU "
            f"(sm_{major}{minor}); rebuild with TORCH_CUDA_ARCH_LIST=\"{major}.{minor}\"")


def _usable(name: str, device: torch.device) -> tuple[bool, str]:
    if name == "torch":
        return True, ""
    if name == "cuda":
        ext, err = load_extension()
        if ext is None:
            return False, f"babilong_fast._C is not built ({err}); {CUDA_INSTALL_HINT}"
        if device.type != "cuda":
            return False, f"the cuda backend needs CUDA tensors, got {device.type} tensors"
        try:
            capability = torch.cuda.get_device_capability(device)
        except (RuntimeError, AssertionError):  # no driver here: nothing can run on the device anyway
            return True, ""
        err = arch_problem(_built_archs(), capability)
        return not err, err
    if name == "triton":
        err = _triton_import_error()
        if err:
            return False, f"triton is not importable ({err}); `pip install triton`"
        if device.type == "cuda":
            return True, ""
        if device.type == "cpu" and triton_interpret():
            err = _interpreter_problem()
            return not err, err
        return False, (
            f"the triton backend needs CUDA tensors, got {device.type} tensors "
            "(CPU tensors run only under TRITON_INTERPRET=1, set before babilong_fast.kernels is imported)"
        )
    raise ValueError(f"unknown backend {name!r}; choose one of 'auto', {', '.join(map(repr, BACKENDS))}")


def resolve_backend(
    op: str, backend: str | None, device: torch.device, implemented: tuple[str, ...] = BACKENDS
) -> str:
    """Pick the backend for one call of ``op`` on tensors on ``device``.

    An explicit ``backend`` wins; ``"auto"`` (or None) defers to ``BABILONG_FAST_BACKEND``, then
    tries cuda, triton, torch in that order, among the backends ``op`` has (``implemented``) that
    :data:`GPU_VERIFIED_BACKENDS` lists for it; others stay on torch under ``auto``. On CPU tensors ``auto``
    always picks torch. ``BABILONG_FAST_DISABLE=1`` forces torch under ``auto``, whatever
    ``BABILONG_FAST_BACKEND`` says.
    """
    requested, source = ("auto" if backend is None else backend), "backend"
    if requested == "auto":
        requested, source = os.environ.get(ENV_BACKEND, "auto").strip().lower() or "auto", ENV_BACKEND
    if requested != "auto" and requested not in BACKENDS:
        raise ValueError(
            f"unknown backend {requested!r} (from {source}); choose one of 'auto', {', '.join(map(repr, BACKENDS))}")
    disabled = os.environ.get(ENV_DISABLE, "0").strip().lower() in ("1", "true", "yes", "on")
    if source == ENV_BACKEND and disabled:
        requested = "torch"  # the kill switch wins over the other variable; only a backend= argument beats it
    verified = GPU_VERIFIED_BACKENDS.get(op, frozenset())
    if requested == "auto":
        chosen = "torch"
        if not disabled and device.type == "cuda":
            chosen = next((b for b in BACKENDS if b in verified and b in implemented and _usable(b, device)[0]),
                          "torch")
    elif requested not in implemented:
        raise BackendUnavailableError(f"{op} has no {requested!r} backend yet; it has {', '.join(implemented)}")
    else:
        ok, why = _usable(requested, device)
        if not ok:
            raise BackendUnavailableError(f"{op}: backend {requested!r} is unavailable: {why}")
        chosen = requested
    key = (op, device.type, chosen)
    if key not in _logged:  # once per key: the note's availability checks stay off the per-call path
        _logged.add(key)
        note = ""
        if requested == "auto" and chosen == "torch" and not disabled and device.type == "cuda":
            skipped = [b for b in implemented if b != "torch" and b not in verified and _usable(b, device)[0]]
            if skipped:
                note = (f" (its {' and '.join(skipped)} kernels have not passed their tests on a GPU yet, so auto "
                        f"leaves them alone; backend={skipped[0]!r} uses them)")
        _log.info("babilong_fast: %s on %s tensors uses the %s backend%s", op, device.type, chosen, note)
    return chosen
