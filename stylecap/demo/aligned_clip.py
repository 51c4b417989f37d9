"""A small CLIP whose image and text embeddings align on the demo data: contrastive training on the CPU.

The demo's ``small_clip.pt`` has random weights, so its image and text embeddings are unrelated. This
module trains the same class and shape (openai-clip ``clip.model.CLIP`` with ``SMALL_CLIP``, so every
loader works unchanged) on the demo's PersonalityCaptions-format images and their PLAIN captions
(stylecap.demo.content.en_captions, recovered from the styled captions on disk), with the standard
symmetric InfoNCE loss (open_clip's ``ClipLoss``), and measures zero-shot retrieval on the test split.

    write_aligned_clip(data_dir, out)   train, or reuse out when its sidecar (out.json) matches the data
                                        and the settings; the file is an fp16 state dict like small_clip.pt
    retrieval_accuracy(clip, data_dir)  image->text and text->image top-1/top-5, with chance levels

``scripts/make_small_models.py --aligned_data data/demo/personality`` writes pre_model/small_clip_aligned.pt;
``python -m stylecap.demo.aligned_clip`` prints the retrieval figures (docs/demo.md).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from stylecap.clip_utils import _import_clip, load_clip, open_image
from stylecap.cpu import one_thread
from stylecap.demo.content import BACKGROUNDS, BIG, COLOURS, SHAPES, en_captions
from stylecap.demo.small_models import SMALL_CLIP
from stylecap.utils import UserError, atomic_write, atomic_write_json, run_main, sha256_file

VERSION = 1  # bump when the training recipe changes: cached files are then retrained
ATTRS = ("size", "colour", "shape", "bg")


@dataclass(frozen=True)
class AlignSettings:
    """The training recipe; every field goes into the sidecar (a change retrains)."""
    steps: int = 400          # optimiser steps: ~2.5 min on this project's 2 CPU cores under load 12 (docs/demo.md)
    batch_size: int = 64      # images of distinct contents (the demo has 108): see DistinctContentBatches
    lr: float = 3e-3          # AdamW peak; linear warm-up then cosine decay to 0
    warmup: int = 50
    weight_decay: float = 0.1
    insert_words: float = 0.5  # share of captions that get 1-3 random tokens inserted (see insert_random_words)
    seed: int = 0


# ----------------------------------------------------------------------------- data
_SIZE_OF = {v: k for k, v in BIG.items()}  # styled captions say "little"/"big"


def content_from_caption(text: str) -> dict:
    """The demo content (size, colour, shape, bg) that a demo caption names, e.g. from
    "a lonely little red circle fading on a cold gray background". Raises ValueError if it names
    no, or more than one, value of an attribute (not a demo caption)."""
    words = re.findall(r"[a-z]+", text.lower())
    vocab = {"size": set(_SIZE_OF) | set(BIG), "colour": set(COLOURS), "shape": set(SHAPES), "bg": set(BACKGROUNDS)}
    out = {}
    for attr, values in vocab.items():
        found = sorted({w for w in words if w in values})
        if len(found) != 1:
            raise ValueError(f"caption {text!r} names {found or 'no'} {attr}; not a demo caption")
        out[attr] = _SIZE_OF.get(found[0], found[0])
    return out


def read_split(data_dir: Path, split: str) -> list[tuple[Path, dict]]:
    """[(image file, content)] of one split of a demo PersonalityCaptions folder (personality_captions/,
    yfcc_images/), in file order. The content comes from the record's comment. UserError when the folder
    is not one (missing files, captions that are not the demo's)."""
    data_dir = Path(data_dir)
    path = data_dir / "personality_captions" / f"{split}.json"
    hint = "pass a folder written by scripts/make_demo_data.py, e.g. data/demo/personality"
    if not path.is_file():
        raise UserError(f"{path} not found: {data_dir} is not a demo PersonalityCaptions folder; {hint}")
    try:
        items = [(data_dir / "yfcc_images" / f"{r['image_hash']}.jpg", content_from_caption(r["comment"]))
                 for r in json.loads(path.read_text(encoding="utf-8"))]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a demo caption file ({e}); {hint}") from None
    missing = [p for p, _ in items if not p.is_file()]
    if missing:
        raise UserError(f"{len(missing)} images of {path} are missing, e.g. {missing[0]}; {hint}")
    return items


def data_fingerprint(items: list[tuple[Path, dict]]) -> str:
    """sha256 over the training images' bytes and contents: any change to the demo data retrains."""
    h = hashlib.sha256()
    for path, content in items:
        h.update(path.name.encode() + b"\0" + json.dumps(content, sort_keys=True).encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def load_pixels(paths: list[Path], preprocess) -> torch.Tensor:
    """(N, 3, R, R) uint8: CLIP's preprocess without its Normalize (ToTensor's x/255 is exact in uint8),
    decoded as the extractors decode (open_image). 150 KB an image instead of 600 KB in fp32."""
    to_tensor = type(preprocess)(preprocess.transforms[:-1])
    return torch.stack([(to_tensor(open_image(p)) * 255).round().to(torch.uint8) for p in paths])


def normalise(pixels: torch.Tensor, preprocess) -> torch.Tensor:
    """uint8 (B, 3, R, R) -> CLIP's normalised fp32 input, equal to preprocess(image)."""
    norm = preprocess.transforms[-1]
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)
    return (pixels.float() / 255 - mean) / std


def encode_image_uint8(model, pixels: torch.Tensor, preprocess) -> torch.Tensor:
    """model.encode_image(normalise(pixels)) with the per-channel normalisation folded into the patch
    convolution (it is linear, without bias): conv(W, (x/255 - m)/s) = conv(W/(255 s), x) - sum(W m/s).
    Normalising 128 images on the CPU cost more than the whole forward pass; this reads the uint8 once.
    pixels: (B, 3, R, R) uint8 -> (B, embed_dim); equal up to float summation order (tested)."""
    norm, v = preprocess.transforms[-1], model.visual
    mean, std = torch.tensor(norm.mean).view(1, 3, 1, 1), torch.tensor(norm.std).view(1, 3, 1, 1)
    weight = v.conv1.weight / (255 * std)                                   # (W, 3, P, P)
    bias = -(v.conv1.weight * (mean / std)).sum(dim=(1, 2, 3))              # (W,)
    x = F.conv2d(pixels.float(), weight, bias, stride=v.conv1.stride)      # (B, W, grid, grid)
    x = x.flatten(2).permute(0, 2, 1)                                       # (B, grid**2, W)
    cls = v.class_embedding.expand(x.shape[0], 1, -1)                       # (B, 1, W)
    x = v.ln_pre(torch.cat([cls, x], dim=1) + v.positional_embedding)       # (B, grid**2 + 1, W)
    x = v.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)                  # LND in openai-clip's blocks
    return v.ln_post(x[:, 0, :]) @ v.proj                                   # (B, embed_dim)


