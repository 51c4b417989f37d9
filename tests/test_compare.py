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


def _stat(values: np.ndarray):
    return lambda idx: mean_statistic(values, idx)


def test_p_value_ties_identical_systems_is_one():
    """Issue 22 section 1: every resample of two identical systems is a tie, and a tie is not a win:
    p_value (share of resamples where the system is not better) is 1.0, not 0.0."""
    base = np.random.default_rng(0).random(200)
    res = paired_bootstrap(_stat(base), _stat(base.copy()), 200, resamples=300, seed=1)
    assert res["p_value"] == 1.0 and res["ties"] == 1.0 and res["baseline_wins"] == 0.0


def test_p_value_ties_never_better_system_is_one():
    """Equal on 99 images, worse on 1: never better on any resample, so p_value is 1.0 (before issue 22
    baseline_wins was 0.634: the ties, (1 - 1/100)^100 ~ 0.37 of the resamples, counted for the system)."""
    base = np.random.default_rng(0).random(100)
    system = base.copy()
    system[17] -= 0.5
    res = paired_bootstrap(_stat(system), _stat(base), 100, resamples=1000, seed=0)
    assert res["p_value"] == 1.0 and res["diff"] < 0 and res["ci95"][1] == 0.0
    assert 0.3 < res["ties"] < 0.45 and res["baseline_wins"] == pytest.approx(1 - res["ties"])


def test_p_value_ties_clearly_better_system_near_zero():
    rng = np.random.default_rng(0)
    base = rng.random(200)
    res = paired_bootstrap(_stat(base + 0.1 + 0.01 * rng.random(200)), _stat(base), 200, resamples=500, seed=1)
    assert res["p_value"] < 0.01 and res["ci95"][0] > 0


def test_cluster_bootstrap_resamples_images_not_rows():
    """Issue 22 section 1: 200 images x 2 styles, rows (image, style) with a shared per-image effect.
    Resampling images (each carrying both its rows) equals, draw for draw, the bootstrap of the
    per-image aggregates (mean of the two rows; summed BLEU n-gram statistics), and is wider than
    resampling the 400 rows as if independent."""
    rng = np.random.default_rng(3)
    n_img = 200
    image = np.repeat(np.arange(n_img), 2)  # rows ordered image by image: (0, s1), (0, s2), (1, s1), ...
    effect = np.repeat(rng.normal(0, 0.3, n_img), 2)  # the image, not the style, decides most of the score
    base = rng.random(2 * n_img)
    system = base + 0.02 + effect + rng.normal(0, 0.05, 2 * n_img)
    clustered = paired_bootstrap(_stat(system), _stat(base), 2 * n_img, resamples=400, seed=5, clusters=image)
    assert clustered["images"] == 200 and clustered["rows"] == 400
    per_image = paired_bootstrap(_stat(system.reshape(-1, 2).mean(1)), _stat(base.reshape(-1, 2).mean(1)), n_img,
                                 resamples=400, seed=5)
    assert per_image["images"] == per_image["rows"] == 200
    assert clustered["ci95"] == pytest.approx(per_image["ci95"], abs=1e-12)
    assert clustered["p_value"] == per_image["p_value"]
    rows = paired_bootstrap(_stat(system), _stat(base), 2 * n_img, resamples=400, seed=5)
    assert rows["images"] == rows["rows"] == 400
    width = lambda r: r["ci95"][1] - r["ci95"][0]
    assert width(clustered) > 1.2 * width(rows)

    # BLEU-4: the corpus statistic sums n-gram statistics over every row of the drawn images
    caps = ["a red circle", "a big red circle on white", "a blue square", "the blue square on black"]
    refs = [["a red circle on white", "a big red circle"], ["a small blue square on black", "a blue square"]]
    sys_stats = stats_array([bleu_stats(caps[rng.integers(4)], refs[i % 2]) for i in range(2 * n_img)])
    base_stats = stats_array([bleu_stats(caps[rng.integers(4)], refs[i % 2]) for i in range(2 * n_img)])
    bleu = lambda arr: (lambda idx: bleu_statistic(arr, idx))
    clustered = paired_bootstrap(bleu(sys_stats), bleu(base_stats), 2 * n_img, resamples=200, seed=2, clusters=image)
    summed = lambda arr: arr.reshape(n_img, 2, -1).sum(1)  # one row of statistics per image
    per_image = paired_bootstrap(bleu(summed(sys_stats)), bleu(summed(base_stats)), n_img, resamples=200, seed=2)
    assert clustered["diff"] == pytest.approx(corpus_bleu_of(sys_stats) - corpus_bleu_of(base_stats), abs=1e-12)
    assert clustered["ci95"] == pytest.approx(per_image["ci95"], abs=1e-12) and clustered["images"] == 200


