"""torchrun process groups and the collectives that let every rank share validation and evaluation.

Work is split across ranks in whole batches: rank r gets a contiguous block of the batches one process
would make, so every batch (its rows, their padding, their group by style context) is exactly the one a
single process decodes or scores, and concatenating the blocks in rank order restores the item order.
That is what makes the gathered predictions identical to one process's, not just close.
"""
from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from stylecap.utils import resolve_device


def setup_distributed(device_flag: str, timeout_min: float) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; gloo on CPU, nccl on CUDA.
    Under torchrun a process group is made even for one process, so that path really runs.
    ``timeout_min`` bounds every collective (a rank waiting for rank 0's scoring included)."""
    if "LOCAL_RANK" not in os.environ:  # a plain `python train.py`
        return 0, 1, resolve_device(device_flag)
    local = int(os.environ["LOCAL_RANK"])
    use_cuda = torch.cuda.is_available() and device_flag != "cpu"
    if use_cuda:
        torch.cuda.set_device(local)  # before NCCL starts: each rank on its own GPU
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_min))
    return dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local}" if use_cuda else "cpu")


def launched_world() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as torchrun set them for this process, before any process group; (0, 1) without."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the current process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batch_share(n_items: int, batch_size: int, rank: int, world: int) -> tuple[int, int, int]:
    """Rank ``rank``'s (first batch index, first item, end item): a contiguous block of whole batches
    of size ``batch_size``; ranks get numbers of batches differing by at most one (possibly none)."""
    n_batches = -(-n_items // batch_size)
    per, extra = divmod(n_batches, world)
    first = rank * per + min(rank, extra)
    last = first + per + (1 if rank < extra else 0)
    return first, min(first * batch_size, n_items), min(last * batch_size, n_items)


def gather_lists(local: list) -> list:
    """Every rank's list, concatenated in rank order (on every rank); ``local`` itself without DDP.
    all_gather_object works on gloo and on nccl (objects travel as byte tensors on the rank's GPU)."""
    rank, world = rank_and_world()
    if world == 1:
        return local
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, local)
    return [x for part in parts for x in part]


def sum_across_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks, in float64 (exact for token counts); ``values`` without DDP."""
    if rank_and_world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def from_rank0(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (also a synchronisation point, bounded by the group's timeout)."""
    if rank_and_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
