"""stylecap.eval.metrics and stylecap.eval.style_classifier: equal to pycocoevalcap, Java-free and SPICE-free
paths, CLIPScore, diversity, matching, and the style classifier."""
from __future__ import annotations

import json
import random
import shutil
import subprocess

import pytest
import torch

from stylecap.demo.content import STYLES, en_captions, sample_content, styled_captions
from stylecap.eval import coco_metrics as C
from stylecap.eval import metrics as M
from stylecap.eval.style_classifier import StyleClassifier

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="Java not installed")

# Several references per image, of different lengths; no punctuation edge cases beyond what
# PTBTokenizer and python_tokenize treat identically (final periods, commas, "!", "'s").
REFS = {
    "img1": ["A red circle on a white background.", "a big red circle sits on white",
             "There is a large red circle, on white!", "the picture shows a big red circle on white",
             "a plain white background with a large red circle"],
    "img2": ["a small blue square on black", "A little blue square sits on black.",
             "a plain black background with a small blue square", "there is a small blue square against a black backdrop",
             "the picture shows a little blue square on black"],
    "img3": ["a green triangle on gray", "the picture shows a green triangle on gray", "A green triangle.",
             "a small green triangle on a gray background", "a little green triangle sits on gray"],
    "img4": ["a yellow square on a black background", "the dog's yellow square on black",
             "a big yellow square sits on black", "a plain black background with a large yellow square",
             "there is a large yellow square against a black backdrop"],
}
PREDS = {"img1": "a red circle on white.", "img2": "a blue square on a black background",
         "img3": "a green triangle", "img4": "a large yellow square on a black backdrop"}


def _direct_coco(refs: dict, preds: dict, subset: list[str]) -> dict:
    """pycocoevalcap called directly, as COCOEvalCap.evaluate does."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": preds[k]}] for k in refs})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor = Meteor()
    out = {f"BLEU-{n + 1}": bleu[n] for n in range(4)}
    out["METEOR"], _ = meteor.compute_score(gts, res)
    out["ROUGE-L"], _ = Rouge().compute_score(gts, res)
    out["CIDEr"], cider_per = Cider().compute_score(gts, res)
    out["cider_per"] = dict(zip(gts.keys(), cider_per))
    sg, sr = {k: gts[k] for k in subset}, {k: res[k] for k in subset}
    sub_bleu, _ = Bleu(4).compute_score(sg, sr, verbose=0)
    out["sub"] = {"BLEU-4": sub_bleu[3], "METEOR": meteor.compute_score(sg, sr)[0],
                  "ROUGE-L": Rouge().compute_score(sg, sr)[0]}
    return out


@pytest.fixture(scope="module")
def both_scores():
    """Ours and pycocoevalcap's, computed side by side: each METEOR start takes ~7 s."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        direct = pool.submit(_direct_coco, REFS, PREDS, ["img1", "img3"])
        ours = M.score_captions(PREDS, REFS, spice=False, subsets={"sub": ["img1", "img3"]})
        return ours, direct.result()


@pytest.fixture(scope="module")
def ptb_scores(both_scores):
    return both_scores[0]


@pytest.fixture(scope="module")
def direct_scores(both_scores):
    return both_scores[1]


@needs_java
def test_scores_equal_pycocoevalcap_multi_reference(ptb_scores, direct_scores):
    assert ptb_scores["tokenizer"] == "ptb"
    for m in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
        assert ptb_scores[m] == pytest.approx(direct_scores[m], rel=1e-9, abs=1e-12), m
    for k in REFS:
        assert ptb_scores["per_image"][k]["CIDEr"] == pytest.approx(direct_scores["cider_per"][k], rel=1e-9)
    # subsets: BLEU recomputed corpus-level, METEOR aggregated by the jar, ROUGE-L mean of images
    sub = ptb_scores["subsets"]["sub"]
    assert sub["n"] == 2
    for m in ("BLEU-4", "METEOR", "ROUGE-L"):
        assert sub[m] == pytest.approx(direct_scores["sub"][m], rel=1e-9), m
    assert sub["CIDEr"] == pytest.approx((direct_scores["cider_per"]["img1"] + direct_scores["cider_per"]["img3"]) / 2)
    # SPICE was switched off: None with a reason, nothing else affected
    assert ptb_scores["SPICE"] is None and "disabled" in ptb_scores["skipped"]["SPICE"]
    assert "METEOR" not in ptb_scores["skipped"]


