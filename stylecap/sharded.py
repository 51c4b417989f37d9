"""The sharded feature layout: many columnar feature files plus an index, for sets larger than a node's disk or
memory (docs/scale.md). Made by ``python scripts/shard_features.py IN_FILE [IN_FILE ...] OUT_DIR --rows_per_shard N``.

    OUT_DIR/index.json          format "stylecap-sharded-1", the shards in order, totals, styles, meta, hashes
    OUT_DIR/shard_00000.pt ...  ordinary columnar feature files (stylecap.features), each a block of whole
                                images with all their captions: an image never spans two shards

index.json:

    format          "stylecap-sharded-1"
    shards          [{"file", "images", "captions", "bytes", "sha256", "styles"}]: "styles" = the styles present
    images, captions  totals
    dim, dtype      the feature width and dtype (every shard has them)
    styles          the style list every shard's caption_style column indexes (one list for the whole set)
    clip            the encoder record (stylecap.features.clip_record of the source meta), or null
    meta            the source file's meta (of the first input), for the record
    content_sha256  sha256 over the shards' sha256 in order: names the whole set's content

Opening (``open_sharded``) reads only index.json and stats each shard (it exists, with the recorded size): no
shard is opened. ``ShardedFeatures.open_shard(k)`` maps one shard (``load_features``) and, the first time in a
process, checks its sha256 (a read of that one file). A rank opens only the shards it is assigned
(stylecap.train.sharded_order), so no node needs the whole set.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stylecap.features import FeatureStore, clip_record, load_features, save_features, utf8_column
from stylecap.utils import UserError, atomic_write_json, sha256_file

INDEX_FORMAT = "stylecap-sharded-1"
INDEX_NAME = "index.json"


def is_sharded(path: str | Path | list | None) -> bool:
    """True for a sharded set: a folder holding index.json, or the index.json itself (or a list of one of them)."""
    if isinstance(path, (list, tuple)):  # a --data_path that takes several files
        return len(path) == 1 and is_sharded(path[0])
    if path is None:
        return False
    p = Path(path)
    return (p.is_dir() and (p / INDEX_NAME).is_file()) or (p.name == INDEX_NAME and p.is_file())


@dataclass
class ShardedFeatures:
    """An opened index: the shards' sizes and hashes, nothing mapped yet. ``select`` makes a view on some shards
    (training takes the shards not held out for validation); ``opened`` lists the shard files this object
    mapped, in order (what a rank actually read)."""
    root: Path
    shards: list[dict]
    styles: list[str]
    dim: int
    dtype: str
    clip: dict | None
    meta: dict
    content_sha256: str
    opened: list[str] = field(default_factory=list)
    _verified: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return sum(s["captions"] for s in self.shards)

    @property
    def caption_counts(self) -> list[int]:
        return [s["captions"] for s in self.shards]

    def present_styles(self) -> list[str]:
        present = {t for s in self.shards for t in s["styles"]}
        return [t for t in self.styles if t in present]

    def select(self, ids: list[int]) -> "ShardedFeatures":
        """The shards ``ids`` (in that order) as a set of their own (its own ``opened`` list; the record of
        verified hashes is shared)."""
        return ShardedFeatures(self.root, [self.shards[k] for k in ids], self.styles, self.dim, self.dtype, self.clip,
                               self.meta, self.content_sha256, [], self._verified)

    def check(self, ids: list[int] | None = None) -> None:
        """Every shard ``ids`` (None: all) exists with the size the index records (a stat each, nothing read)."""
        for s in self.shards if ids is None else [self.shards[k] for k in ids]:
            f = self.root / s["file"]
            if not f.is_file():
                raise UserError(f"{self.root / INDEX_NAME}: shard {s['file']} is missing; copy it into {self.root} "
                                "or remake the set with scripts/shard_features.py")
            if f.stat().st_size != s["bytes"]:
                raise UserError(f"{f}: {f.stat().st_size} bytes, the index says {s['bytes']} (a truncated or changed "
                                "shard); copy it again, or remake the set with scripts/shard_features.py")

    def open_shard(self, k: int, verify: bool = True) -> FeatureStore:
        """Shard k memory-mapped; its sha256 is checked the first time this process opens it (``verify``)."""
        info = self.shards[k]
        path = self.root / info["file"]
        self.check([k])
        if verify and info["file"] not in self._verified:
            if sha256_file(path) != info["sha256"]:
                raise UserError(f"{path}: its sha256 differs from {self.root / INDEX_NAME} (a changed or corrupt "
                                "shard); copy it again, or remake the set with scripts/shard_features.py")
            self._verified.add(info["file"])
        self.opened.append(info["file"])
        store = load_features(path)
        if store.styles != self.styles or len(store) != info["captions"] or store.n_images != info["images"]:
            raise UserError(f"{path} does not match {self.root / INDEX_NAME} (styles or counts differ); remake the "
                            "set with scripts/shard_features.py")
        return store

    def load_all(self, verify: bool = True) -> FeatureStore:
        """Every shard of this set in one FeatureStore (in memory: for a validation set, or small sets)."""
        return concat_stores([self.open_shard(k, verify) for k in range(len(self.shards))])

    # ---- what training's setup asks of a feature set: data["meta"], data["clip_embedding"].shape
    def __getitem__(self, key: str) -> Any:
        if key == "meta":
            return {**self.meta, **(self.clip or {})}
        if key == "clip_embedding":  # the shape only: a tensor on the meta device holds no data
            return torch.empty((sum(s["images"] for s in self.shards), self.dim), device="meta")
        raise KeyError(key)


def open_sharded(path: str | Path, check: bool = True) -> ShardedFeatures:
    """Read index.json (``path``: the folder or the file) and (``check``) stat every shard: it exists with its
    size. Without ``check`` a shard is checked when opened: for nodes that hold only their own shards."""
    p = Path(path)
    index_path = p / INDEX_NAME if p.is_dir() else p
    root = index_path.parent
    try:
        idx = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{index_path}: unreadable sharded index ({e}); remake it with scripts/shard_features.py") from None
    if not isinstance(idx, dict) or idx.get("format") != INDEX_FORMAT or not isinstance(idx.get("shards"), list):
        raise UserError(f"{index_path}: not a {INDEX_FORMAT} index; make one with scripts/shard_features.py")
    data = ShardedFeatures(root, idx["shards"], list(idx["styles"]), int(idx["dim"]), str(idx["dtype"]),
                           idx.get("clip"), dict(idx.get("meta") or {}), str(idx["content_sha256"]))
    if check:
        data.check()
    return data


def load_any(path: str | Path) -> FeatureStore:
    """A feature file, or a whole sharded set concatenated in memory (meant for validation sets)."""
    return open_sharded(path).load_all() if is_sharded(path) else load_features(path)


def concat_stores(stores: list[FeatureStore]) -> FeatureStore:
    """The stores one after the other (rows and captions renumbered), in one store. Styles: the union, in
    first-seen order. Copies the columns: meant for what fits in memory (validation shards, tests)."""
    styles: list[str] = []
    for s in stores:
        styles += [t for t in s.styles if t not in styles]
    texts, ids, rows, style_col, row0 = [], [], [], [], 0
    for s in stores:
        lut = torch.tensor([styles.index(t) for t in s.styles] + [-1], dtype=torch.int32)  # [-1]: plain stays -1
        style_col.append(lut[s.caption_style.long()])
        rows.append(s.caption_row + row0)
        texts += s.texts()
        ids += s.image_ids()
        row0 += s.n_images
    cap_bytes, cap_off = utf8_column(texts)
    id_bytes, id_off = utf8_column(ids)
    emb = torch.cat([s.clip_embedding for s in stores]) if stores else torch.zeros(0, 0)
    return FeatureStore(emb, id_bytes, id_off, cap_bytes, cap_off[:-1], cap_off[1:],
                        torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long),
                        torch.cat(style_col) if style_col else torch.zeros(0, dtype=torch.int32),
                        styles, dict(stores[0].meta) if stores else {})


def _shard_of(store: FeatureStore, lo: int, hi: int, caps: torch.Tensor, lut: torch.Tensor, styles: list[str],
              meta: dict) -> FeatureStore:
    """Rows lo..hi of ``store`` with the captions ``caps`` (indices, in source order), rows renumbered from 0 and
    styles mapped onto ``styles`` by ``lut``. Every column is a copy: torch.save of a view writes its whole storage."""
    a, b = store.image_id_offsets[lo:hi + 1][[0, -1]].tolist()
    sub = store.subset(caps)
    cap_bytes, cap_off = utf8_column(sub.texts())
    return FeatureStore(store.clip_embedding[lo:hi].clone(), store.image_id_bytes[a:b].clone(),
                        store.image_id_offsets[lo:hi + 1] - a, cap_bytes, cap_off[:-1], cap_off[1:],
                        sub.caption_row - lo, lut[sub.caption_style.long()], styles, meta)


def write_shards(inputs: list[str | Path], out_dir: str | Path, rows_per_shard: int) -> dict:
    """Cut feature files into shards of ``rows_per_shard`` images (each input's last shard may be shorter) and
    write them with index.json (last, atomically) into ``out_dir``; returns the index. Captions keep their
    order within a shard; shard k of an input holds its images k*R .. (k+1)*R - 1."""
    out = Path(out_dir)
    if (out / INDEX_NAME).exists():
        raise UserError(f"{out} already holds a sharded set ({INDEX_NAME}); choose an empty OUT_DIR")
    if rows_per_shard < 1:
        raise UserError(f"--rows_per_shard must be at least 1, not {rows_per_shard}")
    stores = [load_features(p) for p in inputs]  # memory-mapped: nothing read yet
    first = stores[0]
    styles: list[str] = []
    for p, s in zip(inputs, stores):
        styles += [t for t in s.styles if t not in styles]
        if s.clip_embedding.shape[1] != first.clip_embedding.shape[1] or s.clip_embedding.dtype != first.clip_embedding.dtype:
            raise UserError(f"{p} has {tuple(s.clip_embedding.shape[1:])} {s.clip_embedding.dtype} features, "
                            f"{inputs[0]} {tuple(first.clip_embedding.shape[1:])} {first.clip_embedding.dtype}: "
                            "one sharded set holds features of one encoder and dtype")
        if clip_record(s.meta) != clip_record(first.meta):
            raise UserError(f"{p} was encoded by another CLIP than {inputs[0]} (meta clip records differ); "
                            "shard each encoder's features into a set of its own")
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for p, s in zip(inputs, stores):
        lut = torch.tensor([styles.index(t) for t in s.styles] + [-1], dtype=torch.int32)
        block = s.caption_row // rows_per_shard  # (N_captions,) shard of each caption within this input
        order = torch.argsort(block, stable=True)
        n_blocks = -(-s.n_images // rows_per_shard)
        bounds = torch.searchsorted(block[order], torch.arange(n_blocks + 1)).tolist()
        for j in range(n_blocks):
            lo, hi = j * rows_per_shard, min((j + 1) * rows_per_shard, s.n_images)
            name = f"shard_{len(shards):05d}.pt"
            meta = {**s.meta, "shard": {"source": str(p), "rows": [lo, hi]}}
            shard = _shard_of(s, lo, hi, order[bounds[j]:bounds[j + 1]], lut, styles, meta)
            save_features(out / name, shard)
            shards.append({"file": name, "images": hi - lo, "captions": len(shard), "bytes": (out / name).stat().st_size,
                           "sha256": sha256_file(out / name), "styles": shard.present_styles()})
    index = {"format": INDEX_FORMAT, "shards": shards, "images": sum(s["images"] for s in shards),
             "captions": sum(s["captions"] for s in shards), "dim": int(first.clip_embedding.shape[1]),
             "dtype": str(first.clip_embedding.dtype).removeprefix("torch."), "styles": styles,
             "clip": clip_record(first.meta), "meta": first.meta,
             "content_sha256": hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest()}
    atomic_write_json(out / INDEX_NAME, index)
    return index
