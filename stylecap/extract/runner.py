"""Running the extraction jobs of a process_*.py script (not conceptual's tars: stylecap.extract.conceptual):
in one process, as one ``--shard i/n`` of separate jobs, ``--merge`` of those shards, or under torchrun.

* One process: each job is encoded with :func:`stylecap.extract.pipeline.extract_job` (chunked, resumable)
  and written, unless its file is up to date.
* ``--shard i/n``: each job's i-th contiguous block of whole batches goes to ``<stem>.shard<i>of<n><suffix>``;
  ``--merge`` (same command, without --shard) checks the n shard files against this command's inputs and
  combines them (:func:`combine_shards`) into the file a single run writes.
* torchrun (WORLD_SIZE > 1, :mod:`stylecap.extract.ranks`): rank r runs as ``--shard r/WORLD`` on its own
  device; after the barrier, rank 0 combines each job's shard files as --merge does, adds
  ``meta["extraction"]["world_size"]`` and ``["rank_images"]`` and removes the shard files.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
from loguru import logger

from stylecap.extract import ranks
from stylecap.extract.pipeline import (Encoder, Job, _reuse, _write, extract_job, finalize, limit_job,
                                       load_encoder, run_key, shard_job, shard_path, skipped_txt, up_to_date,
                                       write_skipped)
from stylecap.extract.settings import ExtractSettings
from stylecap.utils import UserError


def _nothing_encoded(job: Job, meta: dict) -> None:
    write_skipped(job.path, meta)
    shutil.rmtree(Path(f"{job.path}.partial"), ignore_errors=True)
    logger.error(f"{job.path}: none of its {meta['counts']['skipped_images']} images could be encoded; file not "
                 f"written (see {skipped_txt(job.path)})")


def _encode_one(job: Job, enc: Encoder, settings: ExtractSettings) -> tuple[int, int, str | None]:
    """Encode one file (or shard) unless it is up to date, and write it -> (images encoded, skipped, first skip)."""
    key = run_key(job, enc.encoding)
    done = _reuse(job, key)
    if done is not None:
        return done, 0, None
    emb, ok, bad = extract_job(job, enc, key, settings)
    data = finalize(job, enc.encoding, emb, ok, bad)
    if ok or settings.sharded:  # a shard file is written even when empty: --merge needs every shard
        _write(job, data)
    else:
        _nothing_encoded(job, data["meta"])
    return len(ok), len(bad), (f"{job.image_paths[bad[0][0]]}: {bad[0][1]}" if bad else None)


def _check_encoded(encoded: int, skipped: int, first_bad: str | None, sharded: bool) -> None:
    if encoded == 0 and (skipped or not sharded):
        raise UserError(f"no image could be encoded: all {skipped} listed images were skipped "
                        f"(first: {first_bad}); check --image_path" if skipped else
                        "no image to encode: the caption source lists none for the output file(s)")


def run(jobs: list[Job], settings: ExtractSettings) -> int:
    """Extract (or --merge) every job; under torchrun the ranks split each job. Exit 0 when at least one
    image was encoded."""
    if settings.limit:
        jobs = [limit_job(j, settings.limit) for j in jobs]
    settings, group = ranks.start(settings)
    if group is not None:
        try:
            return _run_ranks(jobs, settings, group)
        finally:
            ranks.close()
    if settings.merge:
        return merge(jobs)
    enc = load_encoder(settings)
    encoded, skipped, first_bad = 0, 0, None
    for job in jobs:
        if settings.sharded:
            job = shard_job(job, settings.shard_index, settings.shard_count, settings.batch_size)
        elif not job.image_ids:
            logger.warning(f"{job.path}: no images for this file; not written")
            continue
        n_ok, n_bad, bad1 = _encode_one(job, enc, settings)
        encoded, skipped, first_bad = encoded + n_ok, skipped + n_bad, first_bad or bad1
    _check_encoded(encoded, skipped, first_bad, settings.sharded)
    return 0


def _share(job: Job, n_images: int) -> str:
    """A rank's input, for the message when it fails: its shard file and which of the file's images."""
    if not job.image_ids:
        return f"{job.path.name} (no images)"
    lo = job.meta["shard"]["first_image"]
    return f"{job.path.name}: images {lo}-{lo + len(job.image_ids) - 1} of {n_images} (from {job.image_paths[0]})"


def _run_ranks(jobs: list[Job], settings: ExtractSettings, group: ranks.Ranks) -> int:
    """torchrun: this rank encodes its block of whole batches of every file into its shard file (as
    --shard RANK/WORLD); after the barrier, rank 0 combines each file's shards (as --merge) and removes them."""
    enc: list[Encoder] = []

    def work(where: list[str]) -> None:
        enc.append(load_encoder(settings))
        todo = [j for j in jobs if j.image_ids and up_to_date(j.path, run_key(j, enc[0].encoding)) is None]
        for job in todo:
            mine = shard_job(job, group.rank, group.world, settings.batch_size)
            where[0] = _share(mine, len(job.image_ids))
            _encode_one(mine, enc[0], settings)

    ranks.share(group, work)  # the barrier; raises on every rank when one failed
    if group.rank != 0:
        return 0
    encoded, skipped, first_bad = 0, 0, None
    for job in jobs:
        if not job.image_ids:
            logger.warning(f"{job.path}: no images for this file; not written")
            continue
        files = [shard_path(job.path, r, group.world) for r in range(group.world)]
        done = _reuse(job, run_key(job, enc[0].encoding))
        if done is None:
            data, rank_images = combine_shards(job, files)
            meta = data["meta"]
            meta["extraction"].update(world_size=group.world, rank_images=rank_images)  # not in the run key
            _write(job, data) if meta["counts"]["images"] else _nothing_encoded(job, meta)
        for f in files:  # also after a kill between the file and this clean-up
            f.unlink(missing_ok=True)
            skipped_txt(f).unlink(missing_ok=True)
        if done is not None:
            encoded += done
            continue
        encoded, skipped = encoded + meta["counts"]["images"], skipped + meta["counts"]["skipped_images"]
        if meta["skipped"] and first_bad is None:
            first_bad = f"{meta['skipped'][0]['path']}: {meta['skipped'][0]['reason']}"
    _check_encoded(encoded, skipped, first_bad, False)
    return 0


