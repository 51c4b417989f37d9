"""Training data: feature file -> tokenized samples (cached) -> batches padded to their longest caption."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from loguru import logger
from torch.utils.data import Dataset

from models.tokenizer import CaptionTokenizer
from stylecap.clip_check import describe as describe_clip
from stylecap.features import FeatureStore, as_store, clip_record, modality
from stylecap.styles import all_traits
from stylecap.utils import UserError, atomic_torch_save


def style_vocabulary(data: "FeatureStore | list[dict]") -> list[str]:
    """Styles present in the data (a store, or caption records): known traits in published order,
    then any others sorted."""
    if hasattr(data, "present_styles"):  # a FeatureStore, or a sharded set (stylecap.sharded)
        present = set(data.present_styles())
    else:
        present = {c["style"] for c in data if c.get("style") is not None}
    known = [t for t in all_traits() if t in present]
    return known + sorted(present - set(known))


def drop_unknown_styles(data: "FeatureStore | dict", styles: list[str], what: str = "validation") -> FeatureStore:
    """Leave out the records whose style the model does not know (absent from the training data),
    with one warning that names each such style and its count. Validation has no other sensible
    choice: a style the model never saw has no embedding or token to condition on. A plain model
    (no styles) keeps every record."""
    store = as_store(data)
    if not styles:
        return store
    wanted = set(styles)
    known = torch.tensor([s in wanted for s in store.styles] + [False])  # index -1 (no style) -> last
    keep = known[store.caption_style.long()]  # (N_captions,) bool
    if bool(keep.all()):
        return store
    names = store.styles + ["None"]
    counts = torch.bincount(store.caption_style.long()[~keep] % len(names), minlength=len(names))
    unknown = Counter({names[k]: n for k, n in enumerate(counts.tolist()) if n})
    n = sum(unknown.values())
    listed = ", ".join(f"{s!r} ({k})" for s, k in unknown.most_common())
    if not bool(keep.any()):
        raise UserError(f"none of the {n} {what} records has a style of the training data (they have {listed}); "
                        "give a --val_path with the training styles, or leave --val_path out for a split of --data_path")
    logger.warning(f"{n} {what} records in {len(unknown)} style{'s' if len(unknown) > 1 else ''} unknown to the "
                   f"training data are left out: {listed}")
    return store.subset(keep)


def split_by_image(data: "FeatureStore | dict", val_fraction: float, seed: int) -> tuple[FeatureStore, FeatureStore]:
    """Seeded split of a feature file into (train, val) by image id: no image is in both.
    Vectorised over rows, so it takes seconds at Conceptual Captions scale."""
    store = as_store(data)
    row_ids = store.image_ids()  # (N_images,) str; several rows may share an id (ClipCap's COCO files)
    used = torch.unique(store.caption_row).tolist()
    images = sorted({row_ids[r] for r in used})
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)  # the same permutation as shuffling ``images`` itself
    n_val = max(1, round(len(images) * val_fraction)) if len(images) > 1 else 0
    val_ids = {images[k] for k in order[:n_val]}
    val_row = torch.tensor([i in val_ids for i in row_ids], dtype=torch.bool)  # (N_images,)
    in_val = val_row[store.caption_row] if len(store) else torch.zeros(0, dtype=torch.bool)
    return store.subset(~in_val), store.subset(in_val)


def merge_stores(stores: list[FeatureStore], paths: list[str]) -> FeatureStore:
    """Several feature files as one store: their feature rows one after the other (file k's row r is row
    r + the rows of the files before it), their captions in file order, styles by name (the union). The
    files must hold features of one width and, where they name one, of one CLIP (text and image rows
    share CLIP's space only within one model). meta: the CLIP record, "sources" and each file's modality."""
    dims = {s.clip_embedding.shape[1] for s in stores}
    if len(dims) > 1:
        raise UserError(f"--data_path files of different feature widths {[s.clip_embedding.shape[1] for s in stores]} "
                        f"({' '.join(paths)}); encode them all with one CLIP")
    records = [(p, clip_record(s.meta)) for p, s in zip(paths, stores)]
    named = [(p, r) for p, r in records if r is not None]
    if len({r["clip_sha256"] for _, r in named}) > 1:
        raise UserError(f"--data_path files of different CLIPs ({', '.join(f'{p}: {describe_clip(r)}' for p, r in named)}); "
                        "encode every file with the same --clip_model_path")
    union = sorted({st for s in stores for st in s.styles})
    index = {st: k for k, st in enumerate(union)}
    dtype = stores[0].clip_embedding.dtype if len({s.clip_embedding.dtype for s in stores}) == 1 else torch.float32
    cap_shift = np.cumsum([0] + [s.caption_bytes.numel() for s in stores])
    row_shift = np.cumsum([0] + [s.n_images for s in stores])
    id_shift = np.cumsum([0] + [s.image_id_bytes.numel() for s in stores])
    styles = [torch.tensor([index[st] for st in s.styles] + [-1], dtype=torch.int32)[s.caption_style.long()]
              for s in stores]  # -1 (plain) indexes the appended -1
    meta = {**({k: named[0][1][k] for k in ("clip_model", "clip_sha256", "normalized")} if named else {}),
            "sources": list(paths), "modalities": [modality(s.meta) for s in stores], "styles": union}
    return FeatureStore(
        torch.cat([s.clip_embedding.to(dtype) for s in stores]),
        torch.cat([s.image_id_bytes for s in stores]),
        torch.cat([stores[0].image_id_offsets[:1]] + [s.image_id_offsets[1:] + int(k) for s, k in zip(stores, id_shift)]),
        torch.cat([s.caption_bytes for s in stores]),
        torch.cat([s.caption_start + int(k) for s, k in zip(stores, cap_shift)]),
        torch.cat([s.caption_end + int(k) for s, k in zip(stores, cap_shift)]),
        torch.cat([s.caption_row + int(k) for s, k in zip(stores, row_shift)]),
        torch.cat(styles), union, meta)


def concat_selections(base: FeatureStore, parts: list[FeatureStore]) -> FeatureStore:
    """One selection of ``base`` holding the captions of ``parts`` (selections of ``base``), in order."""
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])
    return replace(base, caption_start=cat("caption_start"), caption_end=cat("caption_end"),
                   caption_row=cat("caption_row"), caption_style=cat("caption_style"), _records=None)


def noise_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index``'s noise in ``epoch``: a pure function, so a resumed run (and any rank
    or worker) draws exactly the noise of an uninterrupted one."""
    return (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % (1 << 63)


@dataclass
class Encoded:
    """Tokenized samples, stored flat: sample i's ids are flat[offsets[i]:offsets[i+1]] (context +
    caption + END); its first n_ctx[i] ids are the style context (no loss). One int32 tensor instead
    of a Python list per caption: ~10x less memory for 200k captions, and one tensor to cache."""
    rows: torch.Tensor       # (N,) feature row of each sample
    style_ids: torch.Tensor  # (N,)
    flat: torch.Tensor       # (total tokens,) int32
    offsets: torch.Tensor    # (N + 1,) int64
    n_ctx: torch.Tensor      # (N,)
    truncated: int

    def __len__(self) -> int:
        return self.rows.shape[0]

    def ids(self, i: int) -> torch.Tensor:
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def tokens(self) -> list[list[int]]:
        """Every sample's ids as Python lists (for inspection and benchmarks; costs memory)."""
        return [self.ids(i).tolist() for i in range(len(self))]


# init_kwargs that only say where the files were read from: a moved GPT-2 folder gives the same ids
_WHERE_FROM = {"vocab_file", "merges_file", "tokenizer_file", "name_or_path", "is_local", "local_files_only",
               "cache_dir", "_commit_hash"}


def _tokenizer_key(tok: CaptionTokenizer) -> str:
    """sha256 of everything that decides the ids of a caption: the class, the backend tokenizer (a fast
    tokenizer's serialized model, merges, normalizer, pre-tokenizer (add_prefix_space ...), post-processor
    and added tokens), the vocabulary with the added tokens, the special tokens and the tokenizer's
    settings (init kwargs other than file locations). The vocabulary alone missed add_prefix_space."""
    hf = tok.tok
    if getattr(hf, "is_fast", False):
        backend = hf.backend_tokenizer.to_str()
    else:  # a slow (Python) tokenizer: its BPE merges in rank order, if it has any
        backend = json.dumps([" ".join(m) for m, _ in sorted(getattr(hf, "bpe_ranks", {}).items(), key=lambda kv: kv[1])])
    settings = {k: v for k, v in hf.init_kwargs.items() if k not in _WHERE_FROM}
    parts = [type(hf).__name__, backend, sorted(hf.get_vocab().items()), hf.special_tokens_map, settings]
    # repr: AddedToken values (special tokens) with their flags (lstrip, normalized ...), which change ids too
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True, default=repr).encode()).hexdigest()


