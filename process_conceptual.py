"""Extract CLIP image features for Conceptual Captions (CC3M, CC12M, LAION subsets) from img2dataset's output.

Input: the --output_folder of an img2dataset run with --output_format webdataset: tar shards 00000.tar,
00001.tar, ... holding <key>.jpg, <key>.txt (the caption) and <key>.json per sample, with 00000_stats.json
beside each. Output: one feature file (image id = the sample key, one caption record per sample).

The unit of work is one tar shard: each is encoded into <output>.parts/<shard>.pt, so a killed run
(even kill -9) redoes only the unfinished shard when rerun; the parts are combined into --output_path at
the end and kept, so that a rerun after img2dataset added shards encodes only the new (or changed) tars.
Delete <output>.parts/ to free its disk; the next rerun then encodes every tar again.
--shard i/n encodes the i-th contiguous block of tar shards (one process, GPU or machine each); then the
same command with --merge instead of --shard combines the parts (gather the .parts folders first when
the shards ran on several machines). Samples without an image or caption, and images that do
not decode, are skipped and counted (meta["counts"], <output>.skipped.txt); failed downloads are counted
from the _stats.json files, as are samples missing from a tar cut short (fewer than its successes).
Log: <output stem>.log.

Example (CC3M as img2dataset's dataset_examples/cc3m.md downloads it):
  python process_conceptual.py --data_path cc3m --output_path data/features/cc3m.pkl --fp16
"""
from __future__ import annotations

import argparse
from pathlib import Path

from stylecap.extract import conceptual
from stylecap.extract.settings import ExtractSettings, add_args
from stylecap.utils import run_main, setup_logging

HELP = {
    "limit": "encode only the first N samples of each tar shard (quick trial runs)",
    "shard": "encode only shard i of n (0-based; contiguous blocks of whole tar shards) into <output>.parts/; "
             "combine all parts with --merge",
    "merge": "after all --shard i/n runs: rerun the same command with --merge instead of --shard to combine "
             "the parts into the final file, identical to a single run's",
    "chunk_batches": "not used here: progress is saved per tar shard in <output>.parts/",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", required=True,
                   help="img2dataset's --output_folder (webdataset format): 00000.tar, 00001.tar, ... and _stats.json")
    p.add_argument("--output_path", required=True,
                   help="feature file, e.g. data/features/cc3m.pkl; the per-tar parts (kept, for reruns) go to "
                        "<output>.parts/")
    add_args(p, HELP)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = ExtractSettings.from_args(args)
    setup_logging(Path(args.output_path).with_suffix(".log"))
    return conceptual.run(args.data_path, Path(args.output_path), settings)


if __name__ == "__main__":
    run_main(main)
