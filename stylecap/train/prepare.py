"""A training run's setup before the first step: the data and its styles, the run folder, the seeded model,
the tokenized datasets and their loaders. train.py's main() calls these in order; the order is part of the
behaviour (seeding, then RNG draws), so that a run and its resume see the same numbers."""
from __future__ import annotations

import argparse
import os
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from loguru import logger
from torch.utils.data import DataLoader, Dataset, Sampler

from models import ModelConfig, build_model
from models.captioner import StyleCapModel
from models.compat import enable_activation_checkpointing
from models.lora import lora_settings
from models.model_folder import is_model_folder, start_from_folder
from stylecap.cpu import cpu_bf16_warning
from stylecap.features import TEXT_MODALITY, FeatureStore, clip_record, load_features, modality
from stylecap.sharded import ShardedFeatures, is_sharded
from stylecap.train.data import TrainingData  # noqa: F401  (defined beside the datasets; imported from here too)
from stylecap.train.data import (CaptionDataset, collate, concat_selections, encode_data, merge_stores,
                                 split_by_image, style_vocabulary)
from stylecap.train.engine import CheckpointManager
from stylecap.utils import UserError


class DataPaths(argparse.Action):
    """--data_path A B, and --data_path A --data_path B: every file, in order. The first --data_path of the
    command line replaces the value of a --config file; later ones add to it."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        fresh = current is None or current is self.default  # still the default (or --config's value)
        setattr(namespace, self.dest, list(values) if fresh else [*current, *values])


def data_paths(args: argparse.Namespace) -> list[str]:
    """--data_path as a list (one file is stored as a plain string, as before several were possible)."""
    return list(args.data_path) if isinstance(args.data_path, (list, tuple)) else [args.data_path]


def _text_rows(stores: list[FeatureStore]) -> torch.Tensor | None:
    """(sum of N_images,) bool: which feature rows of the stores, one after the other, are text; None if none."""
    kinds = [modality(s.meta) == TEXT_MODALITY for s in stores]
    if not any(kinds):
        return None
    return torch.cat([torch.full((s.n_images,), k, dtype=torch.bool) for s, k in zip(stores, kinds)])


def text_only_styles(data: FeatureStore, text_rows: torch.Tensor | None, styles: list[str]) -> list[str]:
    """The styles of ``styles`` whose training captions are all on text rows (learned without an image)."""
    if text_rows is None or not styles:
        return []
    on_text = text_rows[data.caption_row]  # (N_captions,) bool
    from_text, from_images = set(data.subset(on_text).present_styles()), set(data.subset(~on_text).present_styles())
    return [s for s in styles if s in from_text and s not in from_images]


def _load_several(args: argparse.Namespace, paths: list[str]) -> tuple[FeatureStore, FeatureStore, list]:
    """Several --data_path files as one store -> (train, val, [train text rows, val text rows]). Without
    --val_path each file is split by image (--val_fraction, --seed) on its own, as a single file is."""
    stores = [load_features(p) for p in paths]
    merged = merge_stores(stores, paths)
    if args.val_path:
        val = load_features(args.val_path)
        return merged, val, [_text_rows(stores), _text_rows([val])]
    parts, lo = [], 0
    for s in stores:  # file k's captions are rows lo..lo+len(s) of the merged store
        parts.append(split_by_image(merged.subset(torch.arange(lo, lo + len(s))), args.val_fraction, args.seed))
        lo += len(s)
    rows = _text_rows(stores)
    return concat_selections(merged, [t for t, _ in parts]), concat_selections(merged, [v for _, v in parts]), [rows, rows]


def load_training_data(args: argparse.Namespace) -> TrainingData:
    """--data_path (one file or several), and --val_path or a seeded split by image. Resolves --style_mode auto
    (embedding when the data has styles, else none) in ``args``, which config.json and checkpoints record.
    Text feature files (process_text.py) switch --normalize_prefix on: text rows are L2-normalised (CapDec),
    so image features must be too, in training and at inference (the checkpoint records it)."""
    if is_sharded(args.data_path):  # many files + index.json (docs/scale.md): each rank maps only its shards
        from stylecap.train.sharded_data import load_sharded_training_data
        return load_sharded_training_data(args)
    paths = data_paths(args)
    if len(paths) > 1:
        train_data, val_data, (train_text, val_text) = _load_several(args, paths)
    else:
        train_data = load_features(paths[0])
        if args.val_path:
            val_data = load_features(args.val_path)
        else:
            train_data, val_data = split_by_image(train_data, args.val_fraction, args.seed)
        train_text, val_text = _text_rows([train_data]), _text_rows([val_data])
    styles = style_vocabulary(train_data)  # known traits in published order, then the others sorted
    if args.style_mode == "auto":
        args.style_mode = "embedding" if styles else "none"
    if args.style_mode == "none":
        styles = []
    if (train_text is not None or val_text is not None) and not args.normalize_prefix:
        args.normalize_prefix = True
        logger.info("text feature rows in the data: --normalize_prefix on (CapDec: text rows are L2-normalised, so "
                    "image features are too, in training and at inference; the checkpoint records it)")
    noise = getattr(args, "noise_variance", 0.0)
    if noise < 0:
        raise UserError(f"--noise_variance {noise} is negative; give a variance >= 0 (CapDec: 0.016)")
    if noise and train_text is None:
        logger.warning(f"--noise_variance {noise}: no text rows in --data_path (process_text.py files), no effect")
    text_styles = text_only_styles(train_data, train_text, styles)
    if text_styles:
        logger.info(f"styles learned from text only: {text_styles}")
    return TrainingData(train_data, val_data, styles, text_styles, train_text, val_text)


def precision_warning(precision: str, device: torch.device, cpuinfo: str | None = None) -> str | None:
    """Why --precision ``precision`` is a poor choice on ``device``, or None: bf16 on a CPU without native
    bf16 trains about 2-3x slower than fp32 (stylecap.cpu). ``cpuinfo``: /proc/cpuinfo's text (None: this
    machine's)."""
    if precision != "bf16" or device.type != "cpu":
        return None
    return cpu_bf16_warning("--precision bf16", "--precision fp32", cpuinfo)