def encode_data(data: "FeatureStore | dict", tok: CaptionTokenizer, max_len: int, cache_dir: Path | None = None,
                source: str | Path | None = None, chunk: int = 1024) -> Encoded:
    """Tokenize every caption once, ``chunk`` captions at a time (the tokenizer's Python lists never
    exceed one chunk). With ``cache_dir`` the result is cached there, keyed by the captions' content
    (texts, rows, styles), the tokenizer and the settings, so the cache is never stale; it is read back
    memory-mapped, so DDP ranks on one machine share one copy in the page cache."""
    store = as_store(data)
    key = path = None
    if cache_dir is not None:
        settings = json.dumps([tok.style_mode, tok.styles, tok.prompt_template, tok.legacy_clipcap, max_len])
        key = hashlib.sha256((store.content_key() + _tokenizer_key(tok) + settings).encode()).hexdigest()[:24]
        path = Path(cache_dir) / f"tokens_{key}.pt"
        if path.is_file():
            logger.info(f"tokens: loaded from cache {path.name}")
            return Encoded(**torch.load(path, weights_only=True, mmap=True))
    present = set(store.present_styles())  # a selection may not have every style of its file
    if tok.style_mode != "none":  # never silently style 0: drop_unknown_styles runs first, so this is a bug
        styled = present | ({None} if bool((store.caption_style < 0).any()) else set())
        unknown = styled - set(tok.style_index)
        if unknown:
            raise UserError(f"styles unknown to the model in {source or 'the data'}: {sorted(map(str, unknown))[:5]}")
    with_ctx = tok.adds_context
    ctx_of = [tok.context_ids(s) if with_ctx and s in present else [] for s in store.styles] + [[]]  # [-1]: none
    limit = max_len if tok.legacy_clipcap else max_len + 1  # caption tokens + END
    n = len(store)
    lengths, truncated = np.zeros(n, dtype=np.int64), 0
    sink = _FlatSink(path.with_name(path.name + ".flat.tmp") if path is not None else None)
    for lo in range(0, n, chunk):
        seqs = []
        for s, cap_ids in zip(store.caption_style[lo:lo + chunk].tolist(), tok.encode_captions(store.texts(lo, lo + chunk))):
            if len(cap_ids) > limit:
                truncated += 1
                cap_ids = cap_ids[:max_len] + ([] if tok.legacy_clipcap else [tok.eos_id])
            seqs.append(ctx_of[s] + cap_ids)
        lengths[lo:lo + len(seqs)] = [len(q) for q in seqs]
        sink.append(np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int32))
    offsets = torch.zeros(n + 1, dtype=torch.long)
    offsets[1:] = torch.from_numpy(lengths).cumsum(0)
    lut = torch.tensor([tok.style_index.get(s, 0) for s in store.styles] + [0], dtype=torch.long)
    n_ctx = torch.tensor([len(c) for c in ctx_of], dtype=torch.long)[store.caption_style.long()]  # (N,)
    enc = Encoded(store.caption_row, lut[store.caption_style.long()], sink.tensor(), offsets, n_ctx, truncated)
    if truncated:
        logger.warning(f"{truncated} of {n} captions were longer than --max_len {max_len} tokens and truncated")
    if path is not None:
        atomic_torch_save(dict(vars(enc)), path)
        sink.close()
        enc = Encoded(**torch.load(path, weights_only=True, mmap=True))  # share the pages, free the copy
    return enc


