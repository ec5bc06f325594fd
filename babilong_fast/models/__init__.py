"""Recurrent-memory wrappers around a GPT-2 backbone with explicit state: :class:`ARMT` and :class:`RMT`;
Mamba-1 run in chunks with an explicit state: :class:`MambaLM`."""

from babilong_fast.models.armt import ARMT, ARMTLayerMemory
from babilong_fast.models.checkpoint import CheckpointError, load_model, load_model_path, save_model
from babilong_fast.models.mamba import MambaLM, MambaState
from babilong_fast.models.rmt import RMT
from babilong_fast.models.state import ARMTState, RMTState

__all__ = [
    "ARMT", "ARMTLayerMemory", "ARMTState", "CheckpointError", "MambaLM", "MambaState", "RMT", "RMTState", "load_model",
    "load_model_path", "save_model",
]
