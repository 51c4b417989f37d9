#!/usr/bin/env python
r"""Score captions against references: BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE (COCO toolkit),
plus per-style breakdowns, diversity, style fidelity, CLIPScore and an optional HTML report.

    python evaluate.py --predictions out/predictions.jsonl \
        --references data/personality_test.pt --train_captions data/personality_train.pt \
        --output_path out/metrics.json --report out/report.html

Input formats are recognised from the content, not the file name (see --help).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stylecap.eval.inputs import (IMAGE_EXTS, PRED_FORMATS, REF_FORMATS, image_paths_for,  # noqa: E402,F401
                                  load_predictions, load_references)
from stylecap.eval.segmentation import SEGMENT_CHOICES  # noqa: E402
from stylecap.utils import run_main, setup_logging  # noqa: E402

# The loaders and image_paths_for live in stylecap.eval.inputs, the scoring in stylecap.eval.scoring
# (library code must not import this script); they stay importable from here.


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", required=True, help=f"generated captions: {PRED_FORMATS}")
    p.add_argument("--references", required=True, help=f"reference captions: {REF_FORMATS}")
    p.add_argument("--output_path", required=True,
                   help="where to write the metrics JSON (top level: BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE, 0-1 scale; "
                        "null + reason under 'skipped' when a metric could not run)")
    p.add_argument("--train_captions", default=None,
                   help="training captions (feature file, PersonalityCaptions or COCO json): trains the style-fidelity "
                        "classifier, measures the share of copied captions and the most-frequent-caption baseline")
    p.add_argument("--report", default=None, help="also write a self-contained HTML report to this path")
    p.add_argument("--image_dir", default=None, help="folder with the images, for the report's thumbnails")
    p.add_argument("--max_report_images", type=int, default=60, help="images shown in the report (default 60)")
    p.add_argument("--clip_model_path", default=None,
                   help="CLIP model (e.g. pre_model/ViT-B-32.pt) for CLIPScore/RefCLIPScore; needs --references "
                        "to be a feature file made with the same CLIP")
    p.add_argument("--no_java", action="store_true",
                   help="do not use Java: pure-Python tokenization for BLEU/ROUGE-L/CIDEr; METEOR and SPICE skipped")
    p.add_argument("--no_spice", action="store_true", help="skip SPICE (the slowest metric)")
    p.add_argument("--spice_jars", default=None,
                   help="folder with stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar, which SPICE needs "
                        "(default: $STYLECAP_SPICE_JARS, then pycocoevalcap/spice/lib); nothing is downloaded")
    p.add_argument("--segment", choices=SEGMENT_CHOICES, default="auto",
                   help="how Chinese (CJK) captions are split into tokens for every metric, the diversity measures and "
                        "the style classifier: auto (default: the language is detected from the text; Chinese -> char, "
                        "else none), char (each CJK character a token, as published Flickr30k-CN/COCO-CN tables), "
                        "jieba (jieba words), none (PTBTokenizer only, which leaves Chinese sentences whole)")
    p.add_argument("--strict", action="store_true",
                   help="fail when a prediction has no references or a referenced image has no prediction")
    p.add_argument("--quiet", action="store_true", help="less logging")
    return p



def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet)
    from stylecap.eval.scoring import run_evaluation
    from stylecap.eval.tables import format_table
    metrics = run_evaluation(args.predictions, args.references, args.output_path,
                             train_captions=args.train_captions, report=args.report, image_dir=args.image_dir,
                             max_report_images=args.max_report_images, clip_model_path=args.clip_model_path,
                             java=False if args.no_java else None, spice=not args.no_spice,
                             spice_jars=args.spice_jars, strict=args.strict, segment=args.segment)
    print(format_table(metrics))
    return 0


if __name__ == "__main__":
    run_main(main)
