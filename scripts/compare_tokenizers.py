#!/usr/bin/env python
"""Compare the pure-Python tokenizer with pycocoevalcap's PTBTokenizer (Java) on informal,
PersonalityCaptions-style captions: emoticons, hashtags, mentions, '*' and '/', emoji, repeated
punctuation, URLs, ALL CAPS, slang contractions, prices and times.

    python scripts/compare_tokenizers.py            # needs Java; prints the share of captions
                                                    # tokenized differently and BLEU-4 / CIDEr with each

The set: ``informal_captions(n)`` builds n captions from templates (seeded, offline) and
``EDGE_CASES`` lists hand-written ones (both in stylecap/demo/informal.py). The test suite checks the two
tokenizers agree on all of it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stylecap.demo.informal import EDGE_CASES, informal_captions  # noqa: E402


def _metric_set(captions: list[str]) -> tuple[dict, dict]:
    """Predictions/references pairs from the captions: each caption is a prediction whose five
    references are its neighbours in the list (so scores are in a realistic, non-trivial range)."""
    preds, refs = {}, {}
    for i, c in enumerate(captions):
        preds[i] = c
        refs[i] = [captions[(i + j) % len(captions)] for j in (1, 2, 3, 5, 8)] + [c] * (i % 3 == 0)
    return preds, refs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=400, help="template captions (default 400), plus the edge cases")
    p.add_argument("--seed", type=int, default=0, help="seed of the template captions")
    p.add_argument("--show", type=int, default=20, help="differing captions to print")
    args = p.parse_args(argv)
    from stylecap.eval.coco_metrics import _tokenize, java_status, score_captions
    if not java_status(None)[0]:
        print("needs Java (PTBTokenizer is the reference)", file=sys.stderr)
        return 2
    captions = informal_captions(args.n, args.seed) + EDGE_CASES
    ptb = _tokenize({i: [c] for i, c in enumerate(captions)}, use_ptb=True)
    py = _tokenize({i: [c] for i, c in enumerate(captions)}, use_ptb=False)
    diff = [i for i in range(len(captions)) if ptb[i] != py[i]]
    for i in diff[:args.show]:
        print(f"{captions[i]!r}\n   ptb:    {ptb[i][0]!r}\n   python: {py[i][0]!r}")
    print(f"{len(diff)} of {len(captions)} captions tokenized differently ({100 * len(diff) / len(captions):.2f}%)")
    preds, refs = _metric_set(captions)
    kw = dict(spice=False, metrics=("BLEU", "CIDEr"), quiet=True, segment="none")
    a, b = score_captions(preds, refs, **kw), score_captions(preds, refs, java=False, **kw)
    for m in ("BLEU-4", "CIDEr"):
        print(f"{m}: PTBTokenizer {100 * a[m]:.3f}, python_tokenize {100 * b[m]:.3f} (x100)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
