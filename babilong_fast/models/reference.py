"""Build :class:`ARMT` / :class:`RMT` from the public reference implementations' objects, sharing their weights.

The public repositories are recognised by class name and attributes (duck typing); they are never imported:

* ARMT (``RodkinIvan/associative-recurrent-memory-transformer``, ``modeling_amt/language_modeling.py``):
  ``AssociativeRecurrentWrapper(memory_cell, **rmt_config)`` around ``AssociativeMemoryCell`` (``.model``, a
  GPT-2 LM whose ``transformer.h[l]`` are ``AssociativeLayerWrapper``s holding the original block as ``.layer``
  and the projections ``W_mq, W_mk, W_mv, W_mb``; ``.memory``, the ``[M, d]`` memory-token embeddings).
* RMT (``booydar/recurrent-memory-transformer``, branch ``babilong-release``, ``modeling_rmt``):
  ``RecurrentWrapper`` / ``RecurrentWrapperLight(memory_cell, **rmt_config)`` around ``MemoryCell`` (``.model``,
  a plain GPT-2 LM; ``.memory``). The RMT variant in the ARMT repository is accepted too (same math) when its
  ``wrap_pos`` is off.

Shared means the same ``nn.Parameter`` objects: training, ``.to()`` or ``load_state_dict`` on either model
changes both. ``copy=True`` deep-copies instead.
"""

from __future__ import annotations

import copy as _copy
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

if TYPE_CHECKING:
    from babilong_fast.models.armt import ARMT
    from babilong_fast.models.rmt import RMT

ARMT_WRAPPER, ARMT_CELL, ARMT_LAYER = "AssociativeRecurrentWrapper", "AssociativeMemoryCell", "AssociativeLayerWrapper"
RMT_WRAPPER, RMT_WRAPPER_LIGHT, RMT_CELL = "RecurrentWrapper", "RecurrentWrapperLight", "MemoryCell"
LEFT_ALIGNMENTS = (None, "left")
# The public classes whose math babilong_fast implements (RMT-BL's MemoryCellGenerate and RecurrentWrapperLight
# compute what MemoryCell / RecurrentWrapper do), and the methods that define it: a subclass that overrides one of
# them (RMT-BL's RecurrentWrapperAllMemories, for one) computes something else.
KNOWN_CLASSES = {
    ("armt", "wrapper"): (ARMT_WRAPPER,), ("armt", "cell"): (ARMT_CELL,),
    ("rmt", "wrapper"): (RMT_WRAPPER, RMT_WRAPPER_LIGHT), ("rmt", "cell"): (RMT_CELL, "MemoryCellGenerate"),
}
MATH_METHODS = {
    "wrapper": ("forward", "generate", "segment", "split_tensor", "process_outputs", "manage_gradients"),
    "cell": ("forward", "generate", "process_input", "process_output", "pad_attention_mask", "set_memory",
             "create_memory"),
}

ArmtT = TypeVar("ArmtT", bound="ARMT")
RmtT = TypeVar("RmtT", bound="RMT")


class ReferenceModelError(ValueError):
    """A reference model that cannot be expressed as a babilong_fast model (unsupported setting or layout)."""


def class_names(obj: object) -> set[str]:
    """Names of ``type(obj)`` and its bases: how the reference classes are recognised (subclasses included)."""
    return {c.__name__ for c in type(obj).__mro__}


def is_wrapper(obj: object, kind: str) -> bool:
    """``obj`` is a reference recurrent wrapper of ``kind`` (``"armt"`` or ``"rmt"``): class name + attributes."""
    name = ARMT_WRAPPER if kind == "armt" else RMT_WRAPPER
    return (
        isinstance(obj, nn.Module)
        and name in class_names(obj)
        and isinstance(getattr(obj, "rmt_config", None), dict)
        and is_cell(getattr(obj, "memory_cell", None), kind)
    )


def is_cell(obj: object, kind: str) -> bool:
    """``obj`` is a reference memory cell of ``kind``: class name, ``.model``, ``.memory``, ``.num_mem_tokens``."""
    name = ARMT_CELL if kind == "armt" else RMT_CELL
    return (
        isinstance(obj, nn.Module)
        and name in class_names(obj)
        and all(hasattr(obj, a) for a in ("model", "memory", "num_mem_tokens"))
    )


