"""Save and load :class:`~babilong_fast.models.ARMT` / :class:`~babilong_fast.models.RMT` models and Hugging Face
``MambaForCausalLM`` models as one file.

The file is a ``torch.save`` of a dict::

    {"format": "babilong_fast.checkpoint", "version": 1, "kind": "armt" | "rmt" | "mamba",
     "kwargs": {...wrapper constructor arguments; {} for mamba...},
     "backbone_config": GPT2Config.to_dict() (MambaConfig.to_dict() for mamba),
     "state_dict": model.state_dict()}

:func:`load_model` rebuilds ``GPT2LMHeadModel(GPT2Config.from_dict(cfg))`` and the wrapper around it, or
``MambaForCausalLM(MambaConfig.from_dict(cfg))`` (no network access), then loads the weights strictly.

Examples::

    >>> save_model(model, "armt_qa1.pt")                       # doctest: +SKIP
    >>> model = load_model("armt_qa1.pt", kind="armt")          # doctest: +SKIP
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from babilong_fast.models.armt import ARMT
from babilong_fast.models.mamba.parts import HF_LM
from babilong_fast.models.rmt import RMT

FORMAT = "babilong_fast.checkpoint"
FORMAT_VERSION = 1
TRAIN_STATE_FORMAT = "babilong_fast.train_state"  # babilong_fast.train.state's resumable last.pt
KINDS = ("armt", "rmt", "mamba")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as a model (or not as the kind requested)."""


def _is_hf_mamba_lm(model: object) -> bool:
    return any(f"{c.__module__}.{c.__qualname__}" == HF_LM for c in type(model).__mro__)


def model_kind(model: torch.nn.Module) -> str:
    """``"armt"``, ``"rmt"`` or ``"mamba"`` (Hugging Face ``MambaForCausalLM``); TypeError for any other model."""
    if isinstance(model, ARMT):
        return "armt"
    if isinstance(model, RMT):
        return "rmt"
    if _is_hf_mamba_lm(model):
        return "mamba"
    raise TypeError(f"save_model supports ARMT, RMT and MambaForCausalLM models, got {type(model).__name__}")


def _kwargs(model: torch.nn.Module, kind: str) -> dict[str, Any]:
    if kind == "mamba":
        return {}
    if kind == "armt":
        return {
            "num_mem_tokens": model.num_mem_tokens, "d_mem": model.d_mem, "nu": model.nu,
            "correction": model.correction, "segment_size": model.segment_size,
        }  # not the backend: where the model runs is chosen where it is loaded
    return {"num_mem_tokens": model.num_mem_tokens, "segment_size": model.segment_size}


