"""Every metric of a set of predictions at once: the library behind evaluate.py and eval mode."""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger

from stylecap.eval.clipscore import clip_score
from stylecap.eval.coco_metrics import score_captions
from stylecap.eval.diversity import diversity, normalise_caption
from stylecap.eval.inputs import image_paths_for, load_predictions, load_references
from stylecap.eval.matching import Matching, group_of, match_predictions
from stylecap.eval.metric_specs import STANDARD
from stylecap.eval.segmentation import Segmenter, resolve_segmentation
from stylecap.eval.style_metrics import style_measures
from stylecap.utils import UserError, atomic_write_json, code_version


def _scored_keys_by(mt: Matching, fn) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for key in mt.predictions:
        style = mt.styles.get(key)
        if style is not None:
            out[fn(style)].append(key)
    return dict(sorted(out.items()))


def most_frequent_caption_baseline(train_captions: list[dict], references: list[dict], *,
                                   java: bool | None = None, normalised: list[str] | None = None,
                                   segmenter: Segmenter | None = None) -> dict:
    """Score 'always emit the most frequent training caption' against ``references``.

    One caption for every image and style: the single most frequent training caption overall
    (counted after :func:`normalise_caption`; ties -> alphabetically first), NOT one per style,
    so the baseline knows nothing about the image or the requested style. Only BLEU and CIDEr
    are computed (speed); the tokenizer is the same as the main evaluation's.
    ``normalised``: normalise_caption of each training caption, if already computed.
    ``segmenter``: the main evaluation's (Chinese); None: PTB-style tokens."""
    if normalised is None:
        normalised = [normalise_caption(c["caption"], segmenter) for c in train_captions]
    counts = Counter(normalised)
    if not counts or not references:
        return {"caption": None, **{m: None for m in STANDARD}}
    best = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    original = train_captions[normalised.index(best)]["caption"]
    styled = all(r.get("style") is not None for r in references)
    refs: dict = defaultdict(list)
    for r in references:
        refs[(str(r["image_id"]), r["style"]) if styled else str(r["image_id"])].append(r["caption"])
    scores = score_captions({k: original for k in refs}, dict(refs), java=java, spice=False,
                            segment=segmenter if segmenter is not None else "none",
                            metrics=("BLEU", "CIDEr"), quiet=True)
    return {"caption": original, **{m: scores[m] for m in STANDARD}, "tokenizer": scores["tokenizer"]}


def references_fingerprint(mt: Matching) -> str:
    """sha256 of every scored image's references (by image id, whatever the matching), so that
    compare.py can refuse to compare scores made against different references."""
    import hashlib
    import json
    refs = sorted((str(mt.image_of(k)), sorted(mt.references[k])) for k in mt.predictions)
    return hashlib.sha256(json.dumps(refs, ensure_ascii=False).encode()).hexdigest()


def evaluate_predictions(predictions: list[dict], references: list[dict], *,
                         train_captions: list[dict] | None = None, clip_model=None,
                         image_features: dict[str, torch.Tensor] | None = None, java: bool | None = None,
                         spice: bool = True, spice_jars: str | None = None, segment: str = "auto") -> dict:
    """Match, then compute every metric: standard (top level), per_style, per_group, diversity,
    style_fidelity, clip_score, per_image, counts, segmentation and (with train_captions) baseline.

    ``segment`` ('auto', 'char', 'jieba', 'none'; see stylecap.eval.segmentation) is resolved once, from
    the predictions and references, and the same segmenter feeds the metrics, the diversity
    measures, the style classifier and the baseline; each of them segments the Chinese captions only."""
    mt = match_predictions(predictions, references)
    segmenter, _ = resolve_segmentation(segment, [p["caption"] for p in predictions]
                                        + [r["caption"] for r in references])
    seg_arg = segmenter if segmenter is not None else "none"
    by_style = _scored_keys_by(mt, lambda s: s)
    by_group = _scored_keys_by(mt, group_of)
    subsets = {**{f"style:{s}": k for s, k in by_style.items()}, **{f"group:{g}": k for g, k in by_group.items()}}
    # quiet: the reasons of skipped metrics go to the log file only; the printed table states them (once)
    scores = score_captions(mt.predictions, {k: mt.references[k] for k in mt.predictions}, java=java, spice=spice,
                            spice_jars=spice_jars, subsets=subsets, segment=seg_arg, quiet=True)
    result: dict[str, Any] = {m: scores[m] for m in STANDARD}
    skipped = dict(scores["skipped"])
    result["tokenizer"] = scores["tokenizer"]
    result["segmentation"] = scores["segmentation"]  # of the scored references: their kinds, and where SPICE ran
    result["per_style"] = {s: {"group": group_of(s), **scores["subsets"].get(f"style:{s}", {})} for s in by_style}
    result["per_group"] = {g: scores["subsets"].get(f"group:{g}", {}) for g in by_group}

    train_norm = [normalise_caption(c["caption"], segmenter) for c in train_captions] if train_captions else None
    result["diversity"] = diversity([p["caption"] for p in predictions],
                                    train_normalised=set(train_norm) if train_norm is not None else None,
                                    segmenter=seg_arg)
    if train_norm is None:
        skipped["copied"] = "no training captions given (--train_captions)"

    result["style_fidelity"], result["style_ppl"], style_skipped = style_measures(
        mt, predictions, references, train_captions, segmenter, scores["per_image"])
    skipped.update(style_skipped)
    result["references_sha256"] = references_fingerprint(mt)

    result["clip_score"] = None
    if clip_model is None:
        skipped["CLIPScore"] = "no CLIP model given (--clip_model_path)"
    elif not getattr(clip_model, "has_text", True):
        skipped["CLIPScore"] = "the image encoder has no text tower (a vision-only folder)"
    elif not image_features:
        skipped["CLIPScore"] = "no image features (give a feature file from process_*.py as --references)"
    else:
        keys = [k for k in mt.predictions if mt.image_of(k) in image_features]
        if keys:
            feats = torch.stack([image_features[mt.image_of(k)].reshape(-1) for k in keys])
            cs = clip_score(feats, [mt.predictions[k] for k in keys], clip_model, [mt.references[k] for k in keys])
            result["clip_score"] = {m: cs[m] for m in ("CLIP-S", "RefCLIP-S", "n")}
            for k, rec in zip(keys, cs["per_caption"]):
                scores["per_image"][k].update(rec)
        else:
            skipped["CLIPScore"] = "no matched image has features"

    result["per_image"] = [{"image_id": mt.image_of(k), "style": mt.styles.get(k), "caption": mt.predictions[k],
                            **scores["per_image"].get(k, {})} for k in mt.predictions]
    result["counts"] = {
        "predictions": len(predictions), "references": len(references),
        "reference_keys": len(mt.references), "scored": len(mt.predictions), "styled_matching": mt.styled,
        "unmatched_predictions": len(mt.unmatched), "missing_predictions": len(mt.missing),
        "duplicate_predictions": mt.duplicates, "matched_by_basename": mt.by_basename,
        "unmatched_examples": mt.unmatched[:5], "missing_examples": [str(k) for k in mt.missing[:5]]}
    if train_captions:
        matched_refs = [r for r in references if (((str(r["image_id"]), r.get("style")) if mt.styled
                                                   else str(r["image_id"])) in mt.predictions)]
        result["baseline"] = most_frequent_caption_baseline(train_captions, matched_refs, java=java,
                                                            normalised=train_norm, segmenter=segmenter)
    result["skipped"] = skipped
    return _jsonable(result)