def corpus_bleu_of(arr: np.ndarray) -> float:
    return bleu_statistic(arr, np.arange(len(arr)))


def test_cluster_bootstrap_rows_of_an_image_need_not_be_adjacent():
    """clusters may come in any order: the rows of image k are carried together wherever they are."""
    rng = np.random.default_rng(4)
    image = np.repeat(np.arange(50), 3)
    perm = rng.permutation(150)
    system, base = rng.random(150), rng.random(150)
    ordered = paired_bootstrap(_stat(system), _stat(base), 150, resamples=100, seed=0, clusters=image)
    shuffled = paired_bootstrap(_stat(system[perm]), _stat(base[perm]), 150, resamples=100, seed=0,
                                clusters=image[perm])
    assert shuffled["ci95"] == pytest.approx(ordered["ci95"], abs=1e-12) and shuffled["images"] == 50


def test_paired_bootstrap_identical_and_clearly_better_systems():
    rng = np.random.default_rng(0)
    base = rng.random(200)
    stat = lambda values: (lambda idx: mean_statistic(values, idx))
    same = paired_bootstrap(stat(base), stat(base.copy()), 200, resamples=200, seed=1)
    # identical systems: every resample ties, and a tie is no evidence for the system (p_value 1, not 0;
    # issue 22 replaced the old `baseline_wins == 0` here, which read "identical" as "significantly better")
    assert same["diff"] == 0 and same["ci95"] == [0, 0] and same["p_value"] == 1.0
    better = paired_bootstrap(stat(base + 0.1 + 0.01 * rng.random(200)), stat(base), 200, resamples=200, seed=1)
    assert better["ci95"][0] > 0 and better["p_value"] == 0 and better["diff"] == pytest.approx(0.105, abs=0.01)
    noisy = paired_bootstrap(stat(base + rng.normal(0, 0.3, 200)), stat(base), 200, resamples=500, seed=1)
    assert noisy["ci95"][0] < 0 < noisy["ci95"][1] and 0.05 < noisy["p_value"] < 0.95


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
        # issue 22: `0 <= baseline_wins <= 1` could not fail; the p_value is checked against its definition
        assert sig["images"] == sig["rows"] == 8 and sig["ci95"][0] <= sig["diff"] <= sig["ci95"][1]
        assert sig["p_value"] == pytest.approx(sig["baseline_wins"] + sig["ties"])
    read = lambda key: json.loads((evals[key][1] / "metrics.json").read_text())["per_image"]
    keys = (("token", 3), ("embedding", 3), ("embedding", 4))
    per = {key: {r["image_id"]: r["CIDEr"] for r in read(key)} for key in keys}
    ids = sorted(per[("token", 3)])
    arr = {key: np.array([v[i] for i in ids]) for key, v in per.items()}
    again = paired_bootstrap(lambda idx: arr[("token", 3)][idx].mean(),
                             lambda idx: (arr[("embedding", 3)][idx].mean() + arr[("embedding", 4)][idx].mean()) / 2,
                             8, resamples=200, seed=0)  # what compare.py computes, from the eval folders' files
    cider = result["significance"]["style_mode=token"]["CIDEr"]
    assert cider["p_value"] == again["p_value"] and cider["ci95"] == pytest.approx(again["ci95"], abs=1e-12)
    bleu = {key: json.loads((evals[key][1] / "metrics.json").read_text())["BLEU-4"]
            for key in (("token", 3), ("embedding", 3), ("embedding", 4))}
    expected = bleu[("token", 3)] - (bleu[("embedding", 3)] + bleu[("embedding", 4)]) / 2  # the table's numbers
    assert result["significance"]["style_mode=token"]["BLEU-4"]["diff"] == pytest.approx(expected, abs=1e-9)
    assert rows["style_mode=token"]["mean"]["style ppl"] > 1 and rows["style_mode=token"]["mean"]["vocabulary"] > 0
    md = (tmp_path / "comparison.md").read_text()
    assert "| style_mode=embedding | 2 |" in md and " ± " in md and "Paired bootstrap" in md and "| p-value |" in md
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


# ------------------------------------------------------------------ eval folders written by hand (no training)
def fake_eval(folder, scores: dict, seed: int | None = 3, checkpoint: str = "best.pt", style_mode: str = "embedding"):
    """An eval folder as `train.py --mode eval` writes it, with the per-row scores ``scores``
    {(image_id, style): (CIDEr, style top-1)}; BLEU statistics are those of a caption of CIDEr*10 words."""
    def bleu(c: float) -> dict:
        words = int(10 * c) + 1
        return {"testlen": words, "reflen": 8, "guess": [max(words - k, 0) for k in range(4)],
                "correct": [max(words - 1 - k, 0) for k in range(4)]}
    per_image = [{"image_id": img, "style": style, "caption": "x", "CIDEr": c, "style_top1": t, "bleu_stats": bleu(c)}
                 for (img, style), (c, t) in scores.items()]
    metrics = {"CIDEr": float(np.mean([c for c, _ in scores.values()])), "per_image": per_image,
               "tokenizer": "ptb", "segmentation": {"mode": "none"}, "references_sha256": "f" * 64}
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    args = {"style_mode": style_mode, "lr": 1e-3, **({"seed": seed} if seed is not None else {})}
    (folder / "eval_config.json").write_text(json.dumps({
        "model_path": str(folder.parent / f"run-{style_mode}-{seed}" / "checkpoints" / checkpoint),
        "decode": {"strategy": "greedy"}, "train_args": args, "trainable_parameters": 1000}))
    return folder


