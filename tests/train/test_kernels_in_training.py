"""A training step with ARMT's Triton read kernel gives the gradients of the torch reference path."""
from __future__ import annotations

import pytest
import torch

from babilong_fast.train.data import GeneratedData
from babilong_fast.train.format import collate
from babilong_fast.train.kinds import build_model, loss_and_count
from tests.helpers import assert_close, requires_triton
from tests.train.common import tiny_config


@requires_triton
@pytest.mark.triton
@pytest.mark.parametrize("sparse", [True, False], ids=["sparse_logits", "full_logits"])
def test_armt_training_step_triton_matches_torch(sparse, monkeypatch):
    import babilong_fast.kernels.assoc_read as kernel

    calls = []
    fwd = kernel.assoc_read_fwd
    monkeypatch.setattr(kernel, "assoc_read_fwd", lambda *a: calls.append(1) or fwd(*a))
    batch = collate(GeneratedData("qa1", 64, seed=0).batch(2, [1, 2, 3]))  # 1-2 segments: reads happen
    assert batch["input_ids"].shape[1] > 64
    grads, losses = {}, {}
    for backend in ("torch", "triton"):
        cfg = tiny_config("armt", backend=backend, sparse_logits=sparse)
        torch.manual_seed(0)
        model = build_model(cfg)
        for layer in model.layers:  # W_v starts at zero: make the memory carry something
            torch.nn.init.normal_(layer.W_v.weight, std=0.05)
        lsum, count = loss_and_count(model, batch, cfg)
        (lsum / count).backward()
        losses[backend] = lsum.detach()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert calls, "the Triton kernel never ran"
    assert_close("loss", losses["torch"], losses["triton"], 1e-5)
    assert grads["torch"].keys() == grads["triton"].keys()
    assert any("W_q" in n for n in grads["torch"])  # the read's projection is trained
    for name, g in grads["torch"].items():
        assert g.abs().sum() > 0 or "W_q" not in name
        assert_close(name, g, grads["triton"][name], 1e-4)
