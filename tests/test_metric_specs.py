"""The metric list (stylecap/eval/metric_specs.py) is the one list: the COCO toolkit's keys, the printed
table, compare.py's columns, the plots and the TensorBoard scalars all come from it, and a new metric is
one entry."""
from __future__ import annotations

import compare
from stylecap.eval import coco_metrics, metric_specs, plots, tables
from stylecap.eval.metric_specs import METRICS, STANDARD, Compared, MetricSpec, Shown, spec, tensorboard_scalars

METRICS_JSON = {"BLEU-1": 0.71, "BLEU-2": 0.5, "BLEU-3": 0.35, "BLEU-4": 0.25, "METEOR": 0.22, "ROUGE-L": 0.5,
                "CIDEr": 0.9, "SPICE": None, "skipped": {"SPICE": "no Java"},
                "clip_score": {"CLIP-S": 0.7512, "RefCLIP-S": None},
                "diversity": {"distinct-1": 0.25, "distinct-2": 0.5, "vocab_size": 321, "copied": None},
                "style_fidelity": {"generated": {"top1": 0.5, "top5": None}, "references": {"top1": 0.75, "top5": 1.0}},
                "style_ppl": {"generated": 42.25, "references": 30.0},
                "baseline": {"CIDEr": 0.1, "caption": "a {man} in a hat"}}


def test_names_are_unique_and_the_coco_keys_are_the_toolkits():
    assert len({s.name for s in METRICS}) == len(METRICS)
    assert len({s.compare.column for s in METRICS if s.compare}) == sum(s.compare is not None for s in METRICS)
    assert coco_metrics.STANDARD is STANDARD == ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr",
                                                 "SPICE")
    assert spec("vocabulary") is spec("vocab size") and not spec("style ppl").higher_is_better


def test_table_rows_from_the_list():
    assert tables.table_rows(METRICS_JSON) == [
        *[(m, f"{100 * METRICS_JSON[m]:.2f}", "") for m in STANDARD[:7]], ("SPICE", "skipped", "no Java"),
        ("CLIP-S", "0.7512", "0-2.5 scale"), ("distinct-1", "25.00", "unique / all unigrams"),
        ("distinct-2", "50.00", "unique / all bigrams"), ("vocab size", "321", ""),
        ("style top1", "50.00", "human references: 75.00"), ("style top5", "-", "human references: 100.00"),
        ("style ppl", "42.2", "trigram LM of the style (lower is better); human references: 30.0"),
        ("baseline CIDEr", "10.00", "always 'a {man} in a hat'")]


def test_compare_columns_plots_and_tensorboard_from_the_list():
    assert list(compare.row_values({})) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr",
                                            "SPICE", "style top-1", "style ppl", "distinct-1", "distinct-2", "vocabulary"]
    assert plots.METRIC_BARS == ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "style top-1")
    row = {"mean": compare.row_values(METRICS_JSON), "std": {"CIDEr": 0.0125, "vocabulary": 2.0}}
    assert [compare.fmt(row, k) for k in ("CIDEr", "vocabulary", "style ppl", "distinct-1", "SPICE")] == [
        "90.0 ± 1.2", "321 ± 2", "42.2", "25.0", "—"]
    assert tensorboard_scalars(METRICS_JSON, "eval") == {f"eval/{m}": 100 * METRICS_JSON[m] for m in STANDARD[:7]}
    quick = {"BLEU-4": 0.25, "ROUGE-L": 0.5, "CIDEr": 0.75}  # the epoch-end validation scores: a flat dict
    assert tensorboard_scalars(quick, "val") == {"val/BLEU-4": 25.0, "val/ROUGE-L": 50.0, "val/CIDEr": 75.0}


def test_a_new_metric_is_one_entry(monkeypatch):
    length = MetricSpec("mean length", ("diversity", "mean_length"), False, Shown(1, 2), note="words per caption",
                        compare=Compared("length", Shown(1, 1), order=43), tensorboard=True)
    extended = (*METRICS, length)
    monkeypatch.setattr(metric_specs, "METRICS", extended)
    monkeypatch.setattr(tables, "METRICS", extended)
    m = {**METRICS_JSON, "diversity": {**METRICS_JSON["diversity"], "mean_length": 9.125}}
    assert tables.table_rows(m)[-1] == ("mean length", "9.12", "words per caption")
    assert "mean length" in tables.format_table(m)
    assert list(compare.row_values(m))[-1] == "length" and compare.row_values(m)["length"] == 9.125
    assert compare.fmt({"mean": {"length": 9.125}, "std": {}}, "length") == "9.1"
    assert tensorboard_scalars(m, "eval")["eval/mean length"] == 9.125


def test_one_scale_per_metric_everywhere():
    """Issue 17 section 6: style top-1 was 1.0000 in the report and 33.0 in compare.py; val/CIDEr 0-1 in TensorBoard
    and curves.png while every table shows x100. Each metric has one scale: shares and caption metrics x100."""
    for s in METRICS:
        if s.table and s.compare:
            assert s.table.scale == s.compare.shown.scale == s.scale, s.name
    assert {s.name for s in METRICS if s.scale == 100} == {*STANDARD, "distinct-1", "distinct-2", "copied",
                                                          "style top1", "style top5", "baseline CIDEr"}
    rows = {r[0]: r for r in tables.table_rows(METRICS_JSON)}
    assert rows["style top1"][1:] == ("50.00", "human references: 75.00") and rows["distinct-1"][1] == "25.00"
    assert tensorboard_scalars(METRICS_JSON, "val")["val/CIDEr"] == 90.0  # as the tables show it
    assert "x100" in tables.format_table(METRICS_JSON).splitlines()[0]
