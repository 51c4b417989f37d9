#!/usr/bin/env python
"""A test set mixing Chinese and English images: each caption is segmented by its own script (issue 22).

    python scripts/mixed_language_check.py

Offline, from the demo's templates: n_zh Chinese (Flickr30k-CN style) and n_en English images with five
references each, every prediction one of its own references, verbatim, so every per-image BLEU should be 1.
Prints, for 3 + 7 and 4 + 6 images, the segmentation record, the tokenizer, the mean per-image BLEU-2 of
the Chinese and of the English images, and corpus BLEU-4 / CIDEr (pure-Python tokenizer, no Java).
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stylecap.demo.content import en_captions, sample_content, zh_reference_set  # noqa: E402


def mixed_set(n_zh: int, n_en: int) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(predictions, references): n_zh Chinese then n_en English images, predictions verbatim references."""
    refs = {f"zh{k}": v for k, v in zh_reference_set(n_zh).items()}
    rng, english = random.Random(1), {}
    while len(english) < n_en:
        caps = en_captions(sample_content(rng))
        if caps not in english.values():
            english[f"en{len(english)}"] = caps
    refs.update(english)
    return {k: v[1] for k, v in refs.items()}, refs


def main(argv=None) -> int:
    from stylecap.eval.coco_metrics import score_captions
    from stylecap.utils import setup_logging
    setup_logging(quiet=True)
    for n_zh, n_en in ((3, 7), (4, 6)):
        preds, refs = mixed_set(n_zh, n_en)
        s = score_captions(preds, refs, java=False, metrics=("BLEU", "CIDEr"), quiet=True)
        per = s["per_image"]
        zh = sum(per[k]["BLEU-2"] for k in preds if k.startswith("zh")) / n_zh
        en = sum(per[k]["BLEU-2"] for k in preds if k.startswith("en")) / n_en
        seg = {k: v for k, v in s["segmentation"].items() if k != "note"}
        print(f"{n_zh} zh + {n_en} en: segmentation {seg}, tokenizer {s['tokenizer']}; per-image BLEU-2 "
              f"zh {zh:.4g}, en {en:.4g}; BLEU-4 {s['BLEU-4']:.4g}, CIDEr {s['CIDEr']:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