class _FlatSink:
    """The token ids of all captions, one chunk at a time: in memory, or (when the result is cached) in a
    temporary file mapped back at the end, so that tokenizing 3.3M captions holds one chunk in RAM."""

    def __init__(self, tmp: Path | None):
        self.tmp, self.parts, self.total = tmp, [], 0
        if tmp is not None:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            # a name of its own next to ``tmp``: the nodes of a multi-node run write one shared cache at once
            fd, name = tempfile.mkstemp(dir=tmp.parent, prefix=f".{tmp.name}.", suffix=".tmp")
            self.tmp, self.f = Path(name), os.fdopen(fd, "wb")

    def append(self, ids: np.ndarray) -> None:
        self.total += ids.size
        if self.tmp is None:
            self.parts.append(ids)
        else:
            self.f.write(ids.tobytes())

    def tensor(self) -> torch.Tensor:  # (total,) int32
        if self.tmp is None or self.total == 0:
            return torch.from_numpy(np.concatenate(self.parts)) if self.parts else torch.zeros(0, dtype=torch.int32)
        self.f.close()
        return torch.from_numpy(np.memmap(self.tmp, dtype=np.int32, mode="c", shape=(self.total,)))

    def close(self) -> None:
        if self.tmp is not None:
            self.f.close()
            self.tmp.unlink(missing_ok=True)