@needs_java
def test_every_reference_counts(ptb_scores):
    single = M.score_captions(PREDS, {k: v[:1] for k, v in REFS.items()}, java=False, spice=False)
    # more references can only give an n-gram more chances to match
    assert ptb_scores["BLEU-4"] > single["BLEU-4"]
    assert ptb_scores["ROUGE-L"] > single["ROUGE-L"]


@needs_java
def test_no_java_path_matches_ptb_on_plain_captions(ptb_scores):
    py = M.score_captions(PREDS, REFS, java=False)
    assert py["tokenizer"] == "python"
    for m in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert py[m] == pytest.approx(ptb_scores[m], rel=1e-12), m
    for m in ("METEOR", "SPICE"):
        assert py[m] is None
        assert "Java" in py["skipped"][m] and "default-jre" in py["skipped"][m]


def test_no_java_path_without_java_at_all(monkeypatch):
    monkeypatch.setattr(C.shutil, "which", lambda name: None)
    py = M.score_captions(PREDS, REFS)  # autodetect finds no java
    assert py["tokenizer"] == "python"
    assert py["METEOR"] is None and py["skipped"]["METEOR"].startswith("Java not found")
    assert 0 < py["BLEU-4"] < 1 and py["CIDEr"] > 0 and 0 < py["ROUGE-L"] < 1


TRICKY = ["A dog's ball. It is RED!", "I don't think it can't, won't or cannot work...",
          "oh great, yet another red circle on white. so original.",
          'He said "hello" (quietly) [really] {ok} -- fine - well-known',
          "the U.S. flag, Mr. Smith etc. and 1,000 dogs at 3.5 $5 & 50% #tag @you",
          "dogs' toys 'quoted' it's I'm we're they've you'll he'd", "", "!!!", "gonna wanna gotta",
          "hello...world ... what?!", "a woman's hat at 3:30 pm; nice", "tab\there\nnew line"]


def test_python_tokenize_known_outputs():
    # expected strings are what pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1) printed
    assert M.python_tokenize(TRICKY[0]) == "a dog 's ball it is red"
    assert M.python_tokenize(TRICKY[1]) == "i do n't think it ca n't wo n't or can not work"
    assert M.python_tokenize(TRICKY[3]) == "he said hello -lrb- quietly -rrb- -lsb- really -rsb- -lcb- ok -rcb- fine well-known"
    assert M.python_tokenize(TRICKY[4]) == "the u.s. flag mr. smith etc. and 1,000 dogs at 3.5 $ 5 & 50 % #tag @you"
    assert M.python_tokenize(TRICKY[9]) == "hello world what ?!"


@needs_java
def test_python_tokenize_agrees_with_ptbtokenizer():
    rng = random.Random(0)
    sents = list(TRICKY)
    for _ in range(40):
        c = sample_content(rng)
        sents += styled_captions(rng.choice(STYLES), c) + en_captions(c)
    ptb = C._tokenize({i: [s] for i, s in enumerate(sents)}, use_ptb=True)
    assert [ptb[i][0] for i in range(len(sents))] == [M.python_tokenize(s) for s in sents]


