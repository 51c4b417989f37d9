"""A checkpoint knows its CLIP: predict.py and eval mode refuse features or images of another one.

train.py stores the training features' CLIP record (:func:`stylecap.features.clip_record`: model name,
sha256 of the weights, normalisation, backend, embedding width) in the checkpoint's config
(``ModelConfig.clip``; older checkpoints have it under the top-level "clip" key); the checks compare the
loaded model's config, in memory (:func:`same_clip`: the whole record but the name). A model trained on
ViT-B/16 features would otherwise caption ViT-B/32 features without a word: both are 512-d. Models whose
checkpoint holds no record (ClipCap's released weights, checkpoints saved before the record existed,
models trained on features that name no CLIP) cannot be checked: that is logged once, not refused.
"""
from __future__ import annotations

from pathlib import Path

import torch
from loguru import logger

from models.captioner import ModelConfig
from stylecap.features import clip_record, load_features
from stylecap.utils import UserError

OVERRIDE = "--allow_clip_mismatch"


def describe(record: dict | None) -> str:
    if record is None:
        return "an unrecorded CLIP"
    norm = ", L2-normalised" if record.get("normalized") else ""
    backend = record.get("clip_backend", "openai")
    kind = "" if backend == "openai" else f"{backend}, "
    width = f", {record['dim']}-d" if record.get("dim") else ""
    return f"{record.get('clip_model')} ({kind}sha256 {record['clip_sha256'][:12]}...{width}{norm})"


def same_clip(a: dict, b: dict) -> bool:
    """Whether two records name the same encoder: the whole record but the model's name (a path, which
    differs between machines). A record from before the backends (no "clip_backend") is openai-clip's;
    one without a width ("dim") matches any width."""
    return (a["clip_sha256"] == b["clip_sha256"] and bool(a.get("normalized")) == bool(b.get("normalized"))
            and a.get("clip_backend", "openai") == b.get("clip_backend", "openai")
            and (a.get("dim") is None or b.get("dim") is None or int(a["dim"]) == int(b["dim"])))


def _load_header(path: str | Path):
    """The feature dict, tensors memory-mapped (cheap); None when it cannot be read here
    (the caller's own loader then reports the problem)."""
    for mmap in (True, False):  # mmap needs torch's zip format; very old files are not
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception:
            continue
    return None


def trained_clip(cfg: ModelConfig) -> tuple[str, dict | None]:
    """What a loaded model's config says of its CLIP, in memory: ("stylecap", record) | ("unrecorded", None):
    trained on features naming no CLIP | ("old", None): saved before checkpoints had the record | ("clipcap", None)."""
    if cfg.legacy_clipcap:
        return "clipcap", None
    if cfg.clip is None:
        return "old", None
    return ("stylecap", cfg.clip) if cfg.clip else ("unrecorded", None)


def check_clip(cfg: ModelConfig, model_path: str | Path, given: dict | None, given_as: str, allow: bool = False,
               noun: str = "") -> None:
    """Refuse (UserError) when ``given`` (a clip_record of the CLIP or features at hand) is not the CLIP
    the model of config ``cfg`` (loaded from ``model_path``, named in messages) was trained with, unless
    ``allow``. ``given_as`` ends the sentence "the model was trained on X features but ...", e.g.
    "--clip_model_path is"; ``noun`` follows the CLIP's name."""
    kind, trained = trained_clip(cfg)
    what = f"{given_as} {describe(given)}{noun}"
    if kind == "clipcap":
        logger.warning(f"ClipCap weights carry no record of their CLIP (the released models used ViT-B/32): "
                       f"cannot check that {what} is the one {model_path} was trained with")
    elif kind == "old":
        logger.warning(f"{model_path} records no CLIP (saved before checkpoints did): cannot check that {what} "
                       "is the one it was trained with")
    elif kind == "unrecorded":
        logger.warning(f"{model_path} was trained on features that name no CLIP: cannot check that {what} "
                       "is the one it was trained with")
    if kind != "stylecap":
        return
    if given is None:
        logger.warning(f"{given_as} features that name no CLIP: cannot check that they are of "
                       f"{describe(trained)}, the CLIP {model_path} was trained with")
        return
    if same_clip(given, trained):
        return
    msg = f"the model was trained on {describe(trained)} features but {what}"
    if allow:
        logger.warning(f"{msg}; going on because of {OVERRIDE}")
        return
    raise UserError(f"{msg}; pass the CLIP it was trained with, or {OVERRIDE} to override")


def check_features_clip(cfg: ModelConfig, model_path: str | Path, features_path: str | Path, flag: str,
                        allow: bool = False) -> None:
    """check_clip for a feature file (its meta read cheaply, before the features are loaded)."""
    data = _load_header(features_path)
    meta = data.get("meta") if isinstance(data, dict) and "meta" in data else load_features(features_path)["meta"]
    check_clip(cfg, model_path, clip_record(meta or {}), f"{flag} {features_path} holds", allow, noun=" features")
