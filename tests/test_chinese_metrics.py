"""Item 2: Chinese captions are segmented (characters by default, jieba words on request) before
BLEU/METEOR/ROUGE-L/CIDEr, the style classifier and the diversity measures; SPICE is skipped."""
from __future__ import annotations

import json
import random
import shutil

import pytest

import evaluate
from stylecap.demo.content import NEAR_PREDS, NEAR_REFS, sample_content, zh_captions, zh_reference_set
from stylecap.eval.metrics import diversity, evaluate_predictions, score_captions
from stylecap.eval.segmentation import detect_language, segmenter_for
from stylecap.eval.style_classifier import StyleClassifier

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="Java not installed")


_zh_set = zh_reference_set


def test_chinese_exact_match_scores_like_an_exact_match():
    refs = _zh_set()
    preds = {k: v[0] for k, v in refs.items()}  # every prediction is one of its references, verbatim
    out = score_captions(preds, refs, java=False)
    # before: each caption was one token, so the exact match scored CIDEr 0
    assert out["BLEU-1"] == pytest.approx(1.0) and out["BLEU-4"] == pytest.approx(1.0)
    assert out["CIDEr"] > 1.0 and out["ROUGE-L"] == pytest.approx(1.0)
    assert out["segmentation"]["language"] == "zh" and out["segmentation"]["method"] == "char"
    assert out["tokenizer"] == "char"


def test_chinese_near_match_gets_a_sensible_bleu1():
    out = score_captions(NEAR_PREDS, NEAR_REFS, java=False)  # 1 and 2 characters wrong
    # 14 + 15 characters, 1 + 2 of them wrong, equal lengths (no brevity penalty): (13 + 13) / 29
    assert out["BLEU-1"] == pytest.approx((13 + 13) / 29, abs=1e-6)
    # BLEU-4 is known too (issue 22: it was only checked to lie in 0.4..0.9, which an off-by-one n-gram
    # count or BLEU-3 in its place would pass). Clipped n-gram matches, caption a (1 wrong of 14 characters)
    # + caption b (2 adjacent wrong of 15): n-grams overlapping a wrong character are the misses.
    # p1 = (13 + 13) / 29, p2 = (11 + 11) / 27, p3 = (9 + 10) / 25, p4 = (7 + 9) / 23; brevity penalty 1.
    # The coco-caption scorer adds 1e-15 / 1e-9 to each ratio: ~1e-10 off the exact value, so abs=1e-6.
    assert out["BLEU-4"] == pytest.approx((26 / 29 * 22 / 27 * 19 / 25 * 16 / 23) ** 0.25, abs=1e-6)  # 0.78833


def test_chinese_segmentation_by_characters_keeps_latin_words_and_drops_punctuation():
    seg = segmenter_for("char")
    assert seg.tokens("一只狗在玩Frisbee，2个人！") == ["一", "只", "狗", "在", "玩", "frisbee", "2", "个", "人"]
    assert seg.tokens("a dog, running.") == ["a", "dog", "running"]


def test_chinese_jieba_segmentation_by_words():
    seg = segmenter_for("jieba")
    assert seg.tokens("白色背景上有一个小的红色圆形。") == ["白色", "背景", "上", "有", "一个", "小", "的", "红色", "圆形"]
    refs = _zh_set()
    keys = list(refs)
    preds = {k: refs[keys[(n + 1) % len(keys)]][1] for n, k in enumerate(keys)}  # another image's caption
    char, word = score_captions(preds, refs, java=False), score_captions(preds, refs, java=False, segment="jieba")
    assert word["segmentation"]["method"] == "jieba" and word["tokenizer"] == "jieba"
    assert word["BLEU-1"] < char["BLEU-1"]  # shared characters (色, 形) are not shared words


def test_language_is_detected_from_the_text():
    assert detect_language(["白色背景上有一个小的红色圆形", "一只狗在玩frisbee"]) == "zh"
    assert detect_language(["a dog plays with a frisbee", "a 红 ball"]) == "en"
    english = score_captions({0: "a red circle"}, {0: ["a red circle on white"]}, java=False)
    assert english["segmentation"] == {"language": "en", "method": "none"} and english["tokenizer"] == "python"


def test_spice_is_skipped_for_chinese_with_the_reason():
    refs = _zh_set(3)
    out = score_captions({k: v[0] for k, v in refs.items()}, refs, java=False, metrics=("BLEU", "SPICE"))
    assert out["SPICE"] is None and "English" in out["skipped"]["SPICE"]


@needs_java
def test_chinese_with_java_uses_the_segmentation_not_ptbtokenizer():
    refs = _zh_set(4)
    out = score_captions({k: v[0] for k, v in refs.items()}, refs, metrics=("BLEU", "METEOR", "CIDEr"))
    assert out["tokenizer"] == "char" and out["BLEU-1"] == pytest.approx(1.0)
    assert out["METEOR"] == pytest.approx(1.0)  # METEOR on the segmented characters (exact matches)


def test_chinese_diversity_counts_characters():
    seg = segmenter_for("char")
    d = diversity(["红色圆形", "红色方形。"], segmenter=seg)
    assert d["vocab_size"] == 5 and d["distinct-1"] == pytest.approx(5 / 8) and d["mean_length"] == 4
    assert diversity(["红色圆形", "红色方形。"])["vocab_size"] == 5  # auto-detected


