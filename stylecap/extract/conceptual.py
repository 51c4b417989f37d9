"""process_conceptual.py's engine: img2dataset tar shards -> one feature file, one tar shard at a time.

* The unit of work is one tar shard (:mod:`stylecap.extract.webdataset_source` reads it): its samples are
  encoded once each by the project's engine (:func:`stylecap.extract.image_encoder.extract_features`, openai-clip's
  decoding and preprocessing), in batches that start at the shard's first sample, so a shard's values do
  not depend on which process encodes it. The result is written atomically to its part file
  ``<output>.parts/<tar stem>.pt``: that shard's features [n, D] fp32, keys, captions, skipped samples
  with reasons, counts, its ``_stats.json`` and a ``run_key`` (hash of the tar's name, size and
  :func:`fingerprint`, --limit and the settings that fix the values). Only one shard's features are in
  memory while encoding.
* The parts are KEPT after the feature file is written: they are the state that lets a rerun reuse
  finished tars. A rerun (after kill -9, or after img2dataset's ``--incremental_mode incremental`` added
  shards) skips the parts whose key matches and encodes only the others (new tars, or changed: another
  size or fingerprint, or other settings), then combines. Parts of tars no longer in the folder are
  removed. Deleting ``<output>.parts/`` frees their disk (about the fp32 size of the features) at the
  cost of encoding every tar again on the next rerun; the feature file does not need it.
* ``--shard i/n`` encodes the i-th contiguous block of tar shards and writes only their parts;
  ``--merge`` (same command, without --shard) checks that every tar has a part made with the same
  settings and combines them. On several machines, gather the ``.parts`` folders into one first.
* When every part is there, :func:`combine` concatenates them in tar order into the feature file
  (columns, :func:`stylecap.features.save_features`, atomic). Samples without an image or a caption, and
  images that do not decode, are skipped and counted by reason in ``meta["counts"]`` and listed in
  ``<output>.skipped.txt``; downloads that failed never reach the tar and are counted from the shards'
  ``_stats.json``. A tar that holds fewer samples than its ``successes`` (cut short; tarfile ends quietly
  when the cut falls between members) is counted in ``missing_from_shards`` / ``missing_by_shard`` and
  named in a warning. Captions lose whitespace at either end (counted: ``captions_stripped``). No row is
  ever a placeholder: each row is an encoded image.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import torch
from loguru import logger

from stylecap.extract import pipeline as extract
from stylecap.extract.image_encoder import extract_features
from stylecap.extract.pipeline import Encoder
from stylecap.extract.settings import ExtractSettings
from stylecap.extract.readers import READERS
from stylecap.extract.webdataset_source import TarImages, index_tar, read_stats
from stylecap.features import FeatureStore, save_features, utf8_column
from stylecap.utils import UserError, atomic_torch_save

FP16_AT_COMBINE = "fp16"  # the one setting parts do not depend on: parts are fp32, the dtype is chosen at combine
PART_VERSION = 2  # 2: parts count captions_stripped, tars are fingerprinted (older parts are redone once)
FINGERPRINT_BYTES = 1 << 16  # read from each end of a tar for its fingerprint


def parts_dir(output: Path) -> Path:
    return Path(f"{output}.parts")


def part_file(output: Path, tar: Path) -> Path:
    return parts_dir(output) / f"{tar.stem}.pt"


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def fingerprint(tar: Path) -> str:
    """sha256 of the tar's first and last 64 KiB: a shard downloaded again has other first samples (img2dataset
    writes them in the order downloads finish) and another end, at the cost of two small reads per tar
    (hashing whole tars would read the whole dataset at every rerun). A change confined to the middle of a
    tar that keeps its size is not noticed: delete that tar's part."""
    h = hashlib.sha256()
    with open(tar, "rb") as f:
        h.update(f.read(FINGERPRINT_BYTES))
        f.seek(max(0, tar.stat().st_size - FINGERPRINT_BYTES))
        h.update(f.read(FINGERPRINT_BYTES))
    return h.hexdigest()


def part_key(tar: Path, settings: dict, limit: int | None) -> str:
    """What fixes a part's content: the tar (name, size, fingerprint), --limit and the encoding settings."""
    enc = {k: v for k, v in settings.items() if k != FP16_AT_COMBINE}
    return _hash({"v": extract.FORMAT_VERSION, "part_v": PART_VERSION, "tar": tar.name,
                  "size": tar.stat().st_size, "fingerprint": fingerprint(tar), "limit": limit, "settings": enc})