def save_model(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` (ARMT, RMT or Hugging Face ``MambaForCausalLM``) to ``path`` (parent folders created);
    returns the path. The ops' ``backend`` is not saved: a loaded ARMT uses ``"auto"``."""
    kind = model_kind(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": kind,
        "kwargs": _kwargs(model, kind),
        "backbone_config": (model.config if kind == "mamba" else model.backbone.config).to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The checked payload dict of a checkpoint file (FileNotFoundError / CheckpointError)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise CheckpointError(f"{str(path)!r} is not a babilong_fast checkpoint: {e}") from e
    if isinstance(payload, dict) and payload.get("format") == TRAIN_STATE_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is a training state (babilong-fast train's last.pt, for --resume), not a model file: "
            "use the run's best.pt or stage<n>.pt"
        )
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a babilong_fast checkpoint (no {FORMAT!r} marker)")
    version = payload.get("version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format version {version!r}; "
            f"this babilong_fast reads version {FORMAT_VERSION}"
        )
    kind = payload.get("kind")
    if kind not in KINDS:
        raise CheckpointError(f"{str(path)!r} holds an unknown model kind {kind!r}; known kinds: {', '.join(KINDS)}")
    for key in ("kwargs", "backbone_config", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{str(path)!r} lacks its {key!r} entry")
    return payload


def load_model(path: str | os.PathLike, map_location: Any = "cpu", kind: str | None = None) -> torch.nn.Module:
    """Rebuild the ARMT / RMT / ``MambaForCausalLM`` saved by :func:`save_model` and load its weights strictly.

    Args:
        path: the checkpoint file.
        map_location: where tensors are loaded (default ``"cpu"``); the model is built there too.
        kind: ``"armt"``, ``"rmt"`` or ``"mamba"`` to require that kind; None accepts any.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError (a ValueError): not a checkpoint, an unknown kind, another kind than ``kind``, or weights
            that do not match the rebuilt model.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(KINDS)}")
    payload = read_checkpoint(path, map_location)
    if kind is not None and payload["kind"] != kind:
        raise CheckpointError(
            f"{str(path)!r} holds an {payload['kind'].upper()} model, not the {kind.upper()} requested")
    if payload["kind"] == "mamba":
        from transformers import MambaConfig, MambaForCausalLM

        model = MambaForCausalLM(MambaConfig.from_dict(dict(payload["backbone_config"])))
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config.from_dict(dict(payload["backbone_config"]))
        backbone = GPT2LMHeadModel(config)
        cls = ARMT if payload["kind"] == "armt" else RMT
        kwargs = {k: v for k, v in payload["kwargs"].items() if k != "backend"}  # saved by earlier versions
        model = cls(backbone, **kwargs)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    _match_saved_dtypes(model, payload["state_dict"])
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{str(path)!r}: weights do not match the rebuilt model: {e}") from e
    return model.eval()


def _match_saved_dtypes(model: torch.nn.Module, state_dict: dict[str, Any]) -> None:
    """Give each floating parameter and buffer the saved tensor's dtype (a bf16 model loads as bf16)."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, t in named:
        saved = state_dict.get(name)
        if isinstance(saved, torch.Tensor) and saved.is_floating_point() and t.is_floating_point():
            if saved.dtype != t.dtype:
                t.data = t.data.to(saved.dtype)


def hf_model_type(folder: str | os.PathLike) -> str | None:
    """The ``model_type`` in a Hugging Face folder's ``config.json``, None without one; CheckpointError if it is
    unreadable."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    import json

    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as e:
        raise CheckpointError(f"{str(config)!r} is not a Hugging Face config: {e}") from e


def load_model_path(path: str | os.PathLike, map_location: Any = "cpu") -> torch.nn.Module:
    """A model from a :func:`save_model` file or a folder, in eval mode; nothing is downloaded.

    Args:
        path: a file written by :func:`save_model`; a folder written by ``ARMT``/``RMT.save_pretrained``; or a
            Hugging Face ``MambaForCausalLM`` folder (``save_pretrained``: ``config.json`` with
            ``model_type: "mamba"`` and its weights), loaded with ``local_files_only=True``.
        map_location: where the weights are loaded (default ``"cpu"``).

    Raises:
        FileNotFoundError: no such file or folder.
        CheckpointError: a folder of none of these kinds, or a file that is not a checkpoint.
    """
    from babilong_fast.models.recurrent import PRETRAINED_FILE

    path = Path(path)
    if not path.is_dir():
        return load_model(path, map_location)
    if (path / PRETRAINED_FILE).is_file():
        return load_model(path / PRETRAINED_FILE, map_location)
    model_type = hf_model_type(path)
    if model_type != "mamba":
        raise CheckpointError(
            f"{str(path)!r} is neither an ARMT/RMT save_pretrained folder (no {PRETRAINED_FILE}) nor a Hugging Face "
            f"Mamba folder (config.json model_type {model_type!r}); for a model of the public RMT/ARMT repos, build "
            "ours with ARMT.from_reference(model) or RMT.from_reference(model) and save_pretrained it"
        )
    from transformers import MambaForCausalLM

    try:
        model = MambaForCausalLM.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{str(path)!r}: could not load the Hugging Face Mamba model: {e}") from e
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()
