"""Extraction under torchrun: which rank does what, and how the ranks learn that all are done.

``torchrun --nproc_per_node N process_*.py ...`` (WORLD_SIZE > 1) starts N copies of the script. Each
joins a process group (gloo on the CPU, nccl with each rank on ``cuda:LOCAL_RANK``) and runs as
``--shard RANK/N`` would: the same whole-batch blocks (folders) or whole tars (img2dataset shards), the
same resumable per-chunk progress and shard/part files. Then every rank reports its outcome to the others
(:func:`finish`, one all-gather: the barrier); when all succeeded rank 0 combines the shards as ``--merge``
does, and when one failed every rank stops with one message naming the failed rank(s) and their input.

A rank that dies without reporting (kill -9, out of memory) is seen by torchrun, which stops the others;
a rank that hangs is bounded by ``--ddp_timeout`` minutes, the process group's timeout.
"""
from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch.distributed as dist
from loguru import logger

from stylecap.distributed import gather_lists, launched_world, setup_distributed
from stylecap.extract.settings import ExtractSettings
from stylecap.utils import UserError


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    timeout_min: float


def log_file(path: Path) -> Path:
    """The log of this process: ``path`` for rank 0 (and one process), ``<stem>.rank<r><suffix>`` for the
    others, so that the ranks' lines do not interleave in one file."""
    rank, world = launched_world()
    return path if world <= 1 or rank == 0 else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def start(settings: ExtractSettings) -> tuple[ExtractSettings, Ranks | None]:
    """Under torchrun with WORLD_SIZE > 1: join the process group -> (this rank's settings: its device and
    its shard RANK/WORLD, Ranks). Otherwise (settings, None), nothing started."""
    if launched_world()[1] <= 1:
        return settings, None
    if settings.sharded or settings.merge:
        raise UserError("--shard and --merge are for separate jobs without torchrun; under torchrun the ranks "
                        "split the work and combine it themselves: drop --shard/--merge")
    try:
        rank, world, device = setup_distributed(settings.device or "auto", settings.ddp_timeout)
    except RuntimeError as e:  # torch's DistStoreError: a rank never joined
        raise UserError(f"rank {launched_world()[0]}: the {launched_world()[1]} ranks did not all join within "
                        f"--ddp_timeout {settings.ddp_timeout:g} min ({str(e).strip().splitlines()[0][:300]})") from None
    logger.info(f"torchrun: rank {rank} of {world} on {device} ({dist.get_backend()}), "
                f"timeout {settings.ddp_timeout:g} min")
    return replace(settings, device=str(device), shard=f"{rank}/{world}", shard_index=rank,
                   shard_count=world), Ranks(rank, world, settings.ddp_timeout)


def share(ranks: Ranks, work: Callable[[list[str]], None]) -> None:
    """Run this rank's share, ``work(where)`` (it keeps ``where[0]`` naming the input it works on), then
    :func:`finish`: an exception is reported to every rank instead of leaving the others at the barrier."""
    where, error = ["loading CLIP"], None
    try:
        work(where)
    except Exception as e:
        logger.exception(f"rank {ranks.rank} failed on {where[0]}")
        error = f"{where[0]}: {type(e).__name__}: {e}"
    finish(ranks, error)


def finish(ranks: Ranks, error: str | None) -> None:
    """The barrier: every rank's outcome (None = done, else '<input>: <error>') reaches every rank; when any
    failed, each rank raises one UserError naming the failed ranks and their input (rank 0 combines nothing)."""
    try:
        if dist.get_backend() == "gloo":  # names the ranks that did not arrive (nccl has no monitored barrier)
            dist.monitored_barrier(timeout=datetime.timedelta(minutes=ranks.timeout_min), wait_all_ranks=True)
        outcomes = gather_lists([error])  # bounded by --ddp_timeout
    except RuntimeError as e:  # torch's DistBackendError: a timeout, or a peer that went away
        why = str(e).strip().splitlines()[0][:300]
        raise UserError(f"rank {ranks.rank}: not every rank reported within --ddp_timeout {ranks.timeout_min:g} "
                        f"min ({why}); a rank hung or died: see its log, raise --ddp_timeout if it was only "
                        "slow, and rerun the same command to resume") from None
    failed = [f"rank {r} failed on {e}" for r, e in enumerate(outcomes) if e is not None]
    if failed:
        raise UserError("; ".join(failed) + " (the finished ranks' work is kept: fix the cause and rerun "
                                            "the same command to resume)")


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
