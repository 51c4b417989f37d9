"""Splits by image for the feature-extraction scripts: a caption source's own split, or a seeded one.

Shared by process_flickr.py and process_stylized.py: one output file per split (``<stem>_<split>.pkl``),
or one file when the source has no split and both ratios are 0. :func:`extract_captions` is the whole
of such a script after its flags: the checks, the source read through :mod:`stylecap.extract.readers`,
the split, the extraction."""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

from stylecap.extract import pipeline as extract
from stylecap.extract import ranks, readers, runner
from stylecap.extract.caption_sources import CaptionSource
from stylecap.extract.settings import ExtractSettings
from stylecap.utils import UserError, setup_logging

SPLITS = ("train", "val", "test")


def add_split_args(p: argparse.ArgumentParser) -> None:
    """--val_ratio, --test_ratio, --seed: the split by image for sources without their own split."""
    p.add_argument("--val_ratio", type=float, default=0.05,
                   help="fraction of IMAGES for val when the source has no split (default: %(default)s)")
    p.add_argument("--test_ratio", type=float, default=0.05,
                   help="fraction of IMAGES for test when the source has no split (default: %(default)s); "
                        "--val_ratio 0 --test_ratio 0 writes one file, --output_path itself")
    p.add_argument("--seed", type=int, default=0, help="seed of the split by image (default: %(default)s)")


@dataclass(frozen=True)
class SplitSettings:
    """The seeded split by image (add_split_args), for sources without their own split."""
    val_ratio: float = 0.05
    test_ratio: float = 0.05
    seed: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SplitSettings:
        if not (0 <= args.val_ratio < 1 and 0 <= args.test_ratio < 1):
            raise UserError("--val_ratio and --test_ratio must be in [0, 1)")
        return cls(args.val_ratio, args.test_ratio, args.seed)


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


def jobs_by_split(output: Path, source: CaptionSource, image_dir: Path, meta: dict, split: SplitSettings,
                  source_method: str) -> list[extract.Job]:
    """extract Jobs for ``source``: by its own split (``source.splits``, recorded as ``source_method``),
    else by a seeded split by image (--val_ratio/--test_ratio/--seed), else one file."""
    ids = list(source.image_files)  # first-appearance order
    meta = dict(meta)
    if source.splits is not None:
        splits = source.splits
        meta["split_method"] = source_method
    elif split.val_ratio == 0 and split.test_ratio == 0:
        splits = None
        meta["split_method"] = "none"
    else:
        splits = seeded_split(ids, split.val_ratio, split.test_ratio, split.seed)
        meta.update(split_method="seeded", seed=split.seed, val_ratio=split.val_ratio, test_ratio=split.test_ratio)
    if splits is None:
        return [extract.make_job(output, source, image_dir, ids, {**meta, "split": None})]
    return [extract.make_job(split_path(output, s), source, image_dir, [i for i in ids if splits[i] == s],
                             {**meta, "split": s}) for s in SPLITS]


def extract_captions(script: str, args: argparse.Namespace, image_folder: str, source_method: str) -> int:
    """process_<script>.py after its flags: check them, start the log, read --caption_path in --format
    (readers), then extract one file per split. ``image_folder`` names the folder the error message asks
    for; ``source_method`` is meta["split_method"] when the source has its own split."""
    settings, split = ExtractSettings.from_args(args), SplitSettings.from_args(args)
    setup_logging(ranks.log_file(Path(args.output_path).with_suffix(".log")))
    image_dir = Path(args.image_path)
    if not image_dir.is_dir():
        raise UserError(f"image folder {image_dir} not found; pass --image_path ({image_folder})")
    fmt, source = readers.read_source(script, args.caption_path, args.format, image_dir)
    extract.log_malformed(source.malformed)
    jobs = jobs_by_split(Path(args.output_path), source, image_dir, readers.source_meta(fmt, source, image_dir),
                         split, source_method)
    return runner.run(jobs, settings)
