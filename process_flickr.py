"""Extract CLIP image features for Flickr30k / Flickr30k-CN captions (one encoding per image).

Caption sources (--format auto detects which from the content):
  token     results_20130124.token lines   1000092795.jpg#0<TAB>caption
  karpathy  dataset_flickr30k.json         images[i].filename / .split / .sentences[j].raw
  cn        Flickr30k-CN lines             1000092795<TAB>caption      (image 1000092795.jpg)

Splits are by image, never by caption: the Karpathy split when the source has one (restval counts
as train), else a seeded split with --val_ratio / --test_ratio. Output: <stem>_train.pkl,
<stem>_val.pkl, <stem>_test.pkl beside --output_path; with --val_ratio 0 --test_ratio 0 and a
source without splits, the single file --output_path. Log: <output stem>.log.

Example:
  python process_flickr.py --caption_path data/flickr30k/dataset_flickr30k.json \\
      --image_path data/flickr30k/flickr30k-images --output_path data/features/flickr.pkl
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

from stylecap import extract
from stylecap.caption_sources import FORMATS, read_flickr
from stylecap.utils import UserError, run_main, setup_logging

SPLITS = ("train", "val", "test")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--caption_path", required=True,
                   help="Flickr30k token file, Karpathy dataset_flickr30k.json, or Flickr30k-CN caption txt")
    p.add_argument("--image_path", required=True, help="folder with the images (flickr30k-images)")
    p.add_argument("--output_path", required=True,
                   help="feature file path, e.g. data/features/flickr.pkl; splits go to <stem>_<split>.pkl")
    p.add_argument("--format", choices=("auto",) + FORMATS, default="auto",
                   help="caption source format; auto detects it from the content (default: auto)")
    p.add_argument("--val_ratio", type=float, default=0.05,
                   help="fraction of IMAGES for val when the source has no split (default: %(default)s)")
    p.add_argument("--test_ratio", type=float, default=0.05,
                   help="fraction of IMAGES for test when the source has no split (default: %(default)s); "
                        "--val_ratio 0 --test_ratio 0 writes one file, --output_path itself")
    p.add_argument("--seed", type=int, default=0, help="seed of the split by image (default: %(default)s)")
    extract.add_args(p)
    return p


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    extract.check_args(args)
    if not (0 <= args.val_ratio < 1 and 0 <= args.test_ratio < 1):
        raise UserError("--val_ratio and --test_ratio must be in [0, 1)")
    output = Path(args.output_path)
    setup_logging(output.with_suffix(".log"))
    image_dir = Path(args.image_path)
    if not image_dir.is_dir():
        raise UserError(f"image folder {image_dir} not found; pass --image_path (the flickr30k-images folder)")

    source = read_flickr(args.caption_path, args.format)
    extract.log_malformed(source.malformed)
    ids = list(source.image_files)  # first-appearance order
    meta = {"dataset": "flickr30k-cn" if source.format == "cn" else "flickr30k",
            "source_format": source.format, "sources": source.files, "image_dir": str(image_dir), "styles": []}
    if source.splits is not None:
        splits = source.splits
        meta["split_method"] = "karpathy"
    elif args.val_ratio == 0 and args.test_ratio == 0:
        splits = None
        meta["split_method"] = "none"
    else:
        splits = seeded_split(ids, args.val_ratio, args.test_ratio, args.seed)
        meta.update(split_method="seeded", seed=args.seed, val_ratio=args.val_ratio, test_ratio=args.test_ratio)

    if splits is None:
        jobs = [extract.make_job(output, source, image_dir, ids, {**meta, "split": None})]
    else:
        jobs = [extract.make_job(split_path(output, s), source, image_dir, [i for i in ids if splits[i] == s],
                                 {**meta, "split": s}) for s in SPLITS]
    return extract.run(jobs, args)


if __name__ == "__main__":
    run_main(main)
