"""accelerate's hooks (real accelerate) replace a module's ``forward`` on the instance: where babilong_fast reads a
module's weights instead of calling it, such a module is called as a module, refused, or (patch) not bound over;
``remove_hook_from_module`` leaves the class's own forward bound on the instance, which counts as no hook."""

from __future__ import annotations

import warnings

import pytest
import torch

from babilong_fast.models import MambaLM
from babilong_fast.models.gpt2_block import lean_block_unsupported
from babilong_fast.patch import is_patched, patch, unpatch
from tests.helpers import assert_close
from tests.models.mamba_util import prompt, small_mamba
from tests.models.naive import VOCAB
from tests.models.test_stream_step import make_model, run_both, state_tensors

hooks = pytest.importorskip("accelerate.hooks")


class Counting(hooks.ModelHook):
    def __init__(self) -> None:
        self.calls = 0

    def pre_forward(self, module, *args, **kwargs):
        self.calls += 1
        return args, kwargs


def add_and_remove(model: torch.nn.Module) -> None:
    for module in model.modules():
        hooks.add_hook_to_module(module, Counting())
    hooks.remove_hook_from_module(model, recurse=True)
    assert "forward" in model.__dict__, "accelerate leaves the class's forward bound on the instance"


def test_a_hooked_gpt2_block_runs_as_a_module():
    """The lean block reads the block's weights: with an accelerate hook on the block it steps aside."""
    model = make_model("armt", "sdpa")
    block = model.backbone.transformer.h[1]
    hook = Counting()
    hooks.add_hook_to_module(block, hook)
    assert lean_block_unsupported(block) == "block has its forward replaced (accelerate offload or device-map hooks?)"
    pairs = run_both(model, torch.randint(0, VOCAB, (1, 2 * 16)))
    assert hook.calls == 4  # segment_forward's and stream_step's, two segments each
    for ref, fast in pairs:
        for r, f in zip(state_tensors(ref), state_tensors(fast), strict=True):
            assert_close("state", r, f, 1e-5)


def test_removed_hooks_leave_the_fast_paths_on():
    model = make_model("armt", "sdpa")
    add_and_remove(model)
    assert lean_block_unsupported(model.backbone.transformer.h[0]) is None
    hf = small_mamba(seed=3)
    ids = prompt(2, 30)
    with torch.no_grad():
        want = hf(ids).logits
        add_and_remove(hf)
        assert_close("MambaLM", want[:, -1:], MambaLM(hf, chunk_size=8)(ids, logits="last")[0], 1e-5)
        patch(hf, chunk_size=8)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no fallback to transformers' forward
            assert_close("patched", want, hf(ids).logits, 1e-5)
        unpatch(hf)
        assert_close("unpatched", want, hf(ids).logits, 1e-6)


def test_patch_keeps_accelerate_hooks_on_the_model():
    """patch() used to bind over a hooked model's forward (the hook skipped); unpatch() dropped a hook added after
    patching. Both refuse now, and work once the hook is removed."""
    hf = small_mamba(seed=3)
    hooks.add_hook_to_module(hf, Counting())
    with pytest.raises(ValueError, match="the model has its forward replaced on the instance"):
        patch(hf)
    hooks.remove_hook_from_module(hf)
    patch(hf, chunk_size=8)
    hook = Counting()
    hooks.add_hook_to_module(hf.backbone, hook)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        hf(prompt(1, 10))
    assert hook.calls == 1
    with pytest.raises(ValueError, match="the model's backbone has its forward replaced since it was patched"):
        unpatch(hf)
    hooks.remove_hook_from_module(hf.backbone)
    assert unpatch(hf) is hf and not is_patched(hf)