def file_key(tars: list[Path], settings: dict, limit: int | None) -> str:
    return _hash({"parts": [part_key(t, settings, limit) for t in tars], "settings": settings})


def shard_tars(tars: list[Path], i: int, n: int) -> list[Path]:
    """Shard i of n: the i-th contiguous block of whole tar shards."""
    return tars[i * len(tars) // n:(i + 1) * len(tars) // n]


def _load_part(f: Path, mmap: bool = True) -> dict | None:
    try:  # mmap: the key and counts without reading the features
        return torch.load(f, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception:
        return None


# ----------------------------------------------------------------------------- one tar shard
def encode_tar(tar: Path, output: Path, enc: Encoder, key: str, settings: ExtractSettings) -> dict:
    """Encode one tar shard -> its part (also written to its part file)."""
    encoding = enc.encoding
    t0 = time.perf_counter()
    index = index_tar(tar, settings.limit)
    if index.tar_error:
        logger.warning(f"{tar.name}: tar unreadable after {index.n_samples} samples ({index.tar_error}); "
                       "the samples before it are used")
    emb, ok, bad = extract_features(
        TarImages(tar, index.offsets, index.sizes), enc.model, enc.preprocess, batch_size=encoding["batch_size"],
        num_workers=settings.num_workers, device=enc.device, allow_truncated=encoding["allow_truncated"],
        autocast=encoding["autocast"], fast_jpeg_decode=encoding["fast_jpeg_decode"],
        exif_transpose=encoding["exif_transpose"], progress=True)  # emb [len(ok), D] fp32: one row per decoded image
    part = {"run_key": key, "tar": tar.name, "shard": settings.shard,
            "settings": {k: v for k, v in encoding.items() if k != FP16_AT_COMBINE},
            "emb": emb.contiguous(), "keys": [index.keys[i] for i in ok], "captions": [index.captions[i] for i in ok],
            "skipped": index.skipped + [{"image_id": index.keys[i], "category": "unreadable image", "reason": r}
                                        for i, r in bad],
            "n_samples": index.n_samples, "caption_from_json": index.caption_from_json,
            "captions_stripped": index.captions_stripped,
            "tar_error": index.tar_error, "stats": read_stats(tar)}
    atomic_torch_save(part, part_file(output, tar))
    dt = time.perf_counter() - t0
    logger.info(f"{tar.name}: encoded {len(ok)} of {index.n_samples} samples, skipped {len(part['skipped'])} "
                f"in {dt:.1f}s ({len(ok) / max(dt, 1e-9):.1f} images/s)")
    return part


# ----------------------------------------------------------------------------- the output file
def combine(files: list[Path], dim: int, dtype: torch.dtype) -> tuple[FeatureStore, list[dict]]:
    """Parts in tar order -> (the feature file's columns, the parts without their features). Features are
    copied into one preallocated (N, D) tensor; ids and captions go straight into UTF-8 columns (no
    caption record is ever built: at CC3M scale those would be GBs of Python dicts)."""
    parts = [_load_part(f) for f in files]  # features memory-mapped, read once into the output below
    n = sum(p["emb"].shape[0] for p in parts)
    emb = torch.empty(n, dim, dtype=dtype)  # (N, D)
    keys, captions, row = [], [], 0
    for p in parts:
        k = p["emb"].shape[0]
        emb[row:row + k] = p.pop("emb")  # fp32 -> dtype rounds as extract.finalize's .to() does
        keys += p["keys"]
        captions += p["captions"]
        row += k
    id_bytes, id_off = utf8_column(keys)
    cap_bytes, cap_off = utf8_column(captions)
    store = FeatureStore(emb, id_bytes, id_off, cap_bytes, cap_off[:-1], cap_off[1:], torch.arange(n),
                         torch.full((n,), -1, dtype=torch.int32), [])  # one caption per image, no style
    return store, parts


def missing_from_shard(part: dict, limit: int | None) -> int | None:
    """Samples the shard's _stats.json says were written (``successes``; at most --limit) minus the samples
    read from its tar; None without stats. tarfile ends quietly when a file stops exactly between
    members, so a tar cut there is seen only by this count."""
    successes = (part["stats"] or {}).get("successes")
    if successes is None:
        return None
    return (min(successes, limit) if limit else successes) - part["n_samples"]


def _counts(parts: list[dict], n_rows: int, limit: int | None) -> dict:
    stats = [p["stats"] for p in parts if p["stats"] is not None]
    skipped = [s for p in parts for s in p["skipped"]]
    missing = {p["tar"]: missing_from_shard(p, limit) for p in parts}
    return {"images": n_rows, "captions": n_rows, "samples": sum(p["n_samples"] for p in parts),
            "skipped_images": len(skipped), "skipped_captions": 0, "malformed": 0,
            "skipped_by_reason": dict(sorted(Counter(s["category"] for s in skipped).items())),
            "caption_from_json": sum(p["caption_from_json"] for p in parts),
            "captions_stripped": sum(p["captions_stripped"] for p in parts),  # whitespace at an end removed
            # from the shards' _stats.json: these never reached the tars
            "urls": sum(s.get("count", 0) for s in stats),
            "failed_to_download": sum(s.get("failed_to_download", 0) for s in stats),
            "failed_to_resize": sum(s.get("failed_to_resize", 0) for s in stats),
            # successes in _stats.json that the tar does not hold (a tar cut short): total, and by tar
            "missing_from_shards": sum(m for m in missing.values() if m and m > 0),
            "missing_by_shard": {t: m for t, m in missing.items() if m and m > 0},
            "shards_without_stats": [p["tar"] for p in parts if p["stats"] is None],
            "tar_errors": {p["tar"]: p["tar_error"] for p in parts if p["tar_error"]}}


def _warn_shards(parts: list[dict], limit: int | None) -> None:
    """One warning per tar whose sample count disagrees with its _stats.json."""
    for p in parts:
        m = missing_from_shard(p, limit)
        if m:
            have = f"{p['tar']}: {p['n_samples']} samples in the tar, {p['stats']['successes']} successes in " \
                   f"{Path(p['tar']).stem}_stats.json"
            # img2dataset's incremental mode redoes only shards without a _stats.json
            logger.warning(f"{have}: {m} samples missing from the shard (the tar was cut short: copy it again, "
                           f"or delete it and its _stats.json, rerun img2dataset with --incremental_mode "
                           f"incremental, then this command)" if m > 0 else
                           f"{have}: the stats are not this tar's (counted as nothing missing)")


def prune_parts(tars: list[Path], output: Path) -> None:
    """Remove the parts of tars no longer in the folder; the others are kept for the next rerun."""
    stems = {t.stem for t in tars}
    for f in parts_dir(output).glob("*.pt"):
        if f.stem not in stems:
            logger.info(f"{f}: its tar is no longer in the folder; removed")
            f.unlink()


def write_file(tars: list[Path], data_path: str, output: Path, settings: dict, key: str,
               limit: int | None) -> None:
    """Combine the parts of ``tars`` into --output_path with its meta, skipped list and summary log.
    ``data_path``: --data_path as given (recorded in the meta as it is)."""
    store, parts = combine([part_file(output, t) for t in tars], settings["dim"],
                           torch.float16 if settings["fp16"] else torch.float32)
    meta = {"dataset": READERS["webdataset"].dataset, "source": "img2dataset", "source_format": "webdataset",
            "data_path": str(data_path), "shards": [t.name for t in tars], "styles": [],
            **extract.file_meta(settings, store.clip_embedding), "counts": _counts(parts, store.n_images, limit),
            "skipped": [{"image_id": s["image_id"], "path": str(Path(data_path) / p["tar"]),
                         "reason": f"{s['category']}: {s['reason']}"} for p in parts for s in p["skipped"]],
            "malformed": [], "extraction": dict(settings), "run_key": key}
    if limit:
        meta["limit"] = limit
    c = meta["counts"]
    _warn_shards(parts, limit)
    if not len(store):
        extract.write_skipped(output, meta)
        first = meta["skipped"][0] if meta["skipped"] else None
        raise UserError(f"no image could be encoded: all {c['samples']} samples of the {len(tars)} tar shards were "
                        f"skipped" + (f" (first: {first['image_id']}: {first['reason']}); see "
                                      f"{extract.skipped_txt(output)}" if first else "; check --data_path"))
    store.meta = meta
    save_features(output, store)  # atomic
    extract.write_skipped(output, meta)
    logger.info(f"{output}: {c['images']} images + captions from {c['samples']} samples in {len(tars)} tar shards; "
                f"skipped {c['skipped_images']} {c['skipped_by_reason']}"
                + (f" (see {extract.skipped_txt(output)})" if c["skipped_images"] else "")
                + f"; {c['captions_stripped']} captions had whitespace stripped at an end"
                + f"; img2dataset's _stats.json: {c['failed_to_download']} failed to download, "
                  f"{c['failed_to_resize']} failed to resize, {c['missing_from_shards']} missing from shards"
                + (f" {c['missing_by_shard']}" if c["missing_by_shard"] else "")
                + (f" (no stats for {len(c['shards_without_stats'])} shards)" if c["shards_without_stats"] else ""))
    prune_parts(tars, output)  # the others stay: a rerun with one more tar encodes only that one


# ----------------------------------------------------------------------------- orchestration
def run(data_path: str, output: Path, settings: ExtractSettings) -> int:
    """Encode the missing parts (all, or this --shard's), then combine; or --merge. ``data_path``: the
    img2dataset folder as given on the command line."""
    tars = READERS["webdataset"].read(data_path)  # the tar shards, in shard order
    if settings.merge:
        return merge(tars, data_path, output, settings)
    enc = extract.load_encoder(settings)
    key = file_key(tars, enc.encoding, settings.limit)
    meta = extract.up_to_date(output, key) if not settings.sharded else None
    if meta is not None:
        logger.info(f"{output} is up to date (same shards and settings); delete it to recompute")
        extract.write_skipped(output, meta)  # in case a kill came between the file and its list
        return 0
    mine = shard_tars(tars, settings.shard_index, settings.shard_count) if settings.sharded else tars
    logger.info(f"{len(mine)} of {len(tars)} tar shards in {data_path}"
                + (f" (shard {settings.shard})" if settings.shard else "") + f"; parts in {parts_dir(output)}")
    for k, tar in enumerate(mine):
        pkey = part_key(tar, enc.encoding, settings.limit)
        done = _load_part(part_file(output, tar))
        if done is not None and done.get("run_key") == pkey:
            logger.info(f"[{k + 1}/{len(mine)}] {tar.name}: done earlier (its part is up to date)")
            continue
        if done is not None:
            logger.warning(f"{tar.name}: its part was made with other arguments or inputs; redoing it")
        logger.info(f"[{k + 1}/{len(mine)}] {tar.name}: encoding")
        encode_tar(tar, output, enc, pkey, settings)
    if settings.sharded:
        logger.info(f"shard {settings.shard}: {len(mine)} tar shards done; after every shard, rerun the same command "
                    "with --merge instead of --shard")
        return 0
    write_file(tars, data_path, output, enc.encoding, key, settings.limit)
    return 0


def merge(tars: list[Path], data_path: str, output: Path, settings: ExtractSettings) -> int:
    """Check every tar has a part made with the same settings, then combine (as a single run would)."""
    files = [part_file(output, t) for t in tars]
    have = [f for f in files if f.is_file()]
    # the encoding values this command fixes without loading CLIP; the others come from the parts (or the file)
    from_args = {"batch_size": settings.batch_size, "allow_truncated": settings.allow_truncated,
                 "fp16": settings.fp16, "fast_jpeg_decode": settings.fast_jpeg_decode,
                 "exif_transpose": settings.exif_transpose}
    limit = settings.limit
    first = _load_part(have[0]) if have else None
    if first is None:  # no parts: up to date when an earlier --merge (or run) of these shards wrote the file
        encoding = ((_load_part(output) or {}).get("meta") or {}).get("extraction")
        if encoding and extract.up_to_date(output, file_key(tars, {**encoding, **from_args}, limit)) is not None:
            logger.info(f"{output} is up to date (same shards and settings); delete it to recompute")
            return 0
        raise UserError(f"--merge: no part files in {parts_dir(output)}; run every --shard i/n of this command first")
    encoding = {**first["settings"], **from_args}
    missing = [t.name for t, f in zip(tars, files) if not f.is_file()]
    if missing:
        raise UserError(f"--merge: no part for {missing[0]}" + (f" and {len(missing) - 1} more tar shards"
                        if len(missing) > 1 else "") + f" in {parts_dir(output)}; run every --shard i/n first "
                        "(same --data_path and --output_path), or this command without --merge")
    for t, f in zip(tars, files):
        p = _load_part(f)
        if p is None or p.get("run_key") != part_key(t, encoding, limit):
            made = f" (made by --shard {p['shard']})" if p and p.get("shard") else ""
            raise UserError(f"--merge: {f}{made} was made with other arguments, inputs or settings than this "
                            "command; rerun its --shard with the same arguments")
    key = file_key(tars, encoding, limit)
    if extract.up_to_date(output, key) is not None:  # the parts are kept: a second --merge finds them
        logger.info(f"{output} is up to date (same shards and settings); delete it to recompute")
        return 0
    write_file(tars, data_path, output, encoding, key, limit)
    return 0
