"""Run in either venv by tests/test_compat.py: make a checkpoint (and its exported folder) under this venv's
torch / transformers, or load one and write what it computes, for the other venv to compare.

    python -m tests.compat_probe make GPT2_DIR OUT_DIR       -> OUT_DIR/model.pt, OUT_DIR/folder/
    python -m tests.compat_probe run OUT_DIR FEATURES TAG     -> OUT_DIR/{model.pt,folder}.TAG.json: captions,
                                                                scores, logits and versions of both
(one process for both models: importing torch and transformers is most of a probe's time)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

STYLES = ["Happy", "Gloomy", "Cynical (Doubtful, Skeptical)"]  # tests.helpers.STYLES


def make(gpt2: str, out: str) -> None:
    """A fine-tuned styled model with seeded random weights, saved as a checkpoint and exported as a folder."""
    import export
    from models import ModelConfig, build_model, checkpoint_payload
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(ModelConfig(gpt2_path=gpt2, style_mode="embedding", styles=STYLES, max_len=8))
    with torch.no_grad():  # a trained-looking mapper: random weights scaled up, so captions differ by feature
        for p in model.clip_project.parameters():
            p.mul_(3)
    torch.save(checkpoint_payload(model), out_dir / "model.pt")
    assert export.main([str(out_dir / "model.pt"), str(out_dir / "folder")]) == 0


def run(out_dir: str, features: str, tag: str) -> None:
    for name in ("model.pt", "folder"):
        outputs(Path(out_dir) / name, features, Path(out_dir) / f"{name}.{tag}.json")


def outputs(model_path: Path, features: str, out: Path) -> None:
    """Greedy and beam captions (with scores) for every feature in every style, and the teacher-forced logits."""
    import transformers
    from models import load_model
    from models.decoding import DecodeConfig, generate_captions
    from stylecap.features import load_features
    model = load_model(model_path)
    feats = load_features(features)["clip_embedding"].float()  # (N, D)
    rows = feats.repeat_interleave(len(STYLES), 0)
    styles = STYLES * feats.shape[0]
    result = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    for strategy in ("greedy", "beam"):
        outs = generate_captions(model, rows, styles, DecodeConfig(strategy, beam_size=3))
        result[strategy] = [[o[0]["caption"], o[0]["score"]] for o in outs]
    ids = torch.tensor([[64, 2266, 9197, 0]] * rows.shape[0])  # " a red circle!" as GPT-2 ids, for every row
    with torch.no_grad():
        style_ids = torch.tensor([model.style_id(s) for s in styles])
        logits = model(rows, style_ids, ids, torch.ones_like(ids)).logits  # (B, K + 4, V)
    result["logits"] = logits[:, -4:, :50].flatten().tolist()  # the caption positions, first 50 tokens
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    {"make": make, "run": run}[sys.argv[1]](*sys.argv[2:])
