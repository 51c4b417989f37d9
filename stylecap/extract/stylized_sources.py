"""Parsers for the stylized caption sources process_stylized.py reads (registered, with their detectors, in
:mod:`stylecap.extract.readers`).

    jsonl        generic: one JSON object a line, ``{"image", "caption"[, "style"][, "split"]}``
    csv          generic: a header row naming the columns ``image,caption[,style][,split]``, then one
                 record a row (comma-separated, double-quoted as Python's csv module writes it)
    flickrstyle  FlickrStyle10K as released (``FlickrStyle_v0.9/``): ``humor/train.p`` +
                 ``humor/funny_train.txt`` and ``romantic/train.p`` + ``romantic/romantic_train.txt``
    senticap     SentiCap as released: ``senticap_dataset.json`` or the csv its reader writes

Generic records: ``image`` is the image file relative to --image_path (``1000092795.jpg``,
``val2014/COCO_val2014_000000000042.jpg``); ``caption`` the text; ``style`` any string, kept exactly
(every record has one, or none has: a plain-caption set); ``split`` one of train/val/test (restval
counts as train), on every record or on none (then process_stylized.py makes a seeded split by image).
All records of an image must agree on the split. ``image_id`` is the image file's stem, so two
different files with the same stem are refused (the later records are malformed).

Bad input follows :mod:`stylecap.extract.caption_sources`: a malformed LINE/RECORD is skipped, counted and
reported (``CaptionSource.malformed``); a malformed FILE, or one without a usable line, raises
:class:`UserError` with one line naming the file and the fix.

Sources of the released formats (read, not copied):

* FlickrStyle10K (Gan et al., CVPR 2017, ``FlickrStyle_v0.9.zip``): github.com/yiyang92/
  caption-stylenet_tensorflow ``preprocess_captions.py`` (commit 6256dc6) loads ``humor/train.p`` /
  ``romantic/train.p`` with ``pickle.load`` -- a list of image names, the same list in both folders --
  and reads ``humor/funny_train.txt`` / ``romantic/romantic_train.txt`` line by line, line i being
  the caption of name i; the Flickr30k image is ``name.split('_')[0] + '.jpg'`` (names are Flickr's
  ``<photo id>_<secret>.jpg``). github.com/kacky24/stylenet ``preprocess.py`` maps names to
  ``flickr30k_images/<digits>.jpg`` the same way. Both note that some caption lines are not UTF-8
  (they decode with ``errors='replace'`` / ``encoding='latin1'``); train.p is a protocol-0 pickle
  written by Python 2 (its ``V``/``aV`` opcode lines are parsed as text by some readers).
  Here lines end at ``\\n`` only (one trailing ``\\r`` of a CRLF file is stripped; a lone ``\\r`` inside a
  line is read as a space), and a caption file whose line count differs from train.p's name count is
  refused, naming both counts: pairing by position would put captions on the wrong images.
* SentiCap (Mathews et al., AAAI 2016): the dataset's own ``senticap_reader.py``, copied in
  github.com/Jiexin-Zheng/Image_captioning_with_sentiments ``senticap_reader.py`` (commit c1c167d):
  ``{"images": [{"filename": "COCO_val2014_....jpg", "imgid", "split": train/val/test,
  "sentences": [{"raw", "tokens", "word_sentiment", "sentiment": 0 negative / 1 positive}]}]}``;
  its ``writeCSV`` writes ``filename,is_positive_sentiment,caption`` (tokenised, lower-cased caption).
  An image listed again with another split is malformed (that entry skipped and reported), as in the
  generic reader: splits are by image.
"""
from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path

from stylecap.extract.caption_sources import KARPATHY_SPLITS, CaptionSource, _json, _lines, need_file, walk_images
from stylecap.features import RestrictedUnpickler
from stylecap.utils import UserError

# FlickrStyle10K: style string -> (folder, caption file). The folder names are the dataset's words.
FLICKRSTYLE_FILES = {"humor": ("humor", "funny_train.txt"), "romantic": ("romantic", "romantic_train.txt")}
SENTICAP_STYLES = ("positive", "negative")  # sentiment 1 / 0
GENERIC_COLUMNS = ("image", "caption", "style", "split")


def _first(src: CaptionSource) -> str:
    return f"; first problem: {src.malformed[0]['where']}: {src.malformed[0]['reason']}" if src.malformed else ""


