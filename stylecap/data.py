"""Training data: feature file -> tokenized samples (cached) -> batches padded to their longest caption."""
from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger
from torch.utils.data import Dataset

from models.tokenizer import CaptionTokenizer
from stylecap.styles import all_traits
from stylecap.utils import UserError, atomic_torch_save, sha256_file


def style_vocabulary(captions: list[dict]) -> list[str]:
    """Styles present in the data: known traits in published order, then any others sorted."""
    present = {c["style"] for c in captions if c.get("style") is not None}
    known = [t for t in all_traits() if t in present]
    return known + sorted(present - set(known))


def drop_unknown_styles(data: dict, styles: list[str], what: str = "validation") -> dict:
    """Leave out the records whose style the model does not know (absent from the training data),
    with one warning that names each such style and its count. Validation has no other sensible
    choice: a style the model never saw has no embedding or token to condition on. A plain model
    (no styles) keeps every record."""
    if not styles:
        return data
    known = set(styles)
    kept = [c for c in data["captions"] if c.get("style") in known]
    unknown = Counter(str(c.get("style")) for c in data["captions"] if c.get("style") not in known)
    if not unknown:
        return data
    n = sum(unknown.values())
    listed = ", ".join(f"{s!r} ({k})" for s, k in unknown.most_common())
    if not kept:
        raise UserError(f"none of the {n} {what} records has a style of the training data (they have {listed}); "
                        "give a --val_path with the training styles, or leave --val_path out for a split of --data_path")
    logger.warning(f"{n} {what} records in {len(unknown)} style{'s' if len(unknown) > 1 else ''} unknown to the "
                   f"training data are left out: {listed}")
    return {**data, "captions": kept}


def split_by_image(data: dict, val_fraction: float, seed: int) -> tuple[dict, dict]:
    """Seeded split of a feature dict into (train, val) by image: no image is in both."""
    images = sorted({c["image_id"] for c in data["captions"]})
    rng = random.Random(seed)
    rng.shuffle(images)
    n_val = max(1, round(len(images) * val_fraction)) if len(images) > 1 else 0
    val_ids = set(images[:n_val])
    pick = lambda keep: {**data, "captions": [c for c in data["captions"] if (c["image_id"] in val_ids) == keep]}
    return pick(False), pick(True)


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


def _tokenizer_key(tok: CaptionTokenizer) -> str:
    vocab = json.dumps(sorted(tok.tok.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256((type(tok.tok).__name__ + vocab).encode()).hexdigest()


def encode_data(data: dict, tok: CaptionTokenizer, max_len: int, cache_dir: Path | None = None,
                source: str | Path | None = None) -> Encoded:
    """Tokenize every caption once. Cached under ``cache_dir`` keyed by the data file's sha256, the
    tokenizer and the settings, so the cache is never stale and never written beside the input."""
    key = None
    if cache_dir is not None and source is not None and Path(source).is_file():
        # the records too: a seeded split of one file gives different caption sets with the same file hash
        records = json.dumps([(c["image_id"], c["caption"], c.get("style"), c["clip_embedding"])
                              for c in data["captions"]], ensure_ascii=False)
        settings = json.dumps([tok.style_mode, tok.styles, tok.prompt_template, tok.legacy_clipcap, max_len,
                               hashlib.sha256(records.encode()).hexdigest()])
        key = hashlib.sha256((sha256_file(source) + _tokenizer_key(tok) + settings).encode()).hexdigest()[:24]
        path = Path(cache_dir) / f"tokens_{key}.pt"
        if path.is_file():
            enc = Encoded(**torch.load(path, weights_only=True))
            logger.info(f"tokens: loaded from cache {path.name}")
            return enc
    caps = data["captions"]
    unknown = {c.get("style") for c in caps} - set(tok.style_index) if tok.style_mode != "none" else set()
    if unknown:  # never silently style 0: drop_unknown_styles runs first, so this is a bug if it happens
        raise UserError(f"styles unknown to the model in {source or 'the data'}: {sorted(map(str, unknown))[:5]}")
    ids = tok.encode_captions([c["caption"] for c in caps])
    truncated = 0
    tokens, n_ctx = [], []
    for c, cap_ids in zip(caps, ids):
        limit = max_len if tok.legacy_clipcap else max_len + 1  # caption tokens + END
        if len(cap_ids) > limit:
            truncated += 1
            cap_ids = cap_ids[:max_len] + ([] if tok.legacy_clipcap else [tok.eos_id])
        ctx = tok.context_ids(c.get("style")) if tok.style_mode in ("token", "prompt") else []
        tokens.append(ctx + cap_ids)
        n_ctx.append(len(ctx))
    style_ids = [tok.style_index.get(c.get("style"), 0) for c in caps]
    offsets = torch.zeros(len(tokens) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor([len(t) for t in tokens], dtype=torch.long).cumsum(0)
    flat = torch.tensor([i for t in tokens for i in t], dtype=torch.int32)
    enc = Encoded(torch.tensor([c["clip_embedding"] for c in caps], dtype=torch.long),
                  torch.tensor(style_ids, dtype=torch.long), flat, offsets,
                  torch.tensor(n_ctx, dtype=torch.long), truncated)
    if truncated:
        logger.warning(f"{truncated} of {len(caps)} captions were longer than --max_len {max_len} tokens and truncated")
    if key is not None:
        atomic_torch_save(dict(vars(enc)), Path(cache_dir) / f"tokens_{key}.pt")
    return enc


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