def _find_shards(path: Path) -> dict[int, dict[int, Path]]:
    pat = re.compile(rf"{re.escape(path.stem)}\.shard(\d+)of(\d+){re.escape(path.suffix)}")
    found: dict[int, dict[int, Path]] = {}
    for f in path.parent.glob(f"{path.stem}.shard*of*{path.suffix}"):
        m = pat.fullmatch(f.name)
        if m:
            found.setdefault(int(m[2]), {})[int(m[1])] = f
    return found


def combine_shards(job: Job, files: list[Path]) -> tuple[dict, list[int]]:
    """The file one run writes for ``job``, from its n shard files (in shard order) -> (the file's dict,
    images encoded per shard). Shards made with other inputs or settings are refused."""
    n = len(files)
    parts = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
    encoding = parts[0]["meta"]["extraction"]
    embs, ok, bad = [], [], []
    for i, part in enumerate(parts):
        sj = shard_job(job, i, n, encoding["batch_size"])
        if part["meta"].get("run_key") != run_key(sj, encoding):
            raise UserError(f"--merge: {files[i]} was made with other arguments, inputs or settings than "
                            f"this command / shard 0; rerun --shard {i}/{n} with the same arguments")
        lo, why = sj.meta["shard"]["first_image"], {s["image_id"]: s["reason"] for s in part["meta"]["skipped"]}
        for k, image_id in enumerate(sj.image_ids):
            (bad.append((lo + k, why[image_id])) if image_id in why else ok.append(lo + k))
        embs.append(part["clip_embedding"])
    return finalize(job, encoding, torch.cat(embs), ok, bad), [int(p["clip_embedding"].shape[0]) for p in parts]


def merge(jobs: list[Job]) -> int:
    """Combine the shard files of each job into the file a single run writes (shard files are kept)."""
    for job in jobs:
        if not job.image_ids:
            continue
        found = _find_shards(job.path)
        if len(found) != 1:
            raise UserError(f"--merge: {'no' if not found else 'shard files of several counts:'} "
                            f"{job.path.stem}.shard<i>of<n>{job.path.suffix} files next to {job.path}"
                            f"{sorted(found) if found else ''}; run every --shard i/n first (and delete stale ones)")
        n, files = found.popitem()
        missing = [i for i in range(n) if i not in files]
        if missing:
            raise UserError(f"--merge: {job.path}: shard(s) {missing} of {n} missing; run --shard {missing[0]}/{n}")
        data, _ = combine_shards(job, [files[i] for i in range(n)])
        if not data["meta"]["counts"]["images"]:
            raise UserError(f"--merge: no image of {job.path} was encoded in any shard")
        _write(job, data)
    return 0
