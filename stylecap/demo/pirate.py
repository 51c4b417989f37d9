"""A generated text-only corpus for a new style, "Pirate": the demo's content in a pirate voice.

No image has a Pirate caption: the style is meant to be learned from text alone (issue 19, CapDec-style
training on CLIP text embeddings). Each sentence names one demo content (stylecap.demo.content) with the
same words and order as the demo's styled captions ("{big} {colour} {shape} on {bg}", e.g. "little red
circle on gray"), so its content words overlap theirs, and at least two marker words of ``MARKERS``, which
no other demo caption contains (tested), so the "marker rate" of a style's captions measures the style.

    pirate_captions(content)           the five Pirate wordings of one content
    pirate_corpus(seed, n_train, n_test)  {"train": [...], "test": [...]} sentences, seeded
    write_pirate_corpus(out, ...)      out/train.txt and out/test.txt, one sentence a line
    marker_rate(captions)              share of captions with at least one marker word

``python -m stylecap.demo.pirate --out data/demo/pirate`` writes the corpus. Same seed -> same bytes.
"""
from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

from stylecap.demo.content import BIG, sample_content
from stylecap.utils import atomic_write_text

STYLE = "Pirate"
MARKERS = ("arr", "matey", "ye", "aboard", "ahoy", "hearties", "treasure", "scurvy")

# Five wordings, each with "{s} on {bg}" as in the demo's styled captions and >= 2 markers.
TEMPLATES = (
    "arr, a {s} on {bg}, matey!",
    "ahoy! ye spy a {s} on {bg} from aboard",
    "arr matey, that {s} on {bg} be me treasure",
    "a {s} on {bg}, ye scurvy dogs, all aboard!",
    "ahoy hearties, there be a {s} on {bg}, arr!",
)


def pirate_captions(content: dict) -> list[str]:
    """The five Pirate sentences about one demo content ({"size", "colour", "shape", "bg"})."""
    s = f"{BIG[content['size']]} {content['colour']} {content['shape']}"
    return [t.format(s=s, bg=content["bg"]) for t in TEMPLATES]


def pirate_corpus(seed: int = 0, n_train: int = 1000, n_test: int = 100) -> dict[str, list[str]]:
    """n_train and n_test sentences: per sentence a random content and one of its five wordings.
    Each split has its own seeded stream, so changing one size leaves the other split unchanged."""
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rng = random.Random(f"{seed}-pirate-{split}")
        out[split] = [rng.choice(pirate_captions(sample_content(rng))) for _ in range(n)]
    return out


def write_pirate_corpus(out_dir: str | Path, seed: int = 0, n_train: int = 1000, n_test: int = 100) -> dict[str, Path]:
    """Write out_dir/train.txt and out_dir/test.txt (UTF-8, one sentence a line, atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, lines in pirate_corpus(seed, n_train, n_test).items():
        paths[split] = out / f"{split}.txt"
        atomic_write_text(paths[split], "".join(line + "\n" for line in lines))
    return paths


def marker_rate(captions: list[str], markers: tuple[str, ...] = MARKERS) -> float:
    """Share of captions containing at least one marker as a whole word ("ye" counts, "yellow" not)."""
    if not captions:
        return 0.0
    wanted = set(markers)
    return sum(bool(wanted & set(re.findall(r"[a-z]+", c.lower()))) for c in captions) / len(captions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the Pirate text-only corpus (train.txt, test.txt)")
    parser.add_argument("--out", default="data/demo/pirate", help="folder for train.txt and test.txt")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical files")
    parser.add_argument("--n_train", type=int, default=1000, help="training sentences")
    parser.add_argument("--n_test", type=int, default=100, help="test sentences")
    args = parser.parse_args(argv)
    if min(args.n_train, args.n_test) < 1:
        parser.error("--n_train and --n_test must be >= 1")
    for split, path in write_pirate_corpus(args.out, args.seed, args.n_train, args.n_test).items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())  # no UserError to report: bad flags are argparse's
