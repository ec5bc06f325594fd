"""LoRA adapters (real peft) and forward hooks on the backbones: the fast paths read weights directly, so where a
module is wrapped or hooked they step aside (or refuse, naming it) instead of silently skipping the adapter."""

from __future__ import annotations

import warnings

import pytest
import torch

from babilong_fast.models import MambaLM
from babilong_fast.models.compiled_step import compiled_step_unsupported
from babilong_fast.models.gpt2_block import lean_block_unsupported
from babilong_fast.models.stream_step import fast_step_unsupported
from babilong_fast.patch import patch, unpatch
from tests.helpers import assert_close, rel_err
from tests.models.mamba_util import prompt, small_mamba
from tests.models.naive import VOCAB
from tests.models.test_stream_step import N_TOKENS, make_model, run_both, state_tensors

peft = pytest.importorskip("peft")


def with_lora(module: torch.nn.Module, targets: list[str], **kw) -> torch.nn.Module:
    """``targets`` of ``module`` wrapped by peft's LoRA, with random (not zero) B so the adapter matters."""
    torch.manual_seed(5)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's notes on fan_in_fan_out for GPT-2's Conv1D
        return peft.inject_adapter_in_model(config, module)


@pytest.mark.parametrize("kind", ["armt", "rmt"])
def test_stream_step_with_lora_blocks_matches_segment_forward(kind):
    """LoRA on the attention and MLP: the step calls those blocks as modules, so its states equal
    segment_forward's (which runs the adapters) and differ from the states without the adapter."""
    model = make_model(kind, "sdpa")
    ids = torch.randint(0, VOCAB, (2, N_TOKENS))
    plain = run_both(model, ids)[-1][0]
    with_lora(model.backbone, ["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)
    model.eval()
    block = model.backbone.transformer.h[0]
    assert "LoRA" in lean_block_unsupported(block) or "adapter" in lean_block_unsupported(block)
    with torch.no_grad():
        assert fast_step_unsupported(model) is None and "GPT-2 block" in compiled_step_unsupported(model)
    pairs = run_both(model, ids)
    for ref, fast in pairs:
        for r, f in zip(state_tensors(ref), state_tensors(fast), strict=True):
            assert_close("state", r, f, 1e-5)
    assert rel_err(state_tensors(pairs[-1][0])[0], state_tensors(plain)[0]) > 1e-3, "the adapter must matter"


def test_stream_step_with_lora_embeddings_falls_back():
    model = make_model("rmt", "sdpa")
    with_lora(model.backbone, ["wte"])
    model.eval()
    with torch.no_grad():
        why = fast_step_unsupported(model)
    assert why.startswith("transformer.wte is a peft.") and "not a plain torch.nn.modules.sparse.Embedding" in why
    ids = torch.randint(0, VOCAB, (1, N_TOKENS))
    for ref, fast in run_both(model, ids):
        assert_close("memory", ref.memory, fast.memory, 1e-5)


def test_hooked_block_runs_as_a_module():
    model = make_model("armt", "sdpa")
    seen = []
    model.backbone.transformer.h[1].mlp.register_forward_hook(lambda *a: seen.append(1))
    assert lean_block_unsupported(model.backbone.transformer.h[1]) == "mlp has forward hooks"
    run_both(model, torch.randint(0, VOCAB, (1, 2 * 16)))
    assert len(seen) == 4  # segment_forward's and stream_step's, two segments each


def test_mamba_with_lora_runs_transformers_forward_or_refuses():
    """The patched forward runs transformers' own (with the adapter) and warns; MambaLM refuses."""
    hf = small_mamba(seed=11)
    ids = prompt(2, 40)
    with torch.no_grad():
        plain = hf(ids).logits
    with_lora(hf, ["in_proj", "x_proj"])
    with torch.no_grad():
        want = hf(ids).logits
        assert rel_err(want, plain) > 1e-3, "the adapter must matter"
        patch(hf, chunk_size=8)
        plain_linear = r"layers\.0\.mixer\.in_proj is a peft\..*, not a plain torch\.nn\.modules\.linear\.Linear"
        with pytest.warns(RuntimeWarning, match=plain_linear):
            got = hf(ids).logits
    assert torch.equal(got, want)
    unpatch(hf)
    with pytest.raises(ValueError, match=r"MambaLM reads the mixers' weights directly.*merge_and_unload"):
        MambaLM(hf)


def test_transformers_idle_output_capturing_hooks_keep_the_fast_paths():
    """transformers 5 hooks GPT-2's blocks for good once a model runs with output_hidden_states (the public RMT
    cell does, every segment): idle, they return at once, so the lean blocks still run; while a transformers
    forward collects outputs they count as hooks."""
    model = make_model("rmt", "sdpa")
    block = model.backbone.transformer.h[0]
    with torch.no_grad():
        model.backbone(torch.randint(0, VOCAB, (1, 8)), output_hidden_states=True)
    capture = [h for h in block._forward_hooks.values() if getattr(h, "__name__", "") == "output_capturing_hook"]
    if not capture:
        pytest.skip("this transformers installs no output-capturing hooks")
    assert lean_block_unsupported(block) is None
    with torch.no_grad():
        assert fast_step_unsupported(model) is None
    from transformers.utils import output_capturing

    token = output_capturing._active_collector.set({"hidden_states": []})
    try:
        assert lean_block_unsupported(block) == "block has forward hooks"
    finally:
        output_capturing._active_collector.reset(token)
    pairs = run_both(model, torch.randint(0, VOCAB, (1, 2 * 16)))
    for ref, fast in pairs:
        assert_close("memory", ref.memory, fast.memory, 1e-5)


@pytest.mark.parametrize("where", ["backbone", "backbone.transformer"])
@pytest.mark.parametrize("kind", ["armt", "rmt"])
def test_hooks_on_the_backbone_itself_are_refused(kind, where):
    """ARMT and RMT call the backbone's parts, never the GPT-2 LM or its transformer: a hook (or a replaced
    forward) there was skipped silently by forward, generate and the stream; it is refused by each."""
    from babilong_fast.engine import StreamRunner

    model = make_model(kind, "sdpa")
    module = model.get_submodule(where)
    ids = torch.randint(0, VOCAB, (1, 2 * 16 + 3))
    why = f"never {where} itself, so this would be skipped: {where} has"
    for add in (lambda: module.register_forward_hook(lambda *a: None),
                lambda: setattr(module, "forward", lambda *a, **k: None)):
        handle = add()
        calls = (lambda: model(ids), lambda: model.generate(ids[:, :16], max_new_tokens=2),
                 lambda: StreamRunner(model, progress=False).run(ids, [1], max_new_tokens=2, eos_token_id=-1,
                                                                gen_token_id=None))
        for call in calls:
            with pytest.raises(ValueError, match=why):
                call()
        if handle is None:
            del module.forward
        else:
            handle.remove()
    assert model(ids)["logits"].shape[:2] == ids.shape
