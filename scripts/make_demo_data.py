#!/usr/bin/env python
"""Seeded generator of small synthetic datasets in the real on-disk formats of
Flickr30k (English, Karpathy split), Flickr30k-CN (ClipCap-Chinese txt),
PersonalityCaptions (ParlAI json + YFCC-style hashed images), under stylized/, the generic
jsonl/csv input, FlickrStyle10K and SentiCap (stylecap/demo/stylized.py), and under conceptual/,
img2dataset's webdataset tar shards (stylecap/demo/img2dataset.py).

The generator itself is stylecap/demo/ (datasets.py: the layouts and generate(); content.py: the images
and captions), which the tests and the bench import too. `--variant dirty` writes the same layout with a
few good images plus broken or unusual files and malformed caption lines, and lists what is expected to
load or be skipped in <out>/dirty_manifest.json. Same seed -> byte-identical output.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stylecap.demo.datasets import generate  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", default="data/demo", help="output root directory")
    ap.add_argument("--seed", type=int, default=0, help="random seed; same seed gives byte-identical files")
    ap.add_argument("--variant", choices=("clean", "dirty"), default="clean",
                    help="clean: learnable demo data; dirty: small set with broken files + dirty_manifest.json")
    ap.add_argument("--n_flickr", type=int, default=400,
                    help="Flickr30k / Flickr30k-CN images (Karpathy split 80/10/10)")
    ap.add_argument("--n_personality", type=int, default=1000, help="PersonalityCaptions train images")
    ap.add_argument("--n_personality_val", type=int, default=None,
                    help="PersonalityCaptions val images (None: 10%% of train, min 1)")
    ap.add_argument("--n_personality_test", type=int, default=None,
                    help="PersonalityCaptions test images, 5 references each (None: 10%% of train, min 1)")
    ap.add_argument("--n_stylized", type=int, default=24,
                    help="images of each stylized set (generic jsonl/csv, FlickrStyle10K, SentiCap) in the clean variant")
    ap.add_argument("--n_dirty_good", type=int, default=12,
                    help="good images per dataset in the dirty variant (besides the broken/unusual ones)")
    a = ap.parse_args(argv)
    if min(a.n_flickr, a.n_personality, a.n_dirty_good, a.n_stylized) < 3:
        ap.error("--n_flickr, --n_personality, --n_dirty_good and --n_stylized must be >= 3")
    paths = generate(a.out, a.seed, a.variant, a.n_flickr, a.n_personality,
                     a.n_personality_val, a.n_personality_test, a.n_dirty_good, a.n_stylized)
    for k in sorted(paths):
        print(f"{k}: {paths[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
