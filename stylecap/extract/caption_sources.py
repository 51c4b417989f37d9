"""Parsers for the caption sources process_flickr.py / process_personality.py read.

    token     Flickr30k ``results_20130124.token``: ``1000092795.jpg#0<TAB>caption`` lines
    karpathy  Karpathy split json: ``images[i].filename``, ``.split``, ``.sentences[j].raw``
    cn        Flickr30k-CN (ClipCap-Chinese): ``image_id<TAB>caption`` lines, image ``{image_id}.jpg``
    personality  PersonalityCaptions ``{train,val,test}.json``: records with ``personality``,
              ``image_hash``, ``comment`` (+ ``additional_comments`` on test), image ``{image_hash}.jpg``

Every parser returns a :class:`CaptionSource`: the caption records in file order and the images in
order of first appearance. ``image_id`` is the image file's stem (``1000092795``, the YFCC hash).

Two kinds of bad input, handled differently:

* a malformed LINE or RECORD in an otherwise fine file (a token line without a TAB, an empty caption,
  a PersonalityCaptions record without ``comment``) is skipped, counted and reported
  (``CaptionSource.malformed``: file, where, reason; logged and stored in the feature file's meta);
* a malformed FILE -- unreadable, invalid JSON, the wrong top-level structure, or not one usable
  line/record -- raises :class:`UserError` with one line naming the file (and line) and the fix.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from stylecap.utils import UserError

FORMATS = ("token", "karpathy", "cn")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}  # restval is train


@dataclass
class CaptionSource:
    format: str
    files: list[str]
    captions: list[dict] = field(default_factory=list)     # {"image_id", "caption", ["style"]}, file order
    image_files: dict[str, str] = field(default_factory=dict)  # image_id -> file under the image folder
    splits: dict[str, str] | None = None                   # image_id -> train/val/test (Karpathy only)
    malformed: list[dict] = field(default_factory=list)    # {"file", "where", "reason"}

    def add(self, image_file: str, caption: str, **extra) -> None:
        image_id = Path(image_file).stem
        self.image_files.setdefault(image_id, image_file)  # dict order = first appearance
        self.captions.append({"image_id": image_id, "caption": caption, **extra})

    def bad(self, file, where: str, reason: str) -> None:
        self.malformed.append({"file": str(file), "where": where, "reason": reason})


def _image_file(name: str) -> str:
    """``1000092795.jpg#0`` / ``1000092795.jpg#zhb#0`` / ``1000092795`` -> ``1000092795.jpg``."""
    name = name.split("#", 1)[0].strip()
    return name if name.lower().endswith(IMAGE_EXTS) else f"{name}.jpg"


