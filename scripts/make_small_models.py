"""Write small, seeded, random-weight models of the real classes into pre_model/ (offline).

    pre_model/small_clip.pt           openai-clip CLIP state dict (ViT, 512-d embedding, fp16 like OpenAI's)
    pre_model/small_clip_jit.pt       the same model as a TorchScript archive (the real ViT-B-32.pt's format)
    pre_model/small_gpt2/             GPT2LMHeadModel + GPT-2's real byte-level BPE tokenizer (50257 tokens)
    pre_model/small_gpt2_chinese/     GPT2LMHeadModel + character-level BertTokenizer ([SEP] ends captions)

With --aligned_data DIR (a demo PersonalityCaptions folder, e.g. data/demo/personality), also

    pre_model/small_clip_aligned.pt   the same CLIP class and shape, trained contrastively on DIR's training
                                      images and their plain captions (about 2 min on 2 CPU cores), so its
                                      image and text embeddings align on the demo data; fp16 state dict
    pre_model/small_clip_aligned.json what it was trained on (data fingerprint, recipe): same -> reused

Used by the tests and `make demo`; the real models go in the same folder (see pre_model/README.md).
The builders are stylecap/demo/small_models.py and stylecap/demo/aligned_clip.py.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stylecap.demo.aligned_clip import AlignSettings, write_aligned_clip  # noqa: E402
from stylecap.demo.small_models import write_small_models  # noqa: E402
from stylecap.utils import run_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="pre_model", help="folder to write the small models into")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights (and the aligned CLIP's "
                        "initialisation and batches)")
    parser.add_argument("--force", action="store_true", help="rewrite models that already exist")
    parser.add_argument("--aligned_data", default=None,
                        help="a demo PersonalityCaptions folder (personality_captions/, yfcc_images/): also train "
                             "small_clip_aligned.pt on its train split")
    parser.add_argument("--aligned_steps", type=int, default=AlignSettings.steps,
                        help="optimiser steps of the aligned CLIP (batch %d)" % AlignSettings.batch_size)
    parser.add_argument("--aligned_insert_words", type=float, default=AlignSettings.insert_words,
                        help="share of the aligned CLIP's training captions that get 1-3 random tokens inserted "
                             "(0 = plain captions only; docs/demo.md)")
    args = parser.parse_args(argv)
    if args.aligned_steps < 1:
        parser.error("--aligned_steps must be >= 1")
    if not 0 <= args.aligned_insert_words <= 1:
        parser.error("--aligned_insert_words must be between 0 and 1")
    out = Path(args.out)
    if not write_small_models(out, args.seed, args.force):
        print(f"small models already in {out}")
    else:
        print(f"wrote small_clip.pt, small_clip_jit.pt, small_gpt2/, small_gpt2_chinese/ to {out}")
    if args.aligned_data:
        settings = replace(AlignSettings(), steps=args.aligned_steps, seed=args.seed,
                           insert_words=args.aligned_insert_words)
        if not write_aligned_clip(Path(args.aligned_data), out / "small_clip_aligned.pt", settings, args.force):
            print(f"aligned CLIP already in {out / 'small_clip_aligned.pt'} (trained on {args.aligned_data})")
        else:
            print(f"wrote {out / 'small_clip_aligned.pt'}, trained on {args.aligned_data}")
    return 0


if __name__ == "__main__":
    run_main(main)
