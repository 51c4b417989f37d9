"""The feature file: what process_*.py write and what train/predict/evaluate read.

A feature file is ``torch.save`` of a dict of columns, readable with ``torch.load(path, weights_only=True)``
and memory-mapped by :func:`load_features` (``torch.load(..., mmap=True)``): opening a 3.3M-caption file
reads almost nothing, N processes on one machine share one copy of it in the page cache, and only the
pages a process touches count in its RSS.

    format              "stylecap-columnar-1"
    clip_embedding      [N_images, D] float32 (float16 with --fp16), NOT normalised; one row per image
    image_id_bytes      [*] uint8: the image ids, UTF-8, one after the other
    image_id_offsets    [N_images + 1] int64: row r's id is image_id_bytes[offsets[r]:offsets[r + 1]]
    caption_bytes       [*] uint8: the captions, UTF-8, one after the other
    caption_offsets     [N_captions + 1] int64: caption i is caption_bytes[offsets[i]:offsets[i + 1]]
    caption_row         [N_captions] int64: the feature row (= image) of caption i
    caption_style       [N_captions] int32: index into ``styles``, -1 for a plain caption
    styles              list[str]: the exact trait strings the style column indexes
    meta                dict: CLIP model + sha256, dim, dtype, normalisation, sources, split, counts,
                        skipped images with reasons, the full style list, creation time

A text feature file (process_text.py) has the same columns: each row is the CLIP text embedding of one
sentence, its own "image". Its meta says ``modality: "text"`` (:func:`modality`; absent: image features)
and ``train_normalization: "l2"`` (training L2-normalises text rows, CapDec; docs/text_styles.md).

An image with several references (Flickr: 5; PersonalityCaptions test: comment + 4
additional_comments) has one caption per reference, all pointing at the same row.

``load_features(path)`` returns a :class:`FeatureStore`. ``data["captions"]`` on it is the list of
records of StyleCap's first format and ClipCap's, ``{"image_id", "caption", "clip_embedding": row,
["style"]}`` (built on first use: at Conceptual Captions scale use the columns instead), and
``data["clip_embedding"]`` / ``data["meta"]`` are as before. It also reads the files users already
have (StyleCap's first format, ClipCap's and ClipCap-Chinese's pickles: :mod:`stylecap.legacy_features`);
``python scripts/convert_features.py OLD NEW`` rewrites one as columns.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from stylecap.legacy_features import RestrictedUnpickler, normalise_legacy  # noqa: F401 (re-exported)
from stylecap.utils import UserError, atomic_torch_save

FORMAT = "stylecap-columnar-1"
COLUMNS = ("clip_embedding", "image_id_bytes", "image_id_offsets", "caption_bytes", "caption_offsets",
           "caption_row", "caption_style")


def utf8_column(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """strings -> (uint8 buffer, int64 offsets [n + 1])."""
    encoded = [t.encode("utf-8") for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    buf = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()  # copy: frombuffer is read-only
    return torch.from_numpy(buf), torch.from_numpy(offsets)


@dataclass
class FeatureStore:
    """A feature file as columns. The caption columns may be a selection (``subset``) of the file's:
    caption i is ``caption_bytes[caption_start[i]:caption_end[i]]``, so a selection shares the text
    buffer and the feature matrix with the file it came from."""
    clip_embedding: torch.Tensor    # (N_images, D)
    image_id_bytes: torch.Tensor    # (*,) uint8
    image_id_offsets: torch.Tensor  # (N_images + 1,) int64
    caption_bytes: torch.Tensor     # (*,) uint8
    caption_start: torch.Tensor     # (N_captions,) int64
    caption_end: torch.Tensor       # (N_captions,) int64
    caption_row: torch.Tensor       # (N_captions,) int64
    caption_style: torch.Tensor     # (N_captions,) int32, -1 = no style
    styles: list[str]
    meta: dict = field(default_factory=dict)
    _records: list[dict] | None = field(default=None, repr=False, compare=False)

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_columns(cls, d: dict) -> "FeatureStore":
        off = d["caption_offsets"]
        return cls(d["clip_embedding"], d["image_id_bytes"], d["image_id_offsets"], d["caption_bytes"],
                   off[:-1], off[1:], d["caption_row"], d["caption_style"], list(d["styles"]), dict(d.get("meta") or {}))

    @classmethod
    def from_records(cls, emb: torch.Tensor, captions: list[dict], meta: dict | None = None) -> "FeatureStore":
        """ClipCap's layout (a list of caption records pointing at rows of ``emb``) -> columns. Each row
        takes the image id of its first caption (rows no caption points at get an empty id)."""
        n = emb.shape[0]
        ids = [""] * n
        styles: dict[str, int] = {}
        rows, style_col, texts = [], [], []
        for i, c in enumerate(captions):
            if not (isinstance(c, dict) and isinstance(c.get("caption"), str)
                    and isinstance(c.get("clip_embedding"), int) and 0 <= c["clip_embedding"] < n):
                raise UserError(f"caption record {i} is malformed (needs image_id, caption str, "
                                f"clip_embedding int row < {n}): {str(c)[:120]}")
            r, image_id = c["clip_embedding"], str(c.get("image_id", ""))
            if not ids[r]:
                ids[r] = image_id
            elif ids[r] != image_id:
                raise UserError(f"caption record {i} gives row {r} the image id {image_id!r}, an earlier one "
                                f"{ids[r]!r}; one feature row is one image")
            s = c.get("style")
            style_col.append(-1 if s is None else styles.setdefault(s, len(styles)))
            rows.append(r)
            texts.append(c["caption"])
        id_bytes, id_off = utf8_column(ids)
        cap_bytes, cap_off = utf8_column(texts)
        return cls(emb, id_bytes, id_off, cap_bytes, cap_off[:-1], cap_off[1:],
                   torch.tensor(rows, dtype=torch.long), torch.tensor(style_col, dtype=torch.int32),
                   list(styles), dict(meta or {}))

    def to_columns(self) -> dict:
        """The dict ``save_features`` writes. A selection's text is compacted first."""
        if _is_contiguous(self):
            end = self.caption_end
            buf = self.caption_bytes[:int(end[-1]) if len(end) else 0]
            if buf.numel() < self.caption_bytes.numel():  # torch.save writes a view's whole storage
                buf = buf.clone()
            offsets = torch.cat((torch.zeros(1, dtype=torch.long), end.long()))
        else:
            buf, offsets = utf8_column(self.texts())
        return {"format": FORMAT, "clip_embedding": self.clip_embedding, "image_id_bytes": self.image_id_bytes,
                "image_id_offsets": self.image_id_offsets, "caption_bytes": buf, "caption_offsets": offsets,
                "caption_row": self.caption_row, "caption_style": self.caption_style, "styles": self.styles,
                "meta": self.meta}

    # ---- reading --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.caption_row.shape[0]

    @property
    def n_images(self) -> int:
        return self.clip_embedding.shape[0]

    def texts(self, lo: int = 0, hi: int | None = None) -> list[str]:
        """Captions lo..hi as str. Slices a memoryview of the buffer: nothing but the text is copied."""
        buf = memoryview(self.caption_bytes.numpy())
        return [str(buf[a:b], "utf-8") for a, b in zip(self.caption_start[lo:hi].tolist(),
                                                         self.caption_end[lo:hi].tolist())]

    def image_ids(self) -> list[str]:
        """Every row's image id."""
        buf, off = memoryview(self.image_id_bytes.numpy()), self.image_id_offsets.tolist()
        return [str(buf[a:b], "utf-8") for a, b in zip(off[:-1], off[1:])]

    def image_id(self, row: int) -> str:
        a, b = self.image_id_offsets[row:row + 2].tolist()
        return str(memoryview(self.image_id_bytes.numpy())[a:b], "utf-8")

    def caption_image_ids(self) -> list[str]:
        """The image id of every caption."""
        ids = self.image_ids()
        return [ids[r] for r in self.caption_row.tolist()]

    def style_of(self, i: int) -> str | None:
        s = int(self.caption_style[i])
        return None if s < 0 else self.styles[s]

    def record(self, i: int) -> dict:
        """Caption i as ClipCap's record."""
        r = int(self.caption_row[i])
        rec = {"image_id": self.image_id(r), "caption": self.texts(i, i + 1)[0], "clip_embedding": r}
        if (s := self.style_of(i)) is not None:
            rec["style"] = s
        return rec

    def records(self) -> list[dict]:
        """Every caption as ClipCap's record (built once, then kept: costs memory at scale)."""
        if self._records is None:
            ids = self.image_ids()
            out = []
            for text, r, s in zip(self.texts(), self.caption_row.tolist(), self.caption_style.tolist()):
                rec = {"image_id": ids[r], "caption": text, "clip_embedding": r}
                if s >= 0:
                    rec["style"] = self.styles[s]
                out.append(rec)
            self._records = out
        return self._records

    def present_styles(self) -> list[str]:
        """The styles of the captions in this selection, in ``styles`` order."""
        if not self.styles or len(self) == 0:
            return []
        counts = torch.bincount(self.caption_style.long() + 1, minlength=len(self.styles) + 1)[1:]
        return [s for s, k in zip(self.styles, counts.tolist()) if k]

    def subset(self, index: torch.Tensor) -> "FeatureStore":
        """The captions at ``index`` (a (M,) long or bool tensor), sharing buffers and features."""
        return replace(self, caption_start=self.caption_start[index], caption_end=self.caption_end[index],
                       caption_row=self.caption_row[index], caption_style=self.caption_style[index], _records=None)

    def content_key(self) -> str:
        """sha256 of what tokenized captions depend on: the texts, rows and styles of this selection."""
        h = hashlib.sha256()
        h.update(memoryview(self.caption_bytes.numpy()))
        for t in (self.caption_start, self.caption_end, self.caption_row, self.caption_style):
            h.update(memoryview(t.contiguous().numpy()))
        h.update(json.dumps(self.styles, ensure_ascii=False).encode())
        return h.hexdigest()

    # ---- the mapping view of StyleCap's first format: data["clip_embedding"], ["captions"], ["meta"]
    def __getitem__(self, key: str) -> Any:
        if key == "captions":
            return self.records()
        if key in ("clip_embedding", "meta"):
            return getattr(self, key)
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        """``data["captions"] = records`` (e.g. a selection of them) rebuilds the caption columns, as it
        replaced the list in the first format; ``clip_embedding`` and ``meta`` are replaced as they are."""
        if key == "captions":
            new = validate(FeatureStore.from_records(self.clip_embedding, value, self.meta))
            self.__dict__.update(new.__dict__)
        elif key in ("clip_embedding", "meta"):
            setattr(self, key, value)
        else:
            raise KeyError(f"{key}: a feature file has clip_embedding, captions and meta")

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return key in ("clip_embedding", "captions", "meta")

    def keys(self) -> Iterator[str]:
        return iter(("clip_embedding", "captions", "meta"))


