"""Cut feature files into a sharded set (many columnar files plus index.json) for data larger than a node's disk or
memory: train.py --data_path OUT_DIR reads it, each rank only the shards it is assigned (docs/scale.md).

    python scripts/shard_features.py data/features/cc3m/train.pt data/shards/cc3m --rows_per_shard 100000
    python scripts/shard_features.py part0.pt part1.pt part2.pt OUT_DIR --rows_per_shard 50000

Each input is any feature file load_features reads (process_*.py's output, an extraction part, a legacy
pickle). A shard is a block of whole images with all their captions, so holding out whole shards for
validation is a split by image. Several inputs must come from one encoder (same CLIP, width, dtype); their
style lists are merged. OUT_DIR must not already hold an index; index.json is written last, atomically.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stylecap.sharded import write_shards  # noqa: E402
from stylecap.utils import run_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="feature files to shard, in order")
    p.add_argument("out_dir", help="folder for the shards and index.json (created; must hold no index yet)")
    p.add_argument("--rows_per_shard", type=int, default=100_000,
                   help="images per shard (default %(default)s: ~100 MiB of fp16 512-d features); have at least "
                        "a few shards per training rank")
    args = p.parse_args(argv)
    index = write_shards(args.inputs, args.out_dir, args.rows_per_shard)
    size = sum(s["bytes"] for s in index["shards"])
    print(f"{args.out_dir}: {len(index['shards'])} shards, {index['images']} images, {index['captions']} captions, "
          f"{size / 2**20:.1f} MiB, {len(index['styles'])} styles; content sha256 {index['content_sha256'][:16]}")
    return 0


if __name__ == "__main__":
    run_main(main)
