"""Readers for the feature pickles users already have, made before StyleCap's columnar store.

* ClipCap's ``parse_coco.py`` / ``parse_conceptual.py``: a plain pickle of
  ``{"clip_embedding": Tensor [N, D], "captions": [{"image_id", "caption", "clip_embedding": row}, ...]}``;
* ClipCap-Chinese: ``[[(image_id, caption), ...], {image_id: Tensor [1, D] or [D]}]``;
* StyleCap's first format (``torch.save`` of the same dict as ClipCap's, plus ``meta``).

They are read through a restricted unpickler (only tensors and builtins: anything else is refused
before it runs) and mapped onto records, which :mod:`stylecap.features` turns into columns.
"""
from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from stylecap.utils import UserError


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


def normalise_legacy(obj: Any, path: Path) -> dict:
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
