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
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loguru import logger  # noqa: E402

from stylecap.utils import UserError, atomic_write_json, code_version, run_main, setup_logging  # noqa: E402

PRED_FORMATS = ("predictions.jsonl ({image, style, caption, score} per line), caption_generate.txt "
                "(image<TAB>caption lines) or a COCO results json ([{image_id, caption}, ...])")
REF_FORMATS = ("a feature file from process_*.py, a COCO annotations json ({images, annotations}) or a "
               "PersonalityCaptions json ([{personality, image_hash, comment, additional_comments}, ...])")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


# ----------------------------------------------------------------------------- predictions
def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise UserError(f"{what} file {path} does not exist; check the path")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; {what} must be {PRED_FORMATS if what == 'predictions' else REF_FORMATS}") from None


def _prediction(obj, path: Path, where: str) -> dict:
    if not isinstance(obj, dict) or not isinstance(obj.get("caption"), str) \
            or obj.get("image", obj.get("image_id")) is None:
        raise UserError(f"{path} {where}: expected an object with 'image' (or 'image_id') and a string "
                        f"'caption', got {str(obj)[:100]}; predictions must be {PRED_FORMATS}")
    style = obj.get("style")
    return {"image": str(obj.get("image", obj.get("image_id"))), "style": None if style is None else str(style),
            "caption": obj["caption"], "score": obj.get("score")}


def load_predictions(path) -> tuple[list[dict], str]:
    """(predictions, format name). Formats: see PRED_FORMATS."""
    path = Path(path)
    text = _read_text(path, "predictions")
    head = text.lstrip()[:1]
    if head == "[":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: invalid JSON ({e}); predictions must be {PRED_FORMATS}") from None
        preds, fmt = [_prediction(o, path, f"item {i}") for i, o in enumerate(items)], "coco_results"
    elif head == "{":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # several lines: JSON Lines
        if isinstance(whole, dict) and "caption" not in whole:
            raise UserError(f"{path} is one JSON object (COCO annotations or a config?), not predictions; "
                            f"references go to --references. Predictions must be {PRED_FORMATS}")
        preds, fmt = [], "jsonl"
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path} line {n}: not a JSON object; predictions must be {PRED_FORMATS}") from None
            preds.append(_prediction(obj, path, f"line {n}"))
    else:
        preds, fmt = [], "caption_generate_txt"
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            image, tab, caption = line.partition("\t")
            if not tab or not image.strip():
                raise UserError(f"{path} line {n}: expected 'image<TAB>caption'; predictions must be {PRED_FORMATS}")
            preds.append({"image": image.strip(), "style": None, "caption": caption.strip(), "score": None})
    if not preds:
        raise UserError(f"{path} holds no predictions; predictions must be {PRED_FORMATS}")
    return preds, fmt


