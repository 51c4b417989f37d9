"""Shared, session-scoped fixtures: small random-weight models and small demo datasets, built offline."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def small_models(tmp_path_factory) -> Path:
    """pre_model-like folder: small_clip.pt, small_clip_jit.pt, small_gpt2/, small_gpt2_chinese/."""
    from scripts.make_small_models import main
    out = tmp_path_factory.mktemp("pre_model")
    assert main(["--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small clean demo dataset (flickr30k/, flickr30k_cn/, personality/)."""
    from stylecap.demo.datasets import generate
    out = tmp_path_factory.mktemp("demo")
    generate(out, seed=0, variant="clean", n_flickr=30, n_personality=40)
    return out


@pytest.fixture(scope="session")
def dirty_data(tmp_path_factory) -> Path:
    from stylecap.demo.datasets import generate
    out = tmp_path_factory.mktemp("dirty")
    generate(out, seed=0, variant="dirty")
    return out


@pytest.fixture(scope="session")
def styled_ckpt(small_models, tmp_path_factory) -> Path:
    """A random-weight small model with a learned style embedding for tests.helpers.STYLES, as a checkpoint."""
    from models import ModelConfig, build_model, checkpoint_payload
    from tests.helpers import STYLES
    torch.manual_seed(0)
    model = build_model(ModelConfig(gpt2_path=str(small_models / "small_gpt2"), style_mode="embedding",
                                    styles=STYLES, max_len=8))
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(checkpoint_payload(model), path)
    return path
