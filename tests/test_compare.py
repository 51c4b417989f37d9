"""compare.py and stylecap.eval.significance (issue 10 section 1): labels, seed groups, paired bootstrap,
plots, and refusals of runs that cannot be compared."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import compare
import train
from stylecap.eval.significance import (bleu_statistic, bleu_stats, corpus_bleu, mean_statistic, paired_bootstrap,
                                   stats_array)
from stylecap.utils import UserError
from tests.helpers import synthetic_features

REFS = {"a": ["a red circle on white", "a big red circle", "there is a red circle on a white background"],
        "b": ["a small blue square on black", "a blue square", "the picture shows a little blue square"],
        "c": ["a green triangle on gray", "a small green triangle", "a green triangle sits on gray"]}
PREDS = {"a": "a red circle on a white background", "b": "a blue square on black", "c": "a green circle"}


def test_corpus_bleu_from_per_image_stats_equals_pycocoevalcap():
    from pycocoevalcap.bleu.bleu import Bleu
    expected, _ = Bleu(4).compute_score(REFS, {k: [v] for k, v in PREDS.items()}, verbose=0)
    stats = [bleu_stats(PREDS[k], REFS[k]) for k in REFS]
    assert corpus_bleu(stats) == pytest.approx(expected[3], rel=1e-12)
    arr = stats_array(stats)
    assert bleu_statistic(arr, np.arange(3)) == pytest.approx(expected[3], rel=1e-12)


def test_paired_bootstrap_identical_and_clearly_better_systems():
    rng = np.random.default_rng(0)
    base = rng.random(200)
    stat = lambda values: (lambda idx: mean_statistic(values, idx))
    same = paired_bootstrap(stat(base), stat(base.copy()), 200, resamples=200, seed=1)
    assert same["diff"] == 0 and same["ci95"] == [0, 0] and same["baseline_wins"] == 0
    better = paired_bootstrap(stat(base + 0.1 + 0.01 * rng.random(200)), stat(base), 200, resamples=200, seed=1)
    assert better["ci95"][0] > 0 and better["baseline_wins"] == 0 and better["diff"] == pytest.approx(0.105, abs=0.01)
    noisy = paired_bootstrap(stat(base + rng.normal(0, 0.3, 200)), stat(base), 200, resamples=500, seed=1)
    assert noisy["ci95"][0] < 0 < noisy["ci95"][1] and 0.05 < noisy["baseline_wins"] < 0.95


@pytest.fixture(scope="module")
def evals(small_models, tmp_path_factory):
    """Three tiny runs (embedding seeds 3 and 4, token seed 3), each evaluated on the same test file."""
    root = tmp_path_factory.mktemp("cmp")
    data = synthetic_features(root / "train.pkl", n_images=24)
    test = synthetic_features(root / "test.pkl", n_images=8, seed=5)
    out = {}
    for mode, seed in (("embedding", 3), ("embedding", 4), ("token", 3)):
        run, ev = root / f"run-{mode}-{seed}", root / f"eval-{mode}-{seed}"
        assert train.main(["--data_path", str(data), "--gpt2_path", str(small_models / "small_gpt2"), "--output_path",
                           str(run), "--bs_train", "8", "--lr", "1e-3", "--warmup_steps", "2", "--finetune_gpt2",
                           "--eval_subset", "8", "--epochs", "2", "--seed", str(seed), "--style_mode", mode]) == 0
        assert train.main(["--mode", "eval", "--model_path", str(run / "checkpoints/last.pt"), "--data_path", str(test),
                           "--output_path", str(ev), "--no_java"]) == 0
        out[(mode, seed)] = (run, ev)
    out["root"] = root
    return out


def test_compare_labels_groups_seeds_tests_significance_and_plots(evals, tmp_path):
    paths = [str(p) for key in (("embedding", 3), ("embedding", 4), ("token", 3)) for p in evals[key]]
    assert compare.main([*paths, "--baseline", "style_mode=embedding", "--resamples", "200",
                         "--output_path", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "comparison.json").read_text())
    rows = {r["label"]: r for r in result["rows"]}
    assert set(rows) == {"style_mode=embedding", "style_mode=token"}  # run + eval folders merged, seeds grouped
    assert rows["style_mode=embedding"]["n"] == 2 and rows["style_mode=embedding"]["seeds"] == [3, 4]
    assert rows["style_mode=embedding"]["std"]["CIDEr"] is not None and rows["style_mode=token"]["std"]["CIDEr"] is None
    cider = [json.loads((evals[("embedding", s)][1] / "metrics.json").read_text())["CIDEr"] for s in (3, 4)]
    assert rows["style_mode=embedding"]["mean"]["CIDEr"] == pytest.approx(np.mean(cider))
    for metric in ("CIDEr", "BLEU-4", "style top-1"):  # per-image data stored by the eval folders
        sig = result["significance"]["style_mode=token"][metric]
        assert sig["images"] == 8 and sig["ci95"][0] <= sig["diff"] <= sig["ci95"][1] and 0 <= sig["baseline_wins"] <= 1
    bleu = {key: json.loads((evals[key][1] / "metrics.json").read_text())["BLEU-4"]
            for key in (("token", 3), ("embedding", 3), ("embedding", 4))}
    expected = bleu[("token", 3)] - (bleu[("embedding", 3)] + bleu[("embedding", 4)]) / 2  # the table's numbers
    assert result["significance"]["style_mode=token"]["BLEU-4"]["diff"] == pytest.approx(expected, abs=1e-9)
    assert rows["style_mode=token"]["mean"]["style ppl"] > 1 and rows["style_mode=token"]["mean"]["vocabulary"] > 0
    md = (tmp_path / "comparison.md").read_text()
    assert "| style_mode=embedding | 2 |" in md and " ± " in md and "Paired bootstrap" in md
    assert (tmp_path / "comparison.csv").read_text().startswith("label,n,seeds")
    for png in ("curves.png", "metrics.png", "per_style.png", "per_group.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
        assert png in (tmp_path / "comparison.html").read_text()


def test_compare_refuses_different_test_sets_and_non_folders(evals, small_models, tmp_path):
    run, ev = evals[("token", 3)]
    other = tmp_path / "eval-other"
    val = synthetic_features(tmp_path / "other.pkl", n_images=6, seed=9)
    assert train.main(["--mode", "eval", "--model_path", str(run / "checkpoints/last.pt"), "--data_path", str(val),
                       "--output_path", str(other), "--no_java"]) == 0
    with pytest.raises(UserError, match="different test sets"):
        compare.main([str(ev), str(other), "--output_path", str(tmp_path / "c1")])
    with pytest.raises(UserError, match="neither an eval folder"):
        compare.main([str(ev), str(tmp_path), "--output_path", str(tmp_path / "c2")])
    retok = tmp_path / "eval-retok"
    shutil.copytree(ev, retok)
    metrics = json.loads((retok / "metrics.json").read_text())
    metrics["tokenizer"] = "ptb" if metrics["tokenizer"] != "ptb" else "python"
    (retok / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(UserError, match="differ in tokenizer"):
        compare.main([str(ev), str(retok), "--output_path", str(tmp_path / "c3")])
    metrics["references_sha256"] = "0" * 64  # same images, other references
    (retok / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(UserError, match="differ in references_sha256"):
        compare.main([str(ev), str(retok), "--output_path", str(tmp_path / "c4")])


# ------------------------------------------------------- issue 17 sections 4 and 6: reports, plots, TensorBoard
def _compare_all(evals, out):
    paths = [str(p) for key in (("embedding", 3), ("embedding", 4), ("token", 3)) for p in evals[key]]
    assert compare.main([*paths, "--baseline", "style_mode=embedding", "--resamples", "50", "--output_path", str(out)]) == 0
    return (out / "comparison.html").read_text()


def test_comparison_html_has_a_title_context_and_no_markdown(evals, tmp_path):
    import datetime
    html = _compare_all(evals, tmp_path)
    assert "**" not in html and "<b>style_mode=embedding</b>" in html  # Markdown rendered, not leaked
    title = html.split("<title>")[1].split("</title>")[0]
    assert "2 groups" in title and "test.pkl" in title
    assert str(evals["root"] / "test.pkl") in html and "8 images" in html  # the test set
    assert datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d") in html  # the date
    for key in (("embedding", 3), ("embedding", 4), ("token", 3)):
        assert str(evals[key][1]) in html  # every run's eval folder
    context = json.loads((tmp_path / "comparison.json").read_text())["context"]
    assert context["test_set"]["images"] == 8 and len(context["entries"]) == 3


def _bar_containers(ax) -> list:
    from matplotlib.container import BarContainer
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def _errorbars(fig) -> list:
    return [c.errorbar for ax in fig.axes for c in _bar_containers(ax)]


def test_metrics_png_draws_error_bars_only_over_several_seeds():
    from stylecap.eval import plots
    rows = [{"label": "a", "n": 1, "mean": {"CIDEr": 0.5, "BLEU-4": 0.2}, "std": {"CIDEr": None, "BLEU-4": None}},
            {"label": "b", "n": 3, "mean": {"CIDEr": 0.6, "BLEU-4": 0.3}, "std": {"CIDEr": 0.1, "BLEU-4": 0.05}}]
    fig = plots.metrics_figure(rows)
    bars = {t.get_text(): c for t, c in zip(fig.axes[0].get_legend().get_texts(), _bar_containers(fig.axes[0]))}
    assert set(bars) == {"a (n=1)", "b (n=3)"}
    assert bars["a (n=1)"].errorbar is None and bars["b (n=3)"].errorbar is not None
    assert [round(p.get_height(), 6) for p in bars["b (n=3)"].patches] == [30.0, 60.0]  # x100, BLEU-4 then CIDEr
    assert _errorbars(plots.metrics_figure(rows[:1])) == [None]


def test_curves_show_cider_x100_with_labelled_axes(tmp_path):
    """val/CIDEr on the tables' x100 scale, from new runs (written x100, marked so) and old ones (raw 0-1)."""
    from torch.utils.tensorboard import SummaryWriter
    from stylecap.eval import plots
    from stylecap.eval.tensorboard import add_metric_scalars
    old, new = tmp_path / "old", tmp_path / "new"
    with SummaryWriter(str(old)) as w:  # a run written before issue 17: raw CIDEr
        w.add_scalar("val/CIDEr", 0.5, 10)
        w.add_scalar("val/loss", 2.0, 10)
    with SummaryWriter(str(new)) as w:
        add_metric_scalars(w, {"CIDEr": 0.5}, "val", 10)
        w.add_scalar("val/loss", 2.0, 10)
    assert compare.read_curves(old)["val/CIDEr"] == compare.read_curves(new)["val/CIDEr"] == [(10, 50.0)]
    entries = [{"label": "x", "seed": 1, "curves": compare.read_curves(new)}]
    fig = plots.curves_figure(entries)
    cider, loss = fig.axes
    assert "x100" in cider.get_ylabel() and "CIDEr" in cider.get_ylabel() and loss.get_ylabel()
    assert list(cider.lines[0].get_ydata()) == [50.0] and cider.get_xlabel() == loss.get_xlabel() == "optimizer step"