# ----------------------------------------------------------------------------- SPICE
def test_spice_unavailable_is_skipped_with_how_to(monkeypatch, tmp_path):
    monkeypatch.setattr(C, "spice_dir", lambda: tmp_path)  # a pycocoevalcap without the CoreNLP jars
    monkeypatch.delenv(M.SPICE_JARS_ENV, raising=False)
    monkeypatch.setattr(C.shutil, "which", lambda name: "/usr/bin/java")  # Java "present"
    monkeypatch.setattr(C, "_tokenize", lambda groups, use_ptb: {k: [M.python_tokenize(c) for c in v]
                                                                  for k, v in groups.items()})
    out = M.score_captions(PREDS, REFS, metrics=("BLEU", "ROUGE-L", "CIDEr", "SPICE"))
    assert out["SPICE"] is None
    reason = out["skipped"]["SPICE"]
    assert "stanford-corenlp-3.6.0-models.jar" in reason and "--spice_jars" in reason and M.SPICE_JARS_ENV in reason
    for m in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert out[m] is not None and out[m] > 0


def test_find_spice_jars_prefers_given_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(C, "spice_dir", lambda: tmp_path / "pycoco")
    monkeypatch.delenv(M.SPICE_JARS_ENV, raising=False)
    jars = tmp_path / "jars"
    jars.mkdir()
    (jars / M.CORENLP_JARS[0]).write_bytes(b"")
    folder, reason = M.find_spice_jars(jars)
    assert folder is None and str(jars) in reason  # one jar is not enough
    (jars / M.CORENLP_JARS[1]).write_bytes(b"")
    assert M.find_spice_jars(jars) == (jars, None)
    monkeypatch.setenv(M.SPICE_JARS_ENV, str(jars))
    assert M.find_spice_jars() == (jars, None)


def test_spice_result_parsing_and_classpath(monkeypatch, tmp_path):
    """run_spice with java replaced: the command carries the jars; scores are the mean of 'All' f."""
    seen = {}

    def fake_run(cmd, cwd, capture_output, text):
        seen["cmd"] = cmd
        items = json.loads(open(cmd[cmd.index("edu.anu.spice.SpiceScorer") + 1]).read())
        out = [{"image_id": it["image_id"], "scores": {"All": {"f": 0.25 * (i + 1), "pr": 0.1, "re": 0.1}}}
               for i, it in enumerate(items)]
        open(cmd[cmd.index("-out") + 1], "w").write(json.dumps(out))
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(C.subprocess, "run", fake_run)
    avg, per = M.run_spice({0: ["a b"], 1: ["c d"]}, {0: ["a"], 1: ["c"]}, tmp_path)
    assert per == [0.25, 0.5] and avg == pytest.approx(0.375)
    assert any(str(tmp_path / M.CORENLP_JARS[1]) in part for part in seen["cmd"])
    assert "-subset" in seen["cmd"] and "-silent" in seen["cmd"]


@needs_java
def test_spice_java_failure_is_a_skip_not_a_crash(tmp_path):
    for j in M.CORENLP_JARS:  # empty files: Java starts and fails to load CoreNLP
        (tmp_path / j).write_bytes(b"")
    out = M.score_captions(PREDS, REFS, metrics=("CIDEr", "SPICE"), spice_jars=str(tmp_path))
    assert out["SPICE"] is None and out["skipped"]["SPICE"].startswith("SPICE failed")
    assert "Exception" in out["skipped"]["SPICE"] or "Error" in out["skipped"]["SPICE"]
    assert out["CIDEr"] > 0 and out["tokenizer"] == "ptb"