# ----------------------------------------------------------------------------- training
def encode_text_prefix(model, tokens: torch.Tensor) -> torch.Tensor:
    """model.encode_text(tokens) computed on the first L = (last EOT position + 1) of the 77 positions.
    The text transformer is causal, so positions before the EOT never see the padding after it: the
    result is the same (up to float summation order), at about L/77 of the cost (L is ~12 here).
    tokens: (B, 77) -> (B, embed_dim)."""
    eot = tokens.argmax(dim=-1)                                        # (B,) EOT has the largest id
    length = int(eot.max()) + 1
    x = model.token_embedding(tokens[:, :length]) + model.positional_embedding[:length]  # (B, L, W)
    x = x.permute(1, 0, 2)                                             # (L, B, W) as openai-clip's blocks
    for block in model.transformer.resblocks:
        mask = block.attn_mask[:length, :length].to(x.dtype)           # the causal mask's top-left corner
        x = x + block.attn(*(block.ln_1(x),) * 3, need_weights=False, attn_mask=mask)[0]
        x = x + block.mlp(block.ln_2(x))
    x = model.ln_final(x.permute(1, 0, 2))                             # (B, L, W)
    return x[torch.arange(x.shape[0]), eot] @ model.text_projection    # (B, embed_dim)


def _lr_at(step: int, s: AlignSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train_aligned_clip(items: list[tuple[Path, dict]], settings: AlignSettings = AlignSettings(),
                       log: Callable[[str], None] = print):
    """Train clip.model.CLIP(**SMALL_CLIP) from its seeded initialisation on (image, plain caption) pairs.

    Each step draws ``batch_size`` images (a seeded permutation per epoch) and, for each, one of its five
    plain captions; the loss is open_clip's ClipLoss (the mean of the image->text and text->image
    cross-entropies over the batch's cosine-similarity logits, scaled by exp(logit_scale) <= 100).
    Runs on one thread (restored after): deterministic whatever the machine's core count, and on a shared
    CPU 1 thread was ~10x faster than 2 (OpenMP threads spin-wait on busy cores). Returns the fp32 model in
    eval mode."""
    with one_thread():
        return _train(items, settings, log)


def insert_random_words(tokens: torch.Tensor, share: float, gen: torch.Generator, most: int = 3) -> torch.Tensor:
    """A ``share`` of the captions get 1..``most`` random vocabulary tokens inserted at random places between
    start and end of text. The plain captions use ~40 of the 49408 tokens; without this, every other word
    keeps its random embedding, and a sentence with unseen words (a new style's "arr, matey") lands
    away from its content. share 0: tokens unchanged and no random draws (the batches stay as without it).
    tokens: (B, 77) -> (B, 77)."""
    if share <= 0:
        return tokens
    out = tokens.clone()
    sot, eot = tokens[0, 0].item(), tokens.max().item()                    # openai-clip's <|startoftext|>, <|endoftext|>
    for b in range(len(tokens)):
        if torch.rand((), generator=gen).item() >= share:
            continue
        words = tokens[b, 1:int(tokens[b].argmax())].tolist()             # between SOT and EOT
        for _ in range(int(torch.randint(1, most + 1, (), generator=gen))):
            pos = int(torch.randint(0, len(words) + 1, (), generator=gen))
            words.insert(pos, int(torch.randint(0, sot, (), generator=gen)))  # any token but the two specials
        row = [sot] + words[:tokens.shape[1] - 2] + [eot]
        out[b] = 0
        out[b, :len(row)] = torch.tensor(row)
    return out


class DistinctContentBatches:
    """Batches of images with pairwise different contents. The demo has only 108 contents (6 colours x
    2 sizes x 3 shapes x 3 backgrounds), so a random batch of 64 holds ~19 pairs with the same content,
    whose captions InfoNCE would push apart as negatives (false negatives). Each batch takes
    min(batch_size, contents) contents at random, then one random image of each (seeded generator)."""

    def __init__(self, items: list[tuple[Path, dict]], batch_size: int, gen: torch.Generator):
        groups: dict[str, list[int]] = {}
        for i, (_, content) in enumerate(items):
            groups.setdefault(json.dumps(content, sort_keys=True), []).append(i)
        self.groups = [torch.tensor(groups[k]) for k in sorted(groups)]
        self.size, self.gen = min(batch_size, len(self.groups)), gen

    def next(self) -> torch.Tensor:
        picked = torch.randperm(len(self.groups), generator=self.gen)[:self.size].tolist()
        return torch.stack([g[torch.randint(0, len(g), (1,), generator=self.gen)[0]]
                            for g in (self.groups[i] for i in picked)])


def _train(items: list[tuple[Path, dict]], settings: AlignSettings, log: Callable[[str], None]):
    from open_clip.loss import ClipLoss
    clip = _import_clip()
    torch.manual_seed(settings.seed)
    model = clip.model.CLIP(**SMALL_CLIP).float().train()
    preprocess = clip.clip._transform(model.visual.input_resolution)
    pixels = load_pixels([p for p, _ in items], preprocess)                 # (N, 3, 224, 224) uint8
    tokens = torch.stack([clip.tokenize(en_captions(c)) for _, c in items])  # (N, 5, 77)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=settings.lr)
    loss_fn, gen = ClipLoss(), torch.Generator().manual_seed(settings.seed)
    batches, t0 = DistinctContentBatches(items, settings.batch_size, gen), time.perf_counter()
    for step in range(settings.steps):
        idx = batches.next()                                                  # (B,) image indices
        which = torch.randint(0, tokens.shape[1], (len(idx),), generator=gen)  # one of its 5 captions each
        img = F.normalize(encode_image_uint8(model, pixels[idx], preprocess), dim=-1)     # (B, 512)
        text = insert_random_words(tokens[idx, which], settings.insert_words, gen)        # (B, 77)
        txt = F.normalize(encode_text_prefix(model, text), dim=-1)                         # (B, 512)
        loss = loss_fn(img, txt, model.logit_scale.exp())
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, settings)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # as CLIP: the temperature never goes below 0.01
        if step % 100 == 0 or step == settings.steps - 1:
            log(f"aligned CLIP step {step + 1}/{settings.steps}: loss {loss.item():.3f} "
                f"({time.perf_counter() - t0:.0f} s)")
    return model.eval()


