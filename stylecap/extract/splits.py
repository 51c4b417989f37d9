"""Splits by image for the feature-extraction scripts: a caption source's own split, or a seeded one.

Shared by process_flickr.py and process_stylized.py: one output file per split (``<stem>_<split>.pkl``),
or one file when the source has no split and both ratios are 0."""
from __future__ import annotations

import random
from pathlib import Path

from stylecap.extract import pipeline as extract
from stylecap.utils import UserError, setup_logging

SPLITS = ("train", "val", "test")


def add_split_args(p) -> None:
    """--val_ratio, --test_ratio, --seed: the split by image for sources without their own split."""
    p.add_argument("--val_ratio", type=float, default=0.05,
                   help="fraction of IMAGES for val when the source has no split (default: %(default)s)")
    p.add_argument("--test_ratio", type=float, default=0.05,
                   help="fraction of IMAGES for test when the source has no split (default: %(default)s); "
                        "--val_ratio 0 --test_ratio 0 writes one file, --output_path itself")
    p.add_argument("--seed", type=int, default=0, help="seed of the split by image (default: %(default)s)")


def check_split_args(args) -> None:
    if not (0 <= args.val_ratio < 1 and 0 <= args.test_ratio < 1):
        raise UserError("--val_ratio and --test_ratio must be in [0, 1)")


def seeded_split(image_ids: list[str], val_ratio: float, test_ratio: float, seed: int) -> dict[str, str]:
    """image_id -> split: a seeded shuffle of the images; test first, then val, the rest train.
    A non-zero ratio gets at least one image."""
    n = len(image_ids)
    count = lambda r: 0 if r == 0 else max(1, round(n * r))
    n_val, n_test = count(val_ratio), count(test_ratio)
    if n_val + n_test >= n:
        raise UserError(f"--val_ratio {val_ratio} and --test_ratio {test_ratio} leave no training image "
                        f"of {n}; use smaller ratios")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    split = {image_ids[i]: "train" for i in range(n)}
    for k, i in enumerate(order[:n_test + n_val]):
        split[image_ids[i]] = "test" if k < n_test else "val"
    return split


def split_path(output: Path, split: str) -> Path:
    return output.with_name(f"{output.stem}_{split}{output.suffix}")


def jobs_by_split(output: Path, source, image_dir: Path, meta: dict, args, source_method: str) -> list:
    """extract Jobs for ``source``: by its own split (``source.splits``, recorded as ``source_method``),
    else by a seeded split by image (--val_ratio/--test_ratio/--seed), else one file."""
    ids = list(source.image_files)  # first-appearance order
    meta = dict(meta)
    if source.splits is not None:
        splits = source.splits
        meta["split_method"] = source_method
    elif args.val_ratio == 0 and args.test_ratio == 0:
        splits = None
        meta["split_method"] = "none"
    else:
        splits = seeded_split(ids, args.val_ratio, args.test_ratio, args.seed)
        meta.update(split_method="seeded", seed=args.seed, val_ratio=args.val_ratio, test_ratio=args.test_ratio)
    if splits is None:
        return [extract.make_job(output, source, image_dir, ids, {**meta, "split": None})]
    return [extract.make_job(split_path(output, s), source, image_dir, [i for i in ids if splits[i] == s],
                             {**meta, "split": s}) for s in SPLITS]


def start_extraction(args, image_folder: str) -> Path:
    """The checks and logging a split-writing script begins with; returns --image_path. ``image_folder``
    names the folder the error message asks for."""
    extract.check_args(args)
    check_split_args(args)
    setup_logging(Path(args.output_path).with_suffix(".log"))
    image_dir = Path(args.image_path)
    if not image_dir.is_dir():
        raise UserError(f"image folder {image_dir} not found; pass --image_path ({image_folder})")
    return image_dir


def extract_by_split(source, meta: dict, args, source_method: str) -> int:
    """Log the source's malformed records, then extract one file per split (see jobs_by_split)."""
    extract.log_malformed(source.malformed)
    image_dir = Path(args.image_path)
    return extract.run(jobs_by_split(Path(args.output_path), source, image_dir, meta, args, source_method), args)
