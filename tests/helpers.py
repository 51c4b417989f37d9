"""Test helpers: small synthetic feature files whose captions depend on the feature and the style."""
from __future__ import annotations

from pathlib import Path

import torch

from stylecap.features import save_features

COLOURS = ["red", "blue", "green", "yellow"]
STYLES = ["Happy", "Gloomy", "Cynical (Doubtful, Skeptical)"]
PHRASE = {"Happy": "yay! a {} circle!", "Gloomy": "a sad {} circle", "Cynical (Doubtful, Skeptical)": "sure, a {} circle"}


def synthetic_features(path: Path, n_images: int = 36, styled: bool = True, seed: int = 0,
                       dtype: torch.dtype = torch.float32) -> Path:
    """Feature i carries its colour in dims 0..3; the caption names the colour in the style's words."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n_images, 512, generator=g)
    caps = []
    for i in range(n_images):
        c = i % len(COLOURS)
        emb[i, c] += 6.0
        style = STYLES[(i // len(COLOURS)) % len(STYLES)] if styled else None
        text = PHRASE[style].format(COLOURS[c]) if styled else f"a {COLOURS[c]} circle"
        rec = {"image_id": f"img{i:03d}", "caption": text, "clip_embedding": i}
        if styled:
            rec["style"] = style
        caps.append(rec)
    save_features(path, {"clip_embedding": emb.to(dtype), "captions": caps, "meta": {"synthetic": True}})
    return path