# ----------------------------------------------------------------------------- matching
def test_matching_is_lenient_on_image_ids_and_strict_on_styles():
    refs = [{"image_id": "1000092795", "style": None, "caption": "a dog"},
            {"image_id": "1000092795", "style": None, "caption": "a brown dog"},
            {"image_id": "42.jpg", "style": None, "caption": "a cat"}]
    preds = [{"image": "/x/1000092795.jpg", "style": None, "caption": "dog", "score": None},
             {"image": "1000092795.jpg", "style": None, "caption": "dup", "score": None},
             {"image": "42", "style": None, "caption": "cat", "score": None},
             {"image": "7.jpg", "style": None, "caption": "nothing", "score": None}]
    mt = M.match_predictions(preds, refs)
    assert not mt.styled
    assert mt.predictions == {"1000092795": "dog", "42.jpg": "cat"}
    assert mt.references["1000092795"] == ["a dog", "a brown dog"]
    assert mt.unmatched == ["7.jpg"] and mt.duplicates == 1 and mt.missing == []
    styled_refs = [{"image_id": "a", "style": "Happy", "caption": "yay"}, {"image_id": "b", "style": "Gloomy", "caption": "sad"}]
    styled_preds = [{"image": "a.jpg", "style": "Happy", "caption": "yay!", "score": None},
                    {"image": "a.jpg", "style": "Gloomy", "caption": "meh", "score": None}]
    mt = M.match_predictions(styled_preds, styled_refs)
    assert mt.styled and list(mt.predictions) == [("a", "Happy")]
    assert len(mt.unmatched) == 1 and mt.missing == [("b", "Gloomy")]


# ----------------------------------------------------------------------------- diversity
def test_diversity_hand_computed():
    d = M.diversity(["a red dog", "a red cat", "A red dog."], train_captions=["A red cat!", "a blue dog"])
    # unigrams: 9 total {a, red, dog, cat}; bigrams: 6 total {a red, red dog, red cat}
    assert d["distinct-1"] == pytest.approx(4 / 9)
    assert d["distinct-2"] == pytest.approx(3 / 6)
    assert d["vocab_size"] == 4 and d["unique_captions"] == 2 and d["mean_length"] == 3
    assert d["copied"] == pytest.approx(1 / 3)  # "a red cat" == "A red cat!" after normalisation
    assert M.diversity(["x y"])["copied"] is None


# ----------------------------------------------------------------------------- style classifier
def _styled_data(seed: int, n: int, styled: bool):
    rng = random.Random(seed)
    caps, styles = [], []
    for _ in range(n):
        c, style = sample_content(rng), rng.choice(STYLES)
        caps.append(rng.choice(styled_captions(style, c) if styled else en_captions(c)))
        styles.append(style)
    return caps, styles


def test_style_classifier_separates_styles():
    clf = StyleClassifier().fit(*_styled_data(0, 600, styled=True))
    caps, styles = _styled_data(1, 300, styled=True)
    acc = clf.accuracy(caps, styles)
    assert acc["top1"] > 0.95 and acc["top5"] == 1.0 and acc["n"] == 300
    assert clf.predict(["oh great, another red circle on white. so original."]) == ["Sarcastic"]
    # deterministic: a second fit predicts the same
    assert StyleClassifier().fit(*_styled_data(0, 600, True)).predict(caps) == clf.predict(caps)
    assert clf.accuracy(["x"], ["Unknown style"]) == {"top1": None, "top5": None, "n": 0, "n_unknown_style": 1}


def test_style_classifier_is_at_chance_on_style_free_captions():
    clf = StyleClassifier().fit(*_styled_data(2, 600, styled=False))
    caps, styles = _styled_data(3, 500, styled=False)
    top1 = clf.accuracy(caps, styles)["top1"]
    assert 0.1 < top1 < 0.32  # chance is 1/5


# ----------------------------------------------------------------------------- CLIPScore
@pytest.fixture(scope="module")
def small_clip(small_models):
    from stylecap.clip_utils import load_clip
    model, _, _ = load_clip(str(small_models / "small_clip.pt"))
    return model


@torch.no_grad()
def _text_emb(model, text: str) -> torch.Tensor:
    import clip
    return model.encode_text(clip.tokenize([text], truncate=True)).float()[0]


