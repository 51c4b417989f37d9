"""How stylized the captions are, as stylized-captioning papers report it, beside the same measures on
the human references of the evaluated split (the ceiling):

* ``style_fidelity``: a classifier trained on the styled training captions (stylecap.eval.style_classifier)
  predicts each caption's style; top-1/top-5 accuracy against the *requested* style ("cls"), or, for
  a plain model's captions of styled test data, against the test record's style (``against`` says which);
* ``style_ppl``: perplexity of each caption under an n-gram model of its requested style's training
  captions (stylecap.eval.style_lm; "ppl", lower is better).

Both use the metrics' own tokenization (the segmenter for Chinese), and both write per-caption values
(``style_top1``, ``style_ppl``) into the per-image records that compare.py bootstraps over.
"""
from __future__ import annotations

from stylecap.eval.matching import Matching
from stylecap.eval.segmentation import Segmenter


def metric_tokenizer(segmenter: Segmenter | None):
    """The tokenization of BLEU/CIDEr as a function caption -> tokens (PTB-equivalent for English)."""
    from stylecap.eval.ptb_tokenize import python_tokenize
    return (lambda c: segmenter(c).split()) if segmenter is not None else (lambda c: python_tokenize(c).split())


def style_measures(mt: Matching, predictions: list[dict], references: list[dict], train_captions: list[dict] | None,
                   segmenter: Segmenter | None, per_image: dict) -> tuple[dict | None, dict | None, dict]:
    """(style_fidelity, style_ppl, skipped reasons); updates ``per_image`` {key: record} in place."""
    skipped: dict[str, str] = {}
    train_styled = [c for c in (train_captions or []) if c.get("style") is not None]
    # the scored captions with a style to judge them by: the requested one, or, for a plain model's
    # captions matched by image, the test record's style (how styled a style-blind model reads)
    keys = [k for k in mt.predictions if mt.styles.get(k) is not None]
    caps, wanted = [mt.predictions[k] for k in keys], [mt.styles[k] for k in keys]
    against = ("the requested style" if all(p.get("style") is not None for p in predictions)
               else "the test record's style (the predictions carry none)")
    fid = ppl = None
    if len({c["style"] for c in train_styled}) < 2:
        skipped["style_fidelity"] = "needs training captions with at least two styles (--train_captions)"
    else:
        from stylecap.eval.style_classifier import StyleClassifier
        clf = StyleClassifier(segmenter=segmenter).fit([c["caption"] for c in train_styled],
                                                       [c["style"] for c in train_styled])
        fid = {"generated": clf.accuracy(caps, wanted), "against": against,
               "references": clf.accuracy([r["caption"] for r in references], [r.get("style") for r in references]),
               "classifier": clf.describe(), "per_style_top1": {}}
        for style in sorted(set(wanted)):
            mine = [c for c, w in zip(caps, wanted) if w == style]
            fid["per_style_top1"][style] = clf.accuracy(mine, [style] * len(mine))["top1"]
        for k, w, guess in zip(keys, wanted, clf.predict(caps) if caps else []):
            if w in clf.styles:
                per_image.setdefault(k, {})["style_top1"] = float(guess == w)
        if not keys:
            skipped["style_fidelity"] = "no scored caption has a requested or reference style"
    if not train_styled:
        skipped["style_ppl"] = "needs styled training captions (--train_captions)"
    elif keys:
        from stylecap.eval.style_lm import StyleLM
        lm = StyleLM(metric_tokenizer(segmenter)).fit([c["caption"] for c in train_styled],
                                                      [c["style"] for c in train_styled])
        out = lm.perplexity(caps, wanted)
        refs = lm.perplexity([r["caption"] for r in references if r.get("style") is not None],
                             [r["style"] for r in references if r.get("style") is not None])
        ppl = {"generated": out["ppl"], "against": against, "references": refs["ppl"], "per_style": out["per_style"],
               "per_style_references": refs["per_style"], "n": out["n"], "lm": lm.describe()}
        for k, value in zip(keys, out["per_caption"]):
            if value is not None:
                per_image.setdefault(k, {})["style_ppl"] = value
    return fid, ppl, skipped
