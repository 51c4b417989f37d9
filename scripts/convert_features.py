"""Rewrite a feature file as StyleCap's memory-mapped columns (stylecap/features.py).

    python scripts/convert_features.py OLD.pkl NEW.pt

OLD may be a StyleCap file of the first format, a ClipCap pickle (parse_coco.py / parse_conceptual.py)
or a ClipCap-Chinese pickle; it is read through the restricted unpickler. load_features reads all of
them anyway: converting once makes opening them instant and shareable between processes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stylecap.features import load_features, save_features  # noqa: E402
from stylecap.utils import run_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="feature file or legacy pickle to read")
    p.add_argument("output", help="where to write the columnar file (written atomically)")
    args = p.parse_args(argv)
    data = load_features(args.input)
    save_features(args.output, data)
    print(f"{args.output}: {len(data)} captions, {data.n_images} images x {data.clip_embedding.shape[1]} "
          f"({data.clip_embedding.dtype}), {len(data.styles)} styles")
    return 0


if __name__ == "__main__":
    run_main(main)