def reference_kind(obj: object) -> str | None:
    """``"armt"``, ``"rmt"`` for a reference wrapper or cell, else None."""
    for kind in ("armt", "rmt"):
        if is_wrapper(obj, kind) or is_cell(obj, kind):
            return kind
    return None


def segment_config(wrapper: nn.Module) -> int:
    """``rmt_config['segment_size']`` of a reference wrapper, after checking the segmentation is left-aligned."""
    cfg = wrapper.rmt_config
    align = cfg.get("segment_alignment")
    if align not in LEFT_ALIGNMENTS:
        raise ReferenceModelError(
            f"rmt_config['segment_alignment']={align!r} is not supported: babilong_fast segments left-aligned "
            "(segment_alignment None or 'left', as every BABILong script)"
        )
    size = cfg.get("segment_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ReferenceModelError(f"rmt_config['segment_size'] must be an integer >= 1, got {size!r}")
    return size


def check_not_overridden(obj: object, kind: str, role: str) -> None:
    """ReferenceModelError if a subclass of the public ``role`` class (``"wrapper"``/``"cell"``) of ``kind``
    redefines a method that makes its math (see ``MATH_METHODS``): babilong_fast would compute the public one."""
    known = KNOWN_CLASSES[(kind, role)]
    for c in type(obj).__mro__:
        if c.__name__ in known:
            return
        if changed := [m for m in MATH_METHODS[role] if m in vars(c)]:
            raise ReferenceModelError(
                f"{type(obj).__name__} subclasses the public {role} and redefines {', '.join(changed)} (in "
                f"{c.__name__}): babilong_fast implements only {' / '.join(known)}'s math"
            )


def _split(reference: object, kind: str, segment_size: int | None) -> tuple[nn.Module, int]:
    """``(cell, segment_size)`` from a wrapper or a cell; a cell needs ``segment_size``."""
    if is_wrapper(reference, kind):
        check_not_overridden(reference, kind, "wrapper")
        check_not_overridden(reference.memory_cell, kind, "cell")
        size = segment_config(reference)
        if segment_size is not None and segment_size != size:
            raise ReferenceModelError(
                f"segment_size={segment_size} differs from the wrapper's rmt_config['segment_size']={size}; "
                "leave segment_size out to use the wrapper's"
            )
        return reference.memory_cell, size
    if is_cell(reference, kind):
        check_not_overridden(reference, kind, "cell")
        if segment_size is None:
            raise ReferenceModelError(
                f"a bare {type(reference).__name__} has no segment size: pass segment_size= (or pass its wrapper)"
            )
        return reference, segment_size
    want = (
        f"{ARMT_WRAPPER} or {ARMT_CELL}" if kind == "armt" else f"{RMT_WRAPPER} ({RMT_WRAPPER_LIGHT}) or {RMT_CELL}"
    )
    other = reference_kind(reference)
    hint = f" (it is an {other.upper()} reference model)" if other is not None else ""
    raise TypeError(f"expected a reference {want} object, got {type(reference).__name__}{hint}")


def _check_gpt2(lm: object, where: str) -> nn.Module:
    tr = getattr(lm, "transformer", None)
    model_type = getattr(getattr(lm, "config", None), "model_type", None)
    if (
        not isinstance(lm, nn.Module)
        or model_type != "gpt2"
        or tr is None
        or not all(hasattr(tr, a) for a in ("h", "wte", "wpe", "ln_f"))
        or not hasattr(lm, "lm_head")
    ):
        raise ReferenceModelError(
            f"{where} must be a transformers GPT-2 LM (GPT2LMHeadModel); got {type(lm).__name__} "
            f"(model_type {model_type!r}); only GPT-2 backbones are supported"
        )
    return lm


# Wrappers that run the module they hold unchanged: torch.compile's OptimizedModule, torch's checkpoint_wrapper.
TRANSPARENT_WRAPPERS = ("_orig_mod", "_checkpoint_wrapped_module")


def _check_block(block: object, where: str) -> None:
    """ReferenceModelError unless ``block`` is a GPT-2 block, or one inside transparent wrappers (another wrapper,
    such as the ARMT repository's per-layer-memory ``ParallelLayerWrapper``, may change its math)."""
    inner = block
    while True:
        held = next((m for m in (getattr(inner, a, None) for a in TRANSPARENT_WRAPPERS) if isinstance(m, nn.Module)),
                    None)
        if held is None:
            break
        inner = held
    if "GPT2Block" not in class_names(inner):
        raise ReferenceModelError(
            f"{where} is a {type(inner).__name__}, not a transformers GPT2Block: babilong_fast runs the plain GPT-2 "
            "blocks of the public RMT / ARMT (torch.compile'd or checkpoint_wrapper'd ones too), not other layers"
        )


def _check_memory(cell: nn.Module, d_model: int) -> tuple[nn.Parameter, int]:
    M = cell.num_mem_tokens
    if not isinstance(M, int) or isinstance(M, bool) or M < 1:
        raise ReferenceModelError(f"num_mem_tokens must be an integer >= 1, got {M!r}")
    memory = cell.memory
    if not isinstance(memory, nn.Parameter) or tuple(memory.shape) != (M, d_model):
        raise ReferenceModelError(
            f"the cell's memory must be an nn.Parameter of shape [{M}, {d_model}], got "
            f"{type(memory).__name__} {tuple(getattr(memory, 'shape', ()))}"
        )
    if getattr(cell, "wrap_pos", False):
        raise ReferenceModelError(
            "wrap_pos=True (extra position embeddings for memory tokens) is not supported; "
            "build the cell with wrap_pos=False, as the BABILong runners do"
        )
    return memory, M


def _check_linear(layer: nn.Module, name: str, shape: tuple[int, int], bias: bool, where: str) -> nn.Linear:
    lin = getattr(layer, name, None)
    ok = (
        isinstance(lin, nn.Linear)
        and tuple(lin.weight.shape) == shape
        and (lin.bias is not None) == bias
    )
    if not ok:
        got = tuple(lin.weight.shape) if isinstance(lin, nn.Linear) else type(lin).__name__
        raise ReferenceModelError(
            f"{where}.{name} must be an nn.Linear with weight {list(shape)} and {'a' if bias else 'no'} bias, got {got}"
        )
    return lin


def _assoc_layers(cell: nn.Module, lm: nn.Module, M: int, d_model: int) -> tuple[list[nn.Module], int, int, bool]:
    """Check every ``AssociativeLayerWrapper``; returns ``(wrappers, d_mem, nu, correction)``."""
    h = lm.transformer.h
    layers_attr = getattr(cell, "layers", h)
    if layers_attr is not h:
        raise ReferenceModelError("the cell must wrap the backbone's transformer.h (layers_attr='transformer.h')")
    d_mem = cell.d_mem if hasattr(cell, "d_mem") else None
    wrappers, nus, corrections = [], set(), set()
    for i, w in enumerate(h):
        where = f"transformer.h[{i}]"
        if ARMT_LAYER not in class_names(w) or not isinstance(getattr(w, "layer", None), nn.Module):
            raise ReferenceModelError(f"{where} is a {type(w).__name__}, expected an {ARMT_LAYER} with .layer")
        extra = [a for a in ("n_heads", "use_denom", "gating") if hasattr(w, a)]
        if extra:
            raise ReferenceModelError(
                f"{where} has {', '.join(extra)}: the 'experimental' branch ARMT (multi-head, L2-normalised "
                "features, gating) is not supported; babilong_fast implements the released ARMT (HEAD)"
            )
        _check_block(w.layer, f"{where}.layer")
        nu = getattr(getattr(w, "phi", None), "nu", None)
        if not isinstance(nu, int) or nu < 1:
            raise ReferenceModelError(f"{where}.phi must be the DPFP feature map with an integer .nu, got {w.phi!r}")
        if d_mem is None:
            d_mem = w.d_mem
        if getattr(w, "d_mem", d_mem) != d_mem or getattr(w, "num_mem_tokens", M) != M:
            raise ReferenceModelError(f"{where}: d_mem / num_mem_tokens differ from the cell's ({d_mem}, {M})")
        if getattr(w, "d_key", None) != 2 * nu * d_mem:
            raise ReferenceModelError(
                f"{where}.d_key={getattr(w, 'd_key', None)!r} does not equal 2 * nu * d_mem = {2 * nu * d_mem}: "
                "only the DPFP feature map (d_key = 2 nu d_mem) is supported"
            )
        _check_linear(w, "W_mq", (d_mem, d_model), False, where)
        _check_linear(w, "W_mk", (d_mem, d_model), False, where)
        _check_linear(w, "W_mv", (d_model, d_model), False, where)
        _check_linear(w, "W_mb", (1, d_model), True, where)
        nus.add(nu)
        corrections.add(bool(getattr(w, "correction", True)))
        wrappers.append(w)
    if len(nus) != 1 or len(corrections) != 1:
        raise ReferenceModelError(f"all layers must share nu and correction; got nu {nus}, correction {corrections}")
    return wrappers, d_mem, nus.pop(), corrections.pop()


def _shallow_module_copy(module: nn.Module) -> nn.Module:
    """A new module object with the same children, parameters and attributes, but its own containers."""
    view = _copy.copy(module)
    for key, value in module.__dict__.items():
        if isinstance(value, (dict, set, list)):
            object.__setattr__(view, key, _copy.copy(value))
    return view


def backbone_view(lm: nn.Module, blocks: list[nn.Module]) -> nn.Module:
    """The GPT-2 LM ``lm`` with ``transformer.h`` replaced by ``blocks``, sharing every other submodule.

    ``lm`` itself is not modified: the returned LM and its ``transformer`` are new container objects.
    """
    view = _shallow_module_copy(lm)
    tr = _shallow_module_copy(lm.transformer)
    tr.h = nn.ModuleList(blocks)
    view.transformer = tr
    return view


def container_pairs(reference_lm: nn.Module, backbone: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """``(reference container, our container)`` pairs whose mode flags must follow the reference's (see patching)."""
    if backbone is reference_lm:
        return []
    return [(reference_lm, backbone), (reference_lm.transformer, backbone.transformer)]


def _own_mode(model: nn.Module, own: list[nn.Module], training: bool) -> None:
    """Set the train/eval flag of the containers we created only: ``model.train()`` would reach shared modules."""
    for m in (model, *own):
        m.training = training


def _fork_rng(device: torch.device) -> AbstractContextManager[None]:
    """Constructing our model draws random initial weights that are thrown away: keep the caller's RNG as it was."""
    devices = [device] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def armt_from_reference(
    cls: type[ArmtT],
    reference: object,
    *,
    segment_size: int | None = None,
    copy: bool = False,
    backend: Any = "auto",
) -> ArmtT:
    """Implementation of :meth:`ARMT.from_reference`: see there."""
    cell, size = _split(reference, "armt", segment_size)
    lm = _check_gpt2(cell.model, f"{type(cell).__name__}.model")
    d_model = lm.transformer.wte.weight.shape[1]
    memory, M = _check_memory(cell, d_model)
    wrappers, d_mem, nu, correction = _assoc_layers(cell, lm, M, d_model)
    backbone = backbone_view(lm, [w.layer for w in wrappers])
    with _fork_rng(memory.device):
        model = cls(
            backbone, num_mem_tokens=M, d_mem=d_mem, nu=nu, correction=correction, segment_size=size, backend=backend
        )
    model.memory = memory
    for ours, w in zip(model.layers, wrappers, strict=True):
        ours.W_q, ours.W_k, ours.W_v, ours.W_b = w.W_mq, w.W_mk, w.W_mv, w.W_mb
    _own_mode(model, [model.layers, *model.layers], cell.training)
    return _copy.deepcopy(model) if copy else model


def rmt_from_reference(
    cls: type[RmtT], reference: object, *, segment_size: int | None = None, copy: bool = False
) -> RmtT:
    """Implementation of :meth:`RMT.from_reference`: see there."""
    cell, size = _split(reference, "rmt", segment_size)
    lm = _check_gpt2(cell.model, f"{type(cell).__name__}.model")
    d_model = lm.transformer.wte.weight.shape[1]
    memory, M = _check_memory(cell, d_model)
    for i, block in enumerate(lm.transformer.h):
        if ARMT_LAYER in class_names(block):
            raise ReferenceModelError(
                f"transformer.h[{i}] is an {ARMT_LAYER}: this is an ARMT, use ARMT.from_reference"
            )
        _check_block(block, f"transformer.h[{i}]")
    with _fork_rng(memory.device):
        model = cls(lm, num_mem_tokens=M, segment_size=size)
    model.memory = memory
    _own_mode(model, [], cell.training)
    return _copy.deepcopy(model) if copy else model