def _is_contiguous(store: FeatureStore) -> bool:
    """Captions one after the other from the buffer's start (a whole file, not a selection)."""
    start, end = store.caption_start, store.caption_end
    return len(start) == 0 or (int(start[0]) == 0 and torch.equal(start[1:], end[:-1]))


def as_store(data: "FeatureStore | dict") -> FeatureStore:
    """A FeatureStore from a store or from a dict in ClipCap's layout (hand-made data, tests)."""
    if isinstance(data, FeatureStore):
        return data
    return validate(FeatureStore.from_records(data["clip_embedding"], data["captions"], data.get("meta")))


def validate(store: FeatureStore, path: str | Path = "<features>") -> FeatureStore:
    """Check the columns' shapes and ranges (vectorised) so a bad file fails here, with its name."""
    emb = store.clip_embedding
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2:
        raise UserError(f"{path}: clip_embedding must be a 2-d tensor [N_images, D]")
    n, m = emb.shape[0], len(store)
    idoff, buf = store.image_id_offsets, store.caption_bytes
    problems = [
        (idoff.shape != (n + 1,), f"image_id_offsets has {tuple(idoff.shape)} entries for {n} feature rows (needs {n + 1})"),
        (any(t.shape != (m,) for t in (store.caption_end, store.caption_row, store.caption_style)),
         "the caption columns differ in length"),
        (m > 0 and bool((store.caption_row < 0).any() | (store.caption_row >= n).any()),
         f"a caption points at a feature row outside [0, {n})"),
        (m > 0 and bool((store.caption_start < 0).any() | (store.caption_end < store.caption_start).any()
                        | (store.caption_end > buf.shape[0]).any()), "caption offsets outside the text buffer"),
        (m > 0 and bool((store.caption_style < -1).any() | (store.caption_style >= len(store.styles)).any()),
         f"a caption's style index is outside [-1, {len(store.styles)})"),
    ]
    for bad, what in problems:
        if bad:
            raise UserError(f"{path}: malformed feature file: {what}; regenerate it with process_*.py")
    return store