# ----------------------------------------------------------------------------- generic jsonl / csv
def _add_generic(src: CaptionSource, path: Path, rows: list[tuple[str, dict]]) -> CaptionSource:
    """Validate generic records ``(where, {"image", "caption", "style", "split"})`` into ``src``.

    Two passes: a style (or split) on some records makes it required on all, since a style-conditioned
    model cannot train on a caption without one, and a split by image needs every image placed."""
    has_style = any(r.get("style") not in (None, "") for _, r in rows)
    has_split = any(r.get("split") not in (None, "") for _, r in rows)
    src.splits = {} if has_split else None
    for where, r in rows:
        image, caption, style, split = (r.get(k) for k in GENERIC_COLUMNS)
        if not isinstance(image, str) or not image.strip():
            src.bad(path, where, "'image' missing, empty or not a string")
            continue
        if not isinstance(caption, str) or not caption.strip():
            src.bad(path, where, "'caption' missing, empty or not a string")
            continue
        if has_style and (not isinstance(style, str) or not style.strip()):
            src.bad(path, where, "no 'style' while other records have one; give every record a style or none")
            continue
        image = image.strip()
        image_id = Path(image).stem
        if src.image_files.get(image_id, image) != image:
            src.bad(path, where, f"image {image!r} has the same file stem as {src.image_files[image_id]!r}; "
                                 "image ids are file stems, rename one")
            continue
        if has_split:
            if split not in KARPATHY_SPLITS:
                src.bad(path, where, f"split {split!r} is not train/val/test (give every record a split or none)")
                continue
            split = KARPATHY_SPLITS[split]
            if src.splits.setdefault(image_id, split) != split:
                src.bad(path, where, f"image {image!r} is in split {src.splits[image_id]!r} on an earlier "
                                     f"record, {split!r} here; splits are by image")
                continue
        extra = {"style": style} if has_style else {}  # style kept exactly, never lower-cased
        src.add(image, caption.strip(), **extra)
    src.malformed.sort(key=lambda m: int(m["where"].split()[-1]))  # "line n", in file order
    return src


def jsonl_rows(src: CaptionSource, path: Path) -> list[tuple[str, dict]]:
    """[(where, JSON object)] of a JSON-lines file; lines that are not UTF-8 or not one object go to
    ``src.malformed``. Shared with process_text.py's corpora (stylecap.extract.text_source)."""
    rows = []
    for n, text in _lines(need_file(path)):
        where = f"line {n}"
        if text is None:
            src.bad(path, where, "not UTF-8 text")
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            src.bad(path, where, f"invalid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(rec, dict):
            src.bad(path, where, "not a JSON object")
            continue
        rows.append((where, rec))
    return rows


def read_jsonl(path: Path, image_dir: Path | None = None) -> CaptionSource:
    src = CaptionSource(format="jsonl", files=[str(path)])
    _add_generic(src, path, jsonl_rows(src, path))
    if not src.captions:
        raise UserError(f'{path}: no usable JSON line (expected {{"image": "1.jpg", "caption": "...", '
                        f'"style": "...", "split": "train"}} per line, style and split optional){_first(src)}')
    return src


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[int, dict, bool]]]:
    """(header, [(line number, row dict, had undecodable bytes)]) of a CSV file with a header row."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    # errors='replace' keeps the file readable; rows holding U+FFFD are reported as not UTF-8
    text = raw.decode("utf-8-sig", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        rows = []
        for fields in reader:
            rows.append((reader.line_num, fields))
    except csv.Error as e:
        raise UserError(f"{path}: not a readable CSV file (line {reader.line_num}: {e})") from None
    if not header:
        raise UserError(f"{path}: empty CSV file; expected a header row such as image,caption,style,split")
    header = [h.strip() for h in header]
    out = []
    for n, fields in rows:
        if not any(f.strip() for f in fields):
            continue  # blank line
        bad_utf8 = any("\ufffd" in f for f in fields)
        out.append((n, fields, bad_utf8))
    return header, out


def csv_records(src: CaptionSource, path: Path, header: list[str],
                rows: list[tuple[int, list[str], bool]]) -> list[tuple[str, dict]]:
    """[(where, {generic column: value})] of _csv_rows' rows; rows not UTF-8 or of another field count go to
    ``src.malformed``. Shared with process_text.py's corpora (stylecap.extract.text_source)."""
    recs = []
    for n, fields, bad_utf8 in rows:
        where = f"line {n}"
        if bad_utf8:
            src.bad(path, where, "not UTF-8 text")
        elif len(fields) != len(header):
            src.bad(path, where, f"{len(fields)} fields, the header has {len(header)} (quote captions with commas)")
        else:
            recs.append((where, {k: v for k, v in zip(header, fields) if k in GENERIC_COLUMNS}))
    return recs


def read_csv(path: Path, image_dir: Path | None = None) -> CaptionSource:
    header, rows = _csv_rows(need_file(path))
    if "image" not in header or "caption" not in header:
        raise UserError(f"{path}: the header row {','.join(header)[:80]!r} lacks image and caption columns; "
                        "expected image,caption[,style][,split] (pass --format senticap for SentiCap's csv)")
    src = CaptionSource(format="csv", files=[str(path)])
    _add_generic(src, path, csv_records(src, path, header, rows))
    if not src.captions:
        raise UserError(f"{path}: no usable CSV row (expected rows image,caption[,style][,split] "
                        f"under the header){_first(src)}")
    return src


