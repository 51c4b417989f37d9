"""The style-mode table (models/style_modes.py) is the one list: train.py's choices and the ablation
script read it, every entry builds a working model, and a new mode is one entry plus its code."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from models import ModelConfig, build_model
from models.style_modes import MODES, STYLE_MODES, StyleMode, no_context, style_mode
from stylecap.utils import UserError
from tests.helpers import STYLES

ROOT = Path(__file__).resolve().parents[1]


def test_train_choices_and_ablation_modes_are_the_table():
    action = next(a for a in train.get_parser()._actions if a.dest == "style_mode")
    assert action.choices == ["auto", *STYLE_MODES] and STYLE_MODES == tuple(MODES)
    line = next(ln for ln in (ROOT / "scripts/ablate_style.sh").read_text().splitlines() if ln.startswith("MODES="))
    out = subprocess.run(["bash", "-c", f"set -euo pipefail; unset MODES; PYTHON={sys.executable}\n{line}\necho $MODES"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == list(STYLE_MODES) and out.stderr == ""


def test_unknown_mode_is_a_user_error_naming_the_valid_ones(small_models):
    with pytest.raises(UserError, match="--style_mode 'styled' is not one of embedding, token, prompt, none"):
        style_mode("styled")
    with pytest.raises(UserError, match="is not one of"):
        build_model(ModelConfig(gpt2_path=str(small_models / "small_gpt2"), style_mode="styled", styles=STYLES))


@pytest.mark.parametrize("name", STYLE_MODES)
def test_each_entry_matches_what_the_model_and_tokenizer_build(small_models, name):
    mode = MODES[name]
    styles = STYLES if mode.styled else []
    model = build_model(ModelConfig(gpt2_path=str(small_models / "small_gpt2"), style_mode=name, styles=styles,
                                    num_layers=2))
    assert (model.style_embedding is not None) == mode.style_embedding
    assert (model.style_token_embedding is not None) == mode.style_tokens
    ctx = model.tokenizer.context_ids(styles[1] if styles else None)
    assert bool(ctx) == mode.adds_context == model.tokenizer.adds_context
    if mode.styled:  # a styled mode without styles: refused with the fix
        with pytest.raises(UserError, match="needs styled data"):
            build_model(ModelConfig(gpt2_path=str(small_models / "small_gpt2"), style_mode=name))


def test_a_new_mode_is_one_entry(small_models, monkeypatch):
    """Style embedding in the prefix and a <style_k> token: a mode no code names, from its entry alone."""
    both = StyleMode("both", "embedding and token together", styled=True, style_embedding=True, style_tokens=True,
                     context=MODES["token"].context)
    monkeypatch.setitem(MODES, "both", both)
    torch.manual_seed(0)
    model = build_model(ModelConfig(gpt2_path=str(small_models / "small_gpt2"), style_mode="both", styles=STYLES,
                                    num_layers=2))
    assert model.style_embedding is not None and model.style_token_embedding is not None
    assert model.tokenizer.context_ids(STYLES[2]) == [model.tokenizer.vocab_size + 2]
    ids = torch.tensor([model.tokenizer.context_ids(STYLES[2]) + model.tokenizer.encode_caption("a red circle")])
    out = model(torch.randn(1, 512), torch.tensor([2]), ids, torch.ones_like(ids),
                torch.cat((torch.tensor([[-100]]), ids[:, 1:]), dim=1))
    out.loss.backward()
    assert model.style_embedding.weight.grad[2].abs().sum() > 0
    assert model.style_token_embedding.weight.grad[2].abs().sum() > 0
    assert no_context(None, "x") == []
