"""ARMT under the backbone's gradient checkpointing: the same loss and gradients as without it.

transformers 4.x checkpoints ``block.__call__`` with ARMT's read/write hooks inside (wrong gradients before
``babilong_fast.models.checkpointing``); 5.x checkpoints ``forward``. The installed transformers is tested here;
with ``BABILONG_FAST_REF_TRANSFORMERS`` naming a folder holding transformers 4.44 (see
``tests/models/test_reference_patch.py``), the same test runs again in a subprocess with it first on the path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.models.naive import VOCAB
from tests.models.test_armt import labels_mask_last, make_armt

ROOT = Path(__file__).resolve().parents[2]
ENV_TF = "BABILONG_FAST_REF_TRANSFORMERS"


def _loss_and_grads(checkpointing: dict | None):
    torch.manual_seed(3)
    model = make_armt().train()
    model.backbone.config.attn_pdrop = model.backbone.config.resid_pdrop = model.backbone.config.embd_pdrop = 0.0
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    calls = []
    if checkpointing is not None:
        bb = model.backbone
        if hasattr(bb, "activation_checkpointing_enable"):  # newer 5.x's name (not in 5.17), where the old one warns
            bb.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing)
        else:
            bb.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        for owner in (model.backbone.transformer, *model.backbone.transformer.h):
            fn = owner.__dict__.get("_gradient_checkpointing_func")
            if fn is not None:
                owner._gradient_checkpointing_func = lambda *a, _fn=fn, **k: calls.append(1) or _fn(*a, **k)
    ids = torch.randint(0, VOCAB, (2, 3 * 16 + 5))
    out = model(ids, labels_mask=labels_mask_last(ids, 20))
    out["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for block in model.backbone.transformer.h:  # nothing left behind on the blocks
        assert "forward" not in block.__dict__ and not block._forward_hooks and not block._forward_pre_hooks
    return out["loss"].detach(), grads, len(calls)


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_armt_gradients_under_backbone_checkpointing(reentrant):
    loss0, grads0, _ = _loss_and_grads(None)
    loss1, grads1, calls = _loss_and_grads({"use_reentrant": reentrant})
    assert calls > 0, "the backbone did not checkpoint"
    torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=0)  # not bitwise: 1 run in ~10 differed in the last bit
    for name, g0 in grads0.items():
        g1 = grads1[name]
        assert (g0 is None) == (g1 is None), f"{name}: gradient {'lost' if g1 is None else 'appeared'}"
        if g0 is not None:
            torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-7, msg=name)


def test_armt_gradients_under_checkpointing_transformers_4x():
    tf_dir = os.environ.get(ENV_TF)
    if not tf_dir:
        pytest.skip(f"set {ENV_TF} to a folder holding transformers 4.44 to run this under it")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tf_dir, str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop(ENV_TF)
    code = "import transformers; assert transformers.__version__.startswith('4.'), transformers.__version__"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::"
         "test_armt_gradients_under_backbone_checkpointing"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
