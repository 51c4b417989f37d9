"""Item 9 (tokenizers): the no-Java tokenizer equals pycocoevalcap's PTBTokenizer on informal,
PersonalityCaptions-style captions (emoticons, hashtags, '*', '/', emoji, repeated punctuation,
URLs, ALL CAPS, slang contractions)."""
from __future__ import annotations

import shutil

import pytest

from stylecap.demo.informal import EDGE_CASES, informal_captions
from stylecap.eval.coco_metrics import _tokenize, score_captions
from stylecap.eval.ptb_tokenize import python_tokenize

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="Java not installed")

# PTBTokenizer 3.4.1's output (-lowerCase, pycocoevalcap's punctuation dropped), recorded with Java 17.
KNOWN = {
    "so cute :)": "so cute :-rrb-",
    "so sad :-(": "so sad :--lrb-",
    "I love it :D!!!": "i love it :d !!!",
    "ugh :/ why": "ugh / why",
    "<3 <3": "< 3 < 3",
    "#blessed #so_cute #1": "#blessed #so _ cute # 1",
    "@Sarah_K look": "@sarah_k look",
    "*sigh* w/ my bff and/or 24/7": "* sigh * w / my bff and/or 24/7",
    "love it😍 ❤️ 👏🏽": "love it ❤",
    "no.. way... wait…what": "no way wait what",
    "check http://www.example.com now": "check http://www.example.com now",
    "£5 or €10": "# 5 or $ 10",
    "+1 c++ a+": "+1 c++ a +",
    "rock 'n' roll, 'cause y'all get 'em in the '90s": "rock 'n' roll 'cause y' all get 'em in the '90s",
    "'tis gimme it'd've": "'t is gim me it 'd 've",
    "No. 1 in Jan.": "no. 1 in jan.",
    "8-) >:( ^_^ o_O": "8 -rrb- >:-lrb- ^_^ o_o",
    "Is that a... dog?!": "is that a. dog ?!",
}


@pytest.mark.parametrize("caption", sorted(KNOWN))
def test_python_tokenize_informal_known_ptb_outputs(caption):
    assert python_tokenize(caption) == KNOWN[caption]


def _both(captions):
    groups = {i: [c] for i, c in enumerate(captions)}
    return _tokenize(groups, use_ptb=True), _tokenize(groups, use_ptb=False)


@needs_java
def test_python_tokenize_equals_ptbtokenizer_on_informal_captions():
    captions = informal_captions(400, seed=0) + EDGE_CASES + list(KNOWN)
    ptb, py = _both(captions)
    differ = [(captions[i], ptb[i][0], py[i][0]) for i in range(len(captions)) if ptb[i] != py[i]]
    assert not differ, differ[:10]


@needs_java
def test_known_outputs_are_ptbtokenizer_outputs():
    ptb, _ = _both(list(KNOWN))
    assert [ptb[i][0] for i in range(len(KNOWN))] == list(KNOWN.values())


@needs_java
def test_informal_metrics_are_the_same_with_either_tokenizer():
    captions = informal_captions(150, seed=1)
    preds = {i: c for i, c in enumerate(captions)}
    refs = {i: [captions[(i + j) % len(captions)] for j in (1, 2, 3)] + [c] * (i % 2) for i, c in enumerate(captions)}
    kw = dict(spice=False, metrics=("BLEU", "CIDEr"), quiet=True)
    with_java, without = score_captions(preds, refs, **kw), score_captions(preds, refs, java=False, **kw)
    assert with_java["tokenizer"] == "ptb" and without["tokenizer"] == "python"
    for m in ("BLEU-4", "CIDEr"):
        assert without[m] == pytest.approx(with_java[m], abs=1e-12)
