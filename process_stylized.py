"""Extract CLIP image features for any stylized caption set (one encoding per image).

Caption sources (--format auto detects which from the content; details in stylecap/extract/stylized_sources.py):
  jsonl        your captions, one JSON object a line:
               {"image": "1.jpg", "caption": "...", "style": "humor", "split": "train"}
  csv          your captions, a header row then one record a row:  image,caption,style,split
               (style and split optional: on every record or on none)
  flickrstyle  FlickrStyle10K: the FlickrStyle_v0.9 folder (humor/train.p + humor/funny_train.txt,
               romantic/train.p + romantic/romantic_train.txt); images: Flickr30k's flickr30k-images
  senticap     SentiCap: senticap_dataset.json (or its csv); images: COCO's val2014 (the folder or its parent)

Every caption record carries "style" (FlickrStyle10K: "humor" / "romantic"; SentiCap: "positive" /
"negative"; generic: your strings, exactly) and meta["styles"] lists them, the same in every split
file, as PersonalityCaptions files do, so train.py's --style_mode works unchanged. Splits are by
image, never by caption: the source's own split when it has one (generic "split", SentiCap's json),
else a seeded split with --val_ratio / --test_ratio (FlickrStyle10K has no published split).
Output: <stem>_train.pkl, <stem>_val.pkl, <stem>_test.pkl beside --output_path; with --val_ratio 0
--test_ratio 0 and a source without splits, the single file --output_path. Log: <output stem>.log.

Example:
  python process_stylized.py --caption_path data/FlickrStyle_v0.9 \\
      --image_path data/flickr30k/flickr30k-images --output_path data/features/flickrstyle.pkl
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
                   help="a .jsonl or .csv caption file, SentiCap's senticap_dataset.json (or csv), "
                        "or the FlickrStyle_v0.9 folder")
    p.add_argument("--image_path", required=True,
                   help="folder with the images; 'image' paths of the generic formats are relative to it")
    p.add_argument("--output_path", required=True,
                   help="feature file path, e.g. data/features/flickrstyle.pkl; splits go to <stem>_<split>.pkl")
    p.add_argument("--format", choices=("auto",) + formats("stylized"), default="auto",
                   help="caption source format; auto detects it from the content (default: auto)")
    add_split_args(p)
    add_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return extract_captions("stylized", build_parser().parse_args(argv), "the folder the images are in", "source")


if __name__ == "__main__":
    run_main(main)
