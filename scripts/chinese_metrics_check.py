#!/usr/bin/env python
"""Chinese captions scored with each segmentation (none = the old whole-sentence tokens, char, jieba).

    python scripts/chinese_metrics_check.py

Two cases, offline, from the demo's Flickr30k-CN templates: every prediction a verbatim reference
(8 images x 5 references) and two near matches (1 and 2 characters wrong).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stylecap.demo.content import NEAR_PREDS, NEAR_REFS, zh_reference_set  # noqa: E402


def main(argv=None) -> int:
    from stylecap.eval.coco_metrics import score_captions
    refs = zh_reference_set()
    cases = {"exact": ({k: v[0] for k, v in refs.items()}, refs), "near": (NEAR_PREDS, NEAR_REFS)}
    for seg in ("none", "char", "jieba"):
        for name, (preds, references) in cases.items():
            s = score_captions(preds, references, java=False, segment=seg, metrics=("BLEU", "ROUGE-L", "CIDEr"),
                               quiet=True)
            print(f"{seg:5} {name:5} " + "  ".join(f"{m} {s[m]:.4g}" for m in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
