"""The COCO caption toolkit's numbers: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE.

Standard metrics come from pycocoevalcap (the COCO caption toolkit) so they compare with
published tables: PTBTokenizer, then BLEU-1..4 (corpus-level, "closest" reference length),
METEOR 1.5, ROUGE-L, CIDEr-D and SPICE, all on pycocoevalcap's 0-1 scale, every reference of
an image counted. Only keys that have a prediction are scored (as the COCO toolkit does).

Java. PTBTokenizer, METEOR and SPICE run Java. Without Java (``java=False`` or no ``java`` on
PATH) :func:`python_tokenize` replaces PTBTokenizer for BLEU, ROUGE-L and CIDEr (pure-Python
scorers), and METEOR/SPICE are skipped with the reason.

Chinese (CJK) text: neither tokenizer segments it, so ``segment`` (default 'auto') splits each Chinese
caption into characters or jieba words instead (:mod:`stylecap.eval.segmentation`; each caption is
detected by its own script, the others go through the tokenizer above). SPICE, English-only, runs on
the images whose references are not Chinese: it is skipped for an all-Chinese set, and a mixed set
says in ``segmentation["spice"]`` on how many images it ran.

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
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable

import numpy as np
from loguru import logger

from stylecap.eval.metric_specs import STANDARD  # the keys this toolkit writes (BLEU-1..SPICE), from METRICS
from stylecap.eval.ptb_tokenize import python_tokenize
from stylecap.eval.segmentation import Segmenter, caption_kind, resolve_segmentation

CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
SPICE_JARS_ENV = "STYLECAP_SPICE_JARS"
JRE_HINT = "install a JRE (e.g. apt-get install default-jre) to enable"


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
            "tokenizer": None, "segmentation": None, "subsets": {}}


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
                   metrics: tuple[str, ...] = ALL_SCORERS, quiet: bool = False,
                   segment: "str | Segmenter | None" = "auto") -> dict:
    """COCO-toolkit metrics of ``predictions[key]`` against ``references[key]`` (several each).

    Returns BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE (0-1; None when skipped, the reason in
    ``skipped``), ``per_image`` {key: {metric: value}}, ``tokenizer`` ("ptb" | "python", or the
    segmentation method "char" | "jieba" that replaced it), ``segmentation`` {language, method}
    and, for each named list of keys in ``subsets``, the same metrics on that subset (module doc).
    ``metrics`` limits the scorers run (names in ALL_SCORERS; the rest are skipped).
    ``segment``: 'auto' (Chinese -> characters, else none), 'char', 'jieba', 'none' or a
    Segmenter (see stylecap.eval.segmentation). Segmented text replaces PTBTokenizer; SPICE, which is
    English-only, is skipped for Chinese.
    """
    missing = [k for k in predictions if not references.get(k)]
    if missing:
        raise ValueError(f"{len(missing)} prediction keys have no references, e.g. {missing[:3]}")
    keys = list(predictions)
    if not keys:
        return _none_metrics("no predictions to score")
    index = {k: i for i, k in enumerate(keys)}  # scorers want plain, sortable, JSON-able ids
    use_java, java_reason = java_status(java)
    no_java = None if use_java else java_reason  # why METEOR and SPICE cannot run, if so
    gts, res, tokenizer, seg_info = _tokenized(predictions, references, keys, use_java, segment)
    sc = _Scores()
    bleu_scorer = _score_ngrams(sc, gts, res, metrics)
    meteor, meteor_stats = _score_meteor(sc, gts, res, metrics, no_java)
    # SPICE (English-only) on the images none of whose references is Chinese
    english = [i for i, k in enumerate(keys) if not any(caption_kind(c) == "zh" for c in references[k])]
    _score_spice(sc, gts, res, metrics, spice=spice, spice_jars=spice_jars, language=seg_info["language"],
                 no_java=no_java, ids=english)
    if seg_info["language"] == "mixed":
        seg_info["images"] = {"zh": len(keys) - len(english), "en": len(english)}
        if "SPICE" in sc.per:
            seg_info["spice"] = f"on the {len(english)} non-Chinese images only (SPICE is English-only)"
    for m, reason in sc.skipped.items():
        (logger.debug if quiet else logger.info)(f"{m}: skipped ({reason})")

    result = {m: sc.out[m] for m in STANDARD}
    result["skipped"] = sc.skipped
    result["tokenizer"] = tokenizer
    result["segmentation"] = seg_info
    result["per_image"] = {k: {m: float(v[i]) for m, v in sc.per.items() if i in sc.ids.get(m, (i,))}
                           for i, k in enumerate(keys)}
    if bleu_scorer is not None:  # n-gram statistics: compare.py's bootstrap recomputes corpus BLEU from them
        from stylecap.eval.significance import bleu_stats
        for i, k in enumerate(keys):
            result["per_image"][k]["bleu_stats"] = bleu_stats(res[i][0], gts[i])
    result["subsets"] = {}
    try:
        for name, sub_keys in (subsets or {}).items():
            sub_ids = [index[k] for k in sub_keys if k in index]
            if sub_ids:
                result["subsets"][name] = _subset_scores(sub_ids, sc, bleu_scorer, meteor, meteor_stats)
    finally:
        if meteor is not None:
            meteor.close()
    return result


_NOT_ASKED = "not requested (metrics=...)"


@dataclass
class _Scores:
    """What the scorers of score_captions fill in, in the order they run: corpus values by metric name,
    per-image values (lists indexed like the ids), and the reason of each skipped metric."""
    out: dict[str, Any] = field(default_factory=lambda: {m: None for m in STANDARD})
    per: dict[str, list[float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    ids: dict[str, set[int]] = field(default_factory=dict)  # a metric computed on some images only: which


def _tokenized(predictions: dict[Hashable, str], references: dict[Hashable, list[str]], keys: list[Hashable],
               use_java: bool, segment: "str | Segmenter | None") -> tuple[dict, dict, str, dict]:
    """(gts {id: tokenized references}, res {id: [tokenized prediction]}, tokenizer name, segmentation info),
    ids being the positions in ``keys``. Each caption by its own script: a Chinese one is segmented (instead
    of PTBTokenizer), any other goes through PTBTokenizer, or without Java, or when PTBTokenizer fails, the
    pure-Python tokenizer. The tokenizer name follows the references' language: 'char' / 'jieba' (zh),
    'ptb' / 'python' (en), 'char+ptb' ... (mixed)."""
    groups = {("g", i): list(references[k]) for i, k in enumerate(keys)}
    groups.update({("r", i): [predictions[k]] for i, k in enumerate(keys)})
    segmenter, seg_info = resolve_segmentation(segment, (c for v in groups.values() for c in v),
                                               (c for i in range(len(keys)) for c in groups[("g", i)]))
    # each caption by its own script: Chinese ones segmented (PTBTokenizer would leave them whole), the others PTB
    cut = {k: [segmenter is not None and segmenter.is_segmented(c) for c in v] for k, v in groups.items()}
    plain = {k: [c for c, s in zip(v, cut[k]) if not s] for k, v in groups.items()}
    plain = {k: v for k, v in plain.items() if v}
    ptb_name = "ptb" if use_java else "python"
    if plain:
        try:
            plain = _tokenize(plain, use_java)  # one Java start for references and predictions
        except Exception as e:  # e.g. a read-only site-packages: PTBTokenizer writes a temp file there
            logger.warning(f"PTBTokenizer failed ({e}); using the pure-Python tokenizer")
            plain, ptb_name = _tokenize(plain, False), "python"
    tok = {}
    for k, v in groups.items():
        rest = iter(plain.get(k, ()))
        tok[k] = [segmenter(c) if s else next(rest) for c, s in zip(v, cut[k])]
    # named after the references (as the segmentation record), so that systems scored on them compare
    method = seg_info["method"]
    tokenizer = {"zh": method if method != "none" else ptb_name, "en": ptb_name,
                 "mixed": f"{method}+{ptb_name}" if method != "none" else ptb_name}[seg_info["language"]]
    ids = range(len(keys))
    return {i: tok[("g", i)] for i in ids}, {i: tok[("r", i)] for i in ids}, tokenizer, seg_info


def _score_ngrams(sc: _Scores, gts: dict, res: dict, metrics: tuple[str, ...]):
    """BLEU-1..4, ROUGE-L and CIDEr-D (pure Python). Returns the BLEU scorer (its cooked n-gram counts
    score subsets), or None when BLEU is not requested."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    bleu_scorer = None
    if "BLEU" in metrics:
        bleu_scorer = _bleu_scorer(gts, res, list(range(len(gts))))
        bleu, bleu_per = _bleu(bleu_scorer)
        for n in range(4):
            sc.out[f"BLEU-{n + 1}"], sc.per[f"BLEU-{n + 1}"] = float(bleu[n]), list(bleu_per[n])
    else:
        sc.skipped.update({f"BLEU-{n}": _NOT_ASKED for n in range(1, 5)})
    for name, cls in (("ROUGE-L", Rouge), ("CIDEr", Cider)):
        if name in metrics:
            value, values = cls().compute_score(gts, res)
            sc.out[name], sc.per[name] = float(value), list(values)
        else:
            sc.skipped[name] = _NOT_ASKED
    return bleu_scorer


