"""Fine-tuning ARMT, RMT and Hugging Face Mamba on BABILong with the curriculum of the published recipes.

- :mod:`~babilong_fast.train.config`: :class:`TrainConfig` and the presets (``rmt``, ``armt``, ``mamba-130m``,
  ``tiny``);
- :mod:`~babilong_fast.train.format`: ``context ‖ question ‖ GEN ‖ answer ‖ EOS`` examples and padded batches;
- :mod:`~babilong_fast.train.data`: curriculum samples addressed by index (generated or official files);
- :mod:`~babilong_fast.train.kinds`: build / loss / answer / save per model kind;
- :mod:`~babilong_fast.train.loop`: :func:`train` (stages, accumulation, validation, checkpoints, resume);
- :mod:`~babilong_fast.train.evaluate`: exact match by greedy generation, sharded over processes;
- :mod:`~babilong_fast.train.distributed`: torchrun environment and DistributedDataParallel.

Examples::

    >>> from babilong_fast.train import preset, train
    >>> summary = train(preset("tiny", steps=20), "runs/tiny")     # doctest: +SKIP
"""
from __future__ import annotations

from babilong_fast.train.config import PRESETS, TrainConfig, check_stages, preset
from babilong_fast.train.data import GeneratedData, NoSamplesError, OfficialData
from babilong_fast.train.evaluate import evaluate
from babilong_fast.train.format import Example, collate, format_example
from babilong_fast.train.loop import train

__all__ = [
    "PRESETS", "Example", "GeneratedData", "NoSamplesError", "OfficialData", "TrainConfig", "check_stages", "collate",
    "evaluate", "format_example", "preset", "train",
]
