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


def test_beam_scoring_pass_bounds_the_logits_it_holds(small_models):
    """Issue 12 item 3: the teacher-forced pass that scores beam winners builds (rows, T, V) logits; at
    --bs_eval 64 and 67 tokens that is 0.86 GB for GPT-2. It runs at most SCORE_ROWS rows at a time, with
    the scores of one pass over all rows."""
    model = small_model(small_models, seed=4)
    n = decoding.SCORE_ROWS * 2 + 3
    feats = features(n, seed=4)
    embeds = decoding.context_embeds(model, feats, [None] * n)
    tokens = torch.randint(0, 100, (n, 7))
    lengths = torch.randint(1, 8, (n,))
    rows = []
    hook = model.gpt.lm_head.register_forward_hook(lambda m, args, out: rows.append(out.shape[0]))
    try:
        chunked = decoding.sequence_logprob(model.eval(), embeds, tokens, lengths)
    finally:
        hook.remove()
    assert max(rows) <= decoding.SCORE_ROWS and sum(rows) == n, rows
    one_by_one = torch.cat([decoding.sequence_logprob(model, embeds[i:i + 1], tokens[i:i + 1], lengths[i:i + 1])
                            for i in range(n)])
    assert torch.allclose(chunked, one_by_one, atol=1e-4), (chunked - one_by_one).abs().max()
