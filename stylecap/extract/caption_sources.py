"""Parsers for the caption sources process_flickr.py / process_personality.py read (registered, with their
detectors, in :mod:`stylecap.extract.readers`).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

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


def need_file(path: Path) -> Path:
    """``path`` when it is a file; else the one-line error every caption-file reader gives."""
    if not path.is_file():
        raise UserError(f"caption file {path} not found; check --caption_path")
    return path


def json_document(path: Path) -> bool:
    """Does the file start (after a BOM and blanks) like a JSON document ('{' or '[')?"""
    with open(path, "rb") as f:
        head = f.read(1 << 16).lstrip(b"\xef\xbb\xbf").lstrip()
    return head[:1] in (b"{", b"[")


def caption_index(path: Path) -> bool:
    """Does one of the first 200 non-blank lines name its image with a ``#n`` caption index before a TAB
    (Flickr30k's ``1000092795.jpg#0<TAB>caption``)?"""
    for n, (_, text) in enumerate(_lines(path)):
        if n >= 200:
            break
        if text and "\t" in text and re.search(r"#\d+$", text.split("\t", 1)[0].strip()):
            return True
    return False


def _read_tab_file(path: Path, fmt: str) -> CaptionSource:
    """token and cn files: ``<image>[#n]<TAB><caption>``; differ only in how the image is named."""
    src = CaptionSource(format=fmt, files=[str(path)])
    for n, text in _lines(need_file(path)):
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


def read_token(path: Path, image_dir: Path | None = None) -> CaptionSource:
    """Flickr30k ``results_20130124.token``: ``1000092795.jpg#0<TAB>caption`` lines."""
    return _read_tab_file(path, "token")


def read_cn(path: Path, image_dir: Path | None = None) -> CaptionSource:
    """Flickr30k-CN: ``1000092795<TAB>caption`` lines, image ``1000092795.jpg``."""
    return _read_tab_file(path, "cn")


def walk_images(src: CaptionSource, path: Path, images: list, splits: dict[str, str],
                name_of: Callable[[dict], str | None],
                extra_of: Callable[[dict], dict | str] = lambda sent: {}) -> None:
    """The walker of the ``{"images": [{"filename", "split", "sentences": [{"raw", ...}]}]}`` layout that
    Karpathy's split files and SentiCap's json share: each usable sentence -> a caption record of
    ``src`` and its image's split (``splits`` maps the accepted split names to the stored ones).
    ``name_of(image)``: the image file under --image_path, or None when the record has no usable filename;
    ``extra_of(sentence)``: the record's extra fields (e.g. its style), or the reason it is malformed."""
    for i, img in enumerate(images):
        where = f"images[{i}]"
        name = name_of(img) if isinstance(img, dict) else None
        if name is None:
            src.bad(path, where, "no 'filename'")
            continue
        if not isinstance(img.get("split"), str) or img["split"] not in splits:
            src.bad(path, where, f"unknown split {img.get('split')!r} (expected {'/'.join(splits)})")
            continue
        if not isinstance(img.get("sentences"), list) or not img["sentences"]:
            src.bad(path, where, "no 'sentences' (or an empty list)")
            continue
        split, earlier = splits[img["split"]], src.splits.get(Path(name).stem)
        if earlier not in (None, split):  # as the generic reader: splits are by image, never first-wins
            src.bad(path, where, f"image {name!r} is in split {earlier!r} on an earlier entry, {split!r} here; "
                                 "splits are by image")
            continue
        for j, sent in enumerate(img["sentences"]):
            raw = sent.get("raw") if isinstance(sent, dict) else None
            extra = extra_of(sent) if isinstance(raw, str) and raw.strip() else "no 'raw' caption text"
            if isinstance(extra, str):
                src.bad(path, f"{where}.sentences[{j}]", extra)
                continue
            src.add(name, raw.strip(), **extra)
            src.splits.setdefault(Path(name).stem, split)


def _karpathy_name(img: dict) -> str | None:
    """COCO's Karpathy file has 'filepath' (train2014/val2014); Flickr30k's has none."""
    if not isinstance(img.get("filename"), str) or not img["filename"]:
        return None
    return img["filename"] if not img.get("filepath") else f"{img['filepath']}/{img['filename']}"


def read_karpathy(path: Path, image_dir: Path | None = None) -> CaptionSource:
    """Karpathy split json: ``images[i].filename``, ``.split``, ``.sentences[j].raw`` (restval is train)."""
    data = _json(need_file(path))
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path}: not a Karpathy split file (expected {{\"images\": [{{\"filename\", \"split\", "
                        "\"sentences\": [{\"raw\"}]}]}); pass --format token or cn for a TAB file")
    src = CaptionSource(format="karpathy", files=[str(path)], splits={})
    walk_images(src, path, data["images"], KARPATHY_SPLITS, _karpathy_name)
    if not src.captions:
        raise UserError(f"{path}: no usable image/sentence in the Karpathy file"
                        + (f"; first problem: {src.malformed[0]['where']}: {src.malformed[0]['reason']}"
                           if src.malformed else ""))
    return src


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


def read_personality(data_dir: Path, image_dir: Path | None = None) -> dict[str, CaptionSource]:
    """The split files of the personality_captions folder that are there -> {split: CaptionSource}."""
    sources = {s: read_personality_split(data_dir / f"{s}.json")
               for s in PERSONALITY_SPLITS if (data_dir / f"{s}.json").is_file()}
    if not sources:
        raise UserError(f"{data_dir} has none of train.json, val.json, test.json; pass the personality_captions folder")
    missing = [s for s in PERSONALITY_SPLITS if s not in sources]
    if missing:
        logger.warning(f"{data_dir}: no {', '.join(m + '.json' for m in missing)}; writing only {', '.join(sources)}")
    return sources


def personality_styles(sources: dict[str, CaptionSource], traits: list[str] | None) -> list[str]:
    """One style list for all split files, so style ids agree between train and test: the traits of
    personalities.txt in order (any other trait seen in the data appended), else first appearance."""
    seen: dict[str, None] = {}
    for src in sources.values():
        for c in src.captions:
            seen.setdefault(c["style"], None)
    if traits is None:
        return list(seen)
    extra = [s for s in seen if s not in set(traits)]
    if extra:
        logger.warning(f"{len(extra)} trait(s) not in personalities.txt, appended to the style list: {extra[:5]}")
    return traits + extra
