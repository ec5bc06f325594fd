"""Mamba-1 (Hugging Face ``MambaForCausalLM``, mamba_ssm ``MambaLMHeadModel``) over inputs of any length.

:class:`MambaLM` runs a model chunk by chunk with an explicit :class:`MambaState` (every layer's conv window
and float32 SSM state) on the fused ops; :func:`mamba_parts` finds a model's modules; :func:`mixer_forward`
and :func:`forward_chunk` are the function-level forward that :mod:`babilong_fast.patch` reuses.
"""

from babilong_fast.models.mamba.layers import forward_chunk, forward_chunked, mixer_forward
from babilong_fast.models.mamba.lm import DEFAULT_CHUNK_SIZE, MambaLM
from babilong_fast.models.mamba.parts import MambaDims, MambaParts, class_path, mamba_parts
from babilong_fast.models.mamba.state import MambaState

__all__ = [
    "DEFAULT_CHUNK_SIZE", "MambaDims", "MambaLM", "MambaParts", "MambaState", "class_path", "forward_chunk",
    "forward_chunked", "mamba_parts", "mixer_forward",
]
