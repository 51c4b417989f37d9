"""Training on a sharded feature set (stylecap.sharded): which shards each rank reads in an epoch, in which order,
and the dataset that maps a shard only when the rank's order reaches it.

The order is a pure function of (seed, epoch, world size, rank, window, assignment), so the same seed and world
size give the same epochs, and a resume skips the batches already done (SkipSampler) and replays nothing:
  1. assignment: the shards in a seeded random order (seed and epoch; with assignment "fixed", seed only),
     each dealt to the rank with the fewest captions so far (ties: the lowest rank): ranks differ by at most
     one shard's captions, and every shard goes to exactly one rank;
  2. within a rank: its shards in that order, cut into windows of ``window`` shards (0: one window of all of
     them), the captions of each window shuffled (seeded by seed, epoch, rank);
  3. every rank takes exactly ceil(N / world) captions per epoch (DDP needs the same number of steps on every
     rank): a rank with more drops the tail of its order this epoch, a rank with fewer starts its order again.
"""
from __future__ import annotations

import argparse
import os
from collections import OrderedDict
from functools import partial
from typing import Callable

import numpy as np
import torch.distributed as dist
from loguru import logger
from torch.utils.data import Dataset, Sampler

from models.captioner import StyleCapModel
from stylecap.features import FeatureStore
from stylecap.sharded import ShardedFeatures, load_any, open_sharded
from stylecap.train.data import CaptionDataset, Encoded, TrainingData, encode_data, style_vocabulary
from stylecap.utils import UserError

ASSIGNMENTS = ("epoch", "fixed")


def assign_shards(counts: list[int], world: int, seed: int, epoch: int) -> list[list[int]]:
    """Each rank's shards (indices into ``counts``, the shards' caption counts), in the order it reads them."""
    if len(counts) < world:
        raise UserError(f"the sharded set has {len(counts)} training shards for {world} ranks: every rank needs one; "
                        "remake it with a smaller --rows_per_shard (scripts/shard_features.py)")
    load = np.zeros(world, dtype=np.int64)
    out: list[list[int]] = [[] for _ in range(world)]
    for k in np.random.default_rng([seed, epoch]).permutation(len(counts)).tolist():
        r = int(np.argmin(load))  # the first rank with the fewest captions
        out[r].append(k)
        load[r] += counts[k]
    return out


