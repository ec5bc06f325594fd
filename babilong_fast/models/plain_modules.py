"""Whether a module can be replaced by reading its weights: of the expected class and without forward hooks.

The fast paths (lean GPT-2 blocks, the fused segment embedding and ``ln_f`` rows, the chunked Mamba mixer)
read ``module.weight`` directly. A wrapped module, such as a LoRA adapter (peft keeps the base ``weight``
visible) or a module with forward hooks, would then be skipped silently; these checks find them.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterable

from torch import nn


def not_plain(module: nn.Module, expected: tuple[type, ...], name: str) -> str | None:
    """Why ``module`` (called ``name``) is not a plain instance of one of ``expected`` (None: it is)."""
    if type(module) not in expected:
        want = " / ".join(_qualified(t) for t in expected)
        return f"{name} is a {_qualified(type(module))}, not a plain {want} (an adapter such as LoRA?)"
    if has_forward_hooks(module):
        return f"{name} has forward hooks"
    return replaced_forward(module, name)


def is_class_method(module: nn.Module, name: str, value: object) -> bool:
    """Whether ``value`` is ``module``'s class attribute ``name`` bound to ``module`` (what accelerate's
    ``remove_hook_from_module`` leaves on the instance), so calling it is calling the class's own."""
    return (isinstance(value, types.MethodType) and value.__self__ is module
            and value.__func__ is getattr(type(module), name, None))


def replaced_forward(module: nn.Module, name: str) -> str | None:
    """Why ``module``'s forward, replaced on the instance (accelerate's offload / device-map hooks set one), would be
    skipped where its weights are read directly; None if it is not: babilong_fast's own patch is not counted, nor
    the class's forward bound to the instance."""
    from babilong_fast.patch import OPTIONS_ATTR

    fn = module.__dict__.get("forward", module)  # module: no instance forward
    if fn is module or OPTIONS_ATTR in module.__dict__ or is_class_method(module, "forward", fn):
        return None
    return f"{name} has its forward replaced (accelerate offload or device-map hooks?)"


def hooked_or_replaced(module: nn.Module, name: str) -> str | None:
    """Why calling ``module``'s parts instead of ``module`` would skip something: its hooks (forward or backward)
    or a replaced forward (:func:`replaced_forward`); None if neither."""
    return f"{name} has hooks" if has_hooks(module) else replaced_forward(module, name)


def first_hooked_or_replaced(named: Iterable[tuple[str, nn.Module]]) -> str | None:
    """The first :func:`hooked_or_replaced` reason among ``(name, module)`` pairs, or None."""
    return next((why for name, module in named if (why := hooked_or_replaced(module, name))), None)


def has_forward_hooks(module: nn.Module) -> bool:
    """Whether ``module`` has forward (or forward-pre) hooks, other than transformers' idle output-capturing ones
    (:func:`idle_output_capture`)."""
    return bool(module._forward_pre_hooks) or any(not idle_output_capture(h) for h in module._forward_hooks.values())


def has_hooks(module: nn.Module) -> bool:
    """Whether ``module`` has forward or backward hooks (they run only where the module itself is called)."""
    return has_forward_hooks(module) or bool(module._backward_hooks or module._backward_pre_hooks)


def idle_output_capture(hook: object) -> bool:
    """Whether ``hook`` is transformers' output-capturing hook (5.x installs it for good on GPT-2's blocks and
    attention the first time a model runs with ``output_hidden_states`` or ``output_attentions``, as the public RMT
    cell's forward does) while no transformers forward is collecting: it then returns at once, so skipping it
    changes nothing."""
    where = getattr(hook, "__module__", None) or ""
    if getattr(hook, "__name__", None) != "output_capturing_hook" or not where.startswith("transformers."):
        return False
    capturing = sys.modules.get(where)
    collector = getattr(capturing, "_active_collector", None)
    return collector is not None and collector.get() is None


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def first_not_plain(modules: dict[str, tuple[nn.Module, tuple[type, ...]]]) -> str | None:
    """The first reason among ``{name: (module, expected classes)}``, or None."""
    for name, (module, expected) in modules.items():
        why = not_plain(module, expected, name)
        if why:
            return why
    return None