# ----------------------------------------------------------------------------- FlickrStyle10K
def read_py2_pickle(path: Path) -> list[str]:
    """A Python-2 pickle of a list of image names (FlickrStyle10K's ``train.p``), read through the
    project's restricted unpickler: builtins only, any global (code) refused before it runs.
    Python 2 ``str`` items arrive as latin-1 text (``encoding="latin1"``), ``unicode`` items as str."""
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, encoding="latin1").load()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except pickle.UnpicklingError as e:
        if "is not allowed" in str(e):  # RestrictedUnpickler.find_class refused a global: code, not data
            raise UserError(f"{path}: refused to unpickle ({str(e).splitlines()[0]}); train.p may hold only a "
                            "list of image names. Re-download FlickrStyle_v0.9") from None
        raise UserError(f"{path}: not a readable pickle ({e}); expected FlickrStyle10K's train.p, "
                        "a list of image names") from None
    except Exception as e:  # truncated or not a pickle at all: EOFError, ValueError, KeyError, ...
        raise UserError(f"{path}: not a readable pickle ({type(e).__name__}: {e}); "
                        "expected FlickrStyle10K's train.p, a list of image names") from None
    if not isinstance(obj, (list, tuple)):
        raise UserError(f"{path}: expected a pickled list of image names, got {type(obj).__name__}")
    return [o.decode("latin-1") if isinstance(o, bytes) else o for o in obj]


def _flickrstyle_image(name) -> str | None:
    """``1000092795_8c9bb3bd3b.jpg`` (Flickr's <photo id>_<secret>) -> ``1000092795.jpg``."""
    if not isinstance(name, str) or not name.strip():
        return None
    base = Path(name.strip()).name
    stem = base.split("_", 1)[0] if "_" in base else Path(base).stem
    return f"{stem}.jpg" if stem else None


def _decode_caption(line: bytes) -> str:
    """UTF-8; else Windows-1252 (the romantic file's few non-UTF-8 lines), else latin-1 (never fails).
    Decoding is per line, after splitting the bytes, so line i stays caption i."""
    for enc in ("utf-8", "cp1252"):
        try:
            return line.decode(enc)
        except UnicodeDecodeError:
            pass
    return line.decode("latin-1")


def caption_lines(path: Path) -> list[bytes]:
    """A caption file's lines: split on \\n only, one trailing \\r stripped (CRLF files), the empty piece after
    the last \\n dropped. ``bytes.splitlines()`` also splits on a lone \\r: one stray \\r (``\\r\\r\\n``) then
    made two lines of one and moved every later caption onto the next image."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":  # the file ends with \n (or is empty): no line after it
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def read_flickrstyle(folder: Path, image_dir: Path | None = None) -> CaptionSource:
    """The FlickrStyle_v0.9 folder: each style folder present contributes one caption per image name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--caption_path {folder} is not a folder; pass the FlickrStyle_v0.9 folder "
                        "(humor/train.p, humor/funny_train.txt, romantic/train.p, romantic/romantic_train.txt)")
    src = CaptionSource(format="flickrstyle", files=[])
    found = 0
    for style, (sub, txt) in FLICKRSTYLE_FILES.items():
        pfile, cfile = folder / sub / "train.p", folder / sub / txt
        if not pfile.is_file() and not cfile.is_file():
            continue
        for f in (pfile, cfile):
            if not f.is_file():
                raise UserError(f"{f} not found: FlickrStyle10K needs both {sub}/train.p and {sub}/{txt}")
        found += 1
        src.files += [str(pfile), str(cfile)]
        names = read_py2_pickle(pfile)
        lines = caption_lines(cfile)
        if len(lines) != len(names):  # line i is name i's caption: any other count pairs them wrongly
            raise UserError(f"{cfile} has {len(lines)} caption lines but {pfile} lists {len(names)} image names; "
                            "line i must be the caption of name i: re-download FlickrStyle_v0.9 or fix the file")
        for i, line in enumerate(lines):
            image = _flickrstyle_image(names[i])
            # a lone \r inside a line is kept in it (never a line end): read as a space
            caption = _decode_caption(line).replace("\r", " ").strip()
            if image is None:
                src.bad(pfile, f"item {i}", f"not an image name: {str(names[i])[:60]!r}")
            elif not caption:
                src.bad(cfile, f"line {i + 1}", "empty caption")
            else:
                src.add(image, caption, style=style)
    if not found:
        raise UserError(f"{folder}: no humor/ or romantic/ folder with train.p and the caption txt; pass the "
                        "FlickrStyle_v0.9 folder as --caption_path")
    if not src.captions:
        raise UserError(f"{folder}: no usable FlickrStyle10K caption{_first(src)}")
    return src


