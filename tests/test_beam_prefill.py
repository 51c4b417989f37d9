"""Issue 12 item 4: beam search runs the context (prefix + style tokens) once per image, not once per beam,
and decodes exactly what generate() decodes from the whole context copied per beam."""
from __future__ import annotations

import pytest
import torch

from models import decoding
from models.decoding import DecodeConfig, generate_captions
from tests.test_reference import STYLES, features, small_model

BEAM = DecodeConfig(strategy="beam", beam_size=4, num_generate=2, max_len=10)


def _block0_inputs(model, fn) -> list[tuple[int, int]]:
    """(rows, positions) of every input to GPT-2's first block while fn() runs."""
    seen = []
    hook = model.gpt.transformer.h[0].register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[:2])))
    try:
        fn()
    finally:
        hook.remove()
    return seen


def test_beam_runs_the_context_once_per_image(small_models):
    model = small_model(small_models, seed=3)
    feats = features(3, seed=3)
    k = model.cfg.prefix_len
    seen = _block0_inputs(model, lambda: generate_captions(model, feats, None, BEAM))
    assert (3, k - 1) in seen  # the context once per image, all but its last position
    assert all(positions == 1 for rows, positions in seen if rows == 3 * BEAM.beam_size), seen


@pytest.mark.parametrize("mode", ["none", "prompt"])
def test_beam_prefill_decodes_what_plain_generate_decodes(small_models, mode, monkeypatch):
    styles = STYLES if mode != "none" else []
    model = small_model(small_models, seed=4, style_mode=mode, styles=styles)
    feats = features(6, seed=4)
    row_styles = [STYLES[i % 3] for i in range(6)] if styles else None  # context lengths differ: 3 groups
    ours = generate_captions(model, feats, row_styles, BEAM)
    monkeypatch.setattr(decoding, "beam_prefill", lambda *a: None)  # generate() runs the whole context per beam
    plain = generate_captions(model, feats, row_styles, BEAM)
    assert [[r["tokens"] for r in rows] for rows in ours] == [[r["tokens"] for r in rows] for rows in plain]
    for a, b in zip(ours, plain):
        for x, y in zip(a, b):
            assert x["score"] == pytest.approx(y["score"], abs=1e-4)
