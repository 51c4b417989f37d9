"""Chinese (CJK) segmentation for the caption metrics, the diversity measures and the style classifier.

Decoded Chinese has no spaces, and neither PTBTokenizer nor :func:`python_tokenize` segments CJK
text, so without this a Chinese caption is ONE token: BLEU-2..4, ROUGE-L and CIDEr then only
reward exact-sentence matches. Each caption is segmented by its own script (:func:`caption_kind`: Chinese
when at least half of its words/characters are CJK characters), so a set that mixes Chinese and English
images scores both right: the Chinese captions are split by ``method``, the others go through
PTBTokenizer (or its Python stand-in) as English does. The methods for Chinese captions:

* ``char`` (the default for Chinese): every CJK character is a token, as published Flickr30k-CN
  and COCO-CN tables score it; runs of Latin letters/digits stay whole words ("frisbee", "2").
* ``jieba``: words from jieba (``jieba.lcut``, its default dictionary and HMM), the well-kept
  Chinese segmenter.
* ``none``: no segmentation: PTBTokenizer (or its Python stand-in) as for English.

Both methods lower-case and drop punctuation (CJK and ASCII), like pycocoevalcap's PTBTokenizer
step drops punctuation for English. The segmented text REPLACES PTBTokenizer for Chinese captions
(PTBTokenizer leaves a Chinese sentence whole), so metrics.json's ``tokenizer`` names the method
("char+ptb" when both ran). metrics.json's ``segmentation`` describes the references (the test set), so
that every system scored on them gets the same record: ``language`` 'zh', 'en' (no Chinese reference) or
'mixed', plus, for a mixed set, the count of each kind of reference caption and image.
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


def caption_kind(text: str) -> str | None:
    """'zh' when at least ZH_SHARE of one caption's units are CJK characters (see cjk_share), 'en' (any
    other script: PTBTokenizer's) when it has words but fewer, None when it has no letter/digit at all."""
    units = _WORD.findall(_spaced(str(text)))
    if not units:
        return None
    return "zh" if sum(1 for u in units if CJK.fullmatch(u)) / len(units) >= ZH_SHARE else "en"


def detect_language(texts: Iterable[str]) -> str:
    """'zh' when every caption (with words) is Chinese (caption_kind), 'en' when none is, else 'mixed'."""
    kinds = {caption_kind(t) for t in texts} - {None}
    return "mixed" if len(kinds) > 1 else "zh" if kinds == {"zh"} else "en"


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

    def is_segmented(self, text: str) -> bool:
        """Whether ``text`` goes through this segmenter: a Chinese caption (or one without words, as
        before); any other caption goes through PTBTokenizer / python_tokenize like English."""
        return caption_kind(text) != "en"

    def split_word(self, word: str) -> list[str]:
        """One word-like token (as another tokenizer found it) split the same way, for the style
        classifier, which keeps punctuation and only needs its words segmented."""
        return self.tokens(word) if CJK.search(word) else [word]

    def __call__(self, text: str) -> str:
        """The caption's metric tokens, space-joined: segmented when Chinese, python_tokenize (PTBTokenizer's
        stand-in) otherwise, so that a set mixing both is tokenized caption by caption."""
        if self.is_segmented(text):
            return " ".join(self.tokens(text))
        from stylecap.eval.ptb_tokenize import python_tokenize
        return python_tokenize(text)


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


def resolve_segmentation(spec: "str | Segmenter | None", texts: Iterable[str],
                         references: Iterable[str] | None = None) -> tuple[Segmenter | None, dict]:
    """(segmenter or None, the record for metrics.json) from ``spec``: 'auto' or 'char' (characters),
    'jieba', 'none'/None (PTBTokenizer for everything), or a Segmenter already chosen by the caller.
    The segmenter splits the Chinese captions among ``texts`` (every caption to be tokenized); it is None
    when none of them is Chinese. The record describes ``references`` (default: ``texts``): its language
    ('zh', 'en' or 'mixed'), the method applied to its Chinese captions ('none' when it has none), and for
    a mixed set the count of each kind of caption."""
    texts = list(texts)
    refs = texts if references is None else list(references)
    if spec is not None and not isinstance(spec, Segmenter) and spec not in SEGMENT_CHOICES:
        raise ValueError(f"segmentation must be one of {SEGMENT_CHOICES}, not {spec!r}")
    seg = None
    if spec not in (None, "none") and any(caption_kind(t) == "zh" for t in texts):
        seg = spec if isinstance(spec, Segmenter) else Segmenter("char" if spec == "auto" else spec)
    kinds = [caption_kind(t) for t in refs]
    language = "mixed" if {"zh", "en"} <= set(kinds) else "zh" if "zh" in kinds else "en"  # detect_language
    info = {"language": language, "method": seg.method if seg is not None and language != "en" else "none"}
    if language == "mixed":
        info["captions"] = {"zh": kinds.count("zh"), "en": kinds.count("en")}
    if info["method"] != "none":
        info["note"] = (("CJK characters are tokens" if seg.method == "char" else "jieba words are tokens")
                        + ", runs of Latin letters/digits stay words, punctuation dropped; used instead of "
                          "PTBTokenizer, which does not segment CJK"
                        + (", for the Chinese captions (the others go through PTBTokenizer). "
                           if language == "mixed" else ". ") + METEOR_NOTE)
    return seg, info
