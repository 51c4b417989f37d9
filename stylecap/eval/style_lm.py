"""Style perplexity ("ppl", lower is better): how much a caption reads like its requested style's corpus.

Stylized-captioning papers (MSCap, MemCap, InSentiCap on SentiCap / FlickrStyle10K) report it beside a
style classifier's accuracy: an n-gram language model per style, trained on that style's training
captions, scores the generated captions. StyleCap computes it with nltk's ``nltk.lm`` (a well-kept
implementation; the papers used SRILM):

* order 3 (trigrams), each caption padded with two ``<s>`` and two ``</s>`` (nltk's ``pad_both_ends``);
* add-one (Laplace) smoothing, ``nltk.lm.Laplace``; one vocabulary shared by every style's model (all
  training tokens, so perplexities of different styles are comparable), unseen words -> ``<UNK>``.
  nltk's Kneser-Ney and Witten-Bell models give infinite perplexity to any caption with an unseen word,
  so they cannot score free generation; add-one smoothing always gives a finite value (and larger
  absolute numbers than the papers' SRILM Kneser-Ney: compare runs with each other, not with papers);
* the tokenization is the metrics' own (the same tokenizer as BLEU/CIDEr, lower-cased), passed in;
* a set of captions gets 2 ** (mean of -log2 p over all its scored trigrams), each caption under the
  model of its requested style; reported overall, per style, and for the human references of the
  evaluated split scored the same way (the ceiling to compare with).
"""
from __future__ import annotations

from typing import Callable, Iterable

ORDER = 3
SMOOTHING = "add-one (Laplace), nltk.lm.Laplace"


class StyleLM:
    def __init__(self, tokenize: Callable[[str], list[str]], order: int = ORDER):
        self.tokenize, self.order = tokenize, order
        self.models: dict[str, object] = {}

    def fit(self, captions: list[str], styles: list[str]) -> "StyleLM":
        from nltk.lm import Laplace, Vocabulary
        from nltk.lm.preprocessing import padded_everygram_pipeline
        tokens = [self.tokenize(c) for c in captions]
        by_style: dict[str, list[list[str]]] = {}
        for t, s in zip(tokens, styles):
            by_style.setdefault(s, []).append(t)
        _, words = padded_everygram_pipeline(self.order, tokens)
        vocab = Vocabulary(words, unk_cutoff=1)  # shared: every style's model has the same |V|
        for style, sents in by_style.items():
            grams, _ = padded_everygram_pipeline(self.order, sents)
            lm = Laplace(self.order, vocabulary=vocab)
            lm.fit(grams)
            self.models[style] = lm
        return self

    def _log2_losses(self, caption: str, style: str) -> list[float]:
        """-log2 p of each padded trigram of the caption under ``style``'s model."""
        from nltk.lm.preprocessing import pad_both_ends
        from nltk.util import ngrams
        lm = self.models[style]
        grams = ngrams(pad_both_ends(self.tokenize(caption), n=self.order), self.order)
        return [-lm.logscore(g[-1], g[:-1]) for g in grams]

    def perplexity(self, captions: Iterable[str], styles: Iterable[str]) -> dict:
        """{'ppl': overall, 'per_style': {style: ppl}, 'per_caption': [ppl or None], 'n': scored};
        captions whose style has no model (no training captions) are not scored."""
        total: dict[str, list[float]] = {}
        per_caption = []
        for c, s in zip(captions, styles):
            if s not in self.models:
                per_caption.append(None)
                continue
            losses = self._log2_losses(c, s)
            total.setdefault(s, []).extend(losses)
            per_caption.append(2 ** (sum(losses) / len(losses)))
        every = [x for v in total.values() for x in v]
        return {"ppl": 2 ** (sum(every) / len(every)) if every else None,
                "per_style": {s: 2 ** (sum(v) / len(v)) for s, v in sorted(total.items())},
                "per_caption": per_caption, "n": sum(p is not None for p in per_caption)}

    def describe(self) -> dict:
        return {"order": self.order, "smoothing": SMOOTHING, "styles": len(self.models),
                "vocabulary": len(next(iter(self.models.values())).vocab) if self.models else 0}