def _json(path: Path):
    """Read a JSON file; invalid JSON is a malformed FILE."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); is this the right file?") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg}); "
                        "fix or re-download the file") from None


def _lines(path: Path):
    """Yield (line number, text) of non-blank lines; a line that is not UTF-8 yields (n, None)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for n, line in enumerate(raw.splitlines(), 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            yield n, None
            continue
        if text.strip():
            yield n, text


def detect_format(path: str | Path) -> str:
    """'karpathy' for JSON; for TAB files 'token' when names carry a ``#n`` caption index, else 'cn'."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"caption file {path} not found; pass --caption_path (Flickr30k "
                        "results_20130124.token, dataset_flickr30k.json or the Flickr30k-CN txt)")
    with open(path, "rb") as f:
        head = f.read(1 << 16).lstrip(b"\xef\xbb\xbf").lstrip()
    if head[:1] in (b"{", b"["):
        return "karpathy"
    for n, (_, text) in enumerate(_lines(path)):
        if n >= 200:
            break
        if text and "\t" in text and re.search(r"#\d+$", text.split("\t", 1)[0].strip()):
            return "token"
    return "cn"


def _read_tab_file(path: Path, fmt: str) -> CaptionSource:
    """token and cn files: ``<image>[#n]<TAB><caption>``; differ only in how the image is named."""
    src = CaptionSource(format=fmt, files=[str(path)])
    for n, text in _lines(path):
        if text is None:
            src.bad(path, f"line {n}", "not UTF-8 text")
        elif "\t" not in text:
            src.bad(path, f"line {n}", f"no TAB between image and caption: {text[:80]!r}")
        else:
            name, caption = text.split("\t", 1)
            caption = caption.strip()
            if not name.split("#", 1)[0].strip():
                src.bad(path, f"line {n}", "empty image name")
            elif not caption:
                src.bad(path, f"line {n}", "empty caption")
            else:
                src.add(_image_file(name), caption)
    if not src.captions:
        first = f"; first problem: {src.malformed[0]['where']}: {src.malformed[0]['reason']}" if src.malformed else ""
        example = "1000092795.jpg#0<TAB>caption" if fmt == "token" else "1000092795<TAB>caption"
        raise UserError(f"{path}: no usable caption line (expected '{example}' lines, or pass "
                        f"--format karpathy for the Karpathy json){first}")
    return src


def read_karpathy(path: Path) -> CaptionSource:
    data = _json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path}: not a Karpathy split file (expected {{\"images\": [{{\"filename\", \"split\", "
                        "\"sentences\": [{\"raw\"}]}]}); pass --format token or cn for a TAB file")
    src = CaptionSource(format="karpathy", files=[str(path)], splits={})
    for i, img in enumerate(data["images"]):
        where = f"images[{i}]"
        if not isinstance(img, dict) or not isinstance(img.get("filename"), str) or not img["filename"]:
            src.bad(path, where, "no 'filename'")
            continue
        if img.get("split") not in KARPATHY_SPLITS:
            src.bad(path, where, f"unknown split {img.get('split')!r} (expected train/restval/val/test)")
            continue
        if not isinstance(img.get("sentences"), list) or not img["sentences"]:
            src.bad(path, where, "no 'sentences' (or an empty list)")
            continue
        # COCO's Karpathy file has 'filepath' (train2014/val2014); Flickr30k's has none.
        name = img["filename"] if not img.get("filepath") else f"{img['filepath']}/{img['filename']}"
        for j, sent in enumerate(img["sentences"]):
            raw = sent.get("raw") if isinstance(sent, dict) else None
            if not isinstance(raw, str) or not raw.strip():
                src.bad(path, f"{where}.sentences[{j}]", "no 'raw' caption text")
                continue
            src.add(name, raw.strip())
            src.splits.setdefault(Path(name).stem, KARPATHY_SPLITS[img["split"]])
    if not src.captions:
        raise UserError(f"{path}: no usable image/sentence in the Karpathy file"
                        + (f"; first problem: {src.malformed[0]['where']}: {src.malformed[0]['reason']}"
                           if src.malformed else ""))
    return src


def read_flickr(path: str | Path, fmt: str = "auto") -> CaptionSource:
    """Read a Flickr30k caption source; ``fmt`` is 'auto' (detect from content) or one of FORMATS."""
    path = Path(path)
    if fmt == "auto":
        fmt = detect_format(path)
    elif not path.is_file():
        raise UserError(f"caption file {path} not found; check --caption_path")
    return read_karpathy(path) if fmt == "karpathy" else _read_tab_file(path, fmt)


# ----------------------------------------------------------------------------- PersonalityCaptions
PERSONALITY_SPLITS = ("train", "val", "test")


def read_personality_split(path: Path) -> CaptionSource:
    """One PersonalityCaptions split file. Each of ``comment`` and ``additional_comments[k]`` becomes a
    caption record with the record's exact ``personality`` string as ``style``."""
    data = _json(path)
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records with personality/image_hash/comment; "
                        "is this a PersonalityCaptions split file?")
    src = CaptionSource(format="personality", files=[str(path)])
    for i, rec in enumerate(data):
        where = f"record {i}"
        if not isinstance(rec, dict):
            src.bad(path, where, "not a JSON object")
            continue
        style, image, comment = rec.get("personality"), rec.get("image_hash"), rec.get("comment")
        problem = ("'personality' missing or not a string" if not isinstance(style, str) or not style.strip()
                   else "'image_hash' missing or not a string" if not isinstance(image, str) or not image.strip()
                   else "'comment' missing, empty or not a string" if not isinstance(comment, str) or not comment.strip()
                   else None)
        if problem:
            src.bad(path, where, problem)
            continue
        extra = rec.get("additional_comments") or []
        if not isinstance(extra, list):
            src.bad(path, f"{where}.additional_comments", "not a list; kept only 'comment'")
            extra = []
        image_file = f"{image.strip()}.jpg"
        src.add(image_file, comment.strip(), style=style)  # style kept exactly: never lower-cased
        for k, c in enumerate(extra):
            if isinstance(c, str) and c.strip():
                src.add(image_file, c.strip(), style=style)
            else:
                src.bad(path, f"{where}.additional_comments[{k}]", "empty or not a string")
    if data and not src.captions:
        raise UserError(f"{path}: no usable record (each needs personality, image_hash and comment strings); "
                        f"first problem: {src.malformed[0]['where']}: {src.malformed[0]['reason']}")
    return src


def read_traits(data_dir: Path) -> list[str] | None:
    """``personalities.txt`` in order, without group headers (lines containing 'Trait'); None if absent."""
    path = data_dir / "personalities.txt"
    if not path.is_file():
        return None
    return [t.strip() for t in path.read_text(encoding="utf-8-sig").splitlines()
            if t.strip() and "Trait" not in t]
