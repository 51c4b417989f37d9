"""The shared CLIP feature-extraction engine behind process_flickr.py, process_stylized.py and
process_personality.py.

A script reads its caption source (:mod:`stylecap.extract.readers`) into :class:`Job`s (one per output
file: the images in order of first appearance, their caption records, source-level meta) and calls
:func:`stylecap.extract.runner.run` with its :class:`~stylecap.extract.settings.ExtractSettings`, which

* encodes every image ONCE (however many captions it has) with :mod:`stylecap.extract.image_encoder`
  (``num_workers`` decoders in parallel; bad images are skipped and recorded without killing the
  batch; features equal openai-clip's own, ``--fast_jpeg_decode`` / ``--exif_transpose`` opt out
  and are recorded in ``meta["extraction"]`` and the run key);
* saves the work in chunks as it goes: every ``chunk_batches`` batches an atomically written
  ``<output>.partial/chunk_00012.pt`` plus ``manifest.json`` holding a hash of the run's inputs and
  settings (``run_key``). Batches sit at fixed positions (``k * batch_size``) and chunks are whole
  batches, so a rerun after kill -9 resumes at the first missing chunk with exactly the batches of an
  uninterrupted run: same rows, same order, same values. A partial folder with another key is stale
  and discarded. The final file appears only when complete (temp file + rename); the partial
  folder is then removed. A final file whose ``run_key`` matches is up to date and not redone;
* splits a job into shards (:func:`shard_job`: contiguous blocks of whole batches, so every batch is the
  one a single run makes) for ``--shard i/n`` and torchrun's ranks; :mod:`stylecap.extract.runner` runs
  the jobs in one process, as shards, merged, or under torchrun.

The file format is documented in :mod:`stylecap.features`.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from loguru import logger
from tqdm import tqdm

from stylecap.encoders import ImageEncoder, load_encoder as load_image_encoder
from stylecap.extract.caption_sources import CaptionSource
from stylecap.extract.image_encoder import autocast_dtype, autocast_warning, encode_batches
from stylecap.extract.settings import ExtractSettings
from stylecap.features import save_features
from stylecap.utils import (atomic_torch_save, atomic_write_json, atomic_write_text,
                            code_version, resolve_device)

FORMAT_VERSION = 1
VOLATILE_META = ("created", "code_version")  # the only meta keys that differ between identical runs
# meta["extraction"] keys of a torchrun run: how the work was split, not what the file holds (not in run keys)
RANK_META = ("world_size", "rank_images")


# ----------------------------------------------------------------------------- jobs
@dataclass
class Job:
    """One output file: images (rows candidates, first-appearance order) and their caption records."""
    path: Path
    image_ids: list[str]
    image_paths: list[str]
    captions: list[dict]            # {"image_id", "caption", ["style"]}, source order
    meta: dict = field(default_factory=dict)  # source-level meta, copied into the file's meta


def make_job(path: str | Path, source: CaptionSource, image_dir: str | Path, image_ids: Iterable[str],
             meta: dict) -> Job:
    """A job for ``image_ids`` of a CaptionSource; its malformed lines go into the meta."""
    ids = list(image_ids)
    keep = set(ids)
    meta = {**meta, "malformed_count": len(source.malformed), "malformed": source.malformed[:100]}
    return Job(Path(path), ids, [str(Path(image_dir) / source.image_files[i]) for i in ids],
               [c for c in source.captions if c["image_id"] in keep], meta)


def _subset(job: Job, lo: int, hi: int, path: Path, **meta) -> Job:
    ids = job.image_ids[lo:hi]
    keep = set(ids)
    return replace(job, path=path, image_ids=ids, image_paths=job.image_paths[lo:hi],
                   captions=[c for c in job.captions if c["image_id"] in keep], meta={**job.meta, **meta})


def limit_job(job: Job, n: int) -> Job:
    return _subset(job, 0, n, job.path, limit=n)


def shard_path(path: Path, i: int, n: int) -> Path:
    return path.with_name(f"{path.stem}.shard{i}of{n}{path.suffix}")


def shard_job(job: Job, i: int, n: int, batch_size: int) -> Job:
    """Shard i of n: a contiguous block of WHOLE batches, so its batches are the single run's batches."""
    n_batches = math.ceil(len(job.image_ids) / batch_size)
    lo = min(len(job.image_ids), i * n_batches // n * batch_size)
    hi = min(len(job.image_ids), (i + 1) * n_batches // n * batch_size)
    return _subset(job, lo, hi, shard_path(job.path, i, n), shard={"index": i, "count": n, "first_image": lo})


def run_key(job: Job, encoding: dict) -> str:
    """Hash of everything that determines a file's content (not its path, not the worker count)."""
    blob = json.dumps({"v": FORMAT_VERSION, "ids": job.image_ids, "paths": job.image_paths,
                       "captions": job.captions, "meta": job.meta, "settings": encoding},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------- chunked, resumable run
def _load_chunks(part: Path, manifest: dict, n_chunks: int, per_chunk: int, n_images: int) -> list[dict]:
    """The chunks already done, in order; a partial folder from other arguments is discarded."""
    if part.is_dir():
        try:
            old = json.loads((part / "manifest.json").read_text())
        except (OSError, ValueError):
            old = None
        if old != manifest:
            logger.warning(f"discarding {part}: partial results of a run with other arguments or inputs")
            shutil.rmtree(part)
    part.mkdir(parents=True, exist_ok=True)
    atomic_write_json(part / "manifest.json", manifest)
    chunks = []
    for c in range(n_chunks):
        f = part / f"chunk_{c:05d}.pt"
        if not f.is_file():
            break
        try:
            ch = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # atomic writes make this unlikely; recompute from here
            logger.warning(f"{f} unreadable ({e}); recomputing from chunk {c}")
            break
        if ch.get("first") != c * per_chunk or ch.get("count") != min(per_chunk, n_images - c * per_chunk):
            break
        chunks.append(ch)
    return chunks


def extract_job(job: Job, enc: Encoder, key: str, settings: ExtractSettings):
    """Encode a job's images with chunked progress in ``<output>.partial/`` -> (emb fp32, ok, bad)."""
    encoding = enc.encoding
    n_images, batch = len(job.image_paths), encoding["batch_size"]
    per_chunk = settings.chunk_batches * batch  # chunks are whole batches: resume keeps batch boundaries
    n_chunks = math.ceil(n_images / per_chunk)
    part = Path(f"{job.path}.partial")
    manifest = {"run_key": key, "chunk_batches": settings.chunk_batches, "n_images": n_images}
    chunks = _load_chunks(part, manifest, n_chunks, per_chunk, n_images)
    start = len(chunks) * per_chunk
    if chunks:
        logger.info(f"{job.path}: resuming after {len(chunks)} of {n_chunks} chunks ({start} images done)")
    buf_ok, buf_emb, buf_bad, covered = [], [], [], 0
    t0 = time.perf_counter()
    with tqdm(total=n_images, initial=start, unit="img", desc=job.path.name, mininterval=1.0) as bar:
        for ok, emb, bad, n in encode_batches(job.image_paths, enc.model, enc.preprocess, batch_size=batch,
                                              num_workers=settings.num_workers, device=enc.device,
                                              allow_truncated=encoding["allow_truncated"],
                                              autocast=encoding["autocast"], start=start,
                                              fast_jpeg_decode=encoding["fast_jpeg_decode"],
                                              exif_transpose=encoding["exif_transpose"]):
            if emb is not None:
                buf_ok.append(ok)
                buf_emb.append(emb)  # stays on the device until the chunk is saved
            buf_bad += bad
            covered += n
            bar.update(n)
            first = len(chunks) * per_chunk
            if covered == per_chunk or first + covered == n_images:
                chunk = {"first": first, "count": covered,
                         "ok": torch.cat(buf_ok) if buf_ok else torch.zeros(0, dtype=torch.long),
                         "emb": torch.cat(buf_emb).float().cpu() if buf_emb else torch.zeros(0, encoding["dim"]),
                         "bad_index": [i for i, _ in buf_bad], "bad_reason": [r for _, r in buf_bad]}
                atomic_torch_save(chunk, part / f"chunk_{len(chunks):05d}.pt")
                chunks.append(chunk)
                buf_ok, buf_emb, buf_bad, covered = [], [], [], 0
    done, elapsed = n_images - start, time.perf_counter() - t0
    logger.info(f"{job.path.name}: {done} images in {elapsed:.1f}s ({done / max(elapsed, 1e-9):.1f} images/s)")
    emb = torch.cat([c["emb"] for c in chunks]) if chunks else torch.zeros(0, encoding["dim"])
    ok = [i for c in chunks for i in c["ok"].tolist()]
    bad = [(i, r) for c in chunks for i, r in zip(c["bad_index"], c["bad_reason"])]
    return emb, ok, bad


# ----------------------------------------------------------------------------- the output file
def finalize(job: Job, encoding: dict, emb: torch.Tensor, ok: list[int], bad: list) -> dict:
    """The feature-file dict. emb [len(ok), D]: row r is image ok[r] (ascending = first appearance)."""
    row = {job.image_ids[k]: r for r, k in enumerate(ok)}
    # Caption records by row (stable, so source order within an image): a merge of shards concatenates
    # to the same list even if the source interleaves images.
    caps = sorted(({**c, "clip_embedding": row[c["image_id"]]} for c in job.captions if c["image_id"] in row),
                  key=lambda c: c["clip_embedding"])
    emb = emb.to(torch.float16 if encoding["fp16"] else torch.float32).contiguous()
    meta = dict(job.meta)
    n_malformed = meta.pop("malformed_count", 0)
    meta.update({
        **file_meta(encoding, emb),
        "counts": {"images": len(ok), "captions": len(caps), "skipped_images": len(bad),
                   "skipped_captions": len(job.captions) - len(caps), "malformed": n_malformed},
        "skipped": [{"image_id": job.image_ids[i], "path": job.image_paths[i], "reason": r} for i, r in bad],
        "extraction": dict(encoding),
        "run_key": run_key(job, encoding),
    })
    return {"clip_embedding": emb, "captions": caps, "meta": meta}


def file_meta(encoding: dict, emb: torch.Tensor) -> dict:
    """The meta keys every feature file has: which CLIP (clip_record reads them), format, when, which code."""
    return {"format_version": FORMAT_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "code_version": code_version(),
            "clip_model": encoding["clip_model"], "clip_sha256": encoding["clip_sha256"],
            "clip_backend": encoding.get("clip_backend", "openai"),  # absent from openai-clip run keys (as before)
            "dim": int(emb.shape[1]), "dtype": str(emb.dtype).replace("torch.", ""), "normalized": False}


def skipped_txt(path: Path) -> Path:
    return Path(f"{path}.skipped.txt")


def write_skipped(path: Path, meta: dict) -> None:
    """``<output>.skipped.txt``: image_id<TAB>path<TAB>reason per skipped image; '#' lines for the rest."""
    f = skipped_txt(path)
    if not meta["skipped"] and not meta["malformed"]:
        f.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
        return
    lines = [f"# {len(meta['skipped'])} images skipped for {path} (image_id, path, reason)"]
    lines += [f"{s['image_id']}\t{s['path']}\t{s['reason']}" for s in meta["skipped"]]
    if meta["malformed"]:
        lines.append(f"# {meta['counts']['malformed']} malformed caption lines/records in the source "
                     f"(first {len(meta['malformed'])}: file, where, reason)")
        lines += [f"# {m['file']}\t{m['where']}\t{m['reason']}" for m in meta["malformed"]]
    atomic_write_text(f, "\n".join(lines) + "\n")


def _write(job: Job, data: dict) -> None:
    save_features(job.path, data)  # atomic: temp file + rename
    write_skipped(job.path, data["meta"])
    shutil.rmtree(Path(f"{job.path}.partial"), ignore_errors=True)
    c = data["meta"]["counts"]
    see = f" (see {skipped_txt(job.path)})" if c["skipped_images"] else ""
    logger.info(f"{job.path}: encoded {c['images']} images, skipped {c['skipped_images']}{see}; "
                f"{c['captions']} captions ({c['skipped_captions']} dropped with skipped images)")


def up_to_date(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        meta = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["meta"]
    except Exception:
        return None
    return meta if meta.get("run_key") == key else None


def log_malformed(malformed: list[dict]) -> None:
    for m in malformed[:10]:
        logger.warning(f"skipped malformed caption entry {m['file']} {m['where']}: {m['reason']}")
    if len(malformed) > 10:
        logger.warning(f"... {len(malformed) - 10} more malformed entries (listed in meta and .skipped.txt)")


# ----------------------------------------------------------------------------- orchestration
@dataclass
class Encoder:
    """CLIP ready to encode on its device, and ``encoding``: the values that fix the output (they go into
    run keys and meta["extraction"]; their keys and order are part of the file format). ``model``: the
    stylecap.encoders.ImageEncoder (any backend); ``preprocess`` its own."""
    model: ImageEncoder
    preprocess: Callable
    device: torch.device
    encoding: dict


def load_encoder(settings: ExtractSettings) -> Encoder:
    """CLIP on settings.device, and the encoding values of this run."""
    device = resolve_device(settings.device)
    enc = load_image_encoder(settings.clip_model_path, device, settings.clip_backend)
    info = enc.info
    ac = autocast_dtype(settings.autocast, device)
    if why := autocast_warning(settings.autocast, device):  # bf16 on a CPU without native bf16
        logger.warning(why)
    encoding = {"clip_model": info["clip_model"], "clip_sha256": info["clip_sha256"], "dim": info["dim"],
                "batch_size": settings.batch_size, "device_type": device.type,
                "autocast": {None: "none", torch.float16: "fp16", torch.bfloat16: "bf16"}[ac],
                "allow_truncated": settings.allow_truncated, "fp16": settings.fp16,
                # how images were decoded: both False = exactly openai-clip's preprocess(Image.open(p))
                "fast_jpeg_decode": settings.fast_jpeg_decode, "exif_transpose": settings.exif_transpose}
    if enc.backend != "openai":  # only other backends add the key: openai-clip run keys stay as they were
        encoding["clip_backend"] = enc.backend
    kind = "" if enc.backend == "openai" else f"{enc.backend}, "
    logger.info(f"CLIP {info['clip_model']} ({kind}dim {info['dim']}) on {device}, batch {settings.batch_size}, "
                f"{settings.num_workers} workers, autocast {encoding['autocast']}; decoding: " +
                (", ".join(k for k in ("fast_jpeg_decode", "exif_transpose") if encoding[k]) or "as openai-clip"))
    return Encoder(enc, enc.preprocess, device, encoding)


def _reuse(job: Job, key: str) -> int | None:
    """The image count of ``job``'s final file when it is up to date (then nothing is redone), else None."""
    meta = up_to_date(job.path, key)
    if meta is None:
        return None
    logger.info(f"{job.path} is up to date (same inputs and settings); delete it to recompute")
    write_skipped(job.path, meta)  # in case a kill came between the file and its list
    shutil.rmtree(Path(f"{job.path}.partial"), ignore_errors=True)
    return meta["counts"]["images"]
