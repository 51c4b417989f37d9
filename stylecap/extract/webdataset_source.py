"""Reading img2dataset's webdataset output: tar shards of (image, caption, json) samples + per-shard stats.

The layout, as img2dataset writes it (github.com/rom1504/img2dataset, checked at commit 95523bc):

* ``img2dataset/writer.py`` ``WebDatasetSampleWriter``: one plain (uncompressed) tar per shard,
  ``{shard_id:0{oom_shard_count}d}.tar`` (``00000.tar``, ``00001.tar``, ...), written with webdataset's
  ``TarWriter``: per sample ``<key>.jpg`` (``--encode_format``: jpg, png or webp), ``<key>.txt`` (the
  caption, with ``--save_caption``) and ``<key>.json`` (the input columns plus key, status, error_message,
  width, height, ...). Only downloaded samples are written to the tar; every sample, failed or not, goes to
  ``<shard>.parquet`` beside it.
* ``img2dataset/downloader.py`` ``compute_key``: the key is the global sample number, zero-padded
  (``000010042``), unique across shards.
* ``img2dataset/logger.py`` ``write_stats``: ``<shard>_stats.json`` with ``count``, ``successes``,
  ``failed_to_download``, ``failed_to_resize``, ``status_dict``, ...

So the failed downloads are counted from ``_stats.json``, not from the parquet file (which would need
pyarrow for numbers the stats already give).

Why the standard ``tarfile`` rather than the webdataset library: no new dependency for a plain,
uncompressed tar in a simple layout, and the project's encoder (:func:`stylecap.extract.image_encoder.encode_batches`)
is a map-style DataLoader with worker processes, which an index of member offsets fits directly:
:func:`index_tar` reads only the tar headers (and the small .txt/.json members); the workers then read
each image's bytes at its offset (:class:`TarImages`), so no shard's images are ever held in memory.
webdataset's iterable pipeline would stream every image's bytes through one reading process instead.
Samples are grouped as webdataset groups them (``base_plus_ext``: the key is the member name up to the
first dot of its base name; consecutive members with one key form a sample).
"""
from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stylecap.utils import UserError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # img2dataset's --encode_format choices (+ jpeg)
STATS_KEYS = ("count", "successes", "failed_to_download", "failed_to_resize")
_BASE_PLUS_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's tariterators.base_plus_ext


def find_tars(folder: str | Path) -> list[Path]:
    """The tar shards of an img2dataset output folder, in name order (= shard order)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"img2dataset output folder {folder} not found; pass --data_path (img2dataset's "
                        "--output_folder)")
    tars = sorted(p for p in folder.glob("*.tar") if p.is_file())
    if not tars:
        raise UserError(f"no tar shards (00000.tar, ...) in {folder}; pass the --output_folder of an img2dataset "
                        "run made with --output_format webdataset")
    return tars


def stats_path(tar: Path) -> Path:
    return tar.with_name(f"{tar.stem}_stats.json")


def read_stats(tar: Path) -> dict | None:
    """The shard's ``_stats.json`` counts (count, successes, failed_to_download, failed_to_resize), or None
    when it is missing or unreadable (a shard img2dataset did not finish)."""
    try:
        stats = json.loads(stats_path(tar).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {k: int(stats[k]) for k in STATS_KEYS if isinstance(stats.get(k), (int, float))}


@dataclass
class ShardIndex:
    """One tar's samples: those to encode (image location + caption) and those skipped before encoding."""
    tar: Path
    keys: list[str] = field(default_factory=list)        # samples to encode, tar order
    offsets: list[int] = field(default_factory=list)     # image bytes: [offset, offset + size) in the tar
    sizes: list[int] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)    # {"image_id", "category", "reason"}
    n_samples: int = 0
    caption_from_json: int = 0                           # samples without .txt, captioned from .json
    captions_stripped: int = 0                           # kept captions that had whitespace at either end
    tar_error: str | None = None                         # the tar ended badly: samples after it are lost


