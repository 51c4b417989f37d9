"""Extract CLIP image features for PersonalityCaptions (one encoding per image).

Reads personality_captions/{train,val,test}.json (records: personality, image_hash, comment, and on
test additional_comments) and yfcc_images/{image_hash}.jpg; writes train.pkl, val.pkl, test.pkl into
the --output_path folder. Every caption record carries "style", the exact trait string. Test images
keep all 5 references (comment + 4 additional_comments) as 5 caption records sharing image_id, style
and clip_embedding row. meta["styles"] is the trait list of personalities.txt (published order; any
other trait seen in the data appended), the same in the three files. Log: <output folder>/extract.log.

Example:
  python process_personality.py --data_path data/personality_captions --image_path data/yfcc_images \\
      --output_path data/features/personality
"""
from __future__ import annotations

import argparse
from pathlib import Path

from stylecap.extract import pipeline as extract
from stylecap.extract import ranks, runner
from stylecap.extract.caption_sources import personality_styles, read_traits
from stylecap.extract.readers import READERS
from stylecap.extract.settings import ExtractSettings, add_args
from stylecap.utils import UserError, run_main, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", required=True,
                   help="the personality_captions folder (train.json, val.json, test.json, personalities.txt)")
    p.add_argument("--image_path", required=True, help="the yfcc_images folder ({image_hash}.jpg)")
    p.add_argument("--output_path", required=True,
                   help="output FOLDER; gets train.pkl, val.pkl, test.pkl (+ .skipped.txt) and extract.log")
    add_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = ExtractSettings.from_args(args)
    data_dir, image_dir, out_dir = Path(args.data_path), Path(args.image_path), Path(args.output_path)
    if out_dir.is_file() or out_dir.suffix in (".pkl", ".pt"):
        raise UserError(f"--output_path {out_dir} must be a folder: it gets train.pkl, val.pkl and test.pkl")
    setup_logging(ranks.log_file(out_dir / "extract.log"))
    if not data_dir.is_dir():
        raise UserError(f"--data_path {data_dir} is not a folder; pass the personality_captions folder "
                        "(train.json, val.json, test.json)")
    if not image_dir.is_dir():
        raise UserError(f"image folder {image_dir} not found; pass --image_path (the yfcc_images folder)")

    reader = READERS["personality"]
    sources = reader.read(data_dir, image_dir)
    for src in sources.values():
        extract.log_malformed(src.malformed)
    traits = read_traits(data_dir)
    styles = personality_styles(sources, traits)  # one list for all files: style ids agree between splits
    files = [str(data_dir / "personalities.txt")] if traits is not None else []
    jobs = [extract.make_job(out_dir / f"{s}.pkl", src, image_dir, list(src.image_files),
                             {"dataset": reader.dataset, "source_format": "personality",
                              "sources": src.files + files, "image_dir": str(image_dir), "styles": styles,
                              "split_method": "personality", "split": s})
            for s, src in sources.items()]
    return runner.run(jobs, settings)


if __name__ == "__main__":
    run_main(main)
