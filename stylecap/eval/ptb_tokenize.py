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
                  "corp.", "prof.", "mt.", "ft.", "e.g.", "i.e.", "jan.", "feb.", "mar.", "apr.", "jun.", "jul.",
                  "aug.", "sep.", "sept.", "oct.", "nov.", "dec.", "mon.", "tue.", "wed.", "thu.", "fri.", "sat.",
                  "sun.", "gen.", "gov.", "sen.", "rep.", "rev.", "capt.", "col.", "lt.", "sgt.", "ave.", "blvd."}
# Characters PTBLexer 3.4.1 cannot tokenize and deletes (with a warning): everything outside the
# Basic Multilingual Plane (most emoji, skin tones) and the emoji variation selectors / joiner.
_UNTOKENIZABLE = re.compile("[\U00010000-\U0010ffff\ufe0e\ufe0f\u200d]")
# Whole tokens PTBLexer keeps as they are (matched on the original case): URLs, emoticons (brackets
# inside them become -lrb-/-rrb-), "^_^"-style smileys, hashtags, mentions, "'n'", "'em", "'90s" ...
_KEEP = re.compile("|".join([
    r"(?:https?|ftp)://[^\s\"<>|()]*[^\s\"<>|.!?(){},-]",                     # FULLURL
    r"(?<![^\s(\[{\"'])www\.(?:[^\s\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}(?:/[^\s\"<>|()]*[^\s\"<>|.!?(){},-])?",
    r"(?<![^\s(\[{\"'])(?:[^\s\"`'<>|.!?(){},\-_$]+\.)+(?:com|net|org|edu)(?:/[^\s\"<>|()]*[^\s\"<>|.!?(){},-])?(?![\w.])",
    r"[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]](?![\w])",                          # SMILEY
    r"(?<![\w])[\^x=~<>\-'oOT0]_[\^x=~<>\-'oOT0](?![\w])",                  # ^_^ o_O T_T -_-
    r"(?<![\w#])#[A-Za-z]+(?![A-Za-z0-9])",                                 # hashtag (letters only)
    r"(?<![\w@])@[A-Za-z0-9_]+",                                            # mention
    r"(?<![\w'])'(?:n'|em|cause|cos|til|till|\d\ds)(?![\w'])",              # 'n' 'em 'cause '90s
    r"(?<![\w+])[cC]\+\+(?![\w+])",                                         # c++
    r"(?<![\w.])[nN]o\.(?=\s+\d)",                                          # "no." before a number
    r"(?<![\w'])[yY]'(?=[aA][lL][lL]\b)",                                   # y'all -> y' all
    r"(?<=\w)'n'(?=\w)",                                                    # rock'n'roll -> rock 'n' roll
]))
# Every _KEEP pattern needs one of these; most captions have none, and skipping _KEEP then
# keeps the tokenizer fast on PersonalityCaptions' 187k training captions.
_KEEP_TRIGGER = re.compile(r"[:;=_#@'+]|www\.|\.(?:com|net|org|edu)|[nN]o\.")
_SMILEY_BRACKETS = re.compile(r"[()\[\]{}]")
_SYMBOL = re.compile(r"[^\w\s\x00-\x7f\u00a0-\u00bf\u2018-\u201f\u2026\u2013\u2014]|[\u00a2-\u00a9\u00ac\u00ae-\u00b1\u00b4\u00b6]")
# (substrings that trigger the rule, pattern, replacement); the trigger check skips most regexes
# on most captions, which matters for the 187k PersonalityCaptions training captions.
_SPLIT_RULES = [
    (("...",), re.compile(r"(?<![\w.])([a-z])\.(?=\.\.)"), r"\1. "),           # "a..." -> "a." ".." (an initial)
    (("..", "\u2026"), re.compile(r"\.\.+|\u2026"), " ... "),              # "..", "...." and "…" are an ellipsis
    (("--", "\u2013", "\u2014"), re.compile(r"--+|[\u2013\u2014]"), " -- "),
    (("-",), re.compile(r"(?<=[^\s-])(?<!-[lr][rsc]b)-(?=\s|$)"), " - "),   # "8-)": a trailing hyphen
    (('"',), re.compile(r'"'), " `` "),                                     # double quotes (dropped later)
    (tuple(",;:"), re.compile(r"(?<!\d)[,;:]|[,;:](?!\d)"), r" \g<0> "),    # 1,000 and 3:30 stay whole
    (tuple("?!"), re.compile(r"[?!]+"), r" \g<0> "),                        # "?!" and "!!!" stay one token
    (("\u00a3", "\u20ac"), re.compile("[\u00a3\u20ac]"), lambda m: {"\u00a3": " # ", "\u20ac": " $ "}[m.group()]),
    (tuple("$%=<>~_#\u00a5"), re.compile("[$%=<>~_#\u00a5]"), r" \g<0> "),
    (("+",), re.compile(r"\+(?=\d)"), " +"),                                # "+1" is a number, "1+1" -> 1 +1
    (("+",), re.compile(r"\+(?!\d)"), " + "),
    (("*",), re.compile(r"\*+"), r" \g<0> "),                               # "*sigh*" -> * sigh *
    (("/",), re.compile(r"(?<![^\W_])/|/(?![^\W_])"), " / "),               # and/or, 1/2 stay; w/ -> w /
    (("'",), re.compile(r"(?<=\d)'(?=\d)"), " ' "),                         # 5'2
    (("'t",), re.compile(r"(?<![\w'])'t(is|was)\b"), r"'t \1"),             # 'tis -> 't is
    (("'",), re.compile(r"(^|\s)'(?!t )"), r"\1 ' "),                       # opening single quote
    (("'",), re.compile(r"(?<=[^\s'])'(?=\s|$)"), " ' "),                   # closing quote / plural possessive
    (("'",), re.compile(r"(\w)(n't)\b"), r"\1 \2"),                         # don't -> do n't, can't -> ca n't
    (("'",), re.compile(r"(?<=\w)('s|'m|'d|'re|'ve|'ll)\b"), r" \1"),       # it's -> it 's, it'd've -> it 'd 've
    (("cannot",), re.compile(r"\b(can)(not)\b"), r"\1 \2"),
    (("nna", "tta", "mme"), re.compile(r"\b(gon|wan)(na)\b|\b(got)(ta)\b|\b(gim|lem)(me)\b"),
     lambda m: " ".join(g for g in m.groups() if g)),
    (tuple("0123456789"), re.compile(r"(\d\.\d+)([a-z])"), r"\1 \2"),       # 1.5x -> 1.5 x
]


