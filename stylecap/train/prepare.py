"""A training run's setup before the first step: the data and its styles, the run folder, the seeded model,
the tokenized datasets and their loaders. train.py's main() calls these in order; the order is part of the
behaviour (seeding, then RNG draws), so that a run and its resume see the same numbers."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from models import ModelConfig, build_model
from models.captioner import StyleCapModel
from models.compat import enable_activation_checkpointing
from models.model_folder import is_model_folder, start_from_folder
from stylecap.cpu import cpu_bf16_warning
from stylecap.features import FeatureStore, clip_record, load_features
from stylecap.sharded import ShardedFeatures, is_sharded
from stylecap.train.data import CaptionDataset, collate, encode_data, split_by_image, style_vocabulary
from stylecap.train.engine import CheckpointManager
from stylecap.utils import UserError


@dataclass
class TrainingData:
    """The features a run trains and validates on, and the styles the model learns (empty: a plain model)."""
    train: FeatureStore
    val: FeatureStore
    styles: list[str]


def load_training_data(args: argparse.Namespace) -> TrainingData:
    """--data_path, and --val_path or a seeded split of --data_path by image. Resolves --style_mode auto
    (embedding when the data has styles, else none) in ``args``, which config.json and checkpoints record."""
    if is_sharded(args.data_path):  # many files + index.json (docs/scale.md): each rank maps only its shards
        from stylecap.train.sharded_data import load_sharded_training_data
        return load_sharded_training_data(args)
    train_data = load_features(args.data_path)
    if args.val_path:
        val_data = load_features(args.val_path)
    else:
        train_data, val_data = split_by_image(train_data, args.val_fraction, args.seed)
    styles = style_vocabulary(train_data)
    if args.style_mode == "auto":
        args.style_mode = "embedding" if styles else "none"
    if args.style_mode == "none":
        styles = []
    return TrainingData(train_data, val_data, styles)


def precision_warning(precision: str, device: torch.device, cpuinfo: str | None = None) -> str | None:
    """Why --precision ``precision`` is a poor choice on ``device``, or None: bf16 on a CPU without native
    bf16 trains about 2-3x slower than fp32 (stylecap.cpu). ``cpuinfo``: /proc/cpuinfo's text (None: this
    machine's)."""
    if precision != "bf16" or device.type != "cpu":
        return None
    return cpu_bf16_warning("--precision bf16", "--precision fp32", cpuinfo)


def default_run_name(args: argparse.Namespace) -> str:
    stem = Path(args.data_path).stem
    return f"{stem}-{args.mapping_type}-{'tuned' if args.finetune_gpt2 else 'frozen'}-{args.style_mode}"


def run_folder(args: argparse.Namespace) -> Path:
    """--output_path, or output/<data>-<mapper>-<tuned|frozen>-<style_mode>; recorded back in ``args``."""
    run_dir = Path(args.output_path or Path("output") / default_run_name(args))
    args.output_path = str(run_dir)
    return run_dir


def resume_from(args: argparse.Namespace, ckpts: CheckpointManager) -> Path | None:
    """The checkpoint to resume from (--resume PATH, or the newest one for --resume auto), or None.
    A run folder that has checkpoints is never trained over without --resume. --resume FOLDER (export.py's
    model folder) is no exact resume but a new run from its weights (build_seeded_model loads them): None."""
    newest = ckpts.newest()  # opens every checkpoint's header: once
    if args.resume is None and newest is not None:
        raise UserError(f"run folder {ckpts.folder.parent} already has checkpoints; pass --resume auto to continue "
                        "or a new --output_path")
    if args.resume not in (None, "auto") and is_model_folder(args.resume):
        if newest is not None:
            raise UserError(f"--resume {args.resume} (an exported model folder) starts a new run from its weights, "
                            f"but run folder {ckpts.folder.parent} already has checkpoints; pass --resume auto to "
                            "continue that run, or a new --output_path")
        return None
    return newest if args.resume == "auto" else (Path(args.resume) if args.resume else None)


def build_seeded_model(args: argparse.Namespace, data: TrainingData, rank: int,
                       device: torch.device) -> StyleCapModel:
    """The model on ``device``: the same initial weights on every rank (seeded with --seed), then each
    rank its own dropout stream (--seed + rank)."""
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    if args.clip_size is None:  # the mapper follows the features' width (recorded in args, as a given flag is)
        args.clip_size = int(data.train["clip_embedding"].shape[1])
    cfg = ModelConfig(gpt2_path=args.gpt2_path, mapping_type=args.mapping_type, prefix_len=args.prefix_len,
                      constant_len=args.constant_len, clip_size=args.clip_size, num_layers=args.num_layers,
                      style_mode=args.style_mode, styles=data.styles, style_dim=args.style_dim,
                      normalize_prefix=args.normalize_prefix, finetune_gpt2=args.finetune_gpt2, max_len=args.max_len,
                      clip=clip_record(data.train["meta"]) or {})  # the CLIP it is trained on ({}: none named)
    dim = data.train["clip_embedding"].shape[1]
    if dim != args.clip_size:
        raise UserError(f"{args.data_path} has {dim}-d features but --clip_size is {args.clip_size}; "
                        f"pass --clip_size {dim}")
    model = build_model(cfg)
    if args.resume not in (None, "auto") and is_model_folder(args.resume):
        start_from_folder(model, args.resume)  # a new run from an exported folder's weights (see resume_from)
    torch.manual_seed(args.seed + rank)  # then each rank its own dropout stream
    if args.gradient_checkpointing:
        enable_activation_checkpointing(model.gpt)  # models.compat: named differently in transformers 4
    model.to(device)
    return model


def encode_datasets(args: argparse.Namespace, data: TrainingData, model: StyleCapModel,
                    cache: Path) -> tuple[CaptionDataset, CaptionDataset]:
    """(train, val) datasets of tokenized captions, the tokens cached in ``cache``.
    Tokenized once per machine: local rank 0 writes the cache, the other ranks then map the same file,
    so N ranks share one copy of the tokens (as of the features) in the page cache."""
    if isinstance(data.train, ShardedFeatures):  # its shards are tokenized as a rank first reads them
        from stylecap.train.sharded_data import sharded_datasets
        return sharded_datasets(args, data.train, data.val, model, cache)
    tok = model.tokenizer
    local_first = dist.is_initialized() and int(os.environ.get("LOCAL_RANK", 0)) != 0
    if local_first:
        dist.barrier()
    train_enc = encode_data(data.train, tok, args.max_len, cache, args.data_path)
    val_enc = encode_data(data.val, tok, args.max_len, cache, args.val_path or args.data_path)
    if dist.is_initialized() and not local_first:
        dist.barrier()
    train_ds = CaptionDataset(data.train["clip_embedding"], train_enc)
    val_ds = CaptionDataset(data.val["clip_embedding"], val_enc)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise UserError(f"empty training ({len(train_ds)}) or validation ({len(val_ds)}) set; check --data_path/--val_path")
    return train_ds, val_ds


def make_loader(ds: Dataset, batch_size: int, pad_id: int, sampler: Sampler | None = None, num_workers: int = 0,
                shuffle: bool = False) -> DataLoader:
    """Batches padded to their longest caption (stylecap.train.data.collate), in the sampler's order."""
    # own generator: creating the iterator must not draw from the global RNG (exact resume)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=partial(collate, pad_id=pad_id), generator=torch.Generator(),
                      pin_memory=torch.cuda.is_available(), drop_last=False)
