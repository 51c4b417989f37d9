"""The demo's synthetic content: one coloured shape on a plain background, and its captions.

Every image is one coloured shape on a plain background. Captions are built mainly from COLOUR, SIZE and
BACKGROUND because those are what a linear probe on a *random-weight* small CLIP recovers reliably (colour
0.97, size 0.89, background 1.00 measured); the shape (0.65) is mentioned too, in a fixed slot. Templates
keep the grammar regular so a tiny GPT-2 can learn them in minutes: five English (Flickr-style) and five
Chinese paraphrases, and five per demo personality. All randomness comes from the caller's seeded
random.Random, so the same seed gives the same images and captions.
"""
from __future__ import annotations

import io
import random
import re

from PIL import Image, ImageDraw

IMG_SIZE = 224
JPEG_QUALITY = 90

# Shape colours are saturated and kept away from the (white/black/gray) backgrounds.
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220),
           "yellow": (240, 220, 30), "purple": (140, 40, 180), "orange": (250, 140, 20)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128)}
SIZES = {"small": 25, "large": 80}  # radius in px: very different on purpose
SHAPES = ("circle", "square", "triangle")

ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色",
      "orange": "橙色", "white": "白色", "black": "黑色", "gray": "灰色",
      "small": "小", "large": "大", "circle": "圆形", "square": "正方形", "triangle": "三角形"}

# Five Flickr-style paraphrases; content words always in the same order.
EN_TEMPLATES = (
    "a {size} {colour} {shape} on a {bg} background",
    "a {big} {colour} {shape} sits on {bg}",
    "there is a {size} {colour} {shape} against a {bg} backdrop",
    "a plain {bg} background with a {size} {colour} {shape}",
    "the picture shows a {big} {colour} {shape} on {bg}",
)
BIG = {"small": "little", "large": "big"}  # second size word for some wordings
ZH_TEMPLATES = (
    "{bg}背景上有一个{size}的{colour}{shape}",
    "一个{size}{colour}{shape}在{bg}背景上",
    "图中是{bg}背景前的一个{size}的{colour}{shape}",
    "这是一个{size}的{colour}{shape}，背景是{bg}。",
    "{bg}的背景里有一个{size}{colour}{shape}。",
)

# Five demo personalities (exact trait strings). Each has its own marker words
# (Happy: "!", Sarcastic: "oh", "so", Gloomy: "lonely", "sad", Romantic: "heart",
# "love", Cynical: "doubt", "anyone") so a style classifier can separate them,
# and five templates so a test image's five references all differ.
STYLE_TEMPLATES = {
    "Happy": (
        "what a cheerful {s} on {bg}, this makes me so happy!",
        "yay! a {s} on {bg} makes me smile!",
        "such a happy {s} on a bright {bg} background!",
        "a {s} on {bg}, what a wonderful day!",
        "so much fun, a {s} smiling on {bg}!",
    ),
    "Romantic": (
        "a {s} on {bg}, as lovely as a first kiss",
        "my heart melts for this {s} on {bg}",
        "a {s} on {bg}, waiting for its true love",
        "under the moonlight, a {s} dreams on {bg}",
        "a {s} on {bg}, sweet like a love letter",
    ),
    "Sarcastic": (
        "oh great, yet another {s} on {bg}. so original.",
        "wow, a {s} on {bg}. how thrilling.",
        "oh look, a {s} on {bg}, truly groundbreaking art.",
        "a {s} on {bg}? what a shock. never seen that before.",
        "yeah, a {s} on {bg}, because that is so exciting.",
    ),
    "Gloomy": (
        "a lonely {s} fading on a cold {bg} background",
        "a {s} sits alone on {bg}, nothing ever changes",
        "sadly, just a {s} lost on a dull {bg} background",
        "a {s} on {bg}, as empty as my days",
        "even the {s} on {bg} looks tired and sad",
    ),
    "Cynical (Doubtful, Skeptical)": (
        "sure, a {s} on {bg}, as if anyone cares",
        "a {s} on {bg}, i doubt it means anything",
        "supposedly a {s} on {bg}, probably staged",
        "a {s} on {bg}? i am not convinced anyone cares",
        "they call this a {s} on {bg}, i remain doubtful",
    ),
}
STYLES = tuple(STYLE_TEMPLATES)


# ----------------------------------------------------------------------------- content
def sample_content(rng: random.Random) -> dict:
    return {"colour": rng.choice(sorted(COLOURS)), "size": rng.choice(sorted(SIZES)),
            "bg": rng.choice(sorted(BACKGROUNDS)), "shape": rng.choice(SHAPES)}


def render(c: dict, rng: random.Random, size=(IMG_SIZE, IMG_SIZE)) -> Image.Image:
    """One shape on a plain background, with small seeded jitter in position and colour."""
    w, h = size
    scale = min(w, h) / IMG_SIZE
    jit = lambda rgb, d: tuple(max(0, min(255, v + rng.randint(-d, d))) for v in rgb)
    img = Image.new("RGB", size, jit(BACKGROUNDS[c["bg"]], 6))
    r = int(SIZES[c["size"]] * scale)
    margin = int(4 * scale)
    cx, cy = rng.randint(r + margin, w - r - margin), rng.randint(r + margin, h - r - margin)
    fill, draw = jit(COLOURS[c["colour"]], 10), ImageDraw.Draw(img)
    if c["shape"] == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif c["shape"] == "square":
        s = int(r * 0.9)  # same visual area class as the circle
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + int(0.8 * r)), (cx + r, cy + int(0.8 * r))], fill=fill)
    return img


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        kw.setdefault("quality", JPEG_QUALITY)
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def en_captions(c: dict) -> list[str]:
    return [t.format(big=BIG[c["size"]], **c) for t in EN_TEMPLATES]


def zh_captions(c: dict) -> list[str]:
    return [t.format(**{k: ZH[v] for k, v in c.items()}) for t in ZH_TEMPLATES]


def styled_captions(style: str, c: dict) -> list[str]:
    s = f"{BIG[c['size']]} {c['colour']} {c['shape']}"
    return [t.format(s=s, bg=c["bg"]) for t in STYLE_TEMPLATES[style]]


def chinese_charset() -> list[str]:
    """Sorted list of every character any generated Chinese caption can contain
    (punctuation included): the vocab for a character-level BertTokenizer."""
    chars = set()
    for t in ZH_TEMPLATES:
        chars.update(re.sub(r"\{\w+\}", "", t))
    for v in ZH.values():
        chars.update(v)
    return sorted(chars)


# ----------------------------------------------------------------------------- Chinese metrics check
NEAR_REFS = {"a": ["白色背景上有一个小的红色圆形"], "b": ["黑色背景上有一个大的蓝色正方形"]}
NEAR_PREDS = {"a": "白色背景上有一个小的绿色圆形", "b": "黑色背景上有一个大的蓝色三角形"}  # 1 and 2 characters wrong


def zh_reference_set(n: int = 8, seed: int = 0) -> dict[str, list[str]]:
    """n images with different contents, each with the demo's five Chinese references."""
    rng, seen, refs = random.Random(seed), set(), {}
    while len(refs) < n:
        c = sample_content(rng)
        if tuple(sorted(c.items())) not in seen:
            seen.add(tuple(sorted(c.items())))
            refs[f"img{len(refs)}"] = zh_captions(c)
    return refs
