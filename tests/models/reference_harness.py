"""Run the public RMT / ARMT code (imported from a checkout) and babilong_fast's patch of it on the same weights.

Used by ``tests/models/test_reference_patch.py`` in-process, and as a script in a subprocess whose path starts
with an older transformers (the public code targets transformers 4.4x; its ARMT does not run on 5.x)::

    python -m tests.models.reference_harness SPECS_IN RESULTS_OUT

``SPECS_IN`` is a ``torch.save``d list of specs (kind, checkout path, parameters, inputs); ``RESULTS_OUT``
receives, per spec, the reference's results and ours (patched wrapper, and ``from_reference`` called directly).
No public code is held here: the reference classes are imported from the checkout given.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
import warnings
from typing import Any

import torch

SEG, M, D_MEM, VOCAB = 8, 3, 8, 96
EOS = VOCAB - 1
N_FWD = 8 * SEG + 5  # 9 segments, the last one short
N_GEN = 8 * SEG + 3
MAX_NEW = 6
CONFIG = {
    "n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 64, "vocab_size": VOCAB, "bos_token_id": EOS,
    "eos_token_id": EOS, "initializer_range": 0.1, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
}
KINDS = ("armt", "rmt", "rmt_light", "armt_repo_rmt")
"""``armt_repo_rmt``: the RMT variant in the ARMT repository (``modeling_rmt``, built with ``wrap_pos=False``)."""


def import_reference(kind: str, repo: str) -> types.ModuleType:
    """The checkout's language-modeling module for ``kind`` (its ``modeling_*`` packages imported from ``repo``)."""
    if repo in sys.path:
        sys.path.remove(repo)
    sys.path.insert(0, repo)  # first: both repositories have a modeling_rmt package
    for name in list(sys.modules):  # never mix the two repositories' modules
        if name.split(".")[0] in ("modeling_rmt", "modeling_amt"):
            mod_file = os.path.realpath(getattr(sys.modules[name], "__file__", None) or "")
            if not mod_file.startswith(os.path.realpath(repo) + os.sep):
                del sys.modules[name]
    if kind == "armt":
        try:
            import wandb  # noqa: F401  # imported at the top of the ARMT module, never used by the model classes
        except ImportError:
            sys.modules["wandb"] = types.ModuleType("wandb")
        return importlib.import_module("modeling_amt.language_modeling")
    if kind == "rmt_light":
        return importlib.import_module("modeling_rmt.experimental")
    return importlib.import_module("modeling_rmt.language_modeling")


def build_reference(kind: str, repo: str) -> torch.nn.Module:
    """A tiny reference wrapper of ``kind`` (random weights; overwrite them with :func:`load_params`)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    mod = import_reference(kind, repo)
    lm = GPT2LMHeadModel(GPT2Config(**CONFIG))
    cfg = {"segment_size": SEG, "k2": -1, "max_n_segments": 16}
    if kind == "armt":
        cell = mod.AssociativeMemoryCell(lm, num_mem_tokens=M, d_mem=D_MEM, wrap_pos=False, correction=True)
        return mod.AssociativeRecurrentWrapper(cell, **cfg)
    base = import_reference("rmt", repo)
    if kind == "armt_repo_rmt":
        return base.RecurrentWrapper(base.MemoryCell(lm, num_mem_tokens=M, wrap_pos=False), **cfg)
    cell = base.MemoryCell(lm, num_mem_tokens=M)
    wrapper_cls = mod.RecurrentWrapperLight if kind == "rmt_light" else base.RecurrentWrapper
    return wrapper_cls(cell, **cfg)


def randomize(wrapper: torch.nn.Module) -> None:
    """Memory that matters: ARMT's W_mv starts at zero; make the projections O(1) and W_mv random."""
    d = CONFIG["n_embd"]
    with torch.no_grad():
        for block in wrapper.memory_cell.model.transformer.h:
            if hasattr(block, "W_mv"):
                block.W_mq.weight.normal_(0, 1.0)
                block.W_mk.weight.normal_(0, 1.0)
                block.W_mv.weight.normal_(0, d**-0.5)
                block.W_mb.weight.normal_(0, d**-0.5)


def load_params(wrapper: torch.nn.Module, params: dict[str, torch.Tensor]) -> None:
    names = dict(wrapper.named_parameters())
    if set(names) != set(params):
        raise RuntimeError(f"parameter names differ: {sorted(set(names) ^ set(params))}")
    with torch.no_grad():
        for n, p in names.items():
            p.copy_(params[n])


