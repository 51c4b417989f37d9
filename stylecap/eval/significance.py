"""Is a difference between two systems real? Paired bootstrap over images (Koehn 2004).

Both systems' per-row scores are resampled with the same indices; each resample recomputes the
corpus-level metric, so the interval is for the number a paper reports. The unit of resampling is the
image: when an image has several scored rows (one per style: FlickrStyle10K's humor and romantic,
SentiCap's positive and negative, PersonalityCaptions with --style all), a resample draws images with
replacement and carries all of each drawn image's rows together (a cluster bootstrap), since rows of
one image are not independent. The corpus metrics, per resample:
  * CIDEr (CIDEr-D): the mean of per-image scores (pycocoevalcap's corpus CIDEr is that mean);
  * BLEU-4: corpus BLEU from the summed per-image n-gram statistics (matched and proposed n-grams,
    candidate and closest reference lengths), exactly as pycocoevalcap's BleuScorer aggregates them;
  * style top-1: the mean of per-image 0/1 classifier hits.
A drawn image contributes all its rows to these means and sums, as in the full-set number.

What paired_bootstrap reports (d = system - baseline on one resample):
  * p_value: the share of resamples with d <= 0, i.e. the system is NOT better (one-sided). A tie
    counts against the system: two identical systems get 1.0, a clearly better one about 0;
  * ci95: the two-sided 95% percentile interval of d;
  * baseline_wins (d < 0) and ties (d == 0): the two parts of p_value, so no tie is ever a win.
A difference within TIE_TOLERANCE of 0 (float rounding of equal sums) is a tie.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

BLEU_TINY, BLEU_SMALL = 1e-15, 1e-9  # pycocoevalcap's BleuScorer constants
TIE_TOLERANCE = 1e-12  # |d| below this is a tie: metrics are O(1), float rounding of equal sums is ~1e-16


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


def cluster_sampler(n: int, clusters=None) -> tuple[int, Callable[[np.random.Generator], np.ndarray]]:
    """(number of clusters, draw) for n rows; ``clusters`` (length n, sortable labels of one type such as
    image ids; None: every row its own cluster). ``draw(rng)`` returns the row indices of one resample: as many
    clusters as there are, drawn with replacement, each with all its rows."""
    if clusters is None:
        return n, lambda rng: rng.integers(0, n, n)
    labels = np.asarray(clusters)
    if len(labels) != n:
        raise ValueError(f"clusters has {len(labels)} labels for {n} rows")
    # clusters numbered in sorted label order (so the draws do not depend on the order of the rows);
    # rows grouped cluster by cluster: cluster c is rows[starts[c]:starts[c] + sizes[c]]
    _, cluster = np.unique(labels, return_inverse=True)
    cluster = cluster.reshape(-1)  # (n,) cluster number of each row
    rows = np.argsort(cluster, kind="stable")  # (n,) row indices, cluster by cluster
    sizes = np.bincount(cluster)  # (k,)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # (k,)
    k = len(sizes)

    def draw(rng: np.random.Generator) -> np.ndarray:
        picked = rng.integers(0, k, k)  # (k,) drawn clusters
        lengths = sizes[picked]
        # position j inside the drawn cluster it belongs to: 0..size-1 for each drawn cluster
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return rows[np.repeat(starts[picked], lengths) + offsets]

    return k, draw


def paired_bootstrap(system: Callable[[np.ndarray], float], baseline: Callable[[np.ndarray], float], n: int,
                     resamples: int = 1000, seed: int = 0, clusters=None) -> dict:
    """``system(idx)`` / ``baseline(idx)``: the corpus metric of the rows ``idx`` (indices into the same n
    rows, in the same order for both). ``clusters``: each row's image (None: one row per image). Returns
    the difference (system - baseline) on all rows, its 95% percentile interval over resamples of
    images, p_value (share of resamples where the system is not better), baseline_wins, ties, and the
    counts: images (clusters) and rows (n)."""
    if n == 0:
        raise ValueError("paired bootstrap needs at least one image")
    images, draw = cluster_sampler(n, clusters)
    rng = np.random.default_rng(seed)
    everything = np.arange(n)
    diff = system(everything) - baseline(everything)
    diffs = np.empty(resamples)
    for r in range(resamples):
        idx = draw(rng)
        diffs[r] = system(idx) - baseline(idx)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    tie = np.abs(diffs) <= TIE_TOLERANCE
    lose = (diffs < 0) & ~tie
    return {"diff": float(diff), "ci95": [float(lo), float(hi)], "p_value": float(np.mean(lose | tie)),
            "baseline_wins": float(np.mean(lose)), "ties": float(np.mean(tie)),
            "resamples": resamples, "images": images, "rows": n}


def group_statistic(members: list[np.ndarray], statistic: Callable[[np.ndarray, np.ndarray], float]):
    """idx -> the mean over a group's runs (seeds) of each run's corpus metric on the images idx."""
    return lambda idx: float(np.mean([statistic(values, idx) for values in members]))


def mean_statistic(values: np.ndarray, idx: np.ndarray) -> float:
    return float(values[idx].mean())


def bleu_statistic(values: np.ndarray, idx: np.ndarray) -> float:
    return _bleu_from_arrays(values, idx)