def rank_order(counts: list[int], world: int, rank: int, seed: int, epoch: int, window: int = 0,
               assignment: str = "epoch") -> np.ndarray:
    """Rank ``rank``'s captions of epoch ``epoch``: (ceil(N / world),) int64 indices into the set's captions
    (shard after shard in index order)."""
    starts = np.concatenate(([0], np.cumsum(counts)))  # (S + 1,) each shard's first caption
    mine = assign_shards(counts, world, seed, epoch if assignment == "epoch" else 0)[rank]
    rng = np.random.default_rng([seed, epoch, rank])
    step = window if window > 0 else len(mine)
    parts = []
    for w in range(0, len(mine), step):  # a window's captions, shuffled together
        ids = np.concatenate([np.arange(starts[k], starts[k + 1]) for k in mine[w:w + step]])
        parts.append(ids[rng.permutation(len(ids))])
    order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    n = -(-int(starts[-1]) // world)
    return np.resize(order, n) if len(order) else order  # truncated, or repeated from its start


class ShardedSampler(Sampler):
    """rank_order as a torch Sampler; ``set_epoch`` as DistributedSampler's."""

    def __init__(self, counts: list[int], world: int, rank: int, seed: int, window: int = 0,
                 assignment: str = "epoch"):
        if assignment not in ASSIGNMENTS:
            raise UserError(f"--shard_assignment {assignment!r}: choose one of {', '.join(ASSIGNMENTS)}")
        self.counts, self.world, self.rank, self.seed = list(counts), world, rank, seed
        self.window, self.assignment, self.epoch = window, assignment, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = rank_order(self.counts, self.world, self.rank, self.seed, self.epoch, self.window, self.assignment)
        return iter(order.tolist())

    def __len__(self) -> int:
        return -(-sum(self.counts) // self.world)


class ShardedCaptionDataset(Dataset):
    """Caption index (over the whole set) -> CaptionDataset's item. A shard is mapped and tokenized (``encode``,
    cached) the first time an index of it is asked for; at most ``keep`` shards stay mapped (least recently
    used first out; 0: no limit), so a rank holds only its current window. ``data.opened`` lists what it read."""

    def __init__(self, data: ShardedFeatures, encode: Callable[[FeatureStore, str], Encoded], keep: int = 0,
                 window: int = 0, assignment: str = "epoch"):
        self.data, self.encode, self.keep = data, encode, keep
        self.window, self.assignment = window, assignment
        self.starts = np.concatenate(([0], np.cumsum(data.caption_counts)))  # (S + 1,)
        self.cache: OrderedDict[int, CaptionDataset] = OrderedDict()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def shard(self, k: int) -> CaptionDataset:
        if k in self.cache:
            self.cache.move_to_end(k)
            return self.cache[k]
        store = self.data.open_shard(k)
        ds = CaptionDataset(store.clip_embedding, self.encode(store, str(self.data.root / self.data.shards[k]["file"])))
        self.cache[k] = ds
        if self.keep and len(self.cache) > self.keep:
            self.cache.popitem(last=False)  # unmapped once the loader's batches let go of its rows
        return ds

    def __getitem__(self, i: int):
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.shard(k)[i - int(self.starts[k])]

    def make_sampler(self, world: int, rank: int, seed: int) -> ShardedSampler:
        return ShardedSampler(self.data.caption_counts, world, rank, seed, self.window, self.assignment)


def load_sharded_training_data(args: argparse.Namespace):
    """prepare.load_training_data for a sharded --data_path: the training shards (nothing mapped yet) and the
    validation set in memory: --val_path (a feature file or a sharded set), or whole shards held out by a
    seeded choice (round(S x --val_fraction), at least one): a split by image, as an image never spans shards."""
    # --shard_assignment fixed: a node may hold only its ranks' shards (and the validation ones): checked when opened
    path = args.data_path[0] if isinstance(args.data_path, (list, tuple)) else args.data_path
    full = open_sharded(path, check=getattr(args, "shard_assignment", "epoch") == "epoch")
    n = len(full.shards)
    if args.val_path:
        train, val = full, load_any(args.val_path)
    else:
        if n < 2:
            raise UserError(f"{path} has one shard: nothing to hold out for validation; give --val_path "
                            "or remake it with a smaller --rows_per_shard")
        held = set(np.random.default_rng(args.seed).permutation(n)[:max(1, round(n * args.val_fraction))].tolist())
        train = full.select([k for k in range(n) if k not in held])
        val = full.select(sorted(held)).load_all()
    styles = style_vocabulary(train)
    if args.style_mode == "auto":
        args.style_mode = "embedding" if styles else "none"
    logger.info(f"sharded set {full.root}: {len(train.shards)} training shards ({len(train)} captions), "
                f"{len(val)} validation captions")
    return TrainingData(train, val, [] if args.style_mode == "none" else styles)


def sharded_datasets(args: argparse.Namespace, train: ShardedFeatures, val: FeatureStore, model: StyleCapModel,
                     cache) -> tuple[ShardedCaptionDataset, CaptionDataset]:
    """prepare.encode_datasets for sharded training data: the validation tokens now (local rank 0 first, as
    there), the training shards' tokens as each rank first reads them (cached per shard in ``cache``)."""
    encode = partial(_encode, tok=model.tokenizer, max_len=args.max_len, cache=cache)
    local_first = dist.is_initialized() and int(os.environ.get("LOCAL_RANK", 0)) != 0
    if local_first:
        dist.barrier()
    val_enc = encode(val, args.val_path or args.data_path)
    if dist.is_initialized() and not local_first:
        dist.barrier()
    window = getattr(args, "shard_window", 0)
    train_ds = ShardedCaptionDataset(train, encode, keep=window, window=window,
                                     assignment=getattr(args, "shard_assignment", "epoch"))
    val_ds = CaptionDataset(val.clip_embedding, val_enc)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise UserError(f"empty training ({len(train_ds)}) or validation ({len(val_ds)}) set; check --data_path/--val_path")
    return train_ds, val_ds


def _encode(store: FeatureStore, source: str, *, tok, max_len: int, cache) -> Encoded:
    return encode_data(store, tok, max_len, cache, source)
