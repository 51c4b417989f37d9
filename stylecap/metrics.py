"""Caption metrics: the COCO toolkit's numbers, CLIPScore, diversity and per-style breakdowns.

Standard metrics come from pycocoevalcap (the COCO caption toolkit) so they compare with
published tables: PTBTokenizer, then BLEU-1..4 (corpus-level, "closest" reference length),
METEOR 1.5, ROUGE-L, CIDEr-D and SPICE, all on pycocoevalcap's 0-1 scale, every reference of
an image counted. Only keys that have a prediction are scored (as the COCO toolkit does).

Java. PTBTokenizer, METEOR and SPICE run Java. Without Java (``java=False`` or no ``java`` on
PATH) :func:`python_tokenize` replaces PTBTokenizer for BLEU, ROUGE-L and CIDEr (pure-Python
scorers), and METEOR/SPICE are skipped with the reason.

SPICE needs Stanford CoreNLP 3.6.0 (``stanford-corenlp-3.6.0.jar`` and
``stanford-corenlp-3.6.0-models.jar``), which pycocoevalcap downloads on first use. There is no
network here, so we never call its downloader: we look for both jars in ``spice_jars``
(--spice_jars), then ``$STYLECAP_SPICE_JARS``, then pycocoevalcap's ``spice/lib`` folder (copying
them there also works, as for pycocoevalcap itself). When found, we run
pycocoevalcap's own ``spice-1.0.jar`` with the same options its ``Spice`` class uses
(``-subset -silent``, 8 GB heap, PTB-tokenized input), but with an explicit classpath (so the
jars may live anywhere) and temporary files outside site-packages (so a read-only install
works). No LMDB ``-cache``: slower on re-runs, but it removes a native-library failure mode.
Any SPICE failure becomes ``skipped["SPICE"]``; the other metrics are still reported.

Per-style / per-group numbers: BLEU is recomputed corpus-level on the subset; METEOR is the
jar's aggregate over the subset's statistics (one METEOR process per evaluation, statistics
computed once); ROUGE-L and SPICE are means of per-image scores (exactly how pycocoevalcap
averages them); CIDEr is the mean of per-image CIDEr-D with document frequencies from the
whole evaluated set (recomputing IDF on a 50-image subset would make styles incomparable).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable

import numpy as np
import torch
from loguru import logger

STANDARD = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
SPICE_JARS_ENV = "STYLECAP_SPICE_JARS"
JRE_HINT = "install a JRE (e.g. apt-get install default-jre) to enable"
CLIPSCORE_PROMPT = "A photo depicts"  # Hessel et al.'s prefix, added to candidates and references

# ============================================================================ tokenization
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


def java_status(java: bool | None) -> tuple[bool, str | None]:
    """(usable, reason if not). ``None`` autodetects ``java`` on PATH; ``False`` forces it off."""
    if java is False:
        return False, f"Java disabled (--no_java / java=False); drop that option and {JRE_HINT}"
    if shutil.which("java") is None:
        return False, f"Java not found; {JRE_HINT}"
    return True, None


def _clean(caption: str) -> str:
    # One line per caption: PTBTokenizer aligns output lines to inputs, so any line break
    # (\r, \u2028, ...) inside a caption would shift every later caption.
    return " ".join(str(caption).split())


def _tokenize(groups: dict[Hashable, list[str]], use_ptb: bool) -> dict[Hashable, list[str]]:
    if not use_ptb:
        return {k: [python_tokenize(c) for c in v] for k, v in groups.items()}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    out = PTBTokenizer().tokenize({k: [{"caption": _clean(c)} for c in v] for k, v in groups.items()})
    for k, v in groups.items():  # an empty last caption can lose its (empty) output line
        out.setdefault(k, [])
        out[k] += [""] * (len(v) - len(out[k]))
    return out


# ============================================================================ SPICE / METEOR
def spice_dir() -> Path:
    import pycocoevalcap.spice as sp
    return Path(sp.__file__).resolve().parent


def find_spice_jars(spice_jars: str | os.PathLike | None = None) -> tuple[Path | None, str | None]:
    """The folder holding both CoreNLP 3.6.0 jars, or (None, reason + how to enable)."""
    lib = spice_dir() / "lib"
    candidates = [Path(p) for p in (spice_jars, os.environ.get(SPICE_JARS_ENV)) if p] + [lib]
    for folder in candidates:
        if all((folder / j).is_file() for j in CORENLP_JARS):
            return folder, None
    how = (f"put {' and '.join(CORENLP_JARS)} (from stanford-corenlp-full-2015-12-09.zip) in {lib}, "
           f"or pass --spice_jars DIR / set {SPICE_JARS_ENV}=DIR to enable")
    given = [str(c) for c in candidates[:-1]]
    return None, f"Stanford CoreNLP 3.6.0 jars not found{' in ' + ', '.join(given) if given else ''}; {how}"


def run_spice(gts: dict[int, list[str]], res: dict[int, list[str]], jar_folder: Path) -> tuple[float, list[float]]:
    """pycocoevalcap's Spice.compute_score, with our classpath and temp files (module docstring)."""
    home = spice_dir()
    ids = sorted(gts)
    classpath = os.pathsep.join([str(home / "spice-1.0.jar"), str(home / "lib" / "*")]
                                + [str(jar_folder / j) for j in CORENLP_JARS])
    with tempfile.TemporaryDirectory(prefix="stylecap_spice_") as tmp:
        in_file, out_file = Path(tmp) / "input.json", Path(tmp) / "output.json"
        in_file.write_text(json.dumps([{"image_id": i, "test": res[i][0], "refs": gts[i]} for i in ids]))
        cmd = ["java", "-Xmx8G", "-cp", classpath, "edu.anu.spice.SpiceScorer", str(in_file),
               "-out", str(out_file), "-subset", "-silent"]
        proc = subprocess.run(cmd, cwd=home, capture_output=True, text=True)
        if proc.returncode != 0 or not out_file.is_file():
            # a Java stack trace: keep the exception lines, not the 'at ...' frames
            heads = [l.strip() for l in proc.stderr.splitlines() if l.strip() and not l[:1].isspace()]
            why = "; ".join(heads[:1] + [l for l in heads[1:] if l.startswith("Caused by")][-1:]) or "no output"
            raise RuntimeError(f"SPICE java exited with {proc.returncode}: {why[:400]}")
        results = json.loads(out_file.read_text())
    by_id = {item["image_id"]: item["scores"] for item in results}

    def f(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return float("nan")
    per = [f(by_id[i]["All"]["f"]) for i in ids]
    return float(np.mean(per)), per


class MeteorStats:
    """One METEOR 1.5 process: per-caption statistics once, then aggregates for any subset.

    Mirrors pycocoevalcap's Meteor.compute_score (SCORE lines give statistics, an EVAL line
    over them gives per-caption scores plus the corpus aggregate)."""

    def __init__(self):
        from pycocoevalcap.meteor.meteor import Meteor
        self.m = Meteor()

    def stats(self, gts: dict[int, list[str]], res: dict[int, list[str]]) -> dict[int, str]:
        return {i: self.m._stat(res[i][0], gts[i]) for i in gts}

    def score(self, stats: list[str]) -> tuple[float, list[float]]:
        p = self.m.meteor_p
        p.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
        p.stdin.flush()
        per = [float(p.stdout.readline().strip()) for _ in stats]
        return float(p.stdout.readline().strip()), per

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.m.meteor_p.stdin.close()
            self.m.meteor_p.kill()
            self.m.meteor_p.wait(timeout=10)


# ============================================================================ scoring
def _none_metrics(reason: str) -> dict:
    return {**{m: None for m in STANDARD}, "skipped": {m: reason for m in STANDARD}, "per_image": {},
            "tokenizer": None, "subsets": {}}


ALL_SCORERS = ("BLEU", "METEOR", "ROUGE-L", "CIDEr", "SPICE")


def _bleu_scorer(gts: dict, res: dict, ids: list[int]):
    """pycocoevalcap's Bleu.compute_score, split in two: the cooked n-gram counts are kept so
    a subset's corpus BLEU needs no re-counting (220 PersonalityCaptions subsets would)."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer
    scorer = BleuScorer(n=4)
    for i in ids:
        scorer += (res[i][0], gts[i])
    return scorer


def _bleu(scorer, ids: list[int] | None = None):
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer
    if ids is not None:  # same cooked statistics, fewer images
        sub = BleuScorer(n=4)
        sub.crefs, sub.ctest = [scorer.crefs[i] for i in ids], [scorer.ctest[i] for i in ids]
        scorer = sub
    with contextlib.redirect_stdout(io.StringIO()):
        return scorer.compute_score(option="closest", verbose=0)


def score_captions(predictions: dict[Hashable, str], references: dict[Hashable, list[str]], *,
                   java: bool | None = None, spice: bool = True, spice_jars: str | None = None,
                   subsets: dict[str, list[Hashable]] | None = None,
                   metrics: tuple[str, ...] = ALL_SCORERS, quiet: bool = False) -> dict:
    """COCO-toolkit metrics of ``predictions[key]`` against ``references[key]`` (several each).

    Returns BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE (0-1; None when skipped, the reason in
    ``skipped``), ``per_image`` {key: {metric: value}}, ``tokenizer`` ("ptb" | "python") and, for
    each named list of keys in ``subsets``, the same metrics on that subset (see module doc).
    ``metrics`` limits the scorers run (names in ALL_SCORERS; the rest are skipped).
    """
    missing = [k for k in predictions if not references.get(k)]
    if missing:
        raise ValueError(f"{len(missing)} prediction keys have no references, e.g. {missing[:3]}")
    keys = list(predictions)
    if not keys:
        return _none_metrics("no predictions to score")
    index = {k: i for i, k in enumerate(keys)}  # scorers want plain, sortable, JSON-able ids
    ids = list(range(len(keys)))
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    use_java, java_reason = java_status(java)
    skipped: dict[str, str] = {}
    tokenizer = "ptb" if use_java else "python"
    groups = {("g", i): list(references[k]) for i, k in enumerate(keys)}
    groups.update({("r", i): [predictions[k]] for i, k in enumerate(keys)})
    try:
        tok = _tokenize(groups, use_java)  # one Java start for references and predictions
    except Exception as e:  # e.g. a read-only site-packages: PTBTokenizer writes a temp file there
        logger.warning(f"PTBTokenizer failed ({e}); using the pure-Python tokenizer")
        tok, tokenizer = _tokenize(groups, False), "python"
    gts = {i: tok[("g", i)] for i in ids}
    res = {i: tok[("r", i)] for i in ids}

    out: dict[str, Any] = {m: None for m in STANDARD}
    per: dict[str, list[float]] = {}
    not_asked = "not requested (metrics=...)"
    bleu_scorer = None
    if "BLEU" in metrics:
        bleu_scorer = _bleu_scorer(gts, res, ids)
        bleu, bleu_per = _bleu(bleu_scorer)
        for n in range(4):
            out[f"BLEU-{n + 1}"], per[f"BLEU-{n + 1}"] = float(bleu[n]), list(bleu_per[n])
    else:
        skipped.update({f"BLEU-{n}": not_asked for n in range(1, 5)})
    for name, cls in (("ROUGE-L", Rouge), ("CIDEr", Cider)):
        if name in metrics:
            value, values = cls().compute_score(gts, res)
            out[name], per[name] = float(value), list(values)
        else:
            skipped[name] = not_asked

    # METEOR: one process for the whole evaluation, subsets re-use its statistics.
    meteor_stats, meteor = None, None
    if "METEOR" not in metrics:
        skipped["METEOR"] = not_asked
    elif not use_java:
        skipped["METEOR"] = java_reason
    else:
        try:
            meteor = MeteorStats()
            meteor_stats = meteor.stats(gts, res)
            out["METEOR"], per["METEOR"] = meteor.score([meteor_stats[i] for i in ids])
        except Exception as e:
            skipped["METEOR"] = f"METEOR failed ({type(e).__name__}: {e})"
            meteor_stats = None

    if "SPICE" not in metrics:
        skipped["SPICE"] = not_asked
    elif not spice:
        skipped["SPICE"] = "disabled (--no_spice / spice=False)"
    elif not use_java:
        skipped["SPICE"] = java_reason
    else:
        folder, reason = find_spice_jars(spice_jars)
        if folder is None:
            skipped["SPICE"] = reason
        else:
            try:
                out["SPICE"], per["SPICE"] = run_spice(gts, res, folder)
            except Exception as e:  # a Java failure must not kill the evaluation
                skipped["SPICE"] = f"SPICE failed ({type(e).__name__}: {e}); the other metrics are unaffected"
    for m, reason in skipped.items():
        (logger.debug if quiet else logger.info)(f"{m}: skipped ({reason})")

    result = {m: out[m] for m in STANDARD}
    result["skipped"] = skipped
    result["tokenizer"] = tokenizer
    result["per_image"] = {k: {m: float(v[i]) for m, v in per.items()} for i, k in enumerate(keys)}
    result["subsets"] = {}
    try:
        for name, sub_keys in (subsets or {}).items():
            sub_ids = [index[k] for k in sub_keys if k in index]
            if sub_ids:
                result["subsets"][name] = _subset_scores(sub_ids, per, bleu_scorer, meteor, meteor_stats)
    finally:
        if meteor is not None:
            meteor.close()
    return result


def _subset_scores(ids, per, bleu_scorer, meteor, meteor_stats) -> dict:
    sub: dict[str, Any] = {"n": len(ids), **{m: None for m in STANDARD}}
    if bleu_scorer is not None:
        bleu, _ = _bleu(bleu_scorer, ids)
        sub.update({f"BLEU-{n + 1}": float(bleu[n]) for n in range(4)})
    if meteor_stats is not None:
        with contextlib.suppress(Exception):
            sub["METEOR"] = meteor.score([meteor_stats[i] for i in ids])[0]
    for m in ("ROUGE-L", "CIDEr", "SPICE"):
        if m in per:
            sub[m] = float(np.mean([per[m][i] for i in ids]))
    return sub


# ============================================================================ CLIPScore
@torch.no_grad()
def _encode_text(clip_model, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    import clip
    device = next(clip_model.parameters()).device
    chunks = []
    for s in range(0, len(texts), batch_size):
        tokens = clip.tokenize(texts[s:s + batch_size], truncate=True).to(device)
        chunks.append(torch.nn.functional.normalize(clip_model.encode_text(tokens).float(), dim=-1))
    return torch.cat(chunks) if chunks else torch.zeros(0, 1)


def _prompted(caption: str, prompt: str) -> str:
    return f"{prompt} {caption}" if prompt else caption


@torch.no_grad()
def clip_score(image_features: torch.Tensor, captions: list[str], clip_model,
               references: list[list[str]] | None = None, *, prompt: str = CLIPSCORE_PROMPT,
               w: float = 2.5) -> dict:
    """CLIPScore and RefCLIPScore (Hessel et al., EMNLP 2021).

    CLIP-S(c, v) = w * max(cos(E_text(c), E_img(v)), 0), w = 2.5; RefCLIP-S(c, R, v) = harmonic
    mean of CLIP-S(c, v) and max(max_r cos(E_text(c), E_text(r)), 0). Like the authors' code,
    every text (candidate and reference) is encoded as "A photo depicts <text>".
    ``image_features`` are the raw CLIP image features of the feature file; we normalise them.
    """
    if image_features.shape[0] != len(captions):
        raise ValueError(f"{image_features.shape[0]} image features for {len(captions)} captions")
    if not captions:
        return {"CLIP-S": None, "RefCLIP-S": None, "n": 0, "per_caption": []}
    txt = _encode_text(clip_model, [_prompted(c, prompt) for c in captions])
    if image_features.shape[1] != txt.shape[1]:
        raise ValueError(f"image features are {image_features.shape[1]}-d but this CLIP's text "
                         f"embedding is {txt.shape[1]}-d: features and CLIP model do not match")
    img = torch.nn.functional.normalize(image_features.float().to(txt.device), dim=-1)
    clip_s = w * (img * txt).sum(-1).clamp(min=0)
    result = {"CLIP-S": float(clip_s.mean()), "RefCLIP-S": None, "n": len(captions),
              "per_caption": [{"CLIP-S": float(v)} for v in clip_s]}
    if references is not None:
        flat = [_prompted(r, prompt) for refs in references for r in refs]
        ref_emb = _encode_text(clip_model, flat)
        ref_s, start = [], 0
        for i, refs in enumerate(references):
            sims = ref_emb[start:start + len(refs)] @ txt[i]
            start += len(refs)
            ref_s.append(max(float(sims.max()), 0.0) if len(refs) else 0.0)
        for rec, a, b in zip(result["per_caption"], clip_s.tolist(), ref_s):
            rec["RefCLIP-S"] = 2 * a * b / (a + b) if a + b > 0 else 0.0
        result["RefCLIP-S"] = float(np.mean([r["RefCLIP-S"] for r in result["per_caption"]]))
    return result


# ============================================================================ diversity
def normalise_caption(caption: str) -> str:
    """Lower-case, PTB-style tokens, punctuation dropped: what 'the same caption' means here."""
    return python_tokenize(caption)


def diversity(captions: list[str], train_captions: list[str] | None = None, *,
              train_normalised: set[str] | None = None) -> dict:
    """distinct-n = unique n-grams / all n-grams over all captions (normalised tokens);
    vocab_size = unique words; copied = share of captions equal to some training caption
    (``train_normalised``: the training captions already passed through normalise_caption)."""
    toks = [normalise_caption(c).split() for c in captions]
    uni = [t for ts in toks for t in ts]
    bi = [tuple(ts[i:i + 2]) for ts in toks for i in range(len(ts) - 1)]
    out = {"n_captions": len(captions),
           "distinct-1": len(set(uni)) / len(uni) if uni else 0.0,
           "distinct-2": len(set(bi)) / len(bi) if bi else 0.0,
           "vocab_size": len(set(uni)),
           "mean_length": len(uni) / len(toks) if toks else 0.0,
           "unique_captions": len({" ".join(ts) for ts in toks}),
           "copied": None}
    if train_normalised is None and train_captions is not None:
        train_normalised = {normalise_caption(c) for c in train_captions}
    if train_normalised is not None and captions:
        out["copied"] = sum(" ".join(ts) in train_normalised for ts in toks) / len(toks)
    return out


# ============================================================================ matching
def image_stem(image: str) -> str:
    """'/x/1000092795.jpg' -> '1000092795': the lenient form of an image id."""
    return os.path.splitext(os.path.basename(str(image).replace("\\", "/")))[0]


@dataclass
class Matching:
    """Predictions paired with references.

    Keys are ``(image_id, style)`` when every prediction and every reference has a style, else
    ``image_id`` (the reference's id). ``pred_keys[i]`` is the key of ``predictions[i]`` or None."""
    styled: bool
    predictions: dict = field(default_factory=dict)   # key -> caption (first prediction per key)
    references: dict = field(default_factory=dict)    # key -> [captions], every reference key
    styles: dict = field(default_factory=dict)        # key -> style or None
    pred_keys: list = field(default_factory=list)
    unmatched: list = field(default_factory=list)     # prediction image names without references
    duplicates: int = 0
    by_basename: int = 0                              # matched only after dropping folder/extension

    @property
    def missing(self) -> list:
        return [k for k in self.references if k not in self.predictions]

    @staticmethod
    def image_of(key) -> str:
        return key[0] if isinstance(key, tuple) else key


def match_predictions(predictions: list[dict], references: list[dict]) -> Matching:
    """Pair predictions with references by (image_id, style) or image_id (see :class:`Matching`).
    Image ids match exactly, else by basename without extension."""
    styled = bool(predictions) and bool(references) and all(p.get("style") is not None for p in predictions) \
        and all(r.get("style") is not None for r in references)
    mt = Matching(styled=styled)
    ref_styles: dict[str, set] = defaultdict(set)
    for r in references:
        image_id = str(r["image_id"])
        key = (image_id, r["style"]) if styled else image_id
        mt.references.setdefault(key, []).append(r["caption"])
        ref_styles[image_id].add(r.get("style"))
    stems: dict[str, str | None] = {}
    for image_id in ref_styles:
        s = image_stem(image_id)
        stems[s] = None if s in stems and stems[s] != image_id else image_id  # None: ambiguous
    for p in predictions:
        image = str(p["image"])
        image_id = image if image in ref_styles else stems.get(image_stem(image))
        key = None if image_id is None else (image_id, p["style"]) if styled else image_id
        if key is None or key not in mt.references:
            mt.pred_keys.append(None)
            mt.unmatched.append(image if key is None else f"{image} ({p.get('style')})")
            continue
        mt.pred_keys.append(key)
        if key in mt.predictions:
            mt.duplicates += 1
            continue
        mt.by_basename += image_id != image
        mt.predictions[key] = p["caption"]
    for key in mt.references:
        if styled:
            mt.styles[key] = key[1]
        else:
            known = ref_styles[key] - {None}
            mt.styles[key] = next(iter(known)) if len(known) == 1 else None
    for p, key in zip(predictions, mt.pred_keys):  # a requested style beats the references' one
        if key is not None and not styled and p.get("style") is not None:
            mt.styles[key] = p["style"]
    return mt


def group_of(style: str | None) -> str:
    from stylecap.styles import trait_group
    return (trait_group(style) if style else None) or "other"


# ============================================================================ everything at once
def _scored_keys_by(mt: Matching, fn) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for key in mt.predictions:
        style = mt.styles.get(key)
        if style is not None:
            out[fn(style)].append(key)
    return dict(sorted(out.items()))


def most_frequent_caption_baseline(train_captions: list[dict], references: list[dict], *,
                                   java: bool | None = None, normalised: list[str] | None = None) -> dict:
    """Score 'always emit the most frequent training caption' against ``references``.

    One caption for every image and style: the single most frequent training caption overall
    (counted after :func:`normalise_caption`; ties -> alphabetically first), NOT one per style,
    so the baseline knows nothing about the image or the requested style. Only BLEU and CIDEr
    are computed (speed); the tokenizer is the same as the main evaluation's.
    ``normalised``: normalise_caption of each training caption, if already computed."""
    if normalised is None:
        normalised = [normalise_caption(c["caption"]) for c in train_captions]
    counts = Counter(normalised)
    if not counts or not references:
        return {"caption": None, **{m: None for m in STANDARD}}
    best = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    original = train_captions[normalised.index(best)]["caption"]
    styled = all(r.get("style") is not None for r in references)
    refs: dict = defaultdict(list)
    for r in references:
        refs[(str(r["image_id"]), r["style"]) if styled else str(r["image_id"])].append(r["caption"])
    scores = score_captions({k: original for k in refs}, dict(refs), java=java, spice=False,
                            metrics=("BLEU", "CIDEr"), quiet=True)
    return {"caption": original, **{m: scores[m] for m in STANDARD}, "tokenizer": scores["tokenizer"]}


def evaluate_predictions(predictions: list[dict], references: list[dict], *,
                         train_captions: list[dict] | None = None, clip_model=None,
                         image_features: dict[str, torch.Tensor] | None = None, java: bool | None = None,
                         spice: bool = True, spice_jars: str | None = None) -> dict:
    """Match, then compute every metric: standard (top level), per_style, per_group, diversity,
    style_fidelity, clip_score, per_image, counts and (with train_captions) baseline."""
    mt = match_predictions(predictions, references)
    by_style = _scored_keys_by(mt, lambda s: s)
    by_group = _scored_keys_by(mt, group_of)
    subsets = {**{f"style:{s}": k for s, k in by_style.items()}, **{f"group:{g}": k for g, k in by_group.items()}}
    scores = score_captions(mt.predictions, {k: mt.references[k] for k in mt.predictions},
                            java=java, spice=spice, spice_jars=spice_jars, subsets=subsets)
    result: dict[str, Any] = {m: scores[m] for m in STANDARD}
    skipped = dict(scores["skipped"])
    result["tokenizer"] = scores["tokenizer"]
    result["per_style"] = {s: {"group": group_of(s), **scores["subsets"].get(f"style:{s}", {})} for s in by_style}
    result["per_group"] = {g: scores["subsets"].get(f"group:{g}", {}) for g in by_group}

    train_norm = [normalise_caption(c["caption"]) for c in train_captions] if train_captions else None
    result["diversity"] = diversity([p["caption"] for p in predictions],
                                    train_normalised=set(train_norm) if train_norm is not None else None)
    if train_norm is None:
        skipped["copied"] = "no training captions given (--train_captions)"

    result["style_fidelity"] = None
    train_styled = [c for c in (train_captions or []) if c.get("style") is not None]
    if len({c["style"] for c in train_styled}) < 2:
        skipped["style_fidelity"] = "needs training captions with at least two styles (--train_captions)"
    else:
        from stylecap.style_classifier import StyleClassifier
        clf = StyleClassifier().fit([c["caption"] for c in train_styled], [c["style"] for c in train_styled])
        gen = [p for p in predictions if p.get("style") is not None]
        fid = {"generated": clf.accuracy([p["caption"] for p in gen], [p["style"] for p in gen]),
               "references": clf.accuracy([r["caption"] for r in references], [r.get("style") for r in references]),
               "classifier": clf.describe(), "per_style_top1": {}}
        for style in sorted({p["style"] for p in gen}):
            fid["per_style_top1"][style] = clf.accuracy([p["caption"] for p in gen if p["style"] == style],
                                                        [style] * sum(p["style"] == style for p in gen))["top1"]
        result["style_fidelity"] = fid
        if not gen:
            skipped["style_fidelity"] = "the predictions carry no requested style"

    result["clip_score"] = None
    if clip_model is None:
        skipped["CLIPScore"] = "no CLIP model given (--clip_model_path)"
    elif not image_features:
        skipped["CLIPScore"] = "no image features (give a feature file from process_*.py as --references)"
    else:
        keys = [k for k in mt.predictions if mt.image_of(k) in image_features]
        if keys:
            feats = torch.stack([image_features[mt.image_of(k)].reshape(-1) for k in keys])
            cs = clip_score(feats, [mt.predictions[k] for k in keys], clip_model, [mt.references[k] for k in keys])
            result["clip_score"] = {m: cs[m] for m in ("CLIP-S", "RefCLIP-S", "n")}
            for k, rec in zip(keys, cs["per_caption"]):
                scores["per_image"][k].update(rec)
        else:
            skipped["CLIPScore"] = "no matched image has features"

    result["per_image"] = [{"image_id": mt.image_of(k), "style": mt.styles.get(k), "caption": mt.predictions[k],
                            **scores["per_image"].get(k, {})} for k in mt.predictions]
    result["counts"] = {
        "predictions": len(predictions), "references": len(references),
        "reference_keys": len(mt.references), "scored": len(mt.predictions), "styled_matching": mt.styled,
        "unmatched_predictions": len(mt.unmatched), "missing_predictions": len(mt.missing),
        "duplicate_predictions": mt.duplicates, "matched_by_basename": mt.by_basename,
        "unmatched_examples": mt.unmatched[:5], "missing_examples": [str(k) for k in mt.missing[:5]]}
    if train_captions:
        matched_refs = [r for r in references if (((str(r["image_id"]), r.get("style")) if mt.styled
                                                   else str(r["image_id"])) in mt.predictions)]
        result["baseline"] = most_frequent_caption_baseline(train_captions, matched_refs, java=java,
                                                            normalised=train_norm)
    result["skipped"] = skipped
    return _jsonable(result)


def _jsonable(obj):
    """numpy scalars -> float, NaN -> None, tuple keys -> str: the result goes straight to JSON."""
    if isinstance(obj, dict):
        return {(k if isinstance(k, str) else str(k)): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# ============================================================================ printing
def fmt100(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def table_rows(metrics: dict) -> list[tuple[str, str, str]]:
    """(name, value, note) rows of the summary table; shared by format_table and the HTML report."""
    skipped = metrics.get("skipped", {})
    rows = []
    for m in STANDARD:
        v = metrics.get(m)
        rows.append((m, fmt100(v), "") if v is not None else (m, "skipped", skipped.get(m, "not computed")))
    cs = metrics.get("clip_score")
    if cs:
        rows.append(("CLIP-S", f"{cs['CLIP-S']:.4f}", "0-2.5 scale"))
        if cs.get("RefCLIP-S") is not None:
            rows.append(("RefCLIP-S", f"{cs['RefCLIP-S']:.4f}", "0-2.5 scale"))
    elif "CLIPScore" in skipped:
        rows.append(("CLIP-S", "skipped", skipped["CLIPScore"]))
    div = metrics.get("diversity")
    if div:
        rows += [("distinct-1", f"{div['distinct-1']:.4f}", "unique / all unigrams"),
                 ("distinct-2", f"{div['distinct-2']:.4f}", "unique / all bigrams"),
                 ("vocab size", str(div["vocab_size"]), "")]
        if div.get("copied") is not None:
            rows.append(("copied", f"{div['copied']:.4f}", "share of captions copied from training"))
    fid = metrics.get("style_fidelity")
    if fid:
        g, r = fid["generated"], fid["references"]
        for k in ("top1", "top5"):
            gv = "-" if g[k] is None else f"{g[k]:.4f}"
            rv = "-" if r[k] is None else f"{r[k]:.4f}"
            rows.append((f"style {k}", gv, f"human references: {rv}"))
    base = metrics.get("baseline")
    if base and base.get("CIDEr") is not None:
        rows.append(("baseline CIDEr", fmt100(base["CIDEr"]), f"always '{base['caption']}'"))
    return rows


def format_table(metrics: dict) -> str:
    """The printed summary: one row per metric; standard metrics x100 like papers."""
    rows = table_rows(metrics)
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'metric':<{width}}value (BLEU..SPICE x100)"]
    for name, value, note in rows:
        note = f" ({note})" if note else ""
        lines.append(f"{name:<{width}}{value}{note}")
    counts = metrics.get("counts")
    if counts:
        lines.append(f"scored {counts['scored']} of {counts['reference_keys']} referenced "
                     f"{'image/style pairs' if counts['styled_matching'] else 'images'}; "
                     f"{counts['unmatched_predictions']} unmatched predictions, "
                     f"{counts['missing_predictions']} missing predictions; tokenizer {metrics.get('tokenizer')}")
    return "\n".join(lines)
