"""stylecap.eval.style_lm: per-style n-gram perplexity (issue 10 section 3)."""
from __future__ import annotations

import itertools
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
    # overall = 2 ** (mean -log2 p over every scored event), not the mean of per-caption values.
    # Issue 22: a caption of n tokens is n + 1 events (its words, then one </s>); this test weighted by n + 2
    # before, locking in the extra, near-certain second </s>.
    n1, n2 = 3 + 1, 4 + 1
    pooled = 2 ** ((n1 * math.log2(out["per_caption"][0]) + n2 * math.log2(out["per_caption"][1])) / (n1 + n2))
    assert out["ppl"] == pytest.approx(pooled)
    assert lm.describe()["order"] == 3 and "Witten-Bell" in lm.describe()["smoothing"]


def test_style_ppl_counts_length_plus_one_events_per_caption():
    """n-gram perplexity of a sentence of n words: n + 1 predictions (each word, then the first </s>).
    Before issue 22 each caption was n + 2 events: the extra one predicted a second </s> after the first,
    with a probability near 1, which pulled every perplexity down by a length-dependent amount."""
    lm = _lm()
    tok = lm.tokenize
    for caption in ["yay! a green circle!", "a sad red circle", "zebras", ""]:
        assert len(lm._log2_losses(caption, "Happy")) == len(tok(caption)) + 1
    # the pooled value weights each caption by its n + 1 events: a 1-word and a 6-word caption
    out = lm.perplexity(["circle", "a lonely blue circle in the dark"], ["Gloomy", "Gloomy"])
    a, b = (math.log2(p) for p in out["per_caption"])
    assert out["ppl"] == pytest.approx(2 ** ((2 * a + 8 * b) / 10))


# a synthetic styled corpus with an open vocabulary: shared content words drawn from a Zipf-like distribution
# (weight 1 / rank ** 0.7) over 5000 nouns and 300 adjectives, and style words in each style's own templates
NOUNS = [f"noun{i}" for i in range(5000)]
ADJS = [f"adj{i}" for i in range(300)]
STYLE_TEMPLATES = {
    "Happy": ["yay ! a {a} {n} with a {m} , so happy !", "what a wonderful {n} near the {m} !",
              "such a cheerful {a} {n} , i love it !"],
    "Gloomy": ["a lonely {n} beside a {a} {m} , everything is sad", "the {n} looks tired and grey",
               "nothing but a {a} {n} , as empty as my days"],
    "Sarcastic": ["oh great , another {a} {n} . so original .", "wow , a {n} and a {m} . how thrilling .",
                  "yeah , a {a} {n} , because that is so exciting ."],
}


def synthetic_corpus(n_per_style: int, seed: int) -> list[tuple[str, str]]:
    """[(caption, style)], n_per_style captions of each style, seeded."""
    import random
    rng = random.Random(seed)
    cum = {len(w): list(itertools.accumulate(1 / (i + 1) ** 0.7 for i in range(len(w)))) for w in (NOUNS, ADJS)}
    zipf = lambda words: rng.choices(words, cum_weights=cum[len(words)])[0]
    return [(rng.choice(t).format(n=zipf(NOUNS), m=zipf(NOUNS), a=zipf(ADJS)), s)
            for s, t in STYLE_TEMPLATES.items() for _ in range(n_per_style)]


def _scale_figures() -> tuple[dict, int]:
    """ppl of each style's own training captions, of held-out captions of the same style, and of the other
    styles' held-out captions, each scored under the style's model; and the number of distinct training words."""
    train, held = synthetic_corpus(500, seed=1), synthetic_corpus(166, seed=2)
    lm = StyleLM(str.split).fit([c for c, _ in train], [s for _, s in train])
    figs = {}
    for style in STYLE_TEMPLATES:
        own = [c for c, s in train if s == style]
        same = [c for c, s in held if s == style]
        other = [c for c, s in held if s != style]
        figs[style] = {k: lm.perplexity(v, [style] * len(v))["ppl"]
                       for k, v in (("train", own), ("held_out", same), ("other_styles", other))}
    return figs, len({w for c, _ in train for w in c.split()})


def test_style_ppl_scale_is_not_inflated_by_the_vocabulary():
    """Issue 22: add-one smoothing spreads one count over every word of the shared vocabulary for each
    context, so a style's own training captions scored ~1581 with a 15k vocabulary (here 47-72 with 1626
    words, held-out ones 56-100). An interpolated model keeps them at about 2 (held-out about 3), far below
    the vocabulary size and well below other styles' captions (the measure still separates styles)."""
    figs, vocab = _scale_figures()
    assert vocab > 1500
    for style, f in figs.items():
        assert all(math.isfinite(v) for v in f.values()), (style, f)
        assert 1 < f["train"] < 10, (style, f)
        assert f["train"] < f["held_out"] < vocab / 20, (style, f)
        assert f["other_styles"] > 5 * f["held_out"], (style, f)


def test_style_ppl_is_finite_for_unseen_words_and_a_one_caption_style():
    """<UNK> (words seen fewer than twice in all training captions, and every word never seen) keeps a
    probability under every style's model, even a style with a single training caption, whose own words
    are all in the vocabulary: the lowest order backs off to a uniform distribution over the vocabulary."""
    caps = [c for cs in TRAIN.values() for c in cs] + ["a red circle"]
    styles = [s for s, cs in TRAIN.items() for _ in cs] + ["Lonely"]
    lm = StyleLM(str.split).fit(caps, styles)
    out = lm.perplexity(["zebras juggling quietly tonight", "qq ww ee rr tt yy", "a red circle", "a red circle"],
                        ["Happy", "Lonely", "Lonely", "Gloomy"])
    assert all(math.isfinite(p) and p > 1 for p in out["per_caption"]), out
    assert out["per_caption"][2] < out["per_caption"][3] < out["per_caption"][1]  # its own caption reads best


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