# ----------------------------------------------------------------------------- SentiCap
def senticap_image(filename: str, image_dir: Path | None) -> str:
    """``COCO_val2014_000000000042.jpg`` -> ``val2014/COCO_val2014_000000000042.jpg`` when --image_path is
    the COCO root with a val2014/ (train2014/) folder, else the name itself (a flat image folder)."""
    parts = filename.split("_")
    if image_dir is not None and len(parts) >= 3 and not (Path(image_dir) / filename).is_file() \
            and (Path(image_dir) / parts[1]).is_dir():
        return f"{parts[1]}/{filename}"
    return filename


SENTICAP_SPLITS = {"train": "train", "val": "val", "test": "test"}


def _senticap_style(sent: dict) -> dict | str:
    """A SentiCap sentence's style ({"style": "positive"/"negative"}), or why it has none."""
    senti = sent.get("sentiment")
    if senti not in (0, 1) or isinstance(senti, bool):
        return f"sentiment {senti!r} is not 0 (negative) or 1 (positive)"
    return {"style": SENTICAP_STYLES[0] if senti == 1 else SENTICAP_STYLES[1]}


def _read_senticap_json(path: Path, image_dir: Path | None) -> CaptionSource:
    data = _json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path}: not senticap_dataset.json (expected {{\"images\": [{{\"filename\", \"split\", "
                        "\"sentences\": [{\"raw\", \"sentiment\"}]}]}})")
    src = CaptionSource(format="senticap", files=[str(path)], splits={})

    def name_of(img: dict) -> str | None:
        name = img.get("filename")
        return senticap_image(name.strip(), image_dir) if isinstance(name, str) and name.strip() else None

    walk_images(src, path, data["images"], SENTICAP_SPLITS, name_of, _senticap_style)
    if not src.captions:
        raise UserError(f"{path}: no usable image/sentence in the SentiCap file{_first(src)}")
    return src


def _read_senticap_csv(path: Path, image_dir: Path | None) -> CaptionSource:
    header, rows = _csv_rows(path)
    cols = ("filename", "is_positive_sentiment", "caption")
    if header != list(cols):
        raise UserError(f"{path}: header {','.join(header)[:80]!r} is not SentiCap's "
                        "filename,is_positive_sentiment,caption; pass --format csv for the generic csv")
    src = CaptionSource(format="senticap", files=[str(path)])
    for n, fields, bad_utf8 in rows:
        where = f"line {n}"
        if bad_utf8:
            src.bad(path, where, "not UTF-8 text")
        elif len(fields) != 3:
            src.bad(path, where, f"{len(fields)} fields, expected filename,is_positive_sentiment,caption")
        elif not fields[0].strip():
            src.bad(path, where, "empty filename")
        elif fields[1].strip() not in ("0", "1"):
            src.bad(path, where, f"is_positive_sentiment {fields[1]!r} is not 0 or 1")
        elif not fields[2].strip():
            src.bad(path, where, "empty caption")
        else:
            style = SENTICAP_STYLES[0] if fields[1].strip() == "1" else SENTICAP_STYLES[1]
            src.add(senticap_image(fields[0].strip(), image_dir), fields[2].strip(), style=style)
    if not src.captions:
        raise UserError(f"{path}: no usable SentiCap csv row{_first(src)}")
    return src


def read_senticap(path: Path, image_dir: Path | None = None) -> CaptionSource:
    """senticap_dataset.json (with its train/val/test split) or SentiCap's csv (no split)."""
    path = need_file(Path(path))
    with open(path, "rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf").lstrip()
    return _read_senticap_json(path, image_dir) if head[:1] in (b"{", b"[") else _read_senticap_csv(path, image_dir)


# ----------------------------------------------------------------------------- detection
def first_line_kind(path: Path) -> str:
    """What the file's first line is, for the detectors of stylecap.extract.readers: 'object' (one JSON
    object, not SentiCap's {"images": ...}), 'document' (a JSON document that is not one object a line, or
    SentiCap's), 'senticap_header' (filename,is_positive_sentiment,caption) or 'text'."""
    with open(path, "rb") as f:
        first = f.readline(1 << 20).lstrip(b"\xef\xbb\xbf").strip()
    if first.startswith(b"{"):
        try:
            rec = json.loads(first)
        except ValueError:  # a pretty-printed or huge JSON document: not one object a line
            return "document"
        return "document" if isinstance(rec, dict) and "images" in rec else "object"
    return "senticap_header" if first.replace(b" ", b"") == b"filename,is_positive_sentiment,caption" else "text"


def jsonl_name(path: Path) -> bool:
    """*.jsonl / *.ndjson: JSON lines by name (its first line may be the malformed one)."""
    return path.suffix.lower() in (".jsonl", ".ndjson")
