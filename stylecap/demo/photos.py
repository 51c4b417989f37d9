"""Photo-like synthetic images: smooth gradients, soft shapes, fine texture and sensor noise.

JPEG's cost and its reduced-scale (draft) decoding depend on high-frequency content, so flat demo
images would understate what --fast_jpeg_decode changes; these have the detail of a real photo.
Used by bench/decode_fidelity.py and the extraction tests.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo_like(seed: int, width: int, height: int) -> Image.Image:
    """A seeded RGB image of ``width`` x ``height`` with photo-like statistics."""
    rng = np.random.default_rng(seed)
    # work at <= 1024 px on the long side, then upscale: fast for 3000x2000, and smooth like optics
    scale = max(1.0, max(width, height) / 1024)
    w, h = max(8, round(width / scale)), max(8, round(height / scale))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = x / w, y / h
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):  # low-frequency "lighting": a few random sinusoids per channel
        base = rng.uniform(60, 190)
        for _ in range(3):
            fx, fy, ph = rng.uniform(0.3, 3.0), rng.uniform(0.3, 3.0), rng.uniform(0, 2 * np.pi)
            base = base + rng.uniform(10, 40) * np.sin(2 * np.pi * (fx * x + fy * y) + ph)
        img[..., c] = base
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(4, 10))):  # objects: ellipses and boxes with random colours
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        x1, y1 = x0 + rng.uniform(0.05, 0.5) * w, y0 + rng.uniform(0.05, 0.5) * h
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    pil = pil.filter(ImageFilter.GaussianBlur(radius=1.2))
    if (w, h) != (width, height):
        pil = pil.resize((width, height), Image.Resampling.BICUBIC)
    arr = np.asarray(pil, dtype=np.float32)
    # texture at full resolution: a blurred noise field (foliage, fabric) plus per-pixel sensor noise
    tex = Image.fromarray(rng.normal(128, 40, (height, width)).clip(0, 255).astype(np.uint8))
    tex = np.asarray(tex.filter(ImageFilter.GaussianBlur(radius=1.0)), dtype=np.float32) - 128
    arr = arr + 0.35 * tex[..., None] + rng.normal(0, 3.0, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def save_jpeg(img: Image.Image, path: str | Path, quality: int = 90, **kw) -> Path:
    img.save(path, "JPEG", quality=quality, **kw)
    return Path(path)