def test_eval_scalars_sit_at_the_checkpoints_step_after_train_and_val(evals):
    """Eval mode logs its scalars at the evaluated checkpoint's optimizer step (not 0), on the tables' scale, under
    a tag group that TensorBoard's Time Series page (groups ordered by name) shows after train/ and val/."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from models.captioner import read_checkpoint
    run, ev = evals[("embedding", 3)]
    step = read_checkpoint(run / "checkpoints/last.pt")["train_state"]["step"]
    assert step > 0
    acc = EventAccumulator(str(ev), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    metrics = json.loads((ev / "metrics.json").read_text())
    assert scalars and all([e.step for e in acc.Scalars(t)] == [step] for t in scalars)
    groups = {t.split("/", 1)[0] for t in scalars + acc.Tags()["images"]}
    assert all(g > "train" and g > "val" for g in groups), groups
    cider = [t for t in scalars if t.endswith("/CIDEr")][0]
    assert acc.Scalars(cider)[0].value == pytest.approx(100 * metrics["CIDEr"], rel=1e-5)


def test_report_names_checkpoint_data_decoding_date_and_command(evals):
    import datetime
    run, ev = evals[("token", 3)]
    html = (ev / "report.html").read_text()
    for text in (str(run / "checkpoints/last.pt"), str(evals["root"] / "test.pkl"), "greedy", "--mode eval",
                 datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), f"--output_path {ev}"):
        assert text in html, text
    div = json.loads((ev / "metrics.json").read_text())["diversity"]
    assert f"{100 * div['distinct-1']:.2f}" in html and repr(div["distinct-1"]) not in html  # formatted by the list
    assert "grid-template-columns" in html  # the cards fill the page width


def test_report_says_which_images_it_shows_and_how_to_see_all(tmp_path):
    from stylecap.eval.report import write_report
    preds = [{"image": f"img{i:03d}", "caption": "a red circle"} for i in range(5)]
    refs = [{"image_id": f"img{i:03d}", "caption": "a red circle"} for i in range(5)]
    write_report(tmp_path / "r.html", preds, refs, {}, max_images=3)
    html = (tmp_path / "r.html").read_text()
    assert "first 3 of 5" in html and "--max_report_images" in html and "predictions.jsonl" in html
    write_report(tmp_path / "all.html", preds, refs, {}, max_images=0)  # 0 = all
    assert "all 5" in (tmp_path / "all.html").read_text()


def test_report_run_from_the_command_line_shows_that_command(tmp_path, monkeypatch):
    from stylecap.eval.report import write_report
    argv = ["evaluate.py", "--predictions", "p.jsonl", "--references", "my refs.json", "--no_java"]
    monkeypatch.setattr("sys.argv", argv)
    write_report(tmp_path / "r.html", [{"image": "a", "caption": "x"}], [{"image_id": "a", "caption": "x"}], {})
    assert "python evaluate.py --predictions p.jsonl --references &#x27;my refs.json&#x27; --no_java" in \
        (tmp_path / "r.html").read_text()
