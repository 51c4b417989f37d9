"""Write small, seeded, random-weight models of the real classes into pre_model/ (offline).

    pre_model/small_clip.pt           openai-clip CLIP state dict (ViT, 512-d embedding, fp16 like OpenAI's)
    pre_model/small_clip_jit.pt       the same model as a TorchScript archive (the real ViT-B-32.pt's format)
    pre_model/small_gpt2/             GPT2LMHeadModel + GPT-2's real byte-level BPE tokenizer (50257 tokens)
    pre_model/small_gpt2_chinese/     GPT2LMHeadModel + character-level BertTokenizer ([SEP] ends captions)

Used by the tests and `make demo`; the real models go in the same folder (see pre_model/README.md).
The builders are stylecap/demo/small_models.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stylecap.demo.small_models import write_small_models  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="pre_model", help="folder to write the small models into")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    parser.add_argument("--force", action="store_true", help="rewrite models that already exist")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not write_small_models(out, args.seed, args.force):
        print(f"small models already in {out}")
        return 0
    print(f"wrote small_clip.pt, small_clip_jit.pt, small_gpt2/, small_gpt2_chinese/ to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
