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

from stylecap.extract.readers import formats
from stylecap.extract.settings import add_args
from stylecap.extract.splits import add_split_args, extract_captions
from stylecap.utils import run_main

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--caption_path", required=True,
                   help="Flickr30k token file, Karpathy dataset_flickr30k.json, or Flickr30k-CN caption txt")
    p.add_argument("--image_path", required=True, help="folder with the images (flickr30k-images)")
    p.add_argument("--output_path", required=True,
                   help="feature file path, e.g. data/features/flickr.pkl; splits go to <stem>_<split>.pkl")
    p.add_argument("--format", choices=("auto",) + formats("flickr"), default="auto",
                   help="caption source format; auto detects it from the content (default: auto)")
    add_split_args(p)
    add_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return extract_captions("flickr", build_parser().parse_args(argv), "the flickr30k-images folder", "karpathy")


if __name__ == "__main__":
    run_main(main)
