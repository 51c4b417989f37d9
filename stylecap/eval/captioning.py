"""Captioning with a trained model: the images of a folder, the requested styles, the CLIP that encodes
images for the model, and batched decoding of (image, style) items.

One home for predict.py, app.py and evaluation (``train.py --mode eval``, ``evaluate.py --model_path``,
training's end-of-epoch metrics): they caption with the same code, so they give the same captions.
Encoding image files is the extraction engine's job (``stylecap.extract.image_encoder.extract_features``);
the scripts hand it in as ``encode``, since the eval package does not import the extract package.
"""
from __future__ import annotations

import difflib
import glob
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from loguru import logger

from models.blending import StyleBlend, check_blendable, check_scale, make_blend
from models.captioner import ModelConfig, StyleCapModel
from models.decoding import DecodeConfig, generate_captions
from models.style_modes import style_mode
from stylecap.clip_check import check_clip
from stylecap.clip_utils import DEFAULT_CLIP
from stylecap.distributed import batch_share, gather_lists, rank_and_world
from stylecap.encoders import spec_exists
from stylecap.features import clip_record
from stylecap.utils import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
Style = "str | StyleBlend | None"  # a style name, a blend of styles (or a style at another strength), None: plain
Item = tuple[str, int, Style]  # (image id, feature row, style)
# image paths -> (features (n_ok, D) on the CPU, indices of the readable paths, [(index, reason)] of the others)
Encoder = Callable[[list[str]], tuple[torch.Tensor, list[int], list[tuple[int, str]]]]


