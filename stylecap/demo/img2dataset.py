"""Small img2dataset-style webdataset shards for process_conceptual.py (written by stylecap/demo/datasets.py).

    conceptual/00000.tar            <key>.jpg, <key>.json, <key>.txt per sample, as img2dataset's
    conceptual/00000_stats.json     WebDatasetSampleWriter and write_stats lay them out (keys: shard id,
    conceptual/00001.tar ...        then the sample number, zero-padded); no .parquet (it needs pyarrow)
    conceptual/expected.json        what a correct reader finds: captions by key, skipped keys by reason,
                                    the failed-download counts of the stats files

Besides good samples the shards hold one image that does not decode, one sample without an image, one
with an empty caption and one without .txt (its caption is in the .json, as img2dataset writes it).
Deterministic: fixed member times and owners, JSON with sorted keys.
"""
from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

SHARDS = (6, 6, 5)  # samples written to each tar
SPECIAL = {(0, 2): "unreadable image", (1, 1): "no image", (1, 3): "no caption", (1, 4): "from_json"}
FAILED = ({"failed_to_download": 2, "failed_to_resize": 0}, {"failed_to_download": 1, "failed_to_resize": 0},
          {"failed_to_download": 0, "failed_to_resize": 1})


def _member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "bigdata", "bigdata"
    tf.addfile(info, io.BytesIO(data))


def write_shard(tar: Path, samples: list[dict]) -> Path:
    """One tar as img2dataset's WebDatasetSampleWriter writes it. samples: {"key", "image": bytes or None
    (no image member), "caption": str or None (no .txt member)}; the .json holds the caption, key and status."""
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as tf:
        for smp in samples:
            key = smp["key"]
            meta = {"caption": smp.get("json_caption", smp["caption"]), "key": key, "status": "success",
                    "error_message": None, "url": f"https://example.com/{key}.jpg", "width": 224, "height": 224}
            if smp["image"] is not None:
                _member(tf, f"{key}.jpg", smp["image"])
            _member(tf, f"{key}.json", json.dumps(meta, indent=4, sort_keys=True).encode())
            if smp["caption"] is not None:
                _member(tf, f"{key}.txt", smp["caption"].encode())
    return tar


def write_stats(tar: Path, successes: int, failed_to_download: int = 0, failed_to_resize: int = 0) -> None:
    """img2dataset's <shard>_stats.json for a tar of ``successes`` samples."""
    stats = {"count": successes + failed_to_download + failed_to_resize, "successes": successes,
             "failed_to_download": failed_to_download, "failed_to_resize": failed_to_resize, "duration": 1.0,
             "start_time": 0.0, "end_time": 1.0, "status_dict": {"success": successes}}
    tar.with_name(f"{tar.stem}_stats.json").write_text(json.dumps(stats, indent=4, sort_keys=True) + "\n")


def write_img2dataset(root: Path, rng: random.Random, make_items, caption_of) -> dict:
    """make_items(rng, ids) -> [{"id", "bytes", "content"}]; caption_of(content) -> a caption."""
    root.mkdir(parents=True)
    expected = {"shards": [], "captions": {}, "skipped": {}, "caption_from_json": 0,
                "failed_to_download": 0, "failed_to_resize": 0, "samples": 0}
    for s, n in enumerate(SHARDS):
        items = make_items(rng, [f"{s:05d}{i:04d}" for i in range(n)])  # img2dataset's compute_key layout
        samples = []
        for i, it in enumerate(items):
            kind, key, caption = SPECIAL.get((s, i)), it["id"], caption_of(it["content"])
            image = {"no image": None, "unreadable image": b"\xff\xd8 not a jpeg"}.get(kind, it["bytes"])
            txt = {"no caption": "", "from_json": None}.get(kind, caption)
            samples.append({"key": key, "image": image, "caption": txt, "json_caption": caption})
            if kind in (None, "from_json"):
                expected["captions"][key] = caption
            else:
                expected["skipped"][key] = kind
            expected["caption_from_json"] += kind == "from_json"
        tar = write_shard(root / f"{s:05d}.tar", samples)
        write_stats(tar, n, **FAILED[s])
        expected["shards"].append(tar.name)
        expected["samples"] += n
        for k in FAILED[s]:
            expected[k] += FAILED[s][k]
    (root / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    return {"conceptual": root, "conceptual_expected": root / "expected.json"}