def default_run_name(args: argparse.Namespace) -> str:
    stem = "+".join(Path(p).stem for p in data_paths(args))
    lm = "tuned" if args.finetune_gpt2 else f"lora{args.lora_r}" if getattr(args, "lora_r", 0) else "frozen"
    return f"{stem}-{args.mapping_type}-{lm}-{args.style_mode}"


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
                      clip=clip_record(data.train["meta"]) or {},  # the CLIP it is trained on ({}: none named)
                      text_styles=data.text_styles,
                      **lora_settings(getattr(args, "lora_r", 0), getattr(args, "lora_alpha", None),
                                      getattr(args, "lora_dropout", None), getattr(args, "lora_targets", None),
                                      args.finetune_gpt2))  # LoRA adapters (models/lora.py), or {}
    dim = data.train["clip_embedding"].shape[1]
    if dim != args.clip_size:
        raise UserError(f"{' '.join(data_paths(args))} has {dim}-d features but --clip_size is {args.clip_size}; "
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
    source = " ".join(data_paths(args))
    train_enc = encode_data(data.train, tok, args.max_len, cache, source)
    val_enc = encode_data(data.val, tok, args.max_len, cache, args.val_path or source)
    if dist.is_initialized() and not local_first:
        dist.barrier()
    # text rows: L2-normalised, and in training (only) CapDec's noise, seeded by (--seed, epoch, sample)
    train_ds = CaptionDataset(data.train["clip_embedding"], train_enc, data.train_text_rows,
                              getattr(args, "noise_variance", 0.0), args.seed)
    val_ds = CaptionDataset(data.val["clip_embedding"], val_enc, data.val_text_rows)
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