def _caption(members: dict, tf: tarfile.TarFile) -> tuple[str | None, bool, str]:
    """-> (caption as stored, or None; came from the json; reason when None or blank)."""
    read = lambda m: tf.extractfile(m).read()
    try:
        if "txt" in members:
            return read(members["txt"]).decode("utf-8"), False, "empty caption (.txt)"
        if "json" in members:
            cap = json.loads(read(members["json"]).decode("utf-8")).get("caption")
            if isinstance(cap, str):
                return cap, True, "empty caption (.json)"
    except UnicodeDecodeError:
        return None, False, "caption is not UTF-8"
    except ValueError as e:
        return None, False, f"no .txt and unreadable .json ({e})"
    return None, False, "no caption (.txt missing, no caption in .json)"


def _add(index: ShardIndex, key: str, members: dict, tf: tarfile.TarFile, seen: set) -> None:
    index.n_samples += 1
    skip = lambda category, reason: index.skipped.append({"image_id": key, "category": category, "reason": reason})
    if key in seen:
        return skip("duplicate key", "a second sample with this key in the shard")
    seen.add(key)
    image = next((members[e] for e in IMAGE_EXTS if e in members), None)
    if image is None:
        return skip("no image", f"no image member ({'/'.join(IMAGE_EXTS)}); members: {', '.join(sorted(members))}")
    caption, from_json, why = _caption(members, tf)
    # whitespace at either end (a trailing newline or space of the .txt) is no part of the caption: it
    # is stripped, and the captions it changed are counted; a blank caption is skipped
    text = caption.strip() if caption is not None else ""
    if not text:
        return skip("no caption", why)
    index.captions_stripped += text != caption
    index.keys.append(key)
    index.offsets.append(image.offset_data)
    index.sizes.append(image.size)
    index.captions.append(text)
    index.caption_from_json += from_json


def index_tar(tar: Path, limit: int | None = None) -> ShardIndex:
    """Read a tar's headers (seeking over the image data) and its .txt/.json members: the samples to encode.
    ``limit``: only the first ``limit`` samples. A truncated tar keeps the samples before the damage."""
    index, seen = ShardIndex(tar), set()
    key, members = None, {}
    try:
        with tarfile.open(tar, "r:") as tf:  # plain tar, random access: member offsets are file offsets
            for m in tf:
                if not m.isfile():
                    continue
                match = _BASE_PLUS_EXT.match(m.name)
                if match is None:
                    continue  # no extension: not part of a sample (webdataset skips it too)
                base, ext = match.groups()
                if base != key:
                    if key is not None:
                        _add(index, key, members, tf, seen)
                        if limit is not None and index.n_samples >= limit:
                            return index
                    key, members = base, {}
                members[ext.lower()] = m
            if key is not None:
                _add(index, key, members, tf, seen)
    except (tarfile.TarError, EOFError, OSError) as e:  # e.g. img2dataset killed while writing the tar
        index.tar_error = f"{type(e).__name__}: {e}"
        if members:  # the sample being read when the tar ended: counted, not used
            index.n_samples += 1
            index.skipped.append({"image_id": key, "category": "truncated tar", "reason": index.tar_error})
    return index


class TarImages(Sequence):
    """index[k]'s image bytes, read from the tar at its offset when asked (in a DataLoader worker):
    a Sequence of bytes for :func:`stylecap.extract.image_encoder.encode_batches` (open_image decodes bytes)."""

    def __init__(self, tar: Path, offsets: list[int], sizes: list[int]):
        self.tar, self.offsets, self.sizes = str(tar), offsets, sizes

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return TarImages(Path(self.tar), self.offsets[k], self.sizes[k])
        with open(self.tar, "rb") as f:
            f.seek(self.offsets[k])
            data = f.read(self.sizes[k])
        if len(data) != self.sizes[k]:
            raise OSError(f"tar ends inside this image ({len(data)} of {self.sizes[k]} bytes)")
        return data