def test_clip_score(small_clip):
    caps = ["a big red circle on white", "a small blue square on black", "a green triangle on gray"]
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 512, generator=g)
    e0 = _text_emb(small_clip, f"{M.CLIPSCORE_PROMPT} {caps[0]}")
    feats[0] = 3.0 * e0  # same direction as caption 0's text embedding, unnormalised
    feats[1] = -_text_emb(small_clip, f"{M.CLIPSCORE_PROMPT} {caps[1]}")  # opposite: clipped to 0
    refs = [[caps[0]], ["a tiny blue box", "a little blue square"], ["something else entirely", "a green triangle"]]
    out = M.clip_score(feats, caps, small_clip, refs)
    per = out["per_caption"]
    assert per[0]["CLIP-S"] == pytest.approx(2.5, abs=1e-4) and per[1]["CLIP-S"] == 0.0
    # hand computation for pair 2: 2.5 * max(cos, 0) with both sides L2-normalised
    e2 = _text_emb(small_clip, f"{M.CLIPSCORE_PROMPT} {caps[2]}")
    cos = torch.nn.functional.cosine_similarity(e2, feats[2], dim=0).item()
    assert per[2]["CLIP-S"] == pytest.approx(2.5 * max(cos, 0.0), abs=1e-5)
    # caption 0's only reference is itself: ref term 1 -> harmonic mean 2*2.5*1/3.5
    assert per[0]["RefCLIP-S"] == pytest.approx(2 * 2.5 / 3.5, abs=1e-4)
    for i, rec in enumerate(per):
        refsim = max(max(torch.nn.functional.cosine_similarity(
            _text_emb(small_clip, f"{M.CLIPSCORE_PROMPT} {r}"), _text_emb(small_clip, f"{M.CLIPSCORE_PROMPT} {caps[i]}"),
            dim=0).item() for r in refs[i]), 0.0)
        assert 0.0 <= rec["CLIP-S"] <= 2.5
        assert min(rec["CLIP-S"], refsim) - 1e-5 <= rec["RefCLIP-S"] <= max(rec["CLIP-S"], refsim) + 1e-5
    assert out["CLIP-S"] == pytest.approx(sum(r["CLIP-S"] for r in per) / 3)
    assert all(torch.isfinite(torch.tensor([out["CLIP-S"], out["RefCLIP-S"]])))
    with pytest.raises(ValueError, match="do not match"):
        M.clip_score(torch.randn(3, 256), caps, small_clip)


# ----------------------------------------------------------------------------- table
def test_format_table_scales_and_shows_skips():
    metrics = {**{m: 0.5 for m in M.STANDARD}, "SPICE": None, "skipped": {"SPICE": "jars missing; pass --spice_jars"}}
    text = M.format_table(metrics)
    assert "CIDEr" in text and "50.00" in text
    assert "SPICE" in text and "skipped (jars missing; pass --spice_jars)" in text


def test_spice_skipped_is_printed_once_per_evaluation(tmp_path, capsys):
    """Issue 17 section 7: the reason SPICE was skipped was printed twice (a log line, then the table row)."""
    import re

    import evaluate
    refs = {"images": [{"id": k, "file_name": f"{k}.jpg"} for k in REFS],
            "annotations": [{"image_id": k, "caption": c} for k, v in REFS.items() for c in v]}
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    (tmp_path / "preds.txt").write_text("".join(f"{k}.jpg\t{c}\n" for k, c in PREDS.items()))
    argv = ["--predictions", str(tmp_path / "preds.txt"), "--references", str(tmp_path / "refs.json"),
            "--output_path", str(tmp_path / "metrics.json"), "--no_java"]
    assert evaluate.main(argv) == 0
    out = capsys.readouterr()
    said = re.findall(r"SPICE\W+skipped", out.out + out.err)
    assert len(said) == 1, out.out + out.err
    assert json.loads((tmp_path / "metrics.json").read_text())["skipped"]["SPICE"]  # the reason is still kept
