"""Style perplexity ("ppl", lower is better): how much a caption reads like its requested style's corpus.

Stylized-captioning papers (MSCap, MemCap, InSentiCap on SentiCap / FlickrStyle10K) report it beside a
style classifier's accuracy: an n-gram language model per style, trained on that style's training
captions, scores the generated captions. StyleCap computes it with nltk's ``nltk.lm`` (a well-kept
implementation; the papers used SRILM):

* order 3 (trigrams). A caption of n tokens is n + 1 events, as n-gram perplexity is defined: each word
  given the two before it (two ``<s>`` before the first), then one ``</s>`` given the last two words.
  The model is trained on the same events (no second ``</s>``, no prediction of ``<s>``).
* interpolated Witten-Bell smoothing (``nltk.lm.WittenBellInterpolated``): each order is mixed with the
  order below in proportion to how many different words followed the context, so a context seen with few
  different continuations keeps most of its mass. The unigram order is mixed the same way with a uniform
  distribution over the vocabulary (nltk's unigram is the bare relative frequency, which gives an unseen
  word probability 0 and the caption an infinite perplexity): every caption gets a finite value.
* one vocabulary shared by every style's model (so perplexities of different styles are comparable): the
  words seen at least ``UNK_CUTOFF`` (2) times in all training captions. Rarer words, in training and in
  the scored captions, become ``<UNK>``, which the models learn like a word (the share of rare words after
  each context): an unseen word costs what a rare word costs in that place, not 1/|V|.
* the tokenization is the metrics' own (the same tokenizer as BLEU/CIDEr, lower-cased), passed in;
* a set of captions gets 2 ** (mean of -log2 p over all its scored events), each caption under the model
  of its requested style; reported overall, per style, and for the human references of the evaluated
  split scored the same way (the ceiling to compare with).

What the numbers mean: the perplexity is the effective number of equally likely choices per event. A
style's own training captions score a few units, held-out captions of the same style a little more
(their new content words), and captions of other styles far more: their style words are in the shared
vocabulary but were never seen in this style, so they get only the uniform share (a word of another
style costs more than an unknown word, which the style has seen as <UNK>), and the value can exceed |V|.
Measured (own training captions / held-out captions of the same style / other styles' references, each
under the style's model): the demo's PersonalityCaptions templates (1000 train, 500 test references,
|V| 114) 6.9 / 7.2 / 58.5 with add-one smoothing, 1.9 / 2.0 / 260 now; a synthetic corpus of 3 styles
with 1626 distinct words (tests/test_style_lm.py) 58.9 / 74.6 / 1662 before, 2.1 / 3.0 / 3567 now.
Before issue 22 the model used add-one (Laplace) smoothing, which gives each context's unseen words one
count each over the whole vocabulary: with a 15k vocabulary a style's own training captions scored ~1581,
a scale set by the vocabulary size rather than by the captions (and each caption had one extra,
near-certain ``</s>`` event). nltk's Kneser-Ney was not taken: its lowest order also gives 0 to a word
never seen after another, and it scans every stored n-gram for each lower-order probability (slow at
corpus size). Values still differ from the papers' (SRILM Kneser-Ney, other tokenizations): compare runs
with each other, not with published ppl.
"""
from __future__ import annotations

from typing import Callable, Iterable

ORDER = 3
UNK_CUTOFF = 2  # words seen fewer times in all training captions -> <UNK>
SMOOTHING = (f"interpolated Witten-Bell down to a uniform unigram (nltk.lm.WittenBellInterpolated); "
             f"words seen < {UNK_CUTOFF} times in training -> <UNK>")
BOS, EOS = "<s>", "</s>"


def _smoothing_class():
    """nltk's Witten-Bell estimator with the unigram order interpolated with the uniform distribution
    over the vocabulary, and the per-context mixing weights cached (the counts no longer change)."""
    from nltk.lm.smoothing import WittenBell

    class WittenBellToUniform(WittenBell):
        def __init__(self, vocabulary, counter, **kwargs):
            super().__init__(vocabulary, counter, **kwargs)
            self._gammas: dict[tuple, float] = {}
            self._unigram: tuple[float, float] | None = None  # (gamma, N)

        def _gamma(self, context):  # N1+(context .) / (N1+(context .) + c(context)), cached per context
            if context not in self._gammas:
                self._gammas[context] = super()._gamma(context)
            return self._gammas[context]

        def unigram_score(self, word):
            if self._unigram is None:
                uni = self.counts.unigrams
                types = sum(1 for c in uni.values() if c > 0)
                self._unigram = (types / (types + uni.N()), uni.N())
            gamma, n = self._unigram
            return (1.0 - gamma) * (self.counts.unigrams[word] / n) + gamma / len(self.vocab)

    return WittenBellToUniform


def _events(tokens: list[str], order: int) -> list[tuple[str, ...]]:
    """The n-grams predicting each of ``tokens`` and then one </s>: len(tokens) + 1 tuples of ``order``."""
    padded = [BOS] * (order - 1) + list(tokens) + [EOS]
    return [tuple(padded[i - order + 1:i + 1]) for i in range(order - 1, len(padded))]


class StyleLM:
    def __init__(self, tokenize: Callable[[str], list[str]], order: int = ORDER):
        self.tokenize, self.order = tokenize, order
        self.models: dict[str, object] = {}

    def fit(self, captions: list[str], styles: list[str]) -> "StyleLM":
        from collections import Counter

        from nltk.lm import Vocabulary
        from nltk.lm.models import InterpolatedLanguageModel
        tokens = [self.tokenize(c) for c in captions]
        by_style: dict[str, list[list[str]]] = {}
        for t, s in zip(tokens, styles):
            by_style.setdefault(s, []).append(t)
        counts = Counter(w for t in tokens for w in t)
        counts.update({BOS: UNK_CUTOFF, EOS: UNK_CUTOFF})  # the padding symbols are always words
        vocab = Vocabulary(counts, unk_cutoff=UNK_CUTOFF)  # shared: every style's model has the same |V|
        smoothing = _smoothing_class()
        for style, sents in by_style.items():
            lm = InterpolatedLanguageModel(smoothing, self.order, vocabulary=vocab)
            # every order's counts come from the same events: the k-gram ending at each predicted word
            lm.fit([[e[self.order - k:] for e in _events(t, self.order) for k in range(1, self.order + 1)]
                    for t in sents])
            self.models[style] = lm
        return self

    def _log2_losses(self, caption: str, style: str) -> list[float]:
        """-log2 p of each event of the caption (its tokens, then </s>) under ``style``'s model."""
        lm = self.models[style]
        return [-lm.logscore(g[-1], g[:-1]) for g in _events(self.tokenize(caption), self.order)]

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
