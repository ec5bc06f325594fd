"""Drop-in patching: ``babilong_fast.patch(model)`` makes a model's own ``forward`` (and so ``generate``) run on
babilong_fast's kernels, ``babilong_fast.unpatch(model)`` undoes it.

Patching binds replacement methods on the model's instances (never on classes), so other models of the
same class and the ``state_dict`` are untouched. What to bind is decided per model class by a patcher
in :data:`PATCHERS`, keyed by ``module.qualname`` so that nothing is imported to recognise a class:

- transformers ``MambaForCausalLM`` / ``MambaModel``: :mod:`babilong_fast.models.mamba.hf_patch`;
- mamba_ssm ``MambaLMHeadModel`` / ``Mamba``, when mamba_ssm imports: :mod:`babilong_fast.models.mamba.ssm_patch`.

- the public ARMT / RMT repositories' wrappers (``AssociativeRecurrentWrapper``, ``RecurrentWrapper``,
  ``RecurrentWrapperLight``), recognised by their structure: :mod:`babilong_fast.patch_recurrent`.

Another model family plugs in with :func:`register_patcher`.

``babilong_fast.patch`` is this module and is callable: ``babilong_fast.patch(model)`` calls :func:`patch`
(the package attribute and the submodule share the name, so the module forwards calls).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from babilong_fast._binding import MISSING, bind
from babilong_fast.backends import Backend, check_backend
from babilong_fast.models.mamba.lm import DEFAULT_CHUNK_SIZE
from babilong_fast.models.plain_modules import is_class_method

Binding = tuple[nn.Module, str, Callable[..., Any]]
Patcher = Callable[[nn.Module], list[Binding]]
"""A patcher checks the model and returns ``(module, attribute, function)`` triples: each function is bound
as a method of its module; it reads its :class:`PatchOptions` from ``module.__dict__[OPTIONS_ATTR]``."""

OPTIONS_ATTR = "_babilong_fast_options"
RECORD_ATTR = "_babilong_fast_patched"
BOUND_ATTR = "_babilong_fast_bound"  # on the patched model: [(module, attribute, the method bound there)]

PATCHERS: dict[str, Patcher] = {}
_builtins_loaded = False


@dataclass(frozen=True)
class PatchOptions:
    """Settings the patched methods read.

    Args:
        backend: backend of the fused ops (``"auto"``, ``"cuda"``, ``"triton"``, ``"torch"``).
        chunk_size: tokens per chunk of a long input (the state is carried between chunks).
    """

    backend: Backend = "auto"
    chunk_size: int = DEFAULT_CHUNK_SIZE


def register_patcher(class_path: str, patcher: Patcher) -> None:
    """Register ``patcher`` for the class ``class_path`` (``"package.module.ClassName"``) and its subclasses."""
    PATCHERS[class_path] = patcher


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    from babilong_fast.models.mamba import hf_patch, parts
    from babilong_fast.models.mamba.compat import mamba_ssm_status

    register_patcher(parts.HF_LM, hf_patch.bindings)
    register_patcher(parts.HF_BACKBONE, hf_patch.bindings)
    if mamba_ssm_status()[0]:  # a broken install is reported once, and only Hugging Face models are patched
        from babilong_fast.models.mamba import ssm_patch

        register_patcher(parts.SSM_LM, ssm_patch.bindings)
        register_patcher(parts.SSM_MIXER, ssm_patch.bindings)


def _patcher_for(model: object) -> Patcher:
    _load_builtins()
    for cls in type(model).__mro__:
        patcher = PATCHERS.get(f"{cls.__module__}.{cls.__qualname__}")
        if patcher is not None:
            return patcher
    supported = ", ".join(p.rsplit(".", 1)[1] for p in PATCHERS)
    raise TypeError(
        f"babilong_fast.patch supports {supported} models and the public ARMT/RMT repositories' wrappers, "
        f"got {type(model).__name__}"
    )


def _check_options(backend: object, chunk_size: object) -> PatchOptions:
    check_backend(backend)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    return PatchOptions(backend, chunk_size)


def _check_not_nested(model: nn.Module) -> None:
    """Patching a model and also a module inside it (or outside it) would tangle their records: refuse."""
    if OPTIONS_ATTR in model.__dict__:
        raise ValueError(
            f"this {type(model).__name__} is already patched as part of the model that holds it; patch or unpatch "
            "that model instead"
        )
    for name, sub in model.named_modules():
        if sub is not model and RECORD_ATTR in sub.__dict__:
            raise ValueError(
                f"{name} ({type(sub).__name__}) is patched on its own: unpatch it before patching this model"
            )


def _module_name(model: nn.Module, module: nn.Module) -> str:
    if module is model:
        return "the model"
    return next((f"the model's {name}" for name, m in model.named_modules() if m is module), type(module).__name__)


def _check_not_replaced(model: nn.Module, bindings: list[Binding]) -> None:
    """An instance attribute the patch would bind over (accelerate's device-map and offload hooks replace
    ``forward``) would be hidden while patched, its hook skipped: refuse."""
    for module, name, _ in bindings:
        if name in module.__dict__ and not is_class_method(module, name, module.__dict__[name]):
            raise ValueError(
                f"{_module_name(model, module)} has its {name} replaced on the instance (accelerate's device-map or "
                "offload hooks?), which the patch would hide: patch before adding such hooks (the patched forward "
                "then runs the library's own where they are), or remove them first "
                "(accelerate.hooks.remove_hook_from_module(model, recurse=True))"
            )


def patch(model: nn.Module, backend: Backend = "auto", chunk_size: int = DEFAULT_CHUNK_SIZE) -> nn.Module:
    """Make ``model``'s own ``forward`` run on babilong_fast's kernels; returns ``model`` (patched in place).

    For Mamba: long inputs run in chunks of ``chunk_size`` tokens with every layer's state carried, logits only
    at the kept positions (``logits_to_keep``), and ``generate`` prefills once (in chunks) and then decodes
    one token per step from the state in the model's cache. Outputs equal the unpatched model's up to
    rounding. Patching again changes the options; weights and ``state_dict`` are untouched.

    Args:
        model: transformers ``MambaForCausalLM`` or ``MambaModel``; mamba_ssm ``MambaLMHeadModel`` or ``Mamba``
            when mamba_ssm is importable; the public ARMT / RMT wrappers (see
            :func:`babilong_fast.patch_recurrent.patch_recurrent`: their ``forward`` and ``generate`` run our
            ARMT / RMT on their own parameters).
        backend: ``"auto"`` (default), ``"cuda"``, ``"triton"`` or ``"torch"``.
        chunk_size: tokens per chunk (default 2048).

    Returns:
        ``model``.

    Raises:
        TypeError: a model of another type (the message lists the supported ones).
        ValueError: a bad ``backend`` or ``chunk_size``; a model inside a patched model, or holding one; a model
            whose ``forward`` (or its backbone's) is already replaced on the instance (accelerate's hooks).

    Examples::
        >>> import babilong_fast, torch
        >>> from transformers import MambaConfig, MambaForCausalLM
        >>> model = MambaForCausalLM(MambaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2)).eval()
        >>> model = babilong_fast.patch(model, chunk_size=512)
        >>> out = model.generate(torch.randint(0, 100, (1, 5000)), max_new_tokens=5, do_sample=False)
        >>> model = babilong_fast.unpatch(model)
    """
    options = _check_options(backend, chunk_size)
    from babilong_fast import patch_recurrent as rec

    if not isinstance(model, nn.Module):
        _patcher_for(model)  # TypeError listing the supported models
    if rec.is_reference_recurrent(model):  # segment size is the wrapper's own; chunk_size does not apply
        if rec.is_recurrent_patched(model):
            rec.unpatch_recurrent(model)
        return rec.patch_recurrent(model, backend)
    if RECORD_ATTR in model.__dict__:
        for module in model.__dict__[RECORD_ATTR]:
            module.__dict__[OPTIONS_ATTR] = options
        return model
    _check_not_nested(model)
    bindings = _patcher_for(model)(model)
    _check_not_replaced(model, bindings)
    modules: dict[nn.Module, dict[str, Any]] = {}
    bound = []
    for module, name, fn in bindings:
        saved = modules.setdefault(module, {})
        saved.setdefault(name, module.__dict__.get(name, MISSING))
        module.__dict__[name] = method = bind(fn, module)
        module.__dict__[OPTIONS_ATTR] = options
        bound.append((module, name, method))
    model.__dict__[RECORD_ATTR] = modules
    model.__dict__[BOUND_ATTR] = bound
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch` on ``model`` (and the submodules it patched); a model not patched is returned as is.

    Raises:
        ValueError: ``model`` is patched only as part of the model that holds it (the LM's backbone), or a method
            the patch bound was replaced since (accelerate's hooks added after patching: remove them first).
    """
    from babilong_fast import patch_recurrent as rec

    if not isinstance(model, nn.Module):
        _patcher_for(model)  # TypeError listing the supported models
    if rec.is_recurrent_patched(model):
        return rec.unpatch_recurrent(model)
    if rec.is_reference_recurrent(model):
        return model
    modules = model.__dict__.get(RECORD_ATTR)
    if modules is None:
        _patcher_for(model)  # TypeError for a model that could never have been patched
        if OPTIONS_ATTR in model.__dict__:
            raise ValueError(f"this {type(model).__name__} is patched as part of the model that holds it; unpatch "
                             "that model instead")
        return model
    for module, name, method in model.__dict__.get(BOUND_ATTR, ()):
        if module.__dict__.get(name) is not method:
            raise ValueError(
                f"{_module_name(model, module)} has its {name} replaced since it was patched (accelerate's "
                "hooks?), and unpatching would drop that: remove it first "
                "(accelerate.hooks.remove_hook_from_module(model, recurse=True)), then unpatch"
            )
    del model.__dict__[RECORD_ATTR]
    model.__dict__.pop(BOUND_ATTR, None)  # absent in a model patched (and pickled) before it was kept
    for module, saved in modules.items():
        for name, previous in saved.items():
            if previous is MISSING:
                module.__dict__.pop(name, None)
            else:
                module.__dict__[name] = previous
        module.__dict__.pop(OPTIONS_ATTR, None)
    return model


def is_patched(model: nn.Module) -> bool:
    """Whether :func:`patch` has been applied to ``model`` (and not undone). False for a module patched as part of
    the model that holds it (the LM's backbone); :func:`patch_options` gives its options."""
    from babilong_fast.patch_recurrent import is_recurrent_patched

    return RECORD_ATTR in model.__dict__ or is_recurrent_patched(model)


def patch_options(model: nn.Module) -> PatchOptions | None:
    """The options a patched ``model`` runs with, or None."""
    return model.__dict__.get(OPTIONS_ATTR)


class _CallableModule(types.ModuleType):
    """This module's type: calling the module calls :func:`patch`."""

    def __call__(self, model: nn.Module, backend: Backend = "auto", chunk_size: int = DEFAULT_CHUNK_SIZE) -> nn.Module:
        return patch(model, backend, chunk_size)


sys.modules[__name__].__class__ = _CallableModule
