"""Training data: feature file -> tokenized samples (cached) -> batches padded to their longest caption."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from loguru import logger
from torch.utils.data import Dataset

from models.tokenizer import CaptionTokenizer
from stylecap.features import FeatureStore, as_store
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
    """Index -> (feature (D,), style id, token ids). Features stay in their stored dtype (fp16 stays fp16)."""

    def __init__(self, features: torch.Tensor, enc: Encoded):
        self.features, self.enc = features, enc

    def __len__(self) -> int:
        return len(self.enc)

    def __getitem__(self, i: int):
        e = self.enc
        return self.features[e.rows[i]], e.style_ids[i], e.ids(i), e.n_ctx[i]


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
