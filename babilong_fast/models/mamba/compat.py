"""Whether mamba_ssm can be used here; a broken install (its compiled extension missing) is reported once."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import warnings

# Words in the ImportError of a mamba_ssm whose compiled pieces cannot be loaded.
_EXTENSION_HINTS = ("selective_scan_cuda", "causal_conv1d", "_cuda", ".so", "undefined symbol", "libc10", "libtorch")


@functools.lru_cache(maxsize=1)
def mamba_ssm_status() -> tuple[bool, str]:
    """``(usable, reason)`` for mamba_ssm, found out once per process.

    Not installed: ``(False, reason)``, silently. Installed but not importable (typically its CUDA extension
    ``selective_scan_cuda`` is missing or built for another torch): ``(False, reason)`` and one
    ``RuntimeWarning`` saying so; everything else, Hugging Face Mamba included, keeps working.
    """
    if importlib.util.find_spec("mamba_ssm") is None:
        return False, "mamba_ssm is not installed (`pip install 'babilong_fast[mamba]'`)"
    try:
        module = importlib.import_module("mamba_ssm")
    except (ImportError, OSError, RuntimeError) as e:
        text = f"{type(e).__name__}: {e}"
        what = (
            "mamba_ssm is installed but its compiled CUDA extension cannot be loaded"
            if any(h in str(e) for h in _EXTENSION_HINTS)
            else "mamba_ssm is installed but cannot be imported"
        )
        reason = (
            f"{what} ({text}); babilong_fast keeps working with Hugging Face Mamba but cannot patch mamba_ssm "
            "models. Rebuild it for this torch: `pip install --no-build-isolation --force-reinstall mamba-ssm`"
        )
        warnings.warn(reason, RuntimeWarning, stacklevel=2)
        return False, reason
    return True, f"mamba_ssm {getattr(module, '__version__', '(unknown version)')}"
