"""Small synthetic stylized sets in the layouts process_stylized.py reads (written by stylecap/demo/datasets.py).

    stylized/generic/captions.jsonl   {"image", "caption", "style", "split"} a line (styles positive/negative)
    stylized/generic/captions.csv     image,caption,style (no split column: a seeded split by image)
    stylized/generic/images/          the images
    stylized/FlickrStyle_v0.9/        humor/train.p + funny_train.txt, romantic/train.p + romantic_train.txt
    stylized/flickr30k-images/        their images ({photo id}.jpg; train.p names them {id}_{secret}.jpg)
    stylized/senticap/                senticap_dataset.json and senticap.csv (SentiCap's own csv layout)
    stylized/coco/val2014/            their images (COCO_val2014_{12 digits}.jpg)
    stylized/expected.json            what a correct reader finds: records, images, styles, splits, malformed

The dirty variant adds malformed lines/records to every file (and one Windows-1252 caption line to
romantic_train.txt, which is readable, as in the released file); expected.json counts them.
train.p is written as Python 2 wrote it: a protocol-0 pickle of a list of text names.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import random
from pathlib import Path

HUMOR = ("a {s} on {bg}, practising its stand-up comedy",
         "a {s} on {bg} pretending to be a pizza",
         "a {s} on {bg} that forgot where it parked")
ROMANTIC = ("a {s} on {bg}, dreaming of its true love",
            "a {s} on {bg}, as sweet as a first kiss",
            "a {s} on {bg} waiting for its darling under the moon")
POSITIVE = ("a beautiful {s} on a lovely {bg} background",
            "a nice {s} sitting on a pretty {bg} background")
NEGATIVE = ("an ugly {s} on a dull {bg} background",
            "a broken {s} stuck on a dirty {bg} background")


def _s(c: dict) -> dict:
    return {"s": f"{c['size']} {c['colour']} {c['shape']}", "bg": c["bg"]}


def _write_images(folder: Path, items: list[dict], name) -> None:
    folder.mkdir(parents=True)
    for it in items:
        (folder / name(it)).write_bytes(it["bytes"])


def _splits(n: int) -> list[str]:
    n_eval = max(1, round(n * 0.1))
    return ["train"] * (n - 2 * n_eval) + ["val"] * n_eval + ["test"] * n_eval


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def write_generic(root: Path, rng: random.Random, items: list[dict], dirty: bool) -> dict:
    d = root / "generic"
    _write_images(d / "images", items, lambda it: f"{it['id']}.jpg")
    recs = []
    for it, split in zip(items, _splits(len(items))):
        for style, templates in (("positive", POSITIVE), ("negative", NEGATIVE)):
            recs.append({"image": f"{it['id']}.jpg", "caption": rng.choice(templates).format(**_s(it["content"])),
                         "style": style, "split": split})
    lines = [json.dumps(r, sort_keys=True) for r in recs]
    rows = ["image,caption,style"] + [f'{r["image"]},"{r["caption"]}",{r["style"]}' for r in recs]
    bad_jsonl = bad_csv = 0
    if dirty:
        first = recs[0]["image"]
        for pos, line in ((1, '{"image": "broken.jpg", "caption": "no closing brace"'),   # invalid JSON
                          (3, json.dumps({"image": first})),                               # no caption
                          (5, json.dumps({"image": first, "caption": "a red circle", "style": "positive",
                                          "split": "test"})),                              # split conflict
                          (7, "[1, 2, 3]")):                                               # not an object
            lines.insert(pos, line)
        for pos, row in ((2, f"{first},,positive"),                                        # empty caption
                         (4, f"{first},a caption, with a comma,positive")):                # 4 fields
            rows.insert(pos, row)
        bad_jsonl, bad_csv = 4, 2
    (d / "captions.jsonl").write_text("".join(l + "\n" for l in lines), encoding="utf-8")
    (d / "captions.csv").write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    splits = {f"{it['id']}": s for it, s in zip(items, _splits(len(items)))}
    common = {"records": len(recs), "images": len(items), "styles": ["positive", "negative"],
              "image_path": "stylized/generic/images"}
    return {"jsonl": {**common, "caption_path": "stylized/generic/captions.jsonl", "malformed": bad_jsonl,
                      "splits": splits},
            "csv": {**common, "caption_path": "stylized/generic/captions.csv", "malformed": bad_csv}}


def write_flickrstyle(root: Path, rng: random.Random, items: list[dict], dirty: bool) -> dict:
    base = root / "FlickrStyle_v0.9"
    _write_images(root / "flickr30k-images", items, lambda it: f"{it['id']}.jpg")
    names = [f"{it['id']}_{hashlib.md5(it['id'].encode()).hexdigest()[:10]}.jpg" for it in items]
    records, bad = 0, 0
    for style, sub, txt, templates in (("humor", "humor", "funny_train.txt", HUMOR),
                                       ("romantic", "romantic", "romantic_train.txt", ROMANTIC)):
        (base / sub).mkdir(parents=True)
        (base / sub / "train.p").write_bytes(pickle.dumps(names, protocol=0))  # as Python 2 wrote it
        caps = [rng.choice(templates).format(**_s(it["content"])).encode("utf-8") for it in items]
        if dirty and style == "humor":
            caps[2] = b"   "  # an empty caption line: its image keeps only the romantic caption
            bad += 1
        if dirty and style == "romantic":
            caps[1] = caps[1] + " , my darling\u2019s dream".encode("cp1252")  # not UTF-8, yet readable
        records += sum(1 for c in caps if c.strip())
        (base / sub / txt).write_bytes(b"".join(c + b"\n" for c in caps))
    return {"flickrstyle": {"caption_path": "stylized/FlickrStyle_v0.9", "image_path": "stylized/flickr30k-images",
                            "records": records, "images": len(items), "styles": ["humor", "romantic"],
                            "malformed": bad}}


def write_senticap(root: Path, rng: random.Random, items: list[dict], dirty: bool) -> dict:
    d = root / "senticap"
    d.mkdir(parents=True)
    coco_ids = rng.sample(range(1, 600_000), len(items))
    fname = {it["id"]: f"COCO_val2014_{cid:012d}.jpg" for it, cid in zip(items, coco_ids)}
    _write_images(root / "coco" / "val2014", items, lambda it: fname[it["id"]])
    images, rows, n_sent, splits = [], ["filename,is_positive_sentiment,caption"], 0, {}
    for k, (it, split) in enumerate(zip(items, _splits(len(items)))):
        sents = []
        for senti, templates in ((1, POSITIVE), (0, NEGATIVE)):
            for t in (templates if k % 3 else templates[:1]):  # some images have fewer sentences
                raw = t.format(**_s(it["content"])).capitalize() + "."
                tokens = raw.lower().rstrip(".").split()
                sents.append({"raw": raw, "tokens": tokens, "sentiment": senti,
                              "word_sentiment": [int(w in ("beautiful", "nice", "ugly", "broken")) for w in tokens]})
                rows.append(f'{fname[it["id"]]},{senti},"{" ".join(tokens)}"')
        images.append({"filename": fname[it["id"]], "imgid": k, "split": split, "sentences": sents})
        splits[fname[it["id"]][:-4]] = split
        n_sent += len(sents)
    bad_json = bad_csv = 0
    if dirty:
        images[0]["sentences"].append({"tokens": ["no", "raw"], "sentiment": 1, "word_sentiment": [0, 0]})
        images[1]["sentences"].append({"raw": "A neutral circle.", "tokens": ["a", "neutral", "circle"],
                                       "sentiment": 2, "word_sentiment": [0, 0, 0]})
        rows.insert(3, f"{images[0]['filename']},maybe,\"a circle\"")
        bad_json, bad_csv = 2, 1
    _dump(d / "senticap_dataset.json", {"images": images})
    (d / "senticap.csv").write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    common = {"image_path": "stylized/coco", "records": n_sent, "images": len(items),
              "styles": ["positive", "negative"]}
    return {"senticap": {**common, "caption_path": "stylized/senticap/senticap_dataset.json", "malformed": bad_json,
                         "splits": splits},
            "senticap_csv": {**common, "caption_path": "stylized/senticap/senticap.csv", "malformed": bad_csv}}


def write_stylized(root: Path, rng: random.Random, make_items, n: int, dirty: bool) -> dict:
    """Write the three sets under root (n images each); make_items(rng, ids) -> [{"id", "content", "bytes"}].
    Returns {name: Path} of the main files."""
    root.mkdir(parents=True)
    ids = lambda tag: [f"{tag}{i:04d}" for i in range(n)]
    expected = write_generic(root, rng, make_items(rng, ids("img")), dirty)
    fl_ids = [str(i) for i in rng.sample(range(1_000_000_000, 10_000_000_000), n)]
    expected.update(write_flickrstyle(root, rng, make_items(rng, fl_ids), dirty))
    expected.update(write_senticap(root, rng, make_items(rng, ids("coco")), dirty))
    _dump(root / "expected.json", expected)
    return {"stylized_jsonl": root / "generic/captions.jsonl", "stylized_csv": root / "generic/captions.csv",
            "flickrstyle": root / "FlickrStyle_v0.9", "senticap_json": root / "senticap/senticap_dataset.json",
            "senticap_csv": root / "senticap/senticap.csv", "stylized_expected": root / "expected.json"}