def two_styles(n_images: int, shift: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    effect = rng.random(n_images)
    score = lambda i: float(np.clip(effect[i] + shift + 0.05 * rng.normal(), 0, 1))
    return {(f"img{i:03d}", s): (score(i), float(rng.random() < 0.5))
            for i in range(n_images) for s in ("humor", "romantic")}


def test_compare_cluster_bootstrap_counts_images_and_rows(tmp_path):
    """Issue 22 section 1: 30 images x 2 styles -> images 30, rows 60 (today: images 60)."""
    base = fake_eval(tmp_path / "eval-embedding", two_styles(30, 0.0, 0))
    token = fake_eval(tmp_path / "eval-token", two_styles(30, 0.1, 1), style_mode="token")
    assert compare.main([str(base), str(token), "--resamples", "100", "--output_path", str(tmp_path / "c")]) == 0
    sig = json.loads((tmp_path / "c/comparison.json").read_text())["significance"]["style_mode=token"]
    for metric in ("CIDEr", "BLEU-4", "style top-1"):
        assert sig[metric]["images"] == 30 and sig[metric]["rows"] == 60
    md = (tmp_path / "c/comparison.md").read_text()
    assert "30 images, 60 rows" in md and "| p-value |" in md
    csv = (tmp_path / "c/comparison.csv").read_text().splitlines()
    header, token_row = csv[0].split(","), next(ln for ln in csv if ln.startswith('"style_mode=token"')).split(",")
    assert header[:3] == ["label", "n", "seeds"]
    assert float(token_row[header.index("CIDEr p_value")]) == sig["CIDEr"]["p_value"]
    assert "p-value" in (tmp_path / "c/comparison.html").read_text()


def test_seed_group_only_for_runs_that_differ_in_seed_alone(tmp_path):
    """Issue 22 section 1: best.pt and last.pt of one run (same seed) are two checkpoints, not two seeds."""
    scores = two_styles(10, 0.0, 0)
    best3 = fake_eval(tmp_path / "eval-emb-3-best", scores, seed=3, checkpoint="best.pt")
    last3 = fake_eval(tmp_path / "eval-emb-3-last", two_styles(10, 0.05, 1), seed=3, checkpoint="last.pt")
    best4 = fake_eval(tmp_path / "eval-emb-4-best", two_styles(10, 0.02, 2), seed=4, checkpoint="best.pt")
    token = fake_eval(tmp_path / "eval-token", two_styles(10, 0.1, 3), style_mode="token")
    assert compare.main([str(p) for p in (best3, last3, best4, token)] + ["--resamples", "50", "--output_path",
                        str(tmp_path / "c")]) == 0
    rows = {r["label"]: r for r in json.loads((tmp_path / "c/comparison.json").read_text())["rows"]}
    assert set(rows) == {"style_mode=embedding, checkpoint=best.pt", "style_mode=embedding, checkpoint=last.pt",
                         "style_mode=token"}
    assert rows["style_mode=embedding, checkpoint=best.pt"]["seeds"] == [3, 4]
    assert rows["style_mode=embedding, checkpoint=last.pt"]["n"] == 1

    # the same checkpoint evaluated twice the same way: only the folder names tell them apart
    again = tmp_path / "again" / "eval-emb-3-best"
    shutil.copytree(best3, again)
    assert compare.main([str(best3), str(again), str(token), "--resamples", "50", "--output_path",
                         str(tmp_path / "c2")]) == 0
    rows = {r["label"]: r for r in json.loads((tmp_path / "c2/comparison.json").read_text())["rows"]}
    assert set(rows) == {f"style_mode=embedding, {best3}", f"style_mode=embedding, {again}", "style_mode=token"}
    assert all(r["n"] == 1 for r in rows.values())

    # --labels that put one seed twice into a group are refused
    with pytest.raises(UserError, match="same seed"):
        compare.main([str(best3), str(last3), "--labels", "emb", "emb", "--output_path", str(tmp_path / "c3")])
    assert compare.main([str(best3), str(best4), "--labels", "emb", "emb", "--output_path", str(tmp_path / "c4")]) == 0


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