def _score_meteor(sc: _Scores, gts: dict, res: dict, metrics: tuple[str, ...],
                  no_java: str | None) -> tuple[MeteorStats | None, dict[int, str] | None]:
    """METEOR: one process for the whole evaluation; subsets re-use its statistics. Returns (the process,
    its per-caption statistics); the statistics are None when METEOR did not run (``no_java``: why Java
    is unusable, None when it is usable). The caller closes the process."""
    meteor_stats, meteor = None, None
    if "METEOR" not in metrics:
        sc.skipped["METEOR"] = _NOT_ASKED
    elif no_java is not None:
        sc.skipped["METEOR"] = no_java
    else:
        try:
            meteor = MeteorStats()
            meteor_stats = meteor.stats(gts, res)
            sc.out["METEOR"], sc.per["METEOR"] = meteor.score([meteor_stats[i] for i in range(len(gts))])
        except Exception as e:
            sc.skipped["METEOR"] = f"METEOR failed ({type(e).__name__}: {e})"
            meteor_stats = None
    return meteor, meteor_stats


def _score_spice(sc: _Scores, gts: dict, res: dict, metrics: tuple[str, ...], *, spice: bool,
                 spice_jars: str | None, language: str, no_java: str | None, ids: list[int]) -> None:
    """SPICE, when requested, enabled, with Java and the CoreNLP jars, on the images ``ids`` (those with no
    Chinese reference: SPICE is English-only); any failure becomes a skip reason (the other metrics are
    unaffected). On a mixed set, the other images get no per-image SPICE and subsets average over ``ids``."""
    if "SPICE" not in metrics:
        sc.skipped["SPICE"] = _NOT_ASKED
    elif not spice:
        sc.skipped["SPICE"] = "disabled (--no_spice / spice=False)"
    elif language == "zh" or not ids:
        sc.skipped["SPICE"] = (f"SPICE is English-only (its scene graphs come from Stanford CoreNLP's English "
                               f"parser); not computed for {language} captions")
    elif no_java is not None:
        sc.skipped["SPICE"] = no_java
    else:
        folder, reason = find_spice_jars(spice_jars)
        if folder is None:
            sc.skipped["SPICE"] = reason
        else:
            try:
                if len(ids) == len(gts):  # every image (an English set): as always
                    sc.out["SPICE"], sc.per["SPICE"] = run_spice(gts, res, folder)
                else:
                    sc.out["SPICE"], per = run_spice({i: gts[i] for i in ids}, {i: res[i] for i in ids}, folder)
                    sc.per["SPICE"], sc.ids["SPICE"] = [float("nan")] * len(gts), set(ids)
                    for i, v in zip(sorted(ids), per):  # run_spice scores in sorted id order
                        sc.per["SPICE"][i] = v
            except Exception as e:  # a Java failure must not kill the evaluation
                sc.skipped["SPICE"] = f"SPICE failed ({type(e).__name__}: {e}); the other metrics are unaffected"


def _subset_scores(ids, sc: _Scores, bleu_scorer, meteor, meteor_stats) -> dict:
    sub: dict[str, Any] = {"n": len(ids), **{m: None for m in STANDARD}}
    if bleu_scorer is not None:
        bleu, _ = _bleu(bleu_scorer, ids)
        sub.update({f"BLEU-{n + 1}": float(bleu[n]) for n in range(4)})
    if meteor_stats is not None:
        with contextlib.suppress(Exception):
            sub["METEOR"] = meteor.score([meteor_stats[i] for i in ids])[0]
    for m in ("ROUGE-L", "CIDEr", "SPICE"):
        scored = [i for i in ids if i in sc.ids[m]] if m in sc.ids else ids  # SPICE on a mixed set: some images
        if m in sc.per and scored:
            sub[m] = float(np.mean([sc.per[m][i] for i in scored]))
    return sub

