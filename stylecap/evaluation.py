"""Caption a feature file with a model, score it, and write predictions, metrics and the report.

Shared by ``predict.py --features``, ``train.py --mode eval`` and training's end-of-epoch evaluation.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from loguru import logger

from models.captioner import StyleCapModel
from models.decoding import DecodeConfig, generate_captions
from stylecap.utils import atomic_write_text


def eval_items(data: dict, model: StyleCapModel, styles: list[str] | None = None,
               max_images: int | None = None) -> list[tuple[str, int, str | None]]:
    """(image_id, feature row, style) to caption: each image with its own style(s) from the records,
    or with every style in ``styles``; plain models caption each image once."""
    items, seen = [], set()
    for c in data["captions"]:
        if model.cfg.style_mode == "none":
            wanted = [None]
        else:
            wanted = styles if styles is not None else [c.get("style")]
        for s in wanted:
            key = (c["image_id"], s)
            if key not in seen:
                seen.add(key)
                items.append((c["image_id"], c["clip_embedding"], s))
    if max_images is not None:
        keep = list(dict.fromkeys(i for i, _, _ in items))[:max_images]
        items = [it for it in items if it[0] in set(keep)]
    return items


def caption_items(model: StyleCapModel, features: torch.Tensor, items: list[tuple[str, int, str | None]],
                  dc: DecodeConfig, batch_size: int = 64, progress: bool = False) -> list[dict]:
    """Predictions {"image", "style", "caption", "score"}, ``num_generate`` per item, in item order."""
    from tqdm import tqdm
    device = next(model.parameters()).device
    preds = []
    for start in tqdm(range(0, len(items), batch_size), disable=not progress, desc="captioning", leave=False):
        chunk = items[start:start + batch_size]
        feats = features[[row for _, row, _ in chunk]].to(device)
        outs = generate_captions(model, feats, [s for _, _, s in chunk], dc)
        for (image_id, _, style), gens in zip(chunk, outs):
            for g in gens:
                preds.append({"image": image_id, "style": style, "caption": g["caption"], "score": g["score"]})
    return preds


def write_predictions(folder: str | Path, preds: list[dict]) -> tuple[Path, Path]:
    """caption_generate.txt (image<TAB>caption, as ClipCap-Chinese) and predictions.jsonl."""
    folder = Path(folder)
    txt, jsonl = folder / "caption_generate.txt", folder / "predictions.jsonl"
    atomic_write_text(txt, "".join(f"{p['image']}\t{p['caption']}\n" for p in preds))
    atomic_write_text(jsonl, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds))
    return txt, jsonl


def references_of(data: dict) -> list[dict]:
    return [{"image_id": c["image_id"], "style": c.get("style"), "caption": c["caption"]} for c in data["captions"]]


def log_preview(preds: list[dict], n: int = 5) -> None:
    for p in preds[:n]:
        style = f" [{p['style']}]" if p.get("style") else ""
        logger.info(f"{p['image']}{style}: {p['caption']}")