def make_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """A right-padded batch of 9 segments (short last one) with BABILong-style labels, and prompts to generate from."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB - 1, (2, N_FWD), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    ids[1, -3:] = EOS  # pad = EOS, as GPT-2 in BABILong
    labels_mask = torch.zeros_like(ids, dtype=torch.bool)
    labels_mask[0, -6:] = True
    labels_mask[1, -9:-3] = True
    return {
        "ids": ids,
        "mask": mask,
        "labels": ids.clone(),
        "labels_mask": labels_mask,
        "gen_ids": torch.randint(0, VOCAB - 1, (2, N_GEN), generator=g),
        "gen_one": torch.randint(0, VOCAB - 1, (2, SEG - 2), generator=g),
    }


def run_scenarios(
    wrapper: torch.nn.Module, inp: dict[str, torch.Tensor], eos_stop: int | None = None
) -> dict[str, Any]:
    """Call the wrapper's own ``forward`` / ``generate`` as the BABILong runners do; results as CPU tensors."""
    res: dict[str, Any] = {}
    wrapper.zero_grad(set_to_none=True)
    out = wrapper(inp["ids"], labels=inp["labels"], labels_mask=inp["labels_mask"], attention_mask=inp["mask"])
    res["fwd.keys"] = sorted(out.keys())
    for key, value in out.items():
        if isinstance(value, torch.Tensor) and (key in ("loss", "ce_loss") or key.startswith(("logits", "ce_loss_"))):
            res[f"fwd.{key}"] = value.detach().clone()
    out["loss"].backward()
    for name, p in wrapper.named_parameters():
        if p.grad is not None:
            res[f"grad.{name}"] = p.grad.clone()
    wrapper.zero_grad(set_to_none=True)
    with torch.no_grad():
        out = wrapper(inp["ids"], attention_mask=torch.ones_like(inp["ids"]))
        res["nolabels.logits"] = out["logits"].clone()
        res["nolabels.loss"] = torch.tensor(float(out["loss"]))
        ones = torch.ones_like(inp["gen_ids"])
        res["gen.tokens"] = wrapper.generate(
            inp["gen_ids"], attention_mask=ones, max_new_tokens=MAX_NEW, pad_token_id=EOS
        )
        eos_stop = int(res["gen.tokens"][0, 2]) if eos_stop is None else eos_stop
        res["gen.eos_stop"] = torch.tensor(eos_stop)
        res["gen_eos.tokens"] = wrapper.generate(
            inp["gen_ids"], attention_mask=ones, max_new_tokens=MAX_NEW, eos_token_id=eos_stop, pad_token_id=0
        )
        res["gen_one.tokens"] = wrapper.generate(
            inp["gen_one"], attention_mask=torch.ones_like(inp["gen_one"]), max_new_tokens=MAX_NEW, pad_token_id=EOS
        )
    return res


def run_ours(wrapper: torch.nn.Module, inp: dict[str, torch.Tensor], eos_stop: int) -> dict[str, Any]:
    """:func:`run_scenarios` on the patched wrapper, plus our model from ``from_reference`` called directly."""
    from babilong_fast.models import ARMT, RMT
    from babilong_fast.patch_recurrent import patch_recurrent, unpatch_recurrent

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patch_recurrent(wrapper, backend="torch")
        try:
            res = run_scenarios(wrapper, inp, eos_stop)
        finally:
            unpatch_recurrent(wrapper)
    res["fallbacks"] = [str(w.message) for w in caught if "babilong_fast patch" in str(w.message)]
    is_armt = "AssociativeRecurrentWrapper" in {c.__name__ for c in type(wrapper).__mro__}
    fast = ARMT.from_reference(wrapper, backend="torch") if is_armt else RMT.from_reference(wrapper)
    with torch.no_grad():
        out = fast(inp["ids"], attention_mask=inp["mask"], labels_mask=inp["labels_mask"])
        res["direct.logits"], res["direct.loss"] = out["logits"].clone(), out["loss"].clone()
        res["direct.gen"] = fast.generate(inp["gen_ids"], max_new_tokens=MAX_NEW, eos_token_id=EOS)
    return res


def run_reference64(kind: str, repo: str, params: dict[str, torch.Tensor], inp: dict[str, torch.Tensor]) -> dict:
    """The reference's loss, logits and gradients in float64: the yardstick for float32 gradient errors.

    The default dtype is float64 meanwhile: the references and transformers 4.4x create some tensors with it.
    """
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        wrapper = build_reference(kind, repo)
        load_params(wrapper, params)
        out = wrapper(inp["ids"], labels=inp["labels"], labels_mask=inp["labels_mask"], attention_mask=inp["mask"])
        out["loss"].backward()
    finally:
        torch.set_default_dtype(old)
    res = {"fwd.logits": out["logits"].detach(), "fwd.loss": out["loss"].detach()}
    res.update({f"grad.{n}": p.grad.clone() for n, p in wrapper.named_parameters() if p.grad is not None})
    return res


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Reference (float32 and float64) then ours, on one wrapper whose weights are ``spec['params']``."""
    import transformers

    wrapper = build_reference(spec["kind"], spec["repo"])
    load_params(wrapper, spec["params"])
    ref = run_scenarios(wrapper, spec["inputs"])
    ours = run_ours(wrapper, spec["inputs"], int(ref["gen.eos_stop"]))
    ref64 = run_reference64(spec["kind"], spec["repo"], spec["params"], spec["inputs"])
    return {"ref": ref, "ref64": ref64, "ours": ours, "transformers": transformers.__version__}


def main(argv: list[str]) -> int:
    specs = torch.load(argv[1], weights_only=False)
    torch.save([run_spec(spec) for spec in specs], argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
