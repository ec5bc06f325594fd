"""Methods bound on one module instance by the patches, in a form that survives ``copy.deepcopy`` and pickling.

``types.MethodType`` pickles as ``getattr(obj, name)`` under the function's own name, which the patched module
does not have, so ``torch.save`` of a patched model wrote a file that could not be loaded; and a plain
``object()`` marker for "no attribute before patching" is copied by ``deepcopy``, so ``unpatch`` of a copy
stored the marker as ``forward``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


class _Missing:
    """Marks an attribute the instance did not have before patching; one object, kept by copies and pickles."""

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"

    def __copy__(self) -> _Missing:
        return self

    def __deepcopy__(self, memo: dict) -> _Missing:
        return self


MISSING = _Missing()


def bind(fn: Callable[..., Any], module: object) -> functools.partial:
    """``fn`` bound to ``module`` as its first argument: a picklable, deep-copyable method (``fn`` must be a
    module-level function). ``inspect.signature`` gives ``fn``'s without the first parameter, as for a method."""
    return functools.partial(fn, module)