# ----------------------------------------------------------------------------- references
def load_references(path) -> tuple[list[dict], dict]:
    """(references, info). info: format, image_features {image_id: Tensor} or None,
    image_files {image_id: file name relative to the image folder} or None, meta."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"reference file {path} does not exist; check the path")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80":  # torch.save zip / legacy pickle
        from stylecap.features import load_features
        data = load_features(path)
        emb = data["clip_embedding"]
        refs, feats = [], {}
        for c in data["captions"]:
            image_id = str(c["image_id"])
            refs.append({"image_id": image_id, "style": c.get("style"), "caption": c["caption"]})
            feats.setdefault(image_id, emb[c["clip_embedding"]])
        return refs, {"format": "feature_file", "image_features": feats, "image_files": None, "meta": data.get("meta", {})}
    text = _read_text(path, "references")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not a feature file and not valid JSON ({e}); references must be {REF_FORMATS}") from None
    if isinstance(obj, dict) and isinstance(obj.get("annotations"), list):
        files = {str(im.get("id")): im.get("file_name") for im in obj.get("images", []) if im.get("file_name")}
        refs = [{"image_id": str(a["image_id"]), "style": a.get("style"), "caption": a["caption"]}
                for a in obj["annotations"] if isinstance(a, dict) and "image_id" in a and isinstance(a.get("caption"), str)]
        info = {"format": "coco_annotations", "image_features": None, "image_files": files or None, "meta": {}}
    elif isinstance(obj, list) and obj and all(isinstance(r, dict) for r in obj) and "image_hash" in obj[0]:
        refs, bad = [], 0
        for r in obj:
            comments = [r.get("comment")] + list(r.get("additional_comments") or [])
            if not isinstance(r.get("image_hash"), str) or not isinstance(r.get("comment"), str):
                bad += 1
                continue
            refs += [{"image_id": r["image_hash"], "style": r.get("personality"), "caption": c}
                     for c in comments if isinstance(c, str)]
        if bad:
            logger.warning(f"{path}: skipped {bad} malformed records (no image_hash or no string comment)")
        info = {"format": "personality_captions", "image_features": None,
                "image_files": {r["image_id"]: f"{r['image_id']}.jpg" for r in refs}, "meta": {}}
    else:
        raise UserError(f"{path}: unknown reference format; references must be {REF_FORMATS}")
    if not refs:
        raise UserError(f"{path} holds no usable reference captions; references must be {REF_FORMATS}")
    return refs, info


def image_paths_for(image_dir, image_ids, image_files: dict | None) -> dict[str, str]:
    """image_id -> file under image_dir: the file name the references give, else a file whose
    name without extension is the id."""
    image_dir = Path(image_dir)
    by_stem = {}
    with os.scandir(image_dir) as it:
        for entry in it:
            if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTS:
                by_stem.setdefault(os.path.splitext(entry.name)[0], entry.path)
    out = {}
    for image_id in image_ids:
        named = (image_files or {}).get(image_id)
        if named and (image_dir / named).is_file():
            out[image_id] = str(image_dir / named)
        elif os.path.splitext(os.path.basename(image_id))[0] in by_stem:
            out[image_id] = by_stem[os.path.splitext(os.path.basename(image_id))[0]]
    return out


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
    p.add_argument("--strict", action="store_true",
                   help="fail when a prediction has no references or a referenced image has no prediction")
    p.add_argument("--quiet", action="store_true", help="less logging")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet)
    from stylecap.metrics import evaluate_predictions, format_table, match_predictions

    if args.image_dir and not Path(args.image_dir).is_dir():
        raise UserError(f"--image_dir {args.image_dir} is not a folder")
    preds, pred_fmt = load_predictions(args.predictions)
    refs, info = load_references(args.references)
    logger.info(f"{len(preds)} predictions ({pred_fmt}) from {args.predictions}; "
                f"{len(refs)} references ({info['format']}) from {args.references}")
    train = None
    if args.train_captions:
        train, _ = load_references(args.train_captions)
        logger.info(f"{len(train)} training captions from {args.train_captions}")

    mt = match_predictions(preds, refs)
    if not mt.predictions:
        raise UserError(f"no prediction matches a reference: prediction images look like {preds[0]['image']!r}"
                        f"{' / ' + repr(preds[0]['style']) if mt.styled else ''}, reference ids like "
                        f"{refs[0]['image_id']!r}{' / ' + repr(refs[0]['style']) if mt.styled else ''}; "
                        f"are these the right files?")
    if mt.unmatched:
        logger.warning(f"{len(mt.unmatched)} predictions have no references (not scored), e.g. {mt.unmatched[:3]}")
    if mt.missing:
        logger.warning(f"{len(mt.missing)} referenced {'image/style pairs' if mt.styled else 'images'} have no "
                       f"prediction (not scored), e.g. {[str(k) for k in mt.missing[:3]]}")
    if args.strict and (mt.unmatched or mt.missing):
        raise UserError(f"--strict: {len(mt.unmatched)} predictions without references and {len(mt.missing)} "
                        f"references without predictions (e.g. {(mt.unmatched + [str(k) for k in mt.missing])[:3]}); "
                        "fix the inputs or drop --strict")

    clip_model = None
    if args.clip_model_path and info["image_features"]:
        from stylecap.clip_utils import load_clip
        from stylecap.utils import resolve_device
        clip_model, _, clip_info = load_clip(args.clip_model_path, resolve_device(None))
        want = info["meta"].get("clip_sha256")
        if want and want != clip_info["clip_sha256"]:
            logger.warning(f"{args.clip_model_path} is not the CLIP that made {args.references} "
                           "(sha256 differs): CLIPScore compares unrelated embeddings")
    metrics = evaluate_predictions(preds, refs, train_captions=train, clip_model=clip_model,
                                   image_features=info["image_features"], java=False if args.no_java else None,
                                   spice=not args.no_spice, spice_jars=args.spice_jars)
    if args.clip_model_path and not info["image_features"]:
        metrics["skipped"]["CLIPScore"] = (f"references ({info['format']}) carry no CLIP image features; "
                                           "give a feature file from process_*.py as --references")
    metrics["inputs"] = {"predictions": str(args.predictions), "predictions_format": pred_fmt,
                         "references": str(args.references), "references_format": info["format"],
                         "train_captions": args.train_captions, "code_version": code_version()}
    atomic_write_json(args.output_path, metrics)
    print(format_table(metrics))
    logger.info(f"metrics written to {args.output_path}")
    if args.report:
        from stylecap.report import write_report
        paths = image_paths_for(args.image_dir, {r["image_id"] for r in refs}, info["image_files"]) \
            if args.image_dir else None
        write_report(args.report, preds, refs, metrics, image_paths=paths, max_images=args.max_report_images)
        logger.info(f"report written to {args.report}")
    elif args.image_dir:
        logger.warning("--image_dir is only used with --report")
    return 0


if __name__ == "__main__":
    run_main(main)
