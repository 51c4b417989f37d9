"""The versions users have (issue 18 §4-5): requirements.txt states tested ranges that hold what runs; code that
differs between versions lives in models/compat.py only; checkpoints and exported folders made under transformers
4.x load under 5.x and back (with .venv-compat, built by `make test-compat`), GPT-2's old buffers included."""
from __future__ import annotations

import json
import platform
import re
import subprocess
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from models import ModelConfig, build_model, checkpoint_payload, load_model
from models.compat import load_lm_state
from stylecap.utils import UserError
from tests.helpers import STYLES, synthetic_features

ROOT = Path(__file__).resolve().parents[1]
COMPAT = ROOT / ".venv-compat"
COMPAT_PY = COMPAT / "bin" / "python"


def requirements(name: str) -> dict[str, Requirement]:
    lines = [ln.split("#")[0].strip() for ln in (ROOT / name).read_text().splitlines()]
    reqs = [Requirement(ln) for ln in lines if ln]
    return {r.name.lower(): r for r in reqs}


def python_requires() -> SpecifierSet:
    m = re.search(r"^# python_requires: (\S+)", (ROOT / "requirements.txt").read_text(), re.M)
    assert m, "requirements.txt states no '# python_requires: RANGE' line"
    return SpecifierSet(m.group(1))


def test_requirements_state_tested_ranges_that_hold_the_running_versions():
    import transformers
    reqs = requirements("requirements.txt")
    running = {"torch": torch.__version__, "transformers": transformers.__version__}
    for name, version in running.items():
        ops = {s.operator for s in reqs[name].specifier}
        assert ops & {">=", ">"} and ops & {"<=", "<"}, f"{name}: a range with both ends, not {reqs[name].specifier}"
        assert reqs[name].specifier.contains(version), f"{name} {version} is outside {reqs[name].specifier}"
    assert python_requires().contains(platform.python_version())
    # make test-compat installs the ranges' lower ends
    compat = requirements("requirements-compat.txt")
    for name in running:
        lower = next(s.version for s in reqs[name].specifier if s.operator == ">=")
        assert str(compat[name].specifier) == f"=={lower}", f"requirements-compat.txt: {name}=={lower}"


# version checks and their usual disguises; models/compat.py is the one place for them
VERSION_CHECK = re.compile(
    r"(torch|transformers|safetensors|peft|numpy)\.__version__\s*(\[|[<>!=]=?|\.split|\.startswith)"
    r"|version\.parse\(|packaging\.version|sys\.version_info"
    r"|hasattr\([^)]*(checkpointing_enable|past_key_values|cache)"
    r"|\bpast_key_values\b"  # transformers 4's name of the KV cache (5: cache): only through the shim
    r"|try:\s*\n\s*(from|import) (torch|transformers)\b")


def test_no_version_checks_outside_models_compat():
    skip = {"models/compat.py"}
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in skip or rel.startswith((".venv", "tests/", "output/", "data/")):
            continue
        for m in VERSION_CHECK.finditer(path.read_text(encoding="utf-8")):
            found.append(f"{rel}: {m.group(0)!r}")
    assert not found, "version-dependent code outside models/compat.py (add a named shim there): " + "; ".join(found)


def old_gpt2_buffers(state: dict, n_layer: int, n_positions: int, prefix: str = "gpt.") -> dict:
    """GPT-2's causal mask and masked_bias, as transformers 3.x and early 4.x saved them in every state dict."""
    out = dict(state)
    for i in range(n_layer):
        mask = torch.tril(torch.ones(n_positions, n_positions, dtype=torch.uint8)).view(1, 1, n_positions, n_positions)
        out[f"{prefix}transformer.h.{i}.attn.bias"] = mask
        out[f"{prefix}transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return out


def test_a_checkpoint_with_gpt2s_old_attention_buffers_loads_and_decodes_the_same(styled_ckpt, tmp_path):
    """ClipCap #76: the old transformers saved GPT-2's constant attention buffers; a fine-tuned StyleCap
    checkpoint that has them loads (they are dropped) and gives the same outputs."""
    ck = torch.load(styled_ckpt, weights_only=True)
    gcfg = ck["gpt2_config"]
    ck["model"] = old_gpt2_buffers(ck["model"], gcfg["n_layer"], gcfg["n_positions"])
    torch.save(ck, tmp_path / "old.pt")
    new, old = load_model(styled_ckpt), load_model(tmp_path / "old.pt")
    feats = torch.randn(3, 512)
    ids, ones = torch.tensor([[64, 2266, 9197]] * 3), torch.ones(3, 3, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(new(feats, torch.tensor([0, 1, 2]), ids, ones).logits,
                           old(feats, torch.tensor([0, 1, 2]), ids, ones).logits)


def test_load_lm_state_ignores_only_the_constant_buffers(small_models):
    torch.manual_seed(0)
    model = build_model(ModelConfig(gpt2_path=str(small_models / "small_gpt2")))
    state = model.gpt.state_dict()
    load_lm_state(model.gpt, old_gpt2_buffers(state, 2, model.gpt.config.n_positions, prefix=""))
    broken = {k: v for k, v in state.items() if k != "transformer.h.0.mlp.c_fc.weight"}
    with pytest.raises(UserError, match=r"missing \['transformer.h.0.mlp.c_fc.weight'\]"):
        load_lm_state(model.gpt, broken)


# ---- across venvs: transformers 4.x (.venv-compat) <-> this one -------------------------------------------
needs_compat = pytest.mark.skipif(not (COMPAT / ".installed").is_file(), reason="no .venv-compat (transformers "
                                  "4.x): `make test-compat` builds it, then runs these tests")


def probe(python: Path | str, *args: str) -> None:
    done = subprocess.run([str(python), "-m", "tests.compat_probe", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def assert_same(a: dict, b: dict) -> None:
    """Two venvs' outputs: the same captions; scores and logits equal to float32 rounding."""
    for strategy in ("greedy", "beam"):
        assert [c for c, _ in a[strategy]] == [c for c, _ in b[strategy]], strategy
        assert torch.allclose(torch.tensor([s for _, s in a[strategy]]), torch.tensor([s for _, s in b[strategy]]),
                              atol=1e-4), strategy
    assert torch.allclose(torch.tensor(a["logits"]), torch.tensor(b["logits"]), atol=1e-4)


@pytest.fixture(scope="module")
def probe_features(tmp_path_factory) -> Path:
    return synthetic_features(tmp_path_factory.mktemp("probe") / "f.pkl", n_images=4)


@needs_compat
@pytest.mark.parametrize("maker", ["compat", "main"])
def test_checkpoints_and_folders_cross_transformers_4_and_5(maker, small_models, probe_features, tmp_path):
    """A checkpoint and its exported folder made under one venv (transformers 4.57 / 5.x) load under the other
    and compute what they compute where they were made: the same greedy and beam captions, logits to 1e-4."""
    import sys
    made_by, loaded_by = (COMPAT_PY, sys.executable) if maker == "compat" else (sys.executable, COMPAT_PY)
    probe(made_by, "make", small_models / "small_gpt2", tmp_path)
    probe(made_by, "run", tmp_path, probe_features, "here")
    probe(loaded_by, "run", tmp_path, probe_features, "there")
    for model in ("model.pt", "folder"):
        here = json.loads((tmp_path / f"{model}.here.json").read_text())
        there = json.loads((tmp_path / f"{model}.there.json").read_text())
        assert here["versions"]["transformers"][0] != there["versions"]["transformers"][0]  # 4.x vs 5.x
        assert len(here["greedy"]) == 4 * len(STYLES)
        assert_same(here, there)
