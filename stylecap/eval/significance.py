"""Is a difference between two systems real? Paired bootstrap over images (Koehn 2004).

Both systems' per-image scores are resampled with the same image indices; each resample recomputes the
corpus-level metric, so the interval is for the number a paper reports:
  * CIDEr (CIDEr-D): the mean of per-image scores (pycocoevalcap's corpus CIDEr is that mean);
  * BLEU-4: corpus BLEU from the summed per-image n-gram statistics (matched and proposed n-grams,
    candidate and closest reference lengths), exactly as pycocoevalcap's BleuScorer aggregates them;
  * style top-1: the mean of per-image 0/1 classifier hits.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

BLEU_TINY, BLEU_SMALL = 1e-15, 1e-9  # pycocoevalcap's BleuScorer constants


def bleu_stats(candidate: str, references: list[str], n: int = 4) -> dict:
    """One image's BLEU statistics (tokenized text in): pycocoevalcap's own cook_refs/cook_test with
    the "closest" reference length, as score_captions uses."""
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test
    comps = cook_test(candidate, cook_refs(references, n=n), eff="closest", n=n)
    return {"testlen": comps["testlen"], "reflen": comps["reflen"], "guess": list(comps["guess"]),
            "correct": list(comps["correct"])}


def corpus_bleu(stats: list[dict]) -> float:
    """Corpus BLEU-n from per-image statistics (BleuScorer.compute_score's aggregation)."""
    return _bleu_from_arrays(stats_array(stats), np.arange(len(stats)))


def _bleu_from_arrays(arr: np.ndarray, idx: np.ndarray) -> float:
    """arr (N, 2 + 2n): testlen, reflen, guess_1..n, correct_1..n per image; idx: the resample."""
    tot = arr[idx].sum(0)
    n = (arr.shape[1] - 2) // 2
    log_p = sum(math.log((tot[2 + n + k] + BLEU_TINY) / (tot[2 + k] + BLEU_SMALL)) for k in range(n))
    ratio = (tot[0] + BLEU_TINY) / (tot[1] + BLEU_SMALL)
    return math.exp(log_p / n) * (math.exp(1 - 1 / ratio) if ratio < 1 else 1.0)


def stats_array(stats: list[dict]) -> np.ndarray:
    return np.array([[s["testlen"], s["reflen"], *s["guess"], *s["correct"]] for s in stats], dtype=np.float64)


def paired_bootstrap(system: Callable[[np.ndarray], float], baseline: Callable[[np.ndarray], float], n: int,
                     resamples: int = 1000, seed: int = 0) -> dict:
    """``system(idx)`` / ``baseline(idx)``: the corpus metric of the images ``idx`` (indices into the
    same n images, in the same order for both). Returns the difference (system - baseline) on all
    images, its 95% percentile interval over resamples, and the share of resamples in which the
    baseline scores higher."""
    if n == 0:
        raise ValueError("paired bootstrap needs at least one image")
    rng = np.random.default_rng(seed)
    everything = np.arange(n)
    diff = system(everything) - baseline(everything)
    diffs = np.empty(resamples)
    for r in range(resamples):
        idx = rng.integers(0, n, n)
        diffs[r] = system(idx) - baseline(idx)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"diff": float(diff), "ci95": [float(lo), float(hi)], "baseline_wins": float(np.mean(diffs < 0)),
            "resamples": resamples, "images": n}


def group_statistic(members: list[np.ndarray], statistic: Callable[[np.ndarray, np.ndarray], float]):
    """idx -> the mean over a group's runs (seeds) of each run's corpus metric on the images idx."""
    return lambda idx: float(np.mean([statistic(values, idx) for values in members]))


def mean_statistic(values: np.ndarray, idx: np.ndarray) -> float:
    return float(values[idx].mean())


def bleu_statistic(values: np.ndarray, idx: np.ndarray) -> float:
    return _bleu_from_arrays(values, idx)
