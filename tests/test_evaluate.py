"""evaluate.py end to end: every input format, null + skipped, --strict, the HTML report."""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate
from stylecap.demo.content import STYLES, en_captions, encode, render, sample_content, styled_captions
from stylecap.features import save_features
from stylecap.eval.metrics import STANDARD
from stylecap.utils import UserError

ROOT = Path(__file__).resolve().parents[1]
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="Java not installed")


@pytest.fixture(scope="module")
def pc(tmp_path_factory) -> dict:
    """A small PersonalityCaptions-style set: 8 test images x 5 references, 150 train captions,
    images for all test images but one, and a predictions.jsonl (half right, half another style)."""
    d = tmp_path_factory.mktemp("pc")
    rng = random.Random(0)
    img_dir = d / "yfcc_images"
    img_dir.mkdir()
    train = []
    for i in range(150):
        c, s = sample_content(rng), STYLES[i % len(STYLES)]
        train.append({"personality": s, "image_hash": f"tr{i:03d}", "comment": rng.choice(styled_captions(s, c))})
    test, preds = [], []
    for i in range(8):
        c, s = sample_content(rng), STYLES[i % len(STYLES)]
        caps = styled_captions(s, c)
        test.append({"personality": s, "image_hash": f"te{i:03d}", "comment": caps[0], "additional_comments": caps[1:],
                     "candidates": ["ignored"]})
        if i != 7:  # te007 has no image file: the report shows a placeholder
            (img_dir / f"te{i:03d}.jpg").write_bytes(encode(render(c, rng)))
        caption = caps[0] if i % 2 == 0 else styled_captions(STYLES[(i + 1) % len(STYLES)], c)[1]
        preds.append({"image": f"te{i:03d}.jpg", "style": s, "caption": caption, "score": -1.5})
    preds[3]["caption"] = "<script>alert('x')</script> & a red circle"  # must be escaped in the report
    (d / "train.json").write_text(json.dumps(train))
    (d / "test.json").write_text(json.dumps(test))
    (d / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    return {"dir": d, "img_dir": img_dir, "preds": preds, "test": test}


def _run(tmp_path, *args) -> dict:
    out = tmp_path / "metrics.json"
    assert evaluate.main(["--output_path", str(out), "--quiet", *map(str, args)]) == 0
    return json.loads(out.read_text())


def _check_top_level(m: dict) -> None:
    for k in STANDARD:
        assert k in m
        assert m[k] is None or isinstance(m[k], float)
        if m[k] is None:
            assert m["skipped"][k]  # a null metric always has its reason
    for k in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert 0 <= m[k] and (k == "CIDEr" or m[k] <= 1)


def test_jsonl_against_personality_captions_no_java_with_report(pc, tmp_path, capsys):
    report = tmp_path / "report.html"
    m = _run(tmp_path, "--predictions", pc["dir"] / "predictions.jsonl", "--references", pc["dir"] / "test.json",
             "--train_captions", pc["dir"] / "train.json", "--no_java", "--report", report, "--image_dir", pc["img_dir"])
    _check_top_level(m)
    assert m["METEOR"] is None and "Java" in m["skipped"]["METEOR"]
    assert m["SPICE"] is None and "Java" in m["skipped"]["SPICE"]
    assert m["tokenizer"] == "python"
    assert m["counts"]["scored"] == 8 and m["counts"]["styled_matching"] is True
    assert m["counts"]["unmatched_predictions"] == 0 and m["counts"]["missing_predictions"] == 0
    assert m["inputs"]["predictions_format"] == "jsonl" and m["inputs"]["references_format"] == "personality_captions"
    # 5 references per image counted; half the captions are an exact reference -> high but < perfect
    assert 0.3 < m["BLEU-4"] < 1
    assert set(m["per_style"]) == set(STYLES)
    assert m["per_style"]["Happy"]["group"] == "positive" and m["per_style"]["Gloomy"]["group"] == "negative"
    assert set(m["per_group"]) == {"positive", "neutral", "negative"}  # Sarcastic is neutral
    assert m["per_group"]["positive"]["n"] == 4  # Happy + Romantic: te000, te001, te005, te006
    fid = m["style_fidelity"]
    assert fid["references"]["top1"] > 0.9 and fid["references"]["n"] == 40
    assert fid["generated"]["n"] == 8 and fid["generated"]["top1"] < fid["references"]["top1"]
    assert m["diversity"]["copied"] is not None
    assert m["CIDEr"] > 2 * m["baseline"]["CIDEr"]
    printed = capsys.readouterr().out
    assert "CIDEr" in printed and "skipped (Java disabled" in printed
    html = report.read_text()
    assert "<table" in html and "ROUGE-L" in html and "Per style" in html and "Style fidelity" in html
    assert html.count("data:image/jpeg;base64,") == 7 and "no image" in html  # te007's file is missing
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; a red circle" in html
    assert "CIDEr " in html  # per-image CIDEr beside each caption


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> dict:
    """COCO annotations (unstyled, 5 refs per image) with int ids, predictions as caption_generate.txt
    and as a COCO results json."""
    d = tmp_path_factory.mktemp("coco")
    rng = random.Random(1)
    images, anns, results = [], [], []
    for i in range(6):
        c = sample_content(rng)
        images.append({"id": 100 + i, "file_name": f"COCO_{100 + i}.jpg"})
        anns += [{"image_id": 100 + i, "id": 10 * i + j, "caption": cap} for j, cap in enumerate(en_captions(c))]
        results.append({"image_id": 100 + i, "caption": en_captions(c)[i % 5] if i < 3 else "a photo of something"})
    (d / "captions_test.json").write_text(json.dumps({"images": images, "annotations": anns}))
    (d / "results.json").write_text(json.dumps(results))
    (d / "caption_generate.txt").write_text("".join(f"{r['image_id']}.jpg\t{r['caption']}\n" for r in results))
    return {"dir": d, "results": results}


def test_caption_generate_txt_against_coco_annotations(coco, tmp_path):
    m = _run(tmp_path, "--predictions", coco["dir"] / "caption_generate.txt",
             "--references", coco["dir"] / "captions_test.json", "--no_java")
    _check_top_level(m)
    assert m["inputs"]["predictions_format"] == "caption_generate_txt"
    assert m["inputs"]["references_format"] == "coco_annotations"
    assert m["counts"]["scored"] == 6 and m["counts"]["matched_by_basename"] == 6  # "100.jpg" -> 100
    assert m["per_style"] == {} and m["style_fidelity"] is None and "style_fidelity" in m["skipped"]
    # three exact references, three junk captions: per-image CIDEr tells them apart
    per = {r["image_id"]: r["CIDEr"] for r in m["per_image"]}
    assert min(per[str(i)] for i in (100, 101, 102)) > max(per[str(i)] for i in (103, 104, 105))
    m2 = _run(tmp_path, "--predictions", coco["dir"] / "results.json",
              "--references", coco["dir"] / "captions_test.json", "--no_java")
    assert m2["inputs"]["predictions_format"] == "coco_results"
    assert {k: m2[k] for k in STANDARD} == {k: m[k] for k in STANDARD}  # same captions, same numbers


@needs_java
def test_coco_results_against_feature_file_with_java_and_clipscore(coco, small_models, tmp_path):
    rng = random.Random(2)
    caps = []
    for row, r in enumerate(coco["results"]):
        c = sample_content(rng)
        caps += [{"image_id": str(r["image_id"]), "caption": cap, "clip_embedding": row} for cap in en_captions(c)]
    feats = tmp_path / "test_features.pt"
    save_features(feats, {"clip_embedding": torch.randn(len(coco["results"]), 512, generator=torch.Generator().manual_seed(0)),
                          "captions": caps, "meta": {}})
    m = _run(tmp_path, "--predictions", coco["dir"] / "results.json", "--references", feats,
             "--clip_model_path", small_models / "small_clip.pt", "--no_spice")
    _check_top_level(m)
    assert m["inputs"]["references_format"] == "feature_file" and m["tokenizer"] == "ptb"
    assert 0 < m["METEOR"] < 1 and "METEOR" not in m["skipped"]
    assert m["SPICE"] is None and "--no_spice" in m["skipped"]["SPICE"]
    cs = m["clip_score"]
    assert cs["n"] == 6 and 0 <= cs["CLIP-S"] <= 2.5 and 0 <= cs["RefCLIP-S"] <= 2.5
    assert all("CLIP-S" in r and "RefCLIP-S" in r for r in m["per_image"])


def test_clipscore_needs_features(pc, small_models, tmp_path):
    m = _run(tmp_path, "--predictions", pc["dir"] / "predictions.jsonl", "--references", pc["dir"] / "test.json",
             "--no_java", "--clip_model_path", small_models / "small_clip.pt")
    assert m["clip_score"] is None and "feature file" in m["skipped"]["CLIPScore"]


def test_unmatched_and_missing_are_counted(pc, tmp_path):
    preds = [dict(p) for p in pc["preds"][:6]] + [{"image": "nope.jpg", "style": "Happy", "caption": "x", "score": None}]
    preds[0]["style"] = "Romantic" if preds[0]["style"] != "Romantic" else "Happy"  # no reference in that style
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in preds))
    m = _run(tmp_path, "--predictions", path, "--references", pc["dir"] / "test.json", "--no_java")
    c = m["counts"]
    assert c["unmatched_predictions"] == 2 and c["missing_predictions"] == 3 and c["scored"] == 5
    assert "nope.jpg" in c["unmatched_examples"]
    with pytest.raises(UserError, match="--strict"):
        evaluate.main(["--predictions", str(path), "--references", str(pc["dir"] / "test.json"),
                       "--output_path", str(tmp_path / "strict.json"), "--no_java", "--strict", "--quiet"])
    assert not (tmp_path / "strict.json").exists()


