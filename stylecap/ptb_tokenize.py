"""A pure-Python stand-in for pycocoevalcap's PTBTokenizer (used when Java is missing).

pycocoevalcap runs Stanford's PTBTokenizer 3.4.1 (``-preserveLines -lowerCase``) and then drops
the tokens in its PUNCTUATIONS list. :func:`python_tokenize` reproduces that output.
"""
from __future__ import annotations

import re

# pycocoevalcap/tokenizer/ptbtokenizer.py PUNCTUATIONS: tokens PTBTokenizer's output loses.
PTB_PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                    ".", "?", "!", ",", ":", "-", "--", "...", ";"}
# PTBTokenizer -lowerCase writes brackets as lower-case -lrb- etc., which the (upper-case)
# list above does not catch, so they stay in the token stream; we do the same.
_BRACKETS = {"(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ", "{": " -lcb- ", "}": " -rcb- "}
_INITIALS = re.compile(r"(?:[a-z]\.)+")  # u.s., a.m.
_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "vs.", "etc.", "inc.", "ltd.", "co.",
                  "corp.", "prof.", "mt.", "ft.", "e.g.", "i.e."}
# (substrings that trigger the rule, pattern, replacement); the trigger check skips most regexes
# on most captions, which matters for the 187k PersonalityCaptions training captions.
_SPLIT_RULES = [
    (("...",), re.compile(r"\.\.\.+"), " ... "),                            # ellipsis is its own token
    (("--",), re.compile(r"--+"), " -- "),
    (('"',), re.compile(r'"'), " `` "),                                     # double quotes (dropped later)
    (tuple(",;:"), re.compile(r"(?<!\d)[,;:]|[,;:](?!\d)"), r" \g<0> "),    # 1,000 and 3:30 stay whole
    (tuple("?!"), re.compile(r"[?!]+"), r" \g<0> "),                        # "?!" and "!!!" stay one token
    (tuple("$%+="), re.compile(r"[$%+=]"), r" \g<0> "),
    (("'",), re.compile(r"(^|\s)'"), r"\1 ' "),                             # opening single quote
    (("'",), re.compile(r"(?<=[^\s'])'(?=\s|$)"), " ' "),                   # closing quote / plural possessive
    (("'",), re.compile(r"(\w)(n't)\b"), r"\1 \2"),                         # don't -> do n't, can't -> ca n't
    (("'",), re.compile(r"(\w)('s|'m|'d|'re|'ve|'ll)\b"), r"\1 \2"),        # it's -> it 's
    (("cannot",), re.compile(r"\b(can)(not)\b"), r"\1 \2"),
    (("nna", "tta"), re.compile(r"\b(gon|wan)(na)\b|\b(got)(ta)\b"), lambda m: " ".join(g for g in m.groups() if g)),
]


def python_tokenize(caption: str) -> str:
    """Pure-Python stand-in for pycocoevalcap's PTBTokenizer (used when Java is missing).

    Lower-cases, splits like Stanford's PTB tokenizer (punctuation, contractions "do n't",
    "it 's", "can not", "gon na", brackets -> -lrb-...), then drops the tokens that
    pycocoevalcap's PUNCTUATIONS list drops. On ordinary captions it gives the same tokens as
    PTBTokenizer (the tests check this on demo captions and punctuation/contraction cases); rare
    constructs differ (emoticons such as ":)", 6'2", "rock 'n' roll", "no." before a number).
    """
    s = " ".join(caption.lower().split())
    for a, b in (("\u201c", '"'), ("\u201d", '"'), ("\u201e", '"'), ("\u2018", "'"), ("\u2019", "'")):
        s = s.replace(a, b)
    for ch, rep in _BRACKETS.items():
        s = s.replace(ch, rep)
    for trigger, pattern, rep in _SPLIT_RULES:
        if any(t in s for t in trigger):
            s = pattern.sub(rep, s)
    out = []
    for tok in s.split():
        # a final period is split off unless the token is an abbreviation (u.s., mr., etc.)
        if tok.endswith(".") and tok.strip(".") and tok not in _ABBREVIATIONS \
                and not _INITIALS.fullmatch(tok):
            out.append(tok[:-1])
            tok = "."
        out.append(tok)
    return " ".join(t for t in out if t not in PTB_PUNCTUATIONS)

