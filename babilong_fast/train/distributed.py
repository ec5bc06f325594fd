"""Processes for data-parallel training: torchrun's environment, DistributedDataParallel, reductions.

``torchrun --nproc-per-node N -m babilong_fast.cli.main train ...`` (or any launcher that sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) starts one process per GPU (NCCL) or per CPU
worker (gloo). Without those variables everything runs in one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place: ``rank`` of ``world``, and the device it trains on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def pick_device(device: str | None, local_rank: int = 0) -> torch.device:
    """``device`` (``"cpu"``/``"cuda"``; None: cuda when available), with the local rank's GPU index."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but no CUDA device is available")
        return torch.device("cuda", local_rank)
    if device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return torch.device("cpu")


def setup(device: str | None = None) -> Dist:
    """Join the process group described by the environment (torchrun), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local_rank, dev)


def teardown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(d: Dist, values: list[float]) -> list[float]:
    """Elementwise sum of ``values`` over all processes (float64)."""
    t = torch.tensor(values, dtype=torch.float64)
    if d.active:
        if dist.get_backend() == "nccl":
            t = t.to(d.device)
        dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def gather_objects(d: Dist, obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process."""
    if not d.active:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def wrap(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when there are several processes.

    ``find_unused_parameters`` is on: ARMT's query projections are unused on a batch of one-segment samples.
    """
    if not d.active:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [d.device.index] if d.device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=True)
