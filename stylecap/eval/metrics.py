"""Caption metrics, one import away: a facade over the modules that compute them.

* :mod:`stylecap.eval.metric_specs`: the list of every metric (name, metrics.json key, scale, digits,
  direction, note) that the table, the report, compare.py and TensorBoard read.
* :mod:`stylecap.eval.coco_metrics`: the COCO toolkit's BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE
  (tokenization, Java detection, SPICE/METEOR runners).
* :mod:`stylecap.eval.ptb_tokenize`: the pure-Python stand-in for PTBTokenizer.
* :mod:`stylecap.eval.segmentation`: Chinese (CJK) detection and segmentation (characters / jieba).
* :mod:`stylecap.eval.clipscore`: CLIPScore / RefCLIPScore.
* :mod:`stylecap.eval.diversity`: distinct-n, vocabulary, copies of training captions.
* :mod:`stylecap.eval.matching`: pairing predictions with references.
* :mod:`stylecap.eval.scoring`: everything at once (evaluate_predictions), as evaluate.py reports it.
* :mod:`stylecap.eval.tables`: the printed table.

``from stylecap.eval.metrics import ...`` keeps working for every public name.
"""
from __future__ import annotations

from stylecap.eval.clipscore import CLIPSCORE_PROMPT, clip_score
from stylecap.eval.coco_metrics import (ALL_SCORERS, CORENLP_JARS, JRE_HINT, SPICE_JARS_ENV, MeteorStats,
                                        find_spice_jars, java_status, run_spice, score_captions, spice_dir)
from stylecap.eval.diversity import diversity, normalise_caption
from stylecap.eval.matching import Matching, group_of, image_stem, match_predictions
from stylecap.eval.metric_specs import METRICS, STANDARD, MetricSpec, tensorboard_scalars
from stylecap.eval.ptb_tokenize import PTB_PUNCTUATIONS, python_tokenize
from stylecap.eval.scoring import evaluate_predictions, most_frequent_caption_baseline, run_evaluation
from stylecap.eval.segmentation import SEGMENT_CHOICES, Segmenter, detect_language, resolve_segmentation, segmenter_for
from stylecap.eval.tables import fmt100, format_table, table_rows

__all__ = ["ALL_SCORERS", "CLIPSCORE_PROMPT", "CORENLP_JARS", "JRE_HINT", "METRICS", "PTB_PUNCTUATIONS",
           "SEGMENT_CHOICES", "SPICE_JARS_ENV", "STANDARD", "Matching", "MetricSpec", "Segmenter", "detect_language",
           "resolve_segmentation", "run_evaluation", "segmenter_for", "MeteorStats", "clip_score", "diversity",
           "evaluate_predictions", "find_spice_jars", "fmt100", "format_table", "group_of", "image_stem",
           "java_status", "match_predictions", "most_frequent_caption_baseline", "normalise_caption",
           "python_tokenize", "run_spice", "score_captions", "spice_dir", "table_rows", "tensorboard_scalars"]
