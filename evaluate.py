#!/usr/bin/env python
r"""Score captions against references: BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE (COCO toolkit),
plus per-style breakdowns, diversity, style fidelity, CLIPScore and an optional HTML report.

    python evaluate.py --predictions out/predictions.jsonl \
        --references data/personality_test.pt --train_captions data/personality_train.pt \
        --output_path out/metrics.json --report out/report.html

Or caption a feature file with a checkpoint first, then score it (eval mode, as `train.py --mode eval`):
predictions.jsonl, metrics.json, report.html and eval_config.json in the --output_path folder.

    python evaluate.py --model_path output/<run>/checkpoints/best.pt --data_path data/test.pkl --output_path out/

Input formats are recognised from the content, not the file name (see --help).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stylecap.eval.evaluation import add_eval_mode_args, run_eval_mode  # noqa: E402
from stylecap.eval.inputs import (IMAGE_EXTS, PRED_FORMATS, REF_FORMATS, image_paths_for,  # noqa: E402,F401
                                  load_predictions, load_references)
from stylecap.utils import run_main, setup_logging  # noqa: E402

# The loaders and image_paths_for live in stylecap.eval.inputs, the scoring in stylecap.eval.scoring
# (library code must not import this script); they stay importable from here.


# ----------------------------------------------------------------------------- main
# flags of scoring a predictions file that eval mode (--model_path) has no use for: refused there, not ignored
SCORING_ONLY = ("predictions", "references", "report", "image_dir", "max_report_images", "no_spice", "spice_jars",
                "strict", "quiet")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", help=f"generated captions: {PRED_FORMATS} (required unless --model_path)")
    p.add_argument("--references", help=f"reference captions: {REF_FORMATS} (required unless --model_path)")
    p.add_argument("--output_path",
                   help="where to write the metrics JSON (top level: BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE, 0-1 scale; "
                        "null + reason under 'skipped' when a metric could not run); required unless --model_path. "
                        "With --model_path: the eval folder (default output/eval-<run>-<data>)")
    p.add_argument("--report", default=None, help="also write a self-contained HTML report to this path")
    p.add_argument("--image_dir", default=None, help="folder with the images, for the report's thumbnails")
    p.add_argument("--max_report_images", type=int, default=60, help="images shown in the report (default 60; 0 = all)")
    p.add_argument("--no_spice", action="store_true", help="skip SPICE (the slowest metric)")
    p.add_argument("--spice_jars", default=None,
                   help="folder with stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar, which SPICE needs "
                        "(default: $STYLECAP_SPICE_JARS, then pycocoevalcap/spice/lib); nothing is downloaded")
    p.add_argument("--strict", action="store_true",
                   help="fail when a prediction has no references or a referenced image has no prediction")
    p.add_argument("--quiet", action="store_true", help="less logging")
    # --train_captions, --clip_model_path, --no_java, --segment, and the eval mode's own flags
    add_eval_mode_args(p, run_flags=True)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model_path:  # eval mode: caption --data_path, then score, as train.py --mode eval
        given = [f"--{k}" for k in SCORING_ONLY if getattr(args, k) != parser.get_default(k)]
        if given:
            parser.error(f"{', '.join(given)}: only for scoring a predictions file, not with --model_path")
        return run_eval_mode(args)
    missing = [f"--{k}" for k in ("predictions", "references", "output_path") if getattr(args, k) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (or --model_path and --data_path "
                     "to caption a feature file and score it)")
    setup_logging(quiet=args.quiet)
    from stylecap.eval.scoring import run_evaluation
    from stylecap.eval.tables import format_table
    metrics = run_evaluation(args.predictions, args.references, args.output_path,
                             train_captions=args.train_captions, report=args.report, image_dir=args.image_dir,
                             max_report_images=args.max_report_images, clip_model_path=args.clip_model_path,
                             java=False if args.no_java else None, spice=not args.no_spice,
                             spice_jars=args.spice_jars, strict=args.strict, segment=args.segment,
                             clip_backend=args.clip_backend or "auto")
    print(format_table(metrics))
    return 0


if __name__ == "__main__":
    run_main(main)
