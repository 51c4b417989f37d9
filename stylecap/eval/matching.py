"""Pairing predictions with references: by (image_id, style) or image_id, lenient on image names."""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field


def image_stem(image: str) -> str:
    """'/x/1000092795.jpg' -> '1000092795': the lenient form of an image id."""
    return os.path.splitext(os.path.basename(str(image).replace("\\", "/")))[0]


@dataclass
class Matching:
    """Predictions paired with references.

    Keys are ``(image_id, style)`` when every prediction and every reference has a style, else
    ``image_id`` (the reference's id). ``pred_keys[i]`` is the key of ``predictions[i]`` or None."""
    styled: bool
    predictions: dict = field(default_factory=dict)   # key -> caption (first prediction per key)
    references: dict = field(default_factory=dict)    # key -> [captions], every reference key
    styles: dict = field(default_factory=dict)        # key -> style or None
    pred_keys: list = field(default_factory=list)
    unmatched: list = field(default_factory=list)     # prediction image names without references
    duplicates: int = 0
    by_basename: int = 0                              # matched only after dropping folder/extension

    @property
    def missing(self) -> list:
        return [k for k in self.references if k not in self.predictions]

    @staticmethod
    def image_of(key) -> str:
        return key[0] if isinstance(key, tuple) else key


def match_predictions(predictions: list[dict], references: list[dict]) -> Matching:
    """Pair predictions with references by (image_id, style) or image_id (see :class:`Matching`).
    Image ids match exactly, else by basename without extension."""
    styled = bool(predictions) and bool(references) and all(p.get("style") is not None for p in predictions) \
        and all(r.get("style") is not None for r in references)
    mt = Matching(styled=styled)
    ref_styles: dict[str, set] = defaultdict(set)
    for r in references:
        image_id = str(r["image_id"])
        key = (image_id, r["style"]) if styled else image_id
        mt.references.setdefault(key, []).append(r["caption"])
        ref_styles[image_id].add(r.get("style"))
    stems: dict[str, str | None] = {}
    for image_id in ref_styles:
        s = image_stem(image_id)
        stems[s] = None if s in stems and stems[s] != image_id else image_id  # None: ambiguous
    for p in predictions:
        image = str(p["image"])
        image_id = image if image in ref_styles else stems.get(image_stem(image))
        key = None if image_id is None else (image_id, p["style"]) if styled else image_id
        if key is None or key not in mt.references:
            mt.pred_keys.append(None)
            mt.unmatched.append(image if key is None else f"{image} ({p.get('style')})")
            continue
        mt.pred_keys.append(key)
        if key in mt.predictions:
            mt.duplicates += 1
            continue
        mt.by_basename += image_id != image
        mt.predictions[key] = p["caption"]
    for key in mt.references:
        if styled:
            mt.styles[key] = key[1]
        else:
            known = ref_styles[key] - {None}
            mt.styles[key] = next(iter(known)) if len(known) == 1 else None
    for p, key in zip(predictions, mt.pred_keys):  # a requested style beats the references' one
        if key is not None and not styled and p.get("style") is not None:
            mt.styles[key] = p["style"]
    return mt


def group_of(style: str | None) -> str:
    from stylecap.styles import trait_group
    return (trait_group(style) if style else None) or "other"

