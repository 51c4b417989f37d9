"""Diversity of generated captions: distinct-n, vocabulary, length, copies of training captions."""
from __future__ import annotations

from stylecap.eval.ptb_tokenize import python_tokenize
from stylecap.eval.segmentation import Segmenter, resolve_segmentation


def normalise_caption(caption: str, segmenter: Segmenter | None = None) -> str:
    """Lower-case, PTB-style tokens, punctuation dropped: what 'the same caption' means here.
    With a ``segmenter``, a Chinese caption's segmented tokens instead (any other caption's stay PTB-style),
    as the caption metrics use them."""
    return segmenter(caption) if segmenter is not None else python_tokenize(caption)


def diversity(captions: list[str], train_captions: list[str] | None = None, *,
              train_normalised: set[str] | None = None, segmenter: "str | Segmenter | None" = "auto") -> dict:
    """distinct-n = unique n-grams / all n-grams over all captions (normalised tokens);
    vocab_size = unique words; copied = share of captions equal to some training caption
    (``train_normalised``: the training captions already passed through normalise_caption with
    the same segmenter). ``segmenter``: as the metrics' ``segment`` ('auto': Chinese captions are
    split into characters), so words are counted the way BLEU/CIDEr count them."""
    seg, info = resolve_segmentation(segmenter, captions)
    toks = [normalise_caption(c, seg).split() for c in captions]
    uni = [t for ts in toks for t in ts]
    bi = [tuple(ts[i:i + 2]) for ts in toks for i in range(len(ts) - 1)]
    out = {"n_captions": len(captions),
           "distinct-1": len(set(uni)) / len(uni) if uni else 0.0,
           "distinct-2": len(set(bi)) / len(bi) if bi else 0.0,
           "vocab_size": len(set(uni)),
           "mean_length": len(uni) / len(toks) if toks else 0.0,
           "unique_captions": len({" ".join(ts) for ts in toks}),
           "copied": None,
           "segmentation": info["method"]}
    if train_normalised is None and train_captions is not None:
        train_normalised = {normalise_caption(c, seg) for c in train_captions}
    if train_normalised is not None and captions:
        out["copied"] = sum(" ".join(ts) in train_normalised for ts in toks) / len(toks)
    return out
