"""Chinese (CJK) segmentation for the caption metrics, the diversity measures and the style classifier.

Decoded Chinese has no spaces, and neither PTBTokenizer nor :func:`python_tokenize` segments CJK
text, so without this a Chinese caption is ONE token: BLEU-2..4, ROUGE-L and CIDEr then only
reward exact-sentence matches. The language is detected from the text (:func:`detect_language`),
then the captions are segmented:

* ``char`` (the default for Chinese): every CJK character is a token, as published Flickr30k-CN
  and COCO-CN tables score it; runs of Latin letters/digits stay whole words ("frisbee", "2").
* ``jieba``: words from jieba (``jieba.lcut``, its default dictionary and HMM), the well-kept
  Chinese segmenter.
* ``none``: no segmentation: PTBTokenizer (or its Python stand-in) as for English.

Both methods lower-case and drop punctuation (CJK and ASCII), like pycocoevalcap's PTBTokenizer
step drops punctuation for English. The segmented text REPLACES PTBTokenizer for Chinese
(PTBTokenizer leaves a Chinese sentence whole), so metrics.json's ``tokenizer`` names the method.
"""
from __future__ import annotations

import functools
import logging
import re
import warnings
from dataclasses import dataclass
from typing import Iterable

SEGMENT_CHOICES = ("auto", "char", "jieba", "none")
# Han (CJK unified ideographs, extensions, compatibility), radicals, 々〆〇, kana and bopomofo:
# the scripts written without spaces between words. Hangul is written with spaces: not here.
_CJK_CLASS = ("\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3038-\u303b\u3040-\u30ff\u3100-\u312f"
              "\u31a0-\u31bf\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f")
CJK = re.compile(f"[{_CJK_CLASS}]")
_WORD = re.compile(r"[^\W_]+")  # letters/digits (any script); CJK characters are spaced out first
ZH_SHARE = 0.5  # a text set is Chinese when at least half of its words/characters are CJK characters

METEOR_NOTE = ("METEOR 1.5 runs on the segmented text with its English settings: only exact token "
               "matches count for CJK (its stemmer, synonym and paraphrase tables are English)")


def _spaced(text: str) -> str:
    return CJK.sub(r" \g<0> ", text)


def cjk_share(texts: Iterable[str]) -> float:
    """Share of CJK characters among the units of ``texts`` (a unit: one CJK character or one
    run of other letters/digits), so "一只狗在玩frisbee" is 6 of 7, not 6 of 13 letters."""
    cjk = total = 0
    for t in texts:
        units = _WORD.findall(_spaced(str(t)))
        total += len(units)
        cjk += sum(1 for u in units if CJK.fullmatch(u))
    return cjk / total if total else 0.0


def detect_language(texts: Iterable[str]) -> str:
    """'zh' when at least ZH_SHARE of the units are CJK characters (see cjk_share), else 'en'."""
    return "zh" if cjk_share(texts) >= ZH_SHARE else "en"


@dataclass(frozen=True)
class Segmenter:
    """Splits captions into metric tokens by ``method`` ('char' or 'jieba'); see the module doc."""
    method: str

    def __post_init__(self):
        if self.method not in ("char", "jieba"):
            raise ValueError(f"segmentation method must be 'char' or 'jieba', not {self.method!r}")
        if self.method == "jieba":
            _jieba()  # fail now, with the install hint, not in the middle of scoring

    def tokens(self, text: str) -> list[str]:
        """Lower-cased tokens, punctuation dropped."""
        text = str(text).lower()
        if self.method == "char":
            return _WORD.findall(_spaced(text))
        # jieba keeps Latin words and numbers whole and returns punctuation/spaces as tokens of their own
        return [w for piece in _jieba().lcut(text) for w in _WORD.findall(piece)]

    def split_word(self, word: str) -> list[str]:
        """One word-like token (as another tokenizer found it) split the same way, for the style
        classifier, which keeps punctuation and only needs its words segmented."""
        return self.tokens(word) if CJK.search(word) else [word]

    def __call__(self, text: str) -> str:
        return " ".join(self.tokens(text))


@functools.lru_cache(maxsize=None)
def _jieba():
    try:
        with warnings.catch_warnings():  # jieba 0.42.1 imports the deprecated pkg_resources
            warnings.simplefilter("ignore", UserWarning)
            import jieba
    except ImportError:
        from stylecap.utils import UserError
        raise UserError("--segment jieba needs the jieba package: pip install jieba==0.42.1 "
                        "(or use --segment char, the default for Chinese)") from None
    jieba.setLogLevel(logging.WARNING)  # no "Building prefix dict ..." lines on every run
    return jieba


def segmenter_for(method: str) -> Segmenter | None:
    """The Segmenter for 'char' / 'jieba'; None for 'none'."""
    if method == "none":
        return None
    return Segmenter(method)


def resolve_segmentation(spec: "str | Segmenter | None", texts: Iterable[str]) -> tuple[Segmenter | None, dict]:
    """(segmenter or None, the record for metrics.json) from ``spec``: 'auto' (char for Chinese,
    none otherwise), 'char', 'jieba', 'none'/None, or a Segmenter already chosen by the caller.
    The language is always detected from ``texts`` and recorded."""
    language = detect_language(texts)
    if isinstance(spec, Segmenter):
        seg = spec
    elif spec is None or spec == "none":
        seg = None
    elif spec == "auto":
        seg = Segmenter("char") if language == "zh" else None
    elif spec in SEGMENT_CHOICES:
        seg = Segmenter(spec)
    else:
        raise ValueError(f"segmentation must be one of {SEGMENT_CHOICES}, not {spec!r}")
    info = {"language": language, "method": seg.method if seg else "none"}
    if seg is not None:
        info["note"] = (("CJK characters are tokens" if seg.method == "char" else "jieba words are tokens")
                        + ", runs of Latin letters/digits stay words, punctuation dropped; used instead of "
                          "PTBTokenizer, which does not segment CJK. " + METEOR_NOTE)
    return seg, info
