"""The feature file: what process_*.py write and what train/predict/evaluate read.

A feature file is ``torch.save`` of a dict, readable with ``torch.load(path, weights_only=True)``:

    clip_embedding  FloatTensor [N_images, D]   fp32 (fp16 with --fp16), NOT normalised
    captions        list of {"image_id": str, "caption": str, "clip_embedding": int row,
                             ["style": exact trait string]}
    meta            dict: CLIP model + sha256, dim, dtype, normalisation, sources, split,
                    counts, skipped images with reasons, style list, creation time

An image with several references (Flickr: 5; PersonalityCaptions test: comment + 4
additional_comments) has one caption record per reference, all pointing at the same row.

``load_features`` also reads the legacy pickles users already have (ClipCap's plain pickle
of the same dict, ClipCap-Chinese's ``[caption_list, image_id2embed]``) through a restricted
unpickler: only tensors and builtins; anything else is refused before it runs.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from stylecap.utils import UserError, atomic_torch_save


def _safe_load_from_bytes(b: bytes) -> Any:
    # torch.storage._load_from_bytes runs torch.load(weights_only=False) on nested bytes:
    # a second, unrestricted unpickler. Ours keeps the nested load restricted too.
    return torch.load(io.BytesIO(b), weights_only=True, map_location="cpu")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for legacy feature pickles: tensors and builtin containers only."""

    ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): None,
        ("torch._utils", "_rebuild_tensor"): None,
        ("torch._tensor", "_rebuild_from_type_v2"): None,
        ("torch.storage", "_load_from_bytes"): _safe_load_from_bytes,
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("builtins", "complex"): complex,
        ("torch", "Size"): torch.Size,
        ("torch", "float32"): torch.float32,
        ("torch", "float16"): torch.float16,
    }

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        target = self.ALLOWED[key]
        return target if target is not None else super().find_class(module, name)


def _normalise_legacy(obj: Any, path: Path) -> dict:
    """Map the legacy layouts onto the feature-file dict."""
    if isinstance(obj, dict) and "clip_embedding" in obj and "captions" in obj:
        # ClipCap: {"clip_embedding": Tensor [N, D] (one row per caption in COCO), "captions": [...]}
        emb = obj["clip_embedding"]
        caps = [dict(c, image_id=str(c["image_id"]), clip_embedding=int(c["clip_embedding"]))
                for c in obj["captions"]]
        meta = dict(obj.get("meta") or {}, legacy="clipcap")
        return {"clip_embedding": emb, "captions": caps, "meta": meta}
    if isinstance(obj, (list, tuple)) and len(obj) == 2 and isinstance(obj[1], dict):
        # ClipCap-Chinese: [[(image_id, caption), ...], {image_id: Tensor [1, D] or [D]}]
        caption_list, id2embed = obj
        ids = list(id2embed)
        row = {image_id: i for i, image_id in enumerate(ids)}
        emb = torch.stack([id2embed[i].reshape(-1) for i in ids]) if ids else torch.zeros(0, 512)
        caps = []
        for image_id, caption in caption_list:
            if image_id in row:
                caps.append({"image_id": str(image_id), "caption": caption, "clip_embedding": row[image_id]})
        return {"clip_embedding": emb, "captions": caps, "meta": {"legacy": "clipcap-chinese"}}
    raise UserError(f"{path}: not a feature file (expected a dict with clip_embedding/captions "
                    "or ClipCap-Chinese's [caption_list, image_id2embed]); re-run process_*.py")


def validate(data: dict, path: str | Path = "<features>") -> dict:
    """Check the dict's shape so a bad file fails here, with its name, not deep in training."""
    emb, caps = data.get("clip_embedding"), data.get("captions")
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2:
        raise UserError(f"{path}: clip_embedding must be a 2-d tensor [N_images, D]")
    if not isinstance(caps, list):
        raise UserError(f"{path}: captions must be a list of dicts")
    n = emb.shape[0]
    for i, c in enumerate(caps):
        if not (isinstance(c, dict) and isinstance(c.get("caption"), str)
                and isinstance(c.get("clip_embedding"), int) and 0 <= c["clip_embedding"] < n):
            raise UserError(f"{path}: caption record {i} is malformed (needs image_id, caption str, "
                            f"clip_embedding int row < {n}): {str(c)[:120]}")
    data.setdefault("meta", {})
    return data


def load_features(path: str | Path) -> dict:
    """Read a feature file (or legacy pickle) safely. Never executes code from the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"feature file {path} does not exist; create it with process_flickr.py "
                        "or process_personality.py")
    try:
        if zipfile.is_zipfile(path):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not (isinstance(obj, dict) and "meta" in obj):
                obj = _normalise_legacy(obj, path)
        else:
            with open(path, "rb") as f:
                obj = _normalise_legacy(RestrictedUnpickler(f).load(), path)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path}: refused to unpickle ({str(e).splitlines()[0]}); feature files may "
                        "hold only tensors and builtins. Regenerate it with process_*.py") from None
    except (EOFError, RuntimeError) as e:
        raise UserError(f"{path}: unreadable or truncated feature file ({e}); regenerate it") from None
    return validate(obj, path)


def save_features(path: str | Path, data: dict) -> None:
    """Write atomically (temporary file, then rename)."""
    atomic_torch_save(validate(data, path), path)


def clip_record(meta: dict) -> dict | None:
    """The CLIP that made a feature file, from its meta: {"clip_model", "clip_sha256", "normalized"};
    None when the file does not say (legacy pickles, hand-made files). Checkpoints store it (train.py)
    so that predict.py and eval mode can refuse features or images of another CLIP (stylecap/clip_check.py).
    Also accepts load_clip's ``info`` (features it encodes are not normalised)."""
    if not meta.get("clip_sha256"):
        return None
    return {"clip_model": meta.get("clip_model"), "clip_sha256": meta["clip_sha256"],
            "normalized": bool(meta.get("normalized", False))}


def styles_of(data: dict) -> list[str]:
    """The style vocabulary of a feature file, in first-seen order ([] for plain captions)."""
    seen: dict[str, None] = {}
    for c in data["captions"]:
        if c.get("style") is not None:
            seen.setdefault(c["style"], None)
    return list(seen)
