"""babilong_fast: Triton and CUDA kernels for recurrent-memory models (RMT, ARMT, Mamba) on very long inputs.

Importing this package never needs the compiled extension, Triton or a GPU.
"""
from __future__ import annotations

import os as _os

from babilong_fast import ops
from babilong_fast.backends import GPU_VERIFIED_BACKENDS, BackendStatus, BackendUnavailableError, backends

__version__ = "0.1.0"

# Run from a source checkout (not installed), ``babilong_fast.kernels`` lives in ../kernels. A finder at the end
# of sys.meta_path maps that one name (an installed or editable package's own mapping wins); adding the checkout
# root to __path__ instead would also make setup.py importable as babilong_fast.setup.
_src_kernels = _os.path.abspath(_os.path.join(_os.path.dirname(__file__), _os.pardir, "kernels", "__init__.py"))
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "kernels")) and _os.path.isfile(_src_kernels):
    import importlib.util as _util
    import sys as _sys

    class _SourceKernelsFinder:
        @staticmethod
        def find_spec(name: str, path: object = None, target: object = None):
            if name != "babilong_fast.kernels":
                return None
            folder = _os.path.dirname(_src_kernels)
            return _util.spec_from_file_location(name, _src_kernels, submodule_search_locations=[folder])

    if not any(isinstance(f, _SourceKernelsFinder) for f in _sys.meta_path):
        _sys.meta_path.append(_SourceKernelsFinder())


def __getattr__(name: str):
    # patch/unpatch load lazily: importing babilong_fast must not import the models (or transformers).
    # ``babilong_fast.patch`` is the submodule, which is callable (it forwards to its patch()).
    if name in ("patch", "unpatch"):
        import importlib

        module = importlib.import_module("babilong_fast.patch")
        return module if name == "patch" else module.unpatch
    raise AttributeError(f"module 'babilong_fast' has no attribute {name!r}")


__all__ = ["GPU_VERIFIED_BACKENDS", "BackendStatus", "BackendUnavailableError", "backends", "ops", "patch", "unpatch",
           "__version__"]