def fp16_state_dict(model) -> dict:
    """The state dict in fp16 storage, as small_clip.pt and OpenAI's files: load_clip's fp32 copy of it
    is then exactly what was saved (the weights rounded once, here)."""
    import copy
    clip = _import_clip()
    half = copy.deepcopy(model)
    clip.model.convert_weights(half)
    return half.state_dict()


def write_aligned_clip(data_dir: Path, out: Path, settings: AlignSettings = AlignSettings(), force: bool = False,
                       log: Callable[[str], None] = print) -> bool:
    """Train on data_dir's train split and save to ``out`` (fp16 state dict) with a sidecar ``out``.json
    recording the data fingerprint, the recipe, SMALL_CLIP and the weights' sha256. -> False (nothing
    done) when both are there and match; True when (re)trained."""
    out, sidecar = Path(out), Path(out).with_suffix(".json")
    items = read_split(Path(data_dir), "train")
    want = {"version": VERSION, "clip": SMALL_CLIP, "settings": asdict(settings),
            "data": {"split": "train", "images": len(items), "sha256": data_fingerprint(items)}}
    if not force and out.is_file() and sidecar.is_file():
        have = json.loads(sidecar.read_text())
        if {k: have.get(k) for k in want} == want and have.get("weights_sha256") == sha256_file(out):
            return False
    t0 = time.perf_counter()
    model = train_aligned_clip(items, settings, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()  # saved from memory: torch names the zip's folder after a file, and the atomic
    torch.save(fp16_state_dict(model), buf)  # write's temporary name differs each time -> same bytes now
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
    record = {**want, "data_dir": str(data_dir), "weights_sha256": sha256_file(out), "train_seconds": round(time.perf_counter() - t0, 1),
              "threads": 1}
    atomic_write_json(sidecar, record)
    return True


# ----------------------------------------------------------------------------- zero-shot retrieval
def _hit_chance(n: int, m: int, k: int) -> float:
    """P(at least one of m relevant among n items is in a random top-k) = 1 - C(n-m, k) / C(n, k)."""
    return 1.0 - math.comb(n - m, k) / math.comb(n, k) if k < n else 1.0


def retrieval_accuracy(clip_path: str | Path, data_dir: str | Path, split: str = "test",
                       queries: list[str] | None = None) -> dict:
    """Zero-shot retrieval between the split's images and the distinct plain captions of their contents
    (en_captions' first template, "a {size} {colour} {shape} on a {bg} background"), with the model as
    load_clip loads it (the features make demo extracts come from the same model).

    image->text: each of the N images ranks the K distinct captions; a hit when its own content's caption
    is in the top k (chance k/K). text->image: each caption ranks the N images; a hit when an image of that
    content is in the top k (chance 1 - C(N-m, k)/C(N, k) for m such images, averaged). Also the share of
    images whose top-1 caption names each attribute right. ``queries``: other sentences (e.g. the Pirate
    corpus) to rank the images with, scored the same way as text->image ("query->image"); only the queries
    whose content is among the split's images count."""
    with one_thread():
        return _retrieval(clip_path, data_dir, split, queries)


@torch.no_grad()
def _retrieval(clip_path: str | Path, data_dir: str | Path, split: str, queries: list[str] | None) -> dict:
    model, preprocess, _ = load_clip(str(clip_path))
    items = read_split(Path(data_dir), split)
    contents = [c for _, c in items]
    keys = sorted({json.dumps(c, sort_keys=True) for c in contents})
    captions = [en_captions(json.loads(k))[0] for k in keys]                     # K distinct captions
    label = torch.tensor([keys.index(json.dumps(c, sort_keys=True)) for c in contents])  # (N,)
    img = F.normalize(model.encode_image(normalise(load_pixels([p for p, _ in items], preprocess), preprocess)), dim=-1)
    clip = _import_clip()
    txt = F.normalize(model.encode_text(clip.tokenize(captions)), dim=-1)       # (K, 512)
    sim = img @ txt.T                                                              # (N, K)
    n, k_all = sim.shape
    m = torch.bincount(label, minlength=k_all)                                     # images per caption
    out = {"split": split, "images": n, "captions": k_all}
    for k in (1, 5):
        top_t = sim.topk(min(k, k_all), dim=1).indices                             # (N, k)
        out[f"image_to_text_top{k}"] = (top_t == label[:, None]).any(1).float().mean().item()
        out[f"image_to_text_top{k}_chance"] = min(k, k_all) / k_all
        top_i = sim.T.topk(min(k, n), dim=1).indices                               # (K, k)
        out[f"text_to_image_top{k}"] = (label[top_i] == torch.arange(k_all)[:, None]).any(1).float().mean().item()
        out[f"text_to_image_top{k}_chance"] = sum(_hit_chance(n, int(mi), k) for mi in m) / k_all
    best = sim.argmax(1)
    for attr in ATTRS:
        out[f"top1_{attr}_right"] = sum(json.loads(keys[b])[attr] == c[attr]
                                        for b, c in zip(best.tolist(), contents)) / n
    if queries:  # only those whose content some image of the split shows: the others cannot be hit
        kept = [(q, c) for q in queries for c in [content_from_caption(q)] if c in contents]
        q_content = [c for _, c in kept]
        qsim = F.normalize(model.encode_text(clip.tokenize([q for q, _ in kept], truncate=True)), dim=-1) @ img.T
        out["queries"] = len(kept)                                                  # qsim: (Q, N)
        for k in (1, 5):
            top = qsim.topk(min(k, n), dim=1).indices.tolist()
            out[f"query_to_image_top{k}"] = sum(any(contents[i] == c for i in t)
                                                for t, c in zip(top, q_content)) / max(1, len(kept))
            out[f"query_to_image_top{k}_chance"] = sum(
                _hit_chance(n, sum(c == x for x in contents), k) for c in q_content) / max(1, len(kept))
    return out


def summary(r: dict, name: str) -> str:
    """A few lines for the terminal: each direction's top-1 / top-5 next to its chance level."""
    lines = [f"zero-shot retrieval of {name} on the {r['split']} split ({r['images']} images, "
             f"{r['captions']} distinct plain captions)"]
    for d in ("image_to_text", "text_to_image", "query_to_image"):
        if f"{d}_top1" in r:
            lines.append(f"  {d.replace('_to_', '->'):14s} " + ("" if d != "query_to_image" else
                                                                  f"({r['queries']} queries) ") + ", ".join(
                f"top-{k} {100 * r[f'{d}_top{k}']:5.1f}% (chance {100 * r[f'{d}_top{k}_chance']:4.1f}%)" for k in (1, 5)))
    lines.append("  top-1 caption names the image's " + ", ".join(
        f"{a} {100 * r[f'top1_{a}_right']:.0f}%" for a in ATTRS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Zero-shot retrieval of a CLIP on the demo data's test split "
                                     "(the aligned demo CLIP; compare with the random small_clip.pt)")
    parser.add_argument("--clip_model_path", default="pre_model/small_clip_aligned.pt", help="the CLIP to score")
    parser.add_argument("--data_path", default="data/demo/personality",
                        help="a demo PersonalityCaptions folder (personality_captions/, yfcc_images/)")
    parser.add_argument("--split", default="test", help="train, val or test")
    parser.add_argument("--queries", default=None,
                        help="optional .txt of demo-content sentences (one a line), e.g. the Pirate test corpus, "
                             "also ranked against the images")
    parser.add_argument("--output", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    queries = None
    if args.queries:
        queries = [l for l in Path(args.queries).read_text(encoding="utf-8").splitlines() if l.strip()]
    result = retrieval_accuracy(args.clip_model_path, args.data_path, args.split, queries)
    print(summary(result, args.clip_model_path))
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    run_main(main)
