"""Distributed helpers of ``ls-vision`` (``torchrun`` + DistributedDataParallel).

One process per device; every helper is the identity in a single process.  Evaluation shards
the data without padding (:class:`ShardSampler`) and merges calibration statistics by summing
their float64 per-bin sums, so that the metrics of W processes equal those of one process.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Sampler

from ls_plugins import calibration


def init_distributed(device_type: str) -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``; under ``torchrun`` joins the process group (gloo on CPU,
    NCCL on CUDA, one GPU per process)."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device(device_type)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device_type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    return rank, world_size, device


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class ShardSampler(Sampler[int]):
    """Examples ``rank, rank + W, rank + 2W, ...``: every example exactly once over the ``W``
    processes (``DistributedSampler`` would pad the last shard with duplicates)."""

    def __init__(self, dataset, rank: int, world_size: int):
        self.indices = range(rank, len(dataset), world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def all_reduce_sum(values: Tensor, device: torch.device) -> Tensor:
    """Elementwise sum over processes (identity in a single process)."""
    if not dist.is_initialized():
        return values
    values = values.to(device)
    dist.all_reduce(values)
    return values.cpu()


def any_process(flag: Tensor) -> bool:
    """Whether the boolean scalar ``flag`` is true on any process (one small all-reduce)."""
    if not dist.is_initialized():
        return bool(flag)
    flag = flag.to(torch.int32).clone()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag)


def all_reduce_stats(stats: calibration.CalibrationStats,
                     device: torch.device) -> calibration.CalibrationStats:
    """Sum the float64 per-bin counts, confidence and correct sums, NLL and Brier sums, and the
    bootstrap replicate tables (``replicate_sums``, B x (3 n_bins + 2)) over processes: the
    merged statistics and intervals are exact, never an average of per-process metrics.  The
    processes must have scored disjoint groups (images) with the same seed."""
    n = stats.n_bins
    packed = torch.cat([stats.counts, stats.conf_sums, stats.correct_sums,
                        torch.tensor([stats.nll_sum, stats.brier_sum], dtype=torch.float64),
                        stats.replicate_sums.reshape(-1)])
    packed = all_reduce_sum(packed, device)
    replicates = packed[3 * n + 2:].view_as(stats.replicate_sums) if stats.bootstrap else None
    return calibration.CalibrationStats.from_sums(packed[:n], packed[n:2 * n], packed[2 * n:3 * n],
                                                  float(packed[3 * n]), float(packed[3 * n + 1]),
                                                  replicate_sums=replicates, seed=stats.seed)


def gather_objects(value, world_size: int) -> list:
    """``[value of process 0, value of process 1, ...]`` on every process."""
    if world_size == 1:
        return [value]
    values: list = [None] * world_size
    dist.all_gather_object(values, value)
    return values


def gather_in_dataset_order(values: Tensor, world_size: int) -> Tensor:
    """Undo :class:`ShardSampler`: process ``r`` holds rows ``r, r + W, ...`` of the data set."""
    if world_size == 1:
        return values
    parts = gather_objects(values.cpu(), world_size)
    gathered = torch.empty((sum(len(p) for p in parts), *values.shape[1:]), dtype=values.dtype)
    for rank, part in enumerate(parts):
        gathered[rank::world_size] = part
    return gathered


def sync_buffers(model: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics) before evaluating."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def first_message(message: Optional[str], world_size: int) -> Optional[str]:
    """The first non-None ``message`` over processes (in rank order), on every process."""
    return next((m for m in gather_objects(message, world_size) if m is not None), None)
