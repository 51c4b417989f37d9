"""Reading what evaluate.py scores: predictions and references in every supported format,
and the image files that go with them. Formats are recognised from the content, not the name."""
from __future__ import annotations

import json
import os
from pathlib import Path

from loguru import logger

from stylecap.utils import UserError

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