def load_features(path: str | Path) -> FeatureStore:
    """Open a feature file memory-mapped, or read a legacy pickle safely. Never executes code from the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"feature file {path} does not exist; create it with process_flickr.py "
                        "or process_personality.py")
    try:
        if zipfile.is_zipfile(path):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if isinstance(obj, dict) and obj.get("format") == FORMAT:
                missing = [k for k in COLUMNS if not isinstance(obj.get(k), torch.Tensor)]
                if missing:
                    raise UserError(f"{path}: malformed feature file: no column {missing[0]}; regenerate it")
                return validate(FeatureStore.from_columns(obj), path)
            if not (isinstance(obj, dict) and "meta" in obj and isinstance(obj.get("captions"), list)):
                obj = normalise_legacy(obj, path)
        else:
            with open(path, "rb") as f:
                obj = normalise_legacy(RestrictedUnpickler(f).load(), path)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path}: refused to unpickle ({str(e).splitlines()[0]}); feature files may "
                        "hold only tensors and builtins. Regenerate it with process_*.py") from None
    except (EOFError, RuntimeError) as e:
        raise UserError(f"{path}: unreadable or truncated feature file ({e}); regenerate it") from None
    if not isinstance(obj.get("clip_embedding"), torch.Tensor) or obj["clip_embedding"].ndim != 2:
        raise UserError(f"{path}: clip_embedding must be a 2-d tensor [N_images, D]")
    try:
        return validate(FeatureStore.from_records(obj["clip_embedding"], obj["captions"], obj.get("meta")), path)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def save_features(path: str | Path, data: "FeatureStore | dict") -> None:
    """Write the columns atomically (temporary file, then rename). Takes a store or ClipCap's dict."""
    atomic_torch_save(validate(as_store(data), path).to_columns(), path)


TEXT_MODALITY = "text"  # meta["modality"] of a text feature file (process_text.py)


def modality(meta: dict) -> str:
    """What a feature file's rows embed: "text" (process_text.py's sentences) or "image" (every other file)."""
    return TEXT_MODALITY if (meta or {}).get("modality") == TEXT_MODALITY else "image"


def clip_record(meta: dict) -> dict | None:
    """The CLIP that made a feature file, from its meta: {"clip_model", "clip_sha256", "normalized",
    "clip_backend", "dim"}; None when the file does not say (legacy pickles, hand-made files). Checkpoints store
    it (train.py) so that predict.py and eval mode can refuse features or images of another CLIP
    (stylecap/clip_check.py). Also accepts load_clip's ``info`` and an ImageEncoder's ``record`` (features they
    encode are not normalised). Files from before the backends (stylecap.encoders) name none: openai-clip made
    them; "dim" is None where the meta has no width."""
    if not meta.get("clip_sha256"):
        return None
    return {"clip_model": meta.get("clip_model"), "clip_sha256": meta["clip_sha256"],
            "normalized": bool(meta.get("normalized", False)), "clip_backend": meta.get("clip_backend", "openai"),
            "dim": int(meta["dim"]) if meta.get("dim") is not None else None}

