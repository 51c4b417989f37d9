r"""Sweep a blend of two styles, and the style strength, over a feature file's images, with one loaded model.

    .venv/bin/python scripts/style_sweep.py --model_path output/<run> --features test.pkl --styles Happy Gloomy \
        --weights 0 0.25 0.5 0.75 1 --scales 0 0.5 1 2

For each setting ("A:w,B:1-w" at scale 1, then A alone at each scale) it prints, over the images: the share
of captions equal to A's own caption (A at scale 1), the share equal to B's, and an example (the first
image's caption). --markers gives a word per style: the share of captions holding each word is added.
Greedy decoding, the code predict.py runs (stylecap.eval.captioning.caption_items).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import load_model  # noqa: E402
from models.decoding import DecodeConfig  # noqa: E402
from stylecap.eval.captioning import caption_items, checkpoint_path, parse_style  # noqa: E402
from stylecap.features import load_features  # noqa: E402
from stylecap.utils import run_main  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model_path", required=True, help="a StyleCap checkpoint (style_mode embedding or token) or its run folder")
    a("--features", required=True, help="a feature file: every image is captioned in every setting")
    a("--styles", nargs=2, required=True, metavar=("A", "B"), help="the two styles to blend")
    a("--weights", nargs="+", type=float, default=[0, 0.25, 0.5, 0.75, 1], help="weights of A (B gets 1 - w)")
    a("--scales", nargs="+", type=float, default=[0, 0.5, 1, 2], help="strengths of A alone")
    a("--markers", nargs=2, metavar=("WORD_A", "WORD_B"), help="a word typical of each style: its share is shown")
    a("--device", default="cpu", help="cpu, cuda ...")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    path, _ = checkpoint_path(args.model_path)
    model = load_model(path, device=args.device)
    data = load_features(args.features)
    images = list(dict.fromkeys(c["image_id"] for c in data["captions"]))
    row = {c["image_id"]: c["clip_embedding"] for c in data["captions"]}
    a, b = args.styles
    settings = [f"{a}:{w:g},{b}:{1 - w:g}" if 0 < w < 1 else (a if w == 1 else b) for w in args.weights]
    specs = [(s, parse_style(model.cfg, s)) for s in settings]
    specs += [(f"{a} x{s:g}", parse_style(model.cfg, a, s)) for s in args.scales if s != 1]
    caps = {}
    for label, style in specs + [("A", parse_style(model.cfg, a)), ("B", parse_style(model.cfg, b))]:
        preds = caption_items(model, data["clip_embedding"], [(i, row[i], style) for i in images], DecodeConfig())
        caps[label] = [p["caption"] for p in preds]
    head = ["setting", f"= {a}'s", f"= {b}'s"] + ([f"'{m}'" for m in args.markers] if args.markers else [])
    print("| " + " | ".join(head + ["first image's caption"]) + " |")
    print("|" + "---|" * (len(head) + 1))
    for label, _ in specs:
        c = caps[label]
        share = lambda ref: f"{sum(x == y for x, y in zip(c, ref)) / len(c):.0%}"
        marks = [f"{sum(m in x.lower() for x in c) / len(c):.0%}" for m in args.markers] if args.markers else []
        print("| " + " | ".join([f"`{label}`", share(caps["A"]), share(caps["B"]), *marks, c[0]]) + " |")
    print(f"\n{len(images)} images, greedy; {model.cfg.style_mode} mode")
    return 0


if __name__ == "__main__":
    run_main(main)
