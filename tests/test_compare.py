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