def test_strict_fails_with_one_line_and_exit_2(pc, tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("te000.jpg\ta caption\nunknown.jpg\tanother\n")
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--predictions", str(path), "--references",
                           str(pc["dir"] / "test.json"), "--output_path", str(tmp_path / "m.json"), "--strict",
                           "--no_java", "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluate.py: error: --strict") and "unknown.jpg" in lines[0]


@pytest.mark.parametrize("content, match", [
    ("not json, no tab\n", "line 1: expected 'image<TAB>caption'"),
    ('{"images": [], "annotations": []}', "not predictions"),
    ('[{"image_id": 1}]', "string 'caption'"),
    ("", "no predictions"),
])
def test_bad_predictions_name_the_file(pc, tmp_path, content, match):
    path = tmp_path / "bad_preds.txt"
    path.write_text(content)
    with pytest.raises(UserError, match=match) as e:
        evaluate.main(["--predictions", str(path), "--references", str(pc["dir"] / "test.json"),
                       "--output_path", str(tmp_path / "m.json"), "--quiet"])
    assert str(path) in str(e.value)


def test_bad_references_name_the_file(pc, tmp_path):
    bad = tmp_path / "refs.json"
    bad.write_text(json.dumps({"what": "ever"}))
    for refs, match in ((bad, "unknown reference format"), (tmp_path / "missing.json", "does not exist")):
        with pytest.raises(UserError, match=match) as e:
            evaluate.main(["--predictions", str(pc["dir"] / "predictions.jsonl"), "--references", str(refs),
                           "--output_path", str(tmp_path / "m.json"), "--quiet"])
        assert str(refs) in str(e.value)
    with pytest.raises(UserError, match="no prediction matches"):
        other = tmp_path / "other.txt"
        other.write_text("zzz.jpg\ta caption\n")
        evaluate.main(["--predictions", str(other), "--references", str(pc["dir"] / "test.json"),
                       "--output_path", str(tmp_path / "m.json"), "--quiet"])


def test_model_path_mode_and_file_mode_are_told_apart(capsys):
    """Issue 16: without --model_path, --predictions/--references/--output_path are required as before;
    with it, the flags that only score a predictions file are refused, not ignored."""
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--predictions", "p.jsonl"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "required" in err and "--references" in err and "--output_path" in err
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--model_path", "m.pt", "--data_path", "d.pkl", "--report", "r.html"])
    assert e.value.code == 2 and "--report" in capsys.readouterr().err