def _jsonable(obj):
    """numpy scalars -> float, NaN -> None, tuple keys -> str: the result goes straight to JSON."""
    if isinstance(obj, dict):
        return {(k if isinstance(k, str) else str(k)): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj



# ============================================================================ files in, files out
def run_evaluation(predictions, references, output_path, *, train_captions=None, report=None, image_dir=None,
                   max_report_images: int = 60, clip_model_path=None, java: bool | None = None,
                   spice: bool = True, spice_jars: str | None = None, strict: bool = False,
                   segment: str = "auto", clip_backend: str = "auto") -> dict:
    """Score a predictions file against a references file and write metrics.json (and the HTML
    report with ``report``): what evaluate.py does, callable without it. Returns the metrics."""
    if image_dir and not Path(image_dir).is_dir():
        raise UserError(f"--image_dir {image_dir} is not a folder")
    preds, pred_fmt = load_predictions(predictions)
    refs, info = load_references(references)
    logger.info(f"{len(preds)} predictions ({pred_fmt}) from {predictions}; "
                f"{len(refs)} references ({info['format']}) from {references}")
    train = None
    if train_captions:  # a file, or a list of files (a run trained on several, e.g. images + a text corpus)
        files = list(train_captions) if isinstance(train_captions, (list, tuple)) else [train_captions]
        train = [c for f in files for c in load_references(f)[0]]
        train_captions = " ".join(map(str, files))
        logger.info(f"{len(train)} training captions from {train_captions}")

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
    if strict and (mt.unmatched or mt.missing):
        raise UserError(f"--strict: {len(mt.unmatched)} predictions without references and {len(mt.missing)} "
                        f"references without predictions (e.g. {(mt.unmatched + [str(k) for k in mt.missing])[:3]}); "
                        "fix the inputs or drop --strict")

    clip_model = None
    if clip_model_path and info["image_features"]:
        from stylecap.encoders import load_encoder
        from stylecap.utils import resolve_device
        clip_model = load_encoder(clip_model_path, resolve_device(None), clip_backend)  # any backend
        want = info["meta"].get("clip_sha256")
        if want and want != clip_model.sha256:
            logger.warning(f"{clip_model_path} is not the CLIP that made {references} "
                           "(sha256 differs): CLIPScore compares unrelated embeddings")
    metrics = evaluate_predictions(preds, refs, train_captions=train, clip_model=clip_model,
                                   image_features=info["image_features"], java=java,
                                   spice=spice, spice_jars=spice_jars, segment=segment)
    if clip_model_path and not info["image_features"]:
        metrics["skipped"]["CLIPScore"] = (f"references ({info['format']}) carry no CLIP image features; "
                                           "give a feature file from process_*.py as --references")
    metrics["inputs"] = {"predictions": str(predictions), "predictions_format": pred_fmt,
                         "references": str(references), "references_format": info["format"],
                         "train_captions": None if train_captions is None else str(train_captions),
                         "code_version": code_version()}
    atomic_write_json(output_path, metrics)
    logger.info(f"metrics written to {output_path}")
    if report:
        from stylecap.eval.report import write_report
        paths = image_paths_for(image_dir, {r["image_id"] for r in refs}, info["image_files"]) if image_dir else None
        write_report(report, preds, refs, metrics, image_paths=paths, max_images=max_report_images)
        logger.info(f"report written to {report}")
    elif image_dir:
        logger.warning("--image_dir is only used with --report")
    return metrics
