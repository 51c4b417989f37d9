"""The demo datasets: small synthetic sets in the real on-disk formats, written by ``generate``.

Flickr30k (English, Karpathy split), Flickr30k-CN (ClipCap-Chinese txt), PersonalityCaptions (ParlAI json +
YFCC-style hashed images), under stylized/, the generic jsonl/csv input, FlickrStyle10K and SentiCap
(stylecap/demo/stylized.py), and under conceptual/, img2dataset's webdataset tar shards
(stylecap/demo/img2dataset.py). Images and captions: stylecap/demo/content.py.

``variant="dirty"`` writes the same layout with a few good images plus broken or unusual files (zero-byte,
truncated, text-as-jpg, CMYK, L, P, RGBA, I;16, EXIF-rotated, very large, missing) and malformed caption
lines, and lists what is expected to load or be skipped in <out>/dirty_manifest.json.

Same seed -> byte-identical output: all randomness comes from random.Random instances seeded by strings,
JSON is written with sorted keys, no timestamps. ``python scripts/make_demo_data.py`` is the command line.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from stylecap.demo.content import (IMG_SIZE, STYLES, en_captions, encode, render, sample_content, styled_captions,
                                   zh_captions)
from stylecap.demo.img2dataset import write_img2dataset
from stylecap.demo.stylized import write_stylized

TRAITS_JSON = Path(__file__).resolve().parents[1] / "data" / "personality_traits.json"  # stylecap/data/
MARKER = ".stylecap_demo"  # marks an --out dir as ours, so regenerating may wipe it


def load_traits() -> dict:
    return json.loads(TRAITS_JSON.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- writers
def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(l + "\n" for l in lines), encoding="utf-8")


def _split_sizes(n: int) -> tuple[int, int, int]:
    """Karpathy-like 80/10/10, at least one image in each split when n >= 3."""
    n_val = n_test = max(1, round(n * 0.1)) if n >= 3 else 0
    return n - n_val - n_test, n_val, n_test


def _token_caption(c: str) -> str:
    # results_20130124.token style: capitalised, tokenised punctuation, " ." at the end
    return c[0].upper() + c[1:] + " ."


def write_flickr(root: Path, items: list[dict], extra_lines=()) -> dict:
    """items: {"id", "bytes" (or None = no file), "content", "split"}. Writes the image
    folder, results_20130124.token and Karpathy dataset_flickr30k.json."""
    img_dir = root / "flickr30k-images"
    img_dir.mkdir(parents=True)
    token_lines, images, sentid = [], [], 0
    for imgid, it in enumerate(items):
        if it["bytes"] is not None:
            (img_dir / f"{it['id']}.jpg").write_bytes(it["bytes"])
        caps = en_captions(it["content"])
        token_lines += [f"{it['id']}.jpg#{k}\t{_token_caption(c)}" for k, c in enumerate(caps)]
        sents = [{"raw": c[0].upper() + c[1:] + ".", "tokens": re.findall(r"[a-z0-9]+", c.lower()),
                  "imgid": imgid, "sentid": sentid + k} for k, c in enumerate(caps)]
        images.append({"filename": f"{it['id']}.jpg", "imgid": imgid, "split": it["split"],
                       "sentences": sents, "sentids": [s["sentid"] for s in sents]})
        sentid += len(sents)
    for pos, line in extra_lines:  # malformed lines inserted at fixed positions
        token_lines.insert(pos, line)
    paths = {"flickr_images": img_dir, "flickr_token": root / "results_20130124.token",
             "flickr_karpathy": root / "dataset_flickr30k.json"}
    _write_lines(paths["flickr_token"], token_lines)
    _write_json(paths["flickr_karpathy"], {"images": images, "dataset": "flickr30k"})
    return paths


def write_flickr_cn(root: Path, items: list[dict], extra_lines=()) -> dict:
    img_dir = root / "flickr30k-images"
    img_dir.mkdir(parents=True)
    lines = []
    for it in items:
        if it["bytes"] is not None:
            (img_dir / f"{it['id']}.jpg").write_bytes(it["bytes"])  # a copy, not a symlink
        lines += [f"{it['id']}\t{c}" for c in zh_captions(it["content"])]
    for pos, line in extra_lines:
        lines.insert(pos, line)
    paths = {"cn_images": img_dir, "cn_captions": root / "captions_cn.txt"}
    _write_lines(paths["cn_captions"], lines)
    return paths


def write_personality(root: Path, splits: dict, rng: random.Random, extra_train=()) -> dict:
    """splits: {"train"|"val"|"test": [{"id", "bytes", "content", "style"}]}."""
    pc_dir, img_dir = root / "personality_captions", root / "yfcc_images"
    pc_dir.mkdir(parents=True)
    img_dir.mkdir(parents=True)
    paths = {"personality_dir": pc_dir, "yfcc_images": img_dir}
    for split, items in splits.items():
        records = []
        for it in items:
            if it["bytes"] is not None:
                (img_dir / f"{it['id']}.jpg").write_bytes(it["bytes"])
            caps = styled_captions(it["style"], it["content"])
            rng.shuffle(caps)
            rec = {"personality": it["style"], "image_hash": it["id"], "comment": caps[0]}
            if split == "test":  # 5 references per test image, as in the real test set
                rec["additional_comments"] = caps[1:5]
            records.append(rec)
        if split == "train":
            for pos, rec in extra_train:
                records.insert(pos, rec)
        paths[f"personality_{split}"] = pc_dir / f"{split}.json"
        _write_json(paths[f"personality_{split}"], records)
    traits = load_traits()
    lines = []
    for group in ("positive", "neutral", "negative"):
        lines.append(f"{group.capitalize()} Traits:")
        lines += traits["groups"][group]
    paths["personalities_txt"] = pc_dir / "personalities.txt"
    _write_lines(paths["personalities_txt"], lines)
    return paths


# ----------------------------------------------------------------------------- datasets
def _flickr_ids(rng: random.Random, n: int) -> list[str]:
    return [str(i) for i in rng.sample(range(1_000_000_000, 10_000_000_000), n)]


def _hash(*parts) -> str:
    return hashlib.md5("-".join(map(str, parts)).encode()).hexdigest()


def _make_items(rng: random.Random, ids: list[str]) -> list[dict]:
    out = []
    for i in ids:
        c = sample_content(rng)
        out.append({"id": i, "content": c, "bytes": encode(render(c, rng))})
    return out


def _balanced_styles(rng: random.Random, n: int) -> list[str]:
    styles = [STYLES[i % len(STYLES)] for i in range(n)]
    rng.shuffle(styles)  # balanced counts, random order
    return styles


def _dirty_specials(rng: random.Random) -> list[dict]:
    """Unusual/broken files (by kind); bytes=None means the file is not written."""
    c = sample_content(rng)
    base = render(c, rng)
    jpg = encode(base)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display; stored 224x160 -> shown 160x224
    rot = encode(render(c, rng, size=(IMG_SIZE, 160)), exif=exif.tobytes())
    # 16-bit greyscale (mode I;16, e.g. scientific/medical PNGs): 8-bit grey widened to 0..65535
    i16 = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    huge = render(c, rng, size=(6000, 4000))  # plain areas compress well (~0.4 MB)
    return [
        {"kind": "zero_byte", "bad": True, "bytes": b"", "content": c},
        {"kind": "truncated", "bad": True, "bytes": jpg[: int(len(jpg) * 0.6)], "content": c},
        {"kind": "not_an_image", "bad": True, "bytes": b"not an image\n", "content": c},
        {"kind": "missing", "bad": True, "bytes": None, "content": c},
        {"kind": "cmyk", "bad": False, "bytes": encode(base.convert("CMYK")), "content": c, "mode": "CMYK"},
        {"kind": "grayscale", "bad": False, "bytes": encode(base.convert("L")), "content": c, "mode": "L"},
        {"kind": "palette", "bad": False, "bytes": encode(base.convert("P"), "GIF"), "content": c, "mode": "P"},
        {"kind": "rgba", "bad": False, "bytes": encode(base.convert("RGBA"), "PNG"), "content": c, "mode": "RGBA"},
        {"kind": "i16", "bad": False, "bytes": encode(i16, "PNG"), "content": c, "mode": "I;16"},
        {"kind": "exif_rotated", "bad": False, "bytes": rot, "content": c, "mode": "RGB",
         "size": [IMG_SIZE, 160], "transposed_size": [160, IMG_SIZE]},
        {"kind": "huge", "bad": False, "bytes": encode(huge), "content": c, "mode": "RGB", "size": [6000, 4000]},
    ]


def _manifest_entry(image_dir: Path, out: Path, good: list[dict], specials: list[dict]) -> dict:
    return {
        "image_dir": image_dir.relative_to(out).as_posix(),
        "good": sorted([g["id"] for g in good] + [s["id"] for s in specials if not s["bad"]]),
        "bad": {s["id"]: s["kind"] for s in specials if s["bad"]},
        "kinds": {s["id"]: s["kind"] for s in specials},
        "expected": {s["id"]: {k: s[k] for k in ("mode", "size", "transposed_size") if k in s}
                     for s in specials if not s["bad"]},
    }


def _prepare_out(out: Path) -> None:
    """Refuse to overwrite dataset folders we did not create (e.g. --out data with real
    Flickr30k in it); otherwise wipe our previous output so no stale files remain."""
    owned = [out / "flickr30k", out / "flickr30k_cn", out / "personality", out / "stylized", out / "conceptual",
             out / "dirty_manifest.json"]
    if any(p.exists() for p in owned) and not (out / MARKER).exists():
        raise SystemExit(f"refusing to overwrite {out}: it holds dataset folders not made by this script")
    for p in owned:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("generated by scripts/make_demo_data.py\n")


def generate(out_dir, seed: int = 0, variant: str = "clean", n_flickr: int = 400,
             n_personality: int = 1000, n_personality_val: int | None = None,
             n_personality_test: int | None = None, n_dirty_good: int = 12, n_stylized: int = 24) -> dict:
    """Write the demo datasets under out_dir; returns {name: Path} of what it wrote.
    Clean: n_flickr Flickr images (80/10/10 Karpathy split, shared by Flickr30k-CN),
    n_personality train + val/test (default 10% each, min 1) PersonalityCaptions images.
    Dirty: n_dirty_good good images per dataset plus the broken/unusual files.
    Both: n_stylized images for each stylized set (dirty: n_dirty_good), with malformed lines when dirty."""
    if variant not in ("clean", "dirty"):
        raise ValueError(f"variant must be 'clean' or 'dirty', not {variant!r}")
    out = Path(out_dir)
    _prepare_out(out)
    # Independent streams per dataset: changing one size does not change the others.
    r_fl, r_pc = random.Random(f"{seed}-flickr"), random.Random(f"{seed}-personality")
    dirty = variant == "dirty"
    if dirty:
        n_flickr = n_personality = n_stylized = n_dirty_good
        n_personality_val = n_personality_test = 2
    n_val = n_personality_val if n_personality_val is not None else max(1, round(0.1 * n_personality))
    n_test = n_personality_test if n_personality_test is not None else max(1, round(0.1 * n_personality))

    # Flickr30k + Flickr30k-CN share images (same ids, same bytes), as the real CN set does.
    fl = _make_items(r_fl, _flickr_ids(r_fl, n_flickr))
    n_tr, n_va, n_te = _split_sizes(len(fl))
    for i, it in enumerate(fl):
        it["split"] = "train" if i < n_tr else "val" if i < n_tr + n_va else "test"
    paths, fl_special, fl_extra, cn_extra = {}, [], (), ()
    if dirty:
        fl_special = _dirty_specials(r_fl)
        for s, i in zip(fl_special, _flickr_ids(r_fl, len(fl_special))):
            s.update(id=i, split="train")
        fl_extra = [(3, f"{fl[0]['id']}.jpg#5 this line has no tab separator")]
        cn_extra = [(3, f"{fl[0]['id']} 这一行没有制表符")]
    paths.update(write_flickr(out / "flickr30k", fl + fl_special, fl_extra))
    paths.update(write_flickr_cn(out / "flickr30k_cn", fl + fl_special, cn_extra))

    # PersonalityCaptions: each image in exactly one split, one style per image.
    n_all = n_personality + n_val + n_test
    pc = _make_items(r_pc, [_hash(seed, "yfcc", i) for i in range(n_all)])
    for it, style in zip(pc, _balanced_styles(r_pc, n_all)):
        it["style"] = style
    splits = {"train": pc[:n_personality], "val": pc[n_personality:n_personality + n_val],
              "test": pc[n_personality + n_val:]}
    pc_special, pc_extra = [], ()
    if dirty:
        pc_special = _dirty_specials(r_pc)
        for k, s in enumerate(pc_special):
            s.update(id=_hash(seed, "dirty", s["kind"]), style=STYLES[k % len(STYLES)])
        splits["train"] = splits["train"] + pc_special
        good = splits["train"][0]["id"]
        pc_extra = [(1, {"personality": "Happy", "image_hash": good}),  # no "comment"
                    (2, {"personality": "Gloomy", "image_hash": good, "comment": 42})]
    paths.update(write_personality(out / "personality", splits, r_pc, pc_extra))
    # Own stream, written last: the other datasets' bytes do not depend on it.
    paths.update(write_stylized(out / "stylized", random.Random(f"{seed}-stylized"), _make_items, n_stylized, dirty))
    # img2dataset shards (17 samples, a few broken ones in both variants): own stream, written last too.
    paths.update(write_img2dataset(out / "conceptual", random.Random(f"{seed}-conceptual"), _make_items,
                                   lambda c: en_captions(c)[0]))

    if dirty:
        tok, cn = paths["flickr_token"], paths["cn_captions"]
        manifest = {
            "flickr30k": {**_manifest_entry(paths["flickr_images"], out, fl, fl_special),
                          "malformed_lines": [{"file": tok.relative_to(out).as_posix(), "line": p + 1, "text": t}
                                              for p, t in fl_extra]},
            "flickr30k_cn": {**_manifest_entry(paths["cn_images"], out, fl, fl_special),
                             "malformed_lines": [{"file": cn.relative_to(out).as_posix(), "line": p + 1, "text": t}
                                                 for p, t in cn_extra]},
            "personality": {**_manifest_entry(paths["yfcc_images"], out, pc[:n_all], pc_special),
                            "malformed_records": [{"file": "personality/personality_captions/train.json",
                                                   "index": p, "record": r} for p, r in pc_extra]},
        }
        paths["manifest"] = out / "dirty_manifest.json"
        _write_json(paths["manifest"], manifest)
    return paths
