"""Synthetic workloads of the benchmarks: templated and COCO-like captions, Flickr-size JPEGs, and the brief
training that makes a random-weight model end its captions at a realistic length (``train_to_stop``)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.decoding import DecodeConfig, eval_mode, generate_captions
from stylecap.demo.content import render, sample_content

_SUBJ = ["a man", "a woman", "two dogs", "a small child", "a group of people", "an old man", "a young girl",
         "a brown horse", "three boys", "a cat", "a surfer", "a skier", "the players", "a chef", "a bird"]
_VERB = ["is riding", "is sitting on", "walks along", "plays near", "stands next to", "looks at", "jumps over",
         "is holding", "runs across", "rests beside", "waits by", "climbs"]
_OBJ = ["a bicycle", "the beach", "a wooden bench", "a red car", "the green grass", "a large rock", "the street",
        "a white fence", "the snowy hill", "a tall building", "the river", "a blue umbrella"]
_TAIL = ["in the park", "on a sunny day", "at night", "in the city", "near the water", "with a friend",
         "under a tree", "in front of a crowd", "during the winter", "while smiling at the camera"]
_WORDS = ("a an the man woman dog cat people group street table plate food pizza train bus sitting standing "
          "walking holding white black red blue green large small two young next near front top side room "
          "water field grass tree building car truck player ball game sky snow beach park kitchen").split()


def stop_training_data(n: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """n random CLIP-like features and n templated captions of 6-18 words."""
    rng = random.Random(seed)
    caps = []
    for _ in range(n):
        parts = [rng.choice(_SUBJ), rng.choice(_VERB), rng.choice(_OBJ)]
        parts += rng.sample(_TAIL, rng.randint(0, 2))
        caps.append(" ".join(parts))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 512, generator=g) * 0.5, caps


def train_to_stop(model, feats: torch.Tensor, captions: list[str], steps: int, lr: float,
                  precision: str = "bf16", styles: list[str | None] | None = None, top_blocks: int | None = None,
                  until=None, check_every: int = 10, min_steps: int = 0) -> tuple[float, int]:
    """Briefly train the model on a few captions (with their styles, if any) so that greedy/beam decoding ends
    with END at a realistic length instead of running to the token limit. -> (last loss, steps done).

    ``top_blocks`` None trains everything (mapper + GPT-2); n trains only GPT-2's last n blocks and final
    LayerNorm, which is several times cheaper per step: no weight gradients below them, and AdamW over a few
    million parameters instead of the whole model. ``until()`` (checked every ``check_every`` steps from
    ``min_steps`` on, model in eval mode) ends training early when it returns True."""
    from stylecap.train.data import collate
    from stylecap.train.engine import autocast_ctx
    tok = model.tokenizer
    styles = styles if styles is not None else [None] * len(captions)
    ids = tok.encode_captions(captions)
    rows = []
    for i, (cap_ids, style) in enumerate(zip(ids, styles)):
        ctx = tok.context_ids(style) if tok.adds_context else []
        rows.append((feats[i], torch.tensor(model.style_id(style)), ctx + cap_ids, len(ctx)))
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate(rows, pad_id=tok.pad_id).items()}
    if top_blocks is None:
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        mods = [*model.gpt.transformer.h[-top_blocks:], model.gpt.transformer.ln_f]
        params = [p for m in mods for p in m.parameters()]
    was = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    loss, step = torch.tensor(float("nan")), 0
    try:
        for step in range(1, steps + 1):
            model.train()
            with autocast_ctx(device, precision):
                loss = model(batch["features"], batch["style_ids"], batch["input_ids"], batch["attention_mask"],
                             batch["labels"]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if until is not None and step >= min_steps and step % check_every == 0:
                with eval_mode(model):
                    if until():
                        break
    finally:
        for p, r in was.items():
            p.requires_grad_(r)
        model.eval()
    return float(loss.item()), step


def ends_like(model, feats: torch.Tensor, captions: list[str], slack: int = 3) -> bool:
    """Greedy captions of ``feats`` all end with END, none longer than the longest training caption + slack."""
    longest = max(len(t) for t in model.tokenizer.encode_captions(captions))
    with eval_mode(model):
        out = generate_captions(model, feats, None, DecodeConfig(max_len=longest + slack), with_scores=False)
    return all(o[0]["tokens"] and o[0]["tokens"][-1] == model.tokenizer.eos_id for o in out)


def coco_like_captions(n: int, seed: int = 0) -> list[str]:
    """Captions whose word counts follow COCO's (mean 10.5, sd 2.4, at least 6) with a 0.5% tail of 20-40-word
    captions, as real caption sets have: what ClipCap's fixed length (mean + 10 std) is computed from."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(20, 40) if rng.random() < 0.005 else max(6, round(rng.gauss(10.5, 2.4)))
        out.append(" ".join(rng.choice(_WORDS) for _ in range(k)) + ".")
    return out


def make_images(folder: Path, n: int, seed: int = 0, size=(500, 375)) -> list[Path]:
    """n JPEGs of Flickr30k's typical size (500 x 375, quality 90): a shape on a noisy background."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = render(sample_content(rng), rng, size=size)
        arr = np.asarray(img).astype(np.int16) + nrng.integers(-20, 21, (size[1], size[0], 3), dtype=np.int16)
        p = folder / f"{i:06d}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(p, "JPEG", quality=90)
        paths.append(p)
    return paths