class CaptionDataset(Dataset):
    """Index -> (feature (D,), style id, token ids). Features stay in their stored dtype (fp16 stays fp16).

    ``text_rows`` (N_images,) bool marks the feature rows that are CLIP text embeddings (process_text.py).
    Those are L2-normalised and, with ``noise_variance`` V > 0, get CapDec's Gaussian noise N(0, V I) (Nukrai
    et al., 2022), drawn for sample i of epoch e from its own generator seeded by noise_seed(seed, e, i):
    the same noise in a resumed run, under DDP and in DataLoader workers. Image rows are returned as stored."""

    def __init__(self, features: torch.Tensor, enc: Encoded, text_rows: torch.Tensor | None = None,
                 noise_variance: float = 0.0, seed: int = 0):
        self.features, self.enc = features, enc
        self.text_rows, self.noise_std, self.seed = text_rows, float(noise_variance) ** 0.5, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose noise __getitem__ draws (the Trainer sets it with the sampler's)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.enc)

    def __getitem__(self, i: int):
        e = self.enc
        row = e.rows[i]
        feature = self.features[row]  # (D,)
        if self.text_rows is not None and bool(self.text_rows[row]):
            feature = self.text_feature(feature, int(i))
        return feature, e.style_ids[i], e.ids(i), e.n_ctx[i]

    def text_feature(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """A text row (D,): L2-normalised, plus the noise of sample i in this epoch (none when V = 0)."""
        y = x.float() / x.float().norm().clamp_min(1e-8)
        if self.noise_std > 0:
            g = torch.Generator().manual_seed(noise_seed(self.seed, self.epoch, i))
            y = y + torch.randn(y.shape, generator=g) * self.noise_std
        return y.to(x.dtype)


def collate(batch, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the batch's longest sequence. Labels: -100 on context and padding; END keeps its loss."""
    feats, styles, tokens, n_ctx = zip(*batch)
    t = max(len(x) for x in tokens)
    b = len(tokens)
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, t), dtype=torch.long)
    labels = torch.full((b, t), -100, dtype=torch.long)
    for i, (ids, c) in enumerate(zip(tokens, n_ctx)):
        n = len(ids)
        input_ids[i, :n] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[i, :n] = 1
        labels[i, int(c):n] = input_ids[i, int(c):n]
    return {"features": torch.stack(feats), "style_ids": torch.stack(styles), "input_ids": input_ids,
            "attention_mask": attention_mask, "labels": labels}


class SkipSampler(torch.utils.data.Sampler):
    """Wraps a sampler and drops its first ``skip`` indices: resuming mid-epoch replays nothing."""

    def __init__(self, base, skip: int = 0):
        self.base, self.skip = base, skip

    def __iter__(self):
        return iter(list(self.base)[self.skip:])

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


@dataclass
class TrainingData:
    """The features a run trains and validates on, and the styles the model learns (empty: a plain model).
    ``*_text_rows``: (N_images,) bool over the store's feature rows, True where the row is a CLIP text
    embedding (a process_text.py file); None when no row is. ``text_styles``: the styles only text rows have."""
    train: FeatureStore
    val: FeatureStore
    styles: list[str]
    text_styles: list[str] = field(default_factory=list)
    train_text_rows: torch.Tensor | None = None
    val_text_rows: torch.Tensor | None = None