# ---- images and styles ----------------------------------------------------------------------------
def image_files(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The images of a folder (by suffix), sorted by path; ``recursive``: of its subfolders too."""
    found = Path(folder).rglob("*") if recursive else Path(folder).iterdir()
    return sorted(q for q in found if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())


def list_images(spec: str, recursive: bool = False) -> tuple[list[Path], list[str]]:
    """--image_path: an image file, a folder of images or a glob -> (image paths, their names). A name is the
    file name, or with ``recursive`` the path under the folder ("sub/a.jpg"), so that equal file names in two
    subfolders stay apart. Subfolders not searched are counted in a warning. UserError when no image."""
    p, skipped = Path(spec), ""
    if p.is_dir():
        paths = image_files(p, recursive)
        names = [q.relative_to(p).as_posix() for q in paths]
        subfolders = 0 if recursive else sum(q.is_dir() for q in p.iterdir())
        if subfolders:
            skipped = f"{plural(subfolders, 'subfolder')} not searched in {p} (--recursive searches them too)"
    else:
        paths = [p] if p.is_file() else sorted(Path(q) for q in glob.glob(spec) if Path(q).is_file())
        names = [q.name for q in paths]
    if not paths:
        raise UserError(f"--image_path {spec}: no images found " + (f"({skipped})" if skipped else
                        "(give a file, a folder or a glob like 'dir/*.jpg')"))
    if skipped:
        logger.warning(skipped)
    return paths, names


def plural(n: int, noun: str) -> str:
    """'1 caption', '2 captions' (nouns with a plain -s plural)."""
    return f"{n} {noun}{'s' * (n != 1)}"


def resolve_styles(model: StyleCapModel | ModelConfig, wanted: list[str], all_styles: bool = False,
                   scale: float = 1.0) -> list[Style]:
    """The styles to caption in: [None] for a plain model (``wanted`` and ``scale`` are ignored), every style
    of the model for ``all_styles``, else ``wanted`` (may be empty) as the model spells them, each once. A
    name matches exactly, else case-insensitively when that names one style ("sarcastic" -> "Sarcastic"); an
    unknown one is a UserError naming the closest valid names. A blend "Happy:0.7,Gloomy:0.3", or any style
    at ``scale`` != 1 (--style_scale), becomes a StyleBlend (see parse_style). ``model``: the model, or its
    config only (predict.py checks the names before GPT-2 and CLIP load)."""
    cfg = model if isinstance(model, ModelConfig) else model.cfg
    if cfg.style_mode == "none":
        return [None]
    check_scale(scale)
    if all_styles:
        return [with_scale(cfg, s, scale) for s in cfg.styles]
    return list(dict.fromkeys(parse_style(cfg, s, scale) for s in wanted))


def with_scale(cfg: ModelConfig, style: Style, scale: float) -> Style:
    """``style`` at strength ``scale``: itself at 1 (a name stays a name: decoded exactly as before), else a
    StyleBlend; UserError for a mode that cannot scale a style (prompt)."""
    if scale == 1.0 or style is None:
        return style
    check_blendable(style_mode(cfg.style_mode), "--style_scale")
    if isinstance(style, StyleBlend):
        return make_blend(list(style.weights), scale)
    return make_blend([(style, 1.0)], scale)


# ":0.7" (a number, signed so that a negative one is named) right before a comma or the end of the text
_WEIGHT = re.compile(r":\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?=,|$)")


def parse_style(cfg: ModelConfig, spec: str, scale: float = 1.0) -> Style:
    """One --style value -> a style name, or a StyleBlend for "NAME:WEIGHT,NAME:WEIGHT,..." or ``scale`` != 1.

    A whole value that names a style is that style, whatever commas, colons or parentheses it holds
    ("Cynical (Doubtful, Skeptical)"). Otherwise it is read as a blend: split only after ":WEIGHT" (a number
    followed by a comma or the end), and every piece before a weight must name a style (match_style). If
    more than one such reading exists, it is refused as ambiguous; if none, the message names the first
    unknown style or bad weight. Weights are normalised to sum to 1 (make_blend)."""
    name = _known(cfg.styles, spec)
    if name is not None:
        return with_scale(cfg, name, scale)
    if not _WEIGHT.search(spec):  # no weight anywhere: an unknown name, with the closest valid ones
        hint = " (a blend gives each style a weight: NAME:WEIGHT,NAME:WEIGHT)" if "," in spec else ""
        try:
            match_style(cfg.styles, spec)
        except UserError as unknown:
            raise UserError(f"{unknown}{hint}") from None
    readings = _readings(cfg.styles, spec.strip(), 0)
    if not readings:
        raise _why_not_a_blend(cfg.styles, spec)
    if len(readings) > 1:
        shown = " or ".join(" + ".join(repr(n) for n, _ in r) for r in readings)
        raise UserError(f"--style {spec!r} reads as more than one blend (of {shown}); spell the style names "
                        "as --list_styles prints them so that only one reading is left")
    check_blendable(style_mode(cfg.style_mode))
    return make_blend([(name, float(w)) for name, w in readings[0]], scale)


def _readings(styles: list[str], spec: str, start: int, limit: int = 2) -> list[list[tuple[str, str]]]:
    """Up to ``limit`` ways to read spec[start:] as NAME:WEIGHT(,NAME:WEIGHT)* with every NAME a style."""
    found: list[list[tuple[str, str]]] = []
    for m in _WEIGHT.finditer(spec, start):
        try:
            name = match_style(styles, spec[start:m.start()].strip())
        except UserError:
            continue
        rests = [[]] if m.end() == len(spec) else _readings(styles, spec, m.end() + 1, limit - len(found))
        found += [[(name, m.group(1))] + rest for rest in rests]
        if len(found) >= limit:
            break
    return found[:limit]


def _why_not_a_blend(styles: list[str], spec: str) -> UserError:
    """The UserError for a --style that is neither a style nor a blend: walk its pieces (a known name up to a
    colon, its weight up to the next comma) and name the first unknown style or weight that is not a number."""
    start, text = 0, spec.strip()
    while start < len(text):
        colons = [i for i, ch in enumerate(text) if ch == ":" and i > start]
        colon = next((i for i in colons if _known(styles, text[start:i].strip())), None)
        if colon is None:
            rest = text[start:]
            cuts = [i for i, ch in enumerate(rest) if ch == ","] + [len(rest)]
            bare = next((n for i in cuts if (n := _known(styles, rest[:i].strip()))), None)
            if bare is not None:
                return UserError(f"style {bare!r} in --style {spec!r} has no weight; give every style of a blend "
                                 f"one, e.g. {bare}:0.5")
            piece = (text[start:colons[0]] if colons else rest).strip()
            return UserError(f"unknown style {piece!r} in --style {spec!r}; closest valid: "
                             f"{closest_styles(styles, piece)} (a blend is NAME:WEIGHT,NAME:WEIGHT)")
        name = _known(styles, text[start:colon].strip())
        comma = text.find(",", colon)
        weight = text[colon + 1:comma if comma >= 0 else len(text)].strip()
        if not _WEIGHT.fullmatch(f":{weight}"):
            return UserError(f"weight {weight!r} of {name!r} in --style {spec!r} is not a number; "
                             "a blend is NAME:WEIGHT,NAME:WEIGHT, e.g. Happy:0.7,Gloomy:0.3")
        start = comma + 1 if comma >= 0 else len(text)
    return UserError(f"--style {spec!r} is neither a style nor a blend NAME:WEIGHT,NAME:WEIGHT of the model's "
                     "styles (--list_styles prints them)")


def _known(styles: list[str], name: str) -> str | None:
    try:
        return match_style(styles, name)
    except UserError:
        return None


def match_style(styles: list[str], name: str) -> str:
    """``name`` as spelled in ``styles``: an exact match, else the one case-insensitive match."""
    if name in styles:
        return name
    folded = [s for s in styles if s.casefold() == name.casefold()]
    if len(folded) == 1:
        return folded[0]
    raise UserError(f"unknown style {name!r}; closest valid: {closest_styles(styles, name)} (the model knows "
                    f"{len(styles)} styles: --list_styles prints them, --style all captions in every one)")


def closest_styles(styles: list[str], name: str, n: int = 3) -> list[str]:
    """Up to ``n`` suggestions for a style name: the styles that start with it (case-insensitively), then
    those that contain it, then the most similar spellings (difflib), so "Cynical" suggests
    "Cynical (Doubtful, Skeptical)" first."""
    key = name.casefold()
    prefix = [s for s in styles if s.casefold().startswith(key)]
    inside = [s for s in styles if key in s.casefold() and s not in prefix]
    similar = difflib.get_close_matches(key, [s.casefold() for s in styles], n=n, cutoff=0.0)
    by_fold = {s.casefold(): s for s in styles}
    return list(dict.fromkeys(prefix + inside + [by_fold[s] for s in similar]))[:n]


def checkpoint_path(spec: str | Path) -> tuple[Path, str]:
    """--model_path -> (the checkpoint file, why that one): a file as given; an exported model folder
    (export.py) as given; a run folder (train.py's --output_path) -> its checkpoints/best.pt."""
    from models.model_folder import is_model_folder
    p = Path(spec)
    if not p.is_dir():
        return p, "--model_path"
    if is_model_folder(p):
        return p, "an exported model folder"
    best = p / "checkpoints" / "best.pt"
    if best.is_file():
        return best, "the run folder's best checkpoint"
    there = sorted(q.name for q in (p / "checkpoints").glob("*.pt")) if (p / "checkpoints").is_dir() else []
    raise UserError(f"--model_path {p} is a folder with no checkpoints/best.pt; pass a checkpoint file"
                    + (f" (its checkpoints/ holds {', '.join(there)})" if there else
                       " such as output/<run>/checkpoints/best.pt"))


# ---- CLIP ------------------------------------------------------------------------------------------
def clip_path_for(model: StyleCapModel, given: str | None) -> tuple[str, str]:
    """(CLIP to encode images with, why that one): ``given`` (--clip_model_path) if any, else the CLIP the
    checkpoint records when it is on this machine (a file, a folder, or open_clip's ARCH:FILE), else DEFAULT_CLIP."""
    if given:
        return given, "--clip_model_path"
    recorded = (model.cfg.clip or {}).get("clip_model")
    if recorded and spec_exists(recorded):
        return recorded, "recorded in the checkpoint"
    if recorded:
        return DEFAULT_CLIP, f"the default: {recorded}, recorded in the checkpoint, is not on this machine"
    return DEFAULT_CLIP, "the default: the checkpoint records no CLIP"


def load_clip_for(model: StyleCapModel, clip_model_path: str | None, device: torch.device | str,
                  model_path: str | Path, allow_mismatch: bool = False, backend: str = "auto"):
    """(encoder, preprocess) for encoding images for ``model`` (loaded from ``model_path``, named in
    messages): a stylecap.encoders.ImageEncoder of any backend (``backend``: --clip_backend; auto: detected,
    or the checkpoint's recorded backend when its recorded CLIP is used) and its preprocess.
    ``clip_model_path`` None: the CLIP the checkpoint names (see clip_path_for); the one used is
    logged. A CLIP of the wrong width, or another CLIP than the model was trained with (the whole record:
    sha256, backend, width), is a UserError unless ``allow_mismatch``."""
    from stylecap.encoders import load_encoder
    path, why = clip_path_for(model, clip_model_path)
    if backend == "auto" and why == "recorded in the checkpoint":
        backend = (model.cfg.clip or {}).get("clip_backend", "auto")
    logger.info(f"CLIP: {path} ({why})")
    enc = load_encoder(path, device, backend)
    if enc.width != model.cfg.clip_size:
        raise UserError(f"{path} gives {enc.width}-d features but the model expects "
                        f"{model.cfg.clip_size}-d; pass the CLIP model it was trained with")
    check_clip(model.cfg, model_path, clip_record(enc.record), "--clip_model_path is", allow_mismatch)
    return enc, enc.preprocess


# ---- batched captioning ----------------------------------------------------------------------------
def eval_items(data: dict, model: StyleCapModel, styles: list[str] | None = None,
               max_images: int | None = None) -> list[Item]:
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


def caption_items(model: StyleCapModel, features: torch.Tensor, items: list[Item],
                  dc: DecodeConfig, batch_size: int = 64, progress: bool = False,
                  with_scores: bool = True, seed: int | None = None, first_batch: int = 0) -> list[dict]:
    """Predictions {"image", "style", "caption", "score"} (+ a blend's keys: see prediction), ``num_generate``
    per item, in item order.
    ``features`` (N, D) is indexed by the items' rows. ``with_scores=False``: score None. ``seed``: each
    batch draws its samples from a seed of its own, made from (seed, its batch number counted from
    ``first_batch``), so --decode sample gives the same captions however the batches are spread over
    processes (None: the global RNG runs on, as predict.py's --seed).
    ``progress``: a bar in items/s with an ETA, and a closing log line with the rate."""
    from tqdm import tqdm
    device = next(model.parameters()).device
    preds, t0 = [], time.perf_counter()
    with tqdm(total=len(items), disable=not progress, desc="captioning", unit="img", leave=False) as bar:
        for b, start in enumerate(range(0, len(items), batch_size)):
            chunk = items[start:start + batch_size]
            feats = features[[row for _, row, _ in chunk]].to(device)  # (b, D)
            if seed is not None:
                torch.manual_seed(batch_seed(seed, first_batch + b))  # all devices
            outs = generate_captions(model, feats, [s for _, _, s in chunk], dc, with_scores)
            for (image_id, _, style), gens in zip(chunk, outs):
                for g in gens:
                    preds.append(prediction(image_id, style, g))
            bar.update(len(chunk))
    if progress and items:
        took = time.perf_counter() - t0
        logger.info(f"captioned {len(items)} items in {took:.1f}s ({len(items) / max(took, 1e-9):.1f} items/s)")
    return preds


def prediction(image_id: str, style: Style, gen: dict) -> dict:
    """A predictions.jsonl record: {"image", "style", "caption", "score"}; a StyleBlend's "style" is its label
    ("Happy", "Happy:0.7,Gloomy:0.3"), with "style_blend" ({style: weight}, summing to 1) and "style_scale"."""
    if not isinstance(style, StyleBlend):
        return {"image": image_id, "style": style, "caption": gen["caption"], "score": gen["score"]}
    return {"image": image_id, "style": style.label, "caption": gen["caption"], "score": gen["score"],
            **style.record()}


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch ``batch``: numpy's SeedSequence mixes the pair, so that (seed, batch + 1) is not
    (seed + 1, batch) and runs with neighbouring --seed values share no batch's samples."""
    return int(np.random.SeedSequence([seed, batch]).generate_state(1)[0])


def caption_items_across_ranks(model: StyleCapModel, features: torch.Tensor, items: list[Item], dc: DecodeConfig,
                               batch_size: int = 64, progress: bool = False, with_scores: bool = True,
                               seed: int | None = None) -> list[dict]:
    """caption_items under torchrun: each rank captions a contiguous block of whole batches, and every rank
    gets all predictions back in item order. The batches are the ones one process makes, so the result is
    identical to one process's (greedy and beam; sample too when ``seed`` is given). All ranks must call
    it; without a process group it is caption_items. Progress is shown by rank 0, for its own share."""
    rank, world = rank_and_world()
    first, lo, hi = batch_share(len(items), batch_size, rank, world)
    if progress and rank == 0 and world > 1:
        logger.info(f"captioning {len(items)} items on {world} processes; rank 0 does items {lo}-{hi - 1}")
    local = caption_items(model, features, items[lo:hi], dc, batch_size, progress and rank == 0, with_scores,
                          seed, first)
    return gather_lists(local)


def caption_images(model: StyleCapModel, encode: Encoder, paths: list[Path], styles: list[str | None],
                   dc: DecodeConfig, batch_size: int = 32, names: list[str] | None = None, progress: bool = False
                   ) -> tuple[list[dict], list[int], list[tuple[int, str]]]:
    """Encode image files with ``encode`` (CLIP) and caption each readable one in every style of ``styles``.

    Returns (predictions as caption_items gives them, indices of the readable paths, [(index, reason)] for
    the unreadable ones). Images are named ``names[i]`` (default: the file name). Shared by predict.py and app.py.
    """
    names = names or [Path(p).name for p in paths]
    features, ok, bad = encode([str(p) for p in paths])  # (n_ok, D)
    items = [(names[i], row, s) for row, i in enumerate(ok) for s in styles]
    preds = caption_items(model, features, items, dc, batch_size, progress=progress) if items else []
    return preds, ok, bad