def _keep(m: re.Match, kept: list[str]) -> str:
    tok = m.group()
    if tok[:1] in "<>:;=" and len(tok) > 1 and tok[1:2] != "_":  # an emoticon: its bracket is escaped
        tok = _SMILEY_BRACKETS.sub(lambda b: _BRACKETS[b.group()].strip(), tok)
    kept.append(tok.lower())
    return f" \x00{len(kept) - 1}\x00 "


def python_tokenize(caption: str) -> str:
    """Pure-Python stand-in for pycocoevalcap's PTBTokenizer (used when Java is missing).

    Lower-cases, splits like Stanford's PTB tokenizer 3.4.1 (punctuation, contractions "do n't",
    "it 's", "can not", "gon na", brackets -> -lrb-..., emoticons ":-rrb-", hashtags, URLs,
    emoji outside the BMP deleted), then drops the tokens that pycocoevalcap's PUNCTUATIONS list
    drops. The tests check it equals PTBTokenizer on demo captions and on a set of informal
    PersonalityCaptions-style captions (scripts/compare_tokenizers.py); the README states the
    measured remaining difference.
    """
    s = " ".join(_UNTOKENIZABLE.sub("", caption).split())
    for a, b in (("\u201c", '"'), ("\u201d", '"'), ("\u201e", '"'), ("\u2018", "'"), ("\u2019", "'")):
        s = s.replace(a, b)
    kept: list[str] = []
    if _KEEP_TRIGGER.search(s):
        s = _KEEP.sub(lambda m: _keep(m, kept), s)
    s = s.lower()
    if not s.isascii():  # symbols and emoji-like characters are tokens of their own
        s = _SYMBOL.sub(r" \g<0> ", s)
    for ch, rep in _BRACKETS.items():
        s = s.replace(ch, rep)
    for trigger, pattern, rep in _SPLIT_RULES:
        if any(t in s for t in trigger):
            s = pattern.sub(rep, s)
    out = []
    for tok in s.split():
        if tok.startswith("\x00"):
            out.append(kept[int(tok.strip("\x00"))])
            continue
        if tok.startswith(".") and tok[1:2].isalpha():  # ".hidden": a leading period is a token
            out.append(".")
            tok = tok[1:]
        # a final period is split off unless the token is an abbreviation (u.s., mr., etc.)
        if tok.endswith(".") and tok.strip(".") and tok not in _ABBREVIATIONS \
                and not _INITIALS.fullmatch(tok):
            out.append(tok[:-1])
            tok = "."
        out.append(tok)
    return " ".join(t for t in out if t not in PTB_PUNCTUATIONS)
