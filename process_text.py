"""Encode a text corpus with CLIP's text tower: a feature file whose rows are sentences (CapDec-style
text-only training; docs/text_styles.md). Train on it with train.py, alone or beside image features:
    train.py --data_path images_train.pkl pirate_text.pkl --noise_variance 0.016 ...

Corpora (--format auto detects which; details in stylecap/extract/text_source.py):
  txt       one sentence a line
  jsonl     {"caption": "...", "style": "Pirate", "split": "train"} a line (style and split optional)
  csv       a header row caption[,style][,split], then one record a row
  features  a feature file from process_*.py: its captions and styles, without the images

Each sentence is its own "image" (id <corpus stem>:<line>). --style NAME gives every record without a
style that style. Output: --output_path, or <stem>_<split>.pkl per split when the corpus has splits (or
--val_ratio/--test_ratio are given). Resumable like the other extractors (<output>.partial/); rerunning
an up-to-date file does nothing. Log: <output stem>.log. The image-decoding flags are accepted and ignored.

Example:
  python process_text.py --caption_path pirate.txt --style Pirate --output_path data/features/pirate.pkl
"""
from __future__ import annotations

import argparse
from pathlib import Path

from loguru import logger

from stylecap.extract import text_source
from stylecap.extract.pipeline import log_malformed
from stylecap.extract.settings import ExtractSettings, add_args
from stylecap.extract.splits import SplitSettings, add_split_args
from stylecap.utils import UserError, run_main, setup_logging

NOT_FOR_TEXT = "(images only: no effect on text)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--caption_path", required=True,
                   help="the corpus: a .txt file (one sentence a line), .jsonl, .csv, or a feature file")
    p.add_argument("--output_path", required=True, help="feature file path, e.g. data/features/pirate.pkl")
    p.add_argument("--style", default=None, help="style of every sentence that has none (all of a .txt file)")
    p.add_argument("--format", choices=("auto",) + text_source.TEXT_FORMATS, default="auto",
                   help="corpus format; auto detects it from the name and content (default: auto)")
    add_split_args(p)
    p.set_defaults(val_ratio=0.0, test_ratio=0.0)  # one file unless asked (the corpus's own split still splits)
    add_args(p, {"batch_size": "sentences per encoder batch (default: %(default)s); resume needs the same value",
                 "limit": "encode only the first N sentences of each output file (quick trial runs)",
                 **{k: f"{NOT_FOR_TEXT}" for k in ("num_workers", "allow_truncated", "fast_jpeg_decode",
                                                     "exif_transpose")},
                 "shard": "not supported here (one process encodes a corpus quickly)",
                 "merge": "not supported here"})
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings, split = ExtractSettings.from_args(args), SplitSettings.from_args(args)
    if args.style is not None and not args.style.strip():
        raise UserError("--style is empty; give the style's name, e.g. --style Pirate")
    output = Path(args.output_path)
    setup_logging(output.with_suffix(".log"))
    source = text_source.read_corpus(args.caption_path, args.format, args.style.strip() if args.style else None)
    log_malformed(source.malformed)
    logger.info(text_source.corpus_summary(source))
    jobs = text_source.corpus_jobs(output, source, split)
    return text_source.run_text(jobs, settings)


if __name__ == "__main__":
    run_main(main)
