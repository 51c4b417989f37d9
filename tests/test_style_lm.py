"""stylecap.eval.style_lm: per-style n-gram perplexity (issue 10 section 3)."""
from __future__ import annotations

import math

import pytest

from stylecap.eval.style_lm import StyleLM

TRAIN = {"Happy": ["yay! a red circle!", "yay! a big blue circle!", "so happy to see a green square!"],
         "Gloomy": ["a sad red circle", "a lonely blue circle in the dark", "the green square looks so sad"]}


def _lm():
    caps = [c for cs in TRAIN.values() for c in cs]
    styles = [s for s, cs in TRAIN.items() for _ in cs]
    return StyleLM(lambda c: c.lower().replace("!", " !").split()).fit(caps, styles)


def test_a_caption_reads_best_under_its_own_style():
    lm = _lm()
    happy = lm.perplexity(["yay! a green circle!"], ["Happy"])["ppl"]
    as_gloomy = lm.perplexity(["yay! a green circle!"], ["Gloomy"])["ppl"]
    assert 1 < happy < as_gloomy


def test_perplexity_is_finite_for_unseen_words_and_pools_tokens():
    lm = _lm()
    out = lm.perplexity(["zebras juggling quietly", "a sad red circle", "x"], ["Happy", "Gloomy", "Unknown"])
    assert all(math.isfinite(p) for p in out["per_caption"][:2]) and out["per_caption"][2] is None
    assert out["n"] == 2 and set(out["per_style"]) == {"Happy", "Gloomy"}
    # overall = 2 ** (mean -log2 p over every scored trigram), not the mean of per-caption values
    n1, n2 = 3 + 2, 4 + 2  # tokens + 2 padded predictions each
    pooled = 2 ** ((n1 * math.log2(out["per_caption"][0]) + n2 * math.log2(out["per_caption"][1])) / (n1 + n2))
    assert out["ppl"] == pytest.approx(pooled)
    assert lm.describe()["order"] == 3 and "Laplace" in lm.describe()["smoothing"]


def test_style_measures_judge_a_plain_models_captions_by_the_test_records_style():
    """A style-blind model's captions (no requested style, matched by image) are judged against each test
    image's own style, so the ablation's `none` row has a style top-1 and ppl like the others."""
    from stylecap.eval.scoring import evaluate_predictions
    train = [{"image_id": f"t{i}", "caption": c, "style": s}
             for i, (s, cs) in enumerate(TRAIN.items()) for c in cs]
    refs = [{"image_id": "a", "caption": "yay! a red circle!", "style": "Happy"},
            {"image_id": "b", "caption": "a sad blue circle", "style": "Gloomy"}]
    preds = [{"image": "a", "caption": "yay! a green circle!"}, {"image": "b", "caption": "yay! a blue circle!"}]
    m = evaluate_predictions(preds, refs, train_captions=train, java=False, spice=False)
    fid = m["style_fidelity"]
    assert fid["generated"]["n"] == 2 and fid["generated"]["top1"] == 0.5 and "test record" in fid["against"]
    assert [r["style_top1"] for r in m["per_image"]] == [1.0, 0.0]
    assert m["style_ppl"]["n"] == 2 and all(r["style_ppl"] > 1 for r in m["per_image"])