# Style markers inside otherwise new sentences: only a segmented classifier generalises.
ZH_STYLE = {"Happy": "真开心！", "Gloomy": "好孤独啊", "Romantic": "充满爱意"}


def _zh_styled(seed: int, n: int):
    rng = random.Random(seed)
    caps, styles = [], []
    for _ in range(n):
        style = rng.choice(sorted(ZH_STYLE))
        caps.append(rng.choice(zh_captions(sample_content(rng))).rstrip("。") + "，" + ZH_STYLE[style])
        styles.append(style)
    return caps, styles


def test_chinese_style_classifier_uses_the_segmentation():
    seg = segmenter_for("char")
    clf = StyleClassifier(segmenter=seg).fit(*_zh_styled(0, 300))
    caps, styles = _zh_styled(1, 100)
    assert clf.accuracy(caps, styles)["top1"] > 0.95


def test_evaluate_predictions_segments_everything_the_same_way():
    refs = _zh_set(6)
    references = [{"image_id": k, "style": None, "caption": c} for k, v in refs.items() for c in v]
    predictions = [{"image": k, "style": None, "caption": v[2], "score": None} for k, v in refs.items()]
    m = evaluate_predictions(predictions, references, java=False, segment="jieba")
    assert m["segmentation"]["language"] == "zh" and m["segmentation"]["method"] == "jieba"
    assert m["diversity"]["segmentation"] == "jieba"
    words = {w for p in predictions for w in segmenter_for("jieba").tokens(p["caption"])}
    assert m["diversity"]["vocab_size"] == len(words)


@pytest.mark.parametrize("segment", [None, "jieba"])
def test_evaluate_main_on_flickr30k_cn_demo_data(demo_data, tmp_path, segment):
    """evaluate.py end to end on the demo's Flickr30k-CN captions (ClipCap-Chinese id<TAB>caption)."""
    lines = (demo_data / "flickr30k_cn" / "captions_cn.txt").read_text(encoding="utf-8").splitlines()
    by_image: dict[str, list[str]] = {}
    for line in lines:
        image_id, _, caption = line.partition("\t")
        by_image.setdefault(image_id, []).append(caption)
    ids = sorted(by_image)[:10]
    coco = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in ids],
            "annotations": [{"image_id": i, "caption": c} for i in ids for c in by_image[i]]}
    (tmp_path / "refs.json").write_text(json.dumps(coco, ensure_ascii=False), encoding="utf-8")
    # half the predictions are a reference of their own image, half one of another image's
    preds = [f"{i}.jpg\t{by_image[i][0] if n % 2 == 0 else by_image[ids[(n + 1) % len(ids)]][1]}"
             for n, i in enumerate(ids)]
    (tmp_path / "caption_generate.txt").write_text("\n".join(preds) + "\n", encoding="utf-8")
    out, report = tmp_path / "metrics.json", tmp_path / "report.html"
    argv = ["--predictions", str(tmp_path / "caption_generate.txt"), "--references", str(tmp_path / "refs.json"),
            "--output_path", str(out), "--report", str(report), "--no_java", "--quiet"]
    assert evaluate.main(argv + (["--segment", segment] if segment else [])) == 0
    m = json.loads(out.read_text(encoding="utf-8"))
    method = segment or "char"
    assert m["segmentation"]["language"] == "zh" and m["segmentation"]["method"] == method
    assert m["tokenizer"] == method
    assert 0.5 < m["BLEU-1"] < 1 and 0 < m["BLEU-4"] < 1 and m["CIDEr"] > 0.3
    assert m["SPICE"] is None and "English" in m["skipped"]["SPICE"]
    assert f"segmentation: zh, {method}" in report.read_text(encoding="utf-8")


def test_train_eval_mode_segments_a_chinese_model(small_models, tmp_path):
    """train.py --mode eval with a (small, random) Chinese GPT-2: its captions are joined without
    spaces (models/tokenizer.py), the references are the demo's Chinese ones; --segment reaches the metrics."""
    import torch

    import train
    from models import ModelConfig, build_model
    from models.captioner import checkpoint_payload
    from stylecap.features import save_features
    torch.manual_seed(0)
    model = build_model(ModelConfig(gpt2_path=str(small_models / "small_gpt2_chinese"), style_mode="none", max_len=8))
    ckpt = tmp_path / "model.pt"
    torch.save(checkpoint_payload(model), ckpt)
    refs = zh_reference_set(4)
    caps = [{"image_id": k, "caption": c, "clip_embedding": i} for i, (k, v) in enumerate(refs.items()) for c in v]
    feats = save_features(tmp_path / "test.pkl", {"clip_embedding": torch.randn(len(refs), 512), "captions": caps,
                                                  "meta": {"synthetic": True}}) or tmp_path / "test.pkl"
    out = tmp_path / "eval"
    assert train.main(["--mode", "eval", "--model_path", str(ckpt), "--data_path", str(feats),
                       "--output_path", str(out), "--no_java", "--segment", "jieba"]) == 0
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert m["segmentation"]["language"] == "zh" and m["segmentation"]["method"] == "jieba"
    assert m["tokenizer"] == "jieba" and m["diversity"]["segmentation"] == "jieba"
    assert m["SPICE"] is None and "English" in m["skipped"]["SPICE"]
    assert "segmentation: zh, jieba" in (out / "report.html").read_text(encoding="utf-8")
