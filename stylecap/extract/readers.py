"""The one table of dataset readers: format name -> the script that offers it, its detector, its reader.

Every dataset layout the process_*.py scripts read is one entry of :data:`READERS`. A script's
``--format`` choices are its entries, in table order; ``--format auto`` tries their detectors in table
order, the catch-all ones (``fallback``) last, and takes the first that says yes; the entry also gives
the feature files' ``meta["dataset"]`` and, for a released stylized set, its fixed style order.

Adding a reader for a caption file or folder (process_flickr.py or process_stylized.py):

1. write ``read_<name>(path, image_dir=None) -> CaptionSource`` in the reader module of its kind
   (:mod:`stylecap.extract.caption_sources` for plain captions, :mod:`stylecap.extract.stylized_sources`
   for styled ones), following their rules for bad input (a malformed line is skipped and recorded in
   ``CaptionSource.malformed``; a malformed file raises a one-line :class:`UserError`);
2. add one entry here. Its detector takes the path and says whether it is this format; only an
   existing file or folder ever matches, so a path matching none is "not found". It is tried before
   the script's catch-all format (Flickr30k-CN text, the generic csv).

That is all: the script's --format choices, --format auto, the meta and the styles follow.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stylecap.extract.caption_sources import (CaptionSource, caption_index, json_document, read_cn, read_karpathy,
                                              read_personality, read_token)
from stylecap.extract.stylized_sources import (FLICKRSTYLE_FILES, SENTICAP_STYLES, first_line_kind, jsonl_name,
                                               read_csv, read_flickrstyle, read_jsonl, read_senticap)
from stylecap.extract.webdataset_source import find_tars
from stylecap.utils import UserError


@dataclass(frozen=True)
class Reader:
    """One dataset layout. ``read(path, image_dir)``: a CaptionSource for the caption formats;
    personality: {split: CaptionSource} of the personality_captions folder. webdataset: ``read(folder)``,
    the tar shards of an img2dataset output (encoded by :mod:`stylecap.extract.conceptual`)."""
    script: str                                    # process_<script>.py offers it
    dataset: str                                   # meta["dataset"] of the feature files
    read: Callable[..., object]
    detect: Callable[[Path], bool] | None = None   # None: the script's only layout, never detected
    styles: tuple[str, ...] = ()                   # a released set's style order (style ids must not depend on
    #                                                which style a file happens to list first)
    fallback: bool = False                         # a catch-all detector: tried after the script's others


READERS: dict[str, Reader] = {
    # process_flickr.py: Flickr30k and Flickr30k-CN captions, no style
    "token": Reader("flickr", "flickr30k", read_token,
                    lambda p: p.is_file() and not json_document(p) and caption_index(p)),
    "karpathy": Reader("flickr", "flickr30k", read_karpathy, lambda p: p.is_file() and json_document(p)),
    "cn": Reader("flickr", "flickr30k-cn", read_cn, Path.is_file, fallback=True),  # any other text file
    # process_stylized.py: styled captions
    "jsonl": Reader("stylized", "stylized", read_jsonl,
                    lambda p: p.is_file() and (jsonl_name(p) or first_line_kind(p) == "object")),
    "csv": Reader("stylized", "stylized", read_csv,  # any other text file
                  lambda p: p.is_file() and not jsonl_name(p) and first_line_kind(p) == "text", fallback=True),
    "flickrstyle": Reader("stylized", "flickrstyle10k", read_flickrstyle, Path.is_dir, styles=tuple(FLICKRSTYLE_FILES)),
    "senticap": Reader("stylized", "senticap", read_senticap,
                       lambda p: p.is_file() and not jsonl_name(p)
                       and first_line_kind(p) in ("document", "senticap_header"), styles=SENTICAP_STYLES),
    # process_personality.py and process_conceptual.py: one layout each
    "personality": Reader("personality", "personality_captions", read_personality),
    "webdataset": Reader("conceptual", "conceptual", find_tars),
}

# What --format auto says when no detector of the script matches (the path is neither file nor folder it reads)
NOT_FOUND = {
    "flickr": "caption file {path} not found; pass --caption_path (Flickr30k results_20130124.token, "
              "dataset_flickr30k.json or the Flickr30k-CN txt)",
    "stylized": "caption source {path} not found; pass --caption_path (a .jsonl/.csv file, "
                "senticap_dataset.json, or the FlickrStyle_v0.9 folder)",
}


def formats(script: str) -> tuple[str, ...]:
    """The format names process_<script>.py offers, in table order (its --format choices)."""
    return tuple(name for name, r in READERS.items() if r.script == script)


def detect(script: str, path: str | Path) -> str:
    """The first of ``script``'s formats whose detector recognises ``path`` (catch-all detectors last)."""
    path = Path(path)
    for name in sorted(formats(script), key=lambda f: READERS[f].fallback):  # stable: table order otherwise
        if READERS[name].detect is not None and READERS[name].detect(path):
            return name
    raise UserError(NOT_FOUND[script].format(path=path))


def read_source(script: str, path: str | Path, fmt: str = "auto",
                image_dir: Path | None = None) -> tuple[str, CaptionSource]:
    """-> (format name, the source read): ``fmt`` is 'auto' (detected from the content) or a format name."""
    path = Path(path)
    name = detect(script, path) if fmt == "auto" else fmt
    return name, READERS[name].read(path, image_dir)


def style_list(fmt: str, captions: list[dict]) -> list[str]:
    """The style vocabulary: the dataset's fixed order for the released sets (so style ids do not
    depend on which style a file happens to list first), first appearance otherwise."""
    seen = dict.fromkeys(READERS[fmt].styles)
    for c in captions:
        if c.get("style") is not None:
            seen.setdefault(c["style"], None)
    present = {c.get("style") for c in captions}
    return [s for s in seen if s in present]


def source_meta(fmt: str, source: CaptionSource, image_dir: Path) -> dict:
    """The source-level meta of a caption file's feature files (the splitting adds its own keys)."""
    return {"dataset": READERS[fmt].dataset, "source_format": fmt, "sources": source.files,
            "image_dir": str(image_dir), "styles": style_list(fmt, source.captions)}


def detect_stylized_format(path: str | Path) -> str:
    """process_stylized.py's --format auto."""
    return detect("stylized", path)


def read_stylized(path: str | Path, fmt: str = "auto", image_dir: Path | None = None) -> CaptionSource:
    """Read a stylized caption source; ``fmt`` is 'auto' (detected from the content) or one of its formats."""
    return read_source("stylized", path, fmt, image_dir)[1]
