"""How stylized the captions are, as stylized-captioning papers report it, beside the same measures on
the human references of the evaluated split (the ceiling):

* ``style_fidelity``: a classifier trained on the styled training captions (stylecap.style_classifier)
  predicts each caption's style; top-1/top-5 accuracy against the *requested* style ("cls");
* ``style_ppl``: perplexity of each caption under an n-gram model of its requested style's training
  captions (stylecap.style_lm; "ppl", lower is better).

Both use the metrics' own tokenization (the segmenter for Chinese), and both write per-caption values
(``style_top1``, ``style_ppl``) into the per-image records that compare.py bootstraps over.
"""
from __future__ import annotations

from stylecap.matching import Matching
from stylecap.segmentation import Segmenter


def metric_tokenizer(segmenter: Segmenter | None):
    """The tokenization of BLEU/CIDEr as a function caption -> tokens (PTB-equivalent for English)."""
    from stylecap.ptb_tokenize import python_tokenize
    return (lambda c: segmenter(c).split()) if segmenter is not None else (lambda c: python_tokenize(c).split())


def style_measures(mt: Matching, predictions: list[dict], references: list[dict], train_captions: list[dict] | None,
                   segmenter: Segmenter | None, per_image: dict) -> tuple[dict | None, dict | None, dict]:
    """(style_fidelity, style_ppl, skipped reasons); updates ``per_image`` {key: record} in place."""
    skipped: dict[str, str] = {}
    train_styled = [c for c in (train_captions or []) if c.get("style") is not None]
    gen = [p for p in predictions if p.get("style") is not None]
    keys = [k for k in mt.predictions if mt.styles.get(k) is not None]
    fid = ppl = None
    if len({c["style"] for c in train_styled}) < 2:
        skipped["style_fidelity"] = "needs training captions with at least two styles (--train_captions)"
    else:
        from stylecap.style_classifier import StyleClassifier
        clf = StyleClassifier(segmenter=segmenter).fit([c["caption"] for c in train_styled],
                                                       [c["style"] for c in train_styled])
        fid = {"generated": clf.accuracy([p["caption"] for p in gen], [p["style"] for p in gen]),
               "references": clf.accuracy([r["caption"] for r in references], [r.get("style") for r in references]),
               "classifier": clf.describe(), "per_style_top1": {}}
        for style in sorted({p["style"] for p in gen}):
            fid["per_style_top1"][style] = clf.accuracy([p["caption"] for p in gen if p["style"] == style],
                                                        [style] * sum(p["style"] == style for p in gen))["top1"]
        for k, guess in zip(keys, clf.predict([mt.predictions[k] for k in keys])):
            if mt.styles[k] in clf.styles:
                per_image.setdefault(k, {})["style_top1"] = float(guess == mt.styles[k])
        if not gen:
            skipped["style_fidelity"] = "the predictions carry no requested style"
    if not train_styled:
        skipped["style_ppl"] = "needs styled training captions (--train_captions)"
    elif gen:
        from stylecap.style_lm import StyleLM
        lm = StyleLM(metric_tokenizer(segmenter)).fit([c["caption"] for c in train_styled],
                                                      [c["style"] for c in train_styled])
        out = lm.perplexity([mt.predictions[k] for k in keys], [mt.styles[k] for k in keys])
        refs = lm.perplexity([r["caption"] for r in references if r.get("style") is not None],
                             [r["style"] for r in references if r.get("style") is not None])
        ppl = {"generated": out["ppl"], "references": refs["ppl"], "per_style": out["per_style"],
               "per_style_references": refs["per_style"], "n": out["n"], "lm": lm.describe()}
        for k, value in zip(keys, out["per_caption"]):
            if value is not None:
                per_image.setdefault(k, {})["style_ppl"] = value
    return fid, ppl, skipped
