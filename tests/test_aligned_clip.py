"""The aligned demo CLIP (stylecap/demo/aligned_clip.py) and the Pirate text-only corpus (stylecap/demo/pirate.py).

The session fixture trains a reduced aligned CLIP (60 steps on 300 generated images) in ~20 s on 2 shared
CPU cores; the full one (`make demo`) is the same code with more steps on the demo's 1000 images.
"""
from __future__ import annotations

import json
import os
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from stylecap.clip_utils import _import_clip, load_clip
from stylecap.demo.aligned_clip import (AlignSettings, DistinctContentBatches, content_from_caption,
                                        encode_image_uint8, encode_text_prefix, load_pixels, normalise, read_split,
                                        retrieval_accuracy, write_aligned_clip)
from stylecap.demo.content import EN_TEMPLATES, STYLE_TEMPLATES, en_captions, sample_content, styled_captions
from stylecap.demo.pirate import MARKERS, marker_rate, pirate_captions, pirate_corpus, write_pirate_corpus
from stylecap.demo.small_models import SMALL_CLIP
from stylecap.utils import UserError

QUICK = AlignSettings(steps=60, batch_size=64, lr=3e-3, warmup=10)
TINY = AlignSettings(steps=2, batch_size=8, warmup=1)


@pytest.fixture(scope="session")
def align_data(tmp_path_factory) -> Path:
    """A demo PersonalityCaptions folder with 300 train and 60 test images (the other sets minimal)."""
    from stylecap.demo.datasets import generate
    out = tmp_path_factory.mktemp("align_demo")
    generate(out, seed=0, n_flickr=3, n_personality=300, n_personality_val=1, n_personality_test=60, n_stylized=3)
    return out / "personality"


@pytest.fixture(scope="session")
def aligned_clip(align_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("aligned") / "small_clip_aligned.pt"
    assert write_aligned_clip(align_data, out, QUICK, log=lambda _: None)
    return out


# ----------------------------------------------------------------------------- retrieval above chance
def test_aligned_clip_retrieves_far_above_chance(aligned_clip, align_data, tmp_path, capsys):
    from stylecap.demo.aligned_clip import main
    queries = write_pirate_corpus(tmp_path / "pirate", n_train=1, n_test=100)["test"]
    assert main(["--clip_model_path", str(aligned_clip), "--data_path", str(align_data), "--queries", str(queries),
                 "--output", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert "image->text    top-1" in capsys.readouterr().out
    assert r["images"] == 60 and r["image_to_text_top1_chance"] == pytest.approx(1 / r["captions"])
    # the stated margins: top-1 at least 5x chance, top-5 at least 3x chance, both directions
    for d in ("image_to_text", "text_to_image"):
        assert r[f"{d}_top1"] >= 5 * r[f"{d}_top1_chance"], r
        assert r[f"{d}_top5"] >= 3 * r[f"{d}_top5_chance"], r
    assert r["top1_colour_right"] >= 3 / 6 and r["top1_bg_right"] >= 1.5 / 3, r  # 3x and 1.5x their chance
    # the Pirate test sentences, never seen in training, find their content's images too (3x chance at top-5)
    assert r["queries"] >= 30 and r["query_to_image_top5"] >= 3 * r["query_to_image_top5_chance"], r


def test_random_small_clip_is_near_chance(small_models, align_data):
    """The contrast: the random small_clip.pt's embeddings are unrelated (top-1 within 3x chance)."""
    r = retrieval_accuracy(small_models / "small_clip.pt", align_data)
    assert r["image_to_text_top1"] < 3 * r["image_to_text_top1_chance"] + 0.05, r


def test_aligned_file_loads_exactly_like_small_clip(aligned_clip, small_models):
    """Same class, shapes, keys and fp16 storage as small_clip.pt: every loader takes it unchanged."""
    aligned, random_sd = torch.load(aligned_clip, weights_only=True), torch.load(small_models / "small_clip.pt",
                                                                                 weights_only=True)
    assert aligned.keys() == random_sd.keys()
    assert all(aligned[k].shape == random_sd[k].shape and aligned[k].dtype == random_sd[k].dtype for k in aligned)
    model, _, info = load_clip(str(aligned_clip))
    assert info["dim"] == SMALL_CLIP["embed_dim"]
    # loading is exact: the fp32 model holds the saved fp16 values
    assert all(torch.equal(p, aligned[k].float()) for k, p in model.state_dict().items())


def test_fast_training_paths_equal_openai_clip(align_data):
    """encode_text_prefix / encode_image_uint8 (what training uses) compute encode_text / encode_image."""
    clip = _import_clip()
    torch.manual_seed(0)
    model = clip.model.CLIP(**SMALL_CLIP).float().eval()
    pre = clip.clip._transform(224)
    items = read_split(align_data, "test")[:4]
    pixels = load_pixels([p for p, _ in items], pre)
    from PIL import Image
    assert torch.equal(normalise(pixels[:1], pre)[0], pre(Image.open(items[0][0])))  # uint8 storage is exact
    tokens = clip.tokenize(en_captions(items[0][1]) + ["a"])
    with torch.no_grad():
        torch.testing.assert_close(encode_text_prefix(model, tokens), model.encode_text(tokens), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(encode_image_uint8(model, pixels, pre), model.encode_image(normalise(pixels, pre)),
                                   atol=1e-5, rtol=1e-4)


def test_random_word_insertion_keeps_the_caption_in_order():
    from stylecap.demo.aligned_clip import insert_random_words
    clip = _import_clip()
    tokens = clip.tokenize(["a little red circle on gray", "a big blue square on white"] * 8)  # (16, 77)
    gen = torch.Generator().manual_seed(0)
    assert insert_random_words(tokens, 0.0, gen) is tokens and gen.initial_seed() == 0
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(0).get_state())  # no draws at share 0
    out = insert_random_words(tokens, 1.0, gen)
    assert out.shape == tokens.shape and torch.equal(tokens, clip.tokenize(["a little red circle on gray",
                                                                             "a big blue square on white"] * 8))
    for before, after in zip(tokens.tolist(), out.tolist()):
        old, new = before[:before.index(49407) + 1], after[:after.index(49407) + 1]
        assert new[0] == 49406 and 1 <= len(new) - len(old) <= 3 and set(after[len(new):]) <= {0}
        it = iter(new)
        assert all(t in it for t in old)  # the caption's tokens, in order, with the new ones between
    again = insert_random_words(tokens, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(again, insert_random_words(tokens, 1.0, torch.Generator().manual_seed(0)))


def test_batches_hold_distinct_contents(align_data):
    items = read_split(align_data, "train")
    batches = DistinctContentBatches(items, 64, torch.Generator().manual_seed(0))
    for _ in range(3):
        idx = batches.next().tolist()
        keys = {json.dumps(items[i][1], sort_keys=True) for i in idx}
        assert len(idx) == 64 and len(keys) == 64


def test_content_from_caption_reads_every_demo_wording():
    rng = random.Random(0)
    for _ in range(20):
        c = sample_content(rng)
        for cap in en_captions(c) + pirate_captions(c) + [x for s in STYLE_TEMPLATES for x in styled_captions(s, c)]:
            assert content_from_caption(cap) == c, cap
    with pytest.raises(ValueError, match="names no colour"):
        content_from_caption("a little circle on gray")


# ----------------------------------------------------------------------------- cache
def test_cache_is_reused_and_invalidated(demo_data, tmp_path):
    import shutil
    data = tmp_path / "personality"
    shutil.copytree(demo_data / "personality", data)  # 40 training images
    out = tmp_path / "m" / "aligned.pt"
    quiet = dict(log=lambda _: None)
    assert write_aligned_clip(data, out, TINY, **quiet)                    # built
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["settings"]["steps"] == 2 and sidecar["data"]["images"] == 40
    first = out.read_bytes()
    assert not write_aligned_clip(data, out, TINY, **quiet)                # reused: same data, same recipe
    assert write_aligned_clip(data, out, TINY, **quiet) is False and out.read_bytes() == first
    assert write_aligned_clip(data, out, replace(TINY, seed=1), **quiet)   # recipe changed -> retrained
    assert write_aligned_clip(data, out, TINY, **quiet) and out.read_bytes() == first  # deterministic
    img = sorted((data / "yfcc_images").glob("*.jpg"))
    train_ids = {p.name for p, _ in read_split(data, "train")}
    changed = next(p for p in img if p.name in train_ids)
    changed.write_bytes(next(p for p in img if p.name != changed.name).read_bytes())  # a training image changed
    assert write_aligned_clip(data, out, TINY, **quiet)
    assert not write_aligned_clip(data, out, TINY, **quiet)
    out.write_bytes(first[:-10])                                            # a damaged weights file
    assert write_aligned_clip(data, out, TINY, **quiet)


def test_make_small_models_trains_and_reuses_the_aligned_clip(demo_data, small_models, tmp_path, capsys):
    import shutil
    from scripts.make_small_models import main
    out = tmp_path / "pre_model"
    shutil.copytree(small_models, out)  # the random models are there already: only the aligned one is built
    args = ["--out", str(out), "--aligned_data", str(demo_data / "personality"), "--aligned_steps", "2"]
    assert main(args) == 0
    assert "small models already in" in capsys.readouterr().out
    assert json.loads((out / "small_clip_aligned.json").read_text())["settings"]["steps"] == 2
    assert main(args) == 0
    assert "aligned CLIP already in" in capsys.readouterr().out
    assert main(args[:-1] + ["3"]) == 0 and "wrote" in capsys.readouterr().out  # another recipe: retrained


# ----------------------------------------------------------------------------- Pirate corpus
def test_pirate_corpus_is_deterministic_and_marked(tmp_path):
    a = write_pirate_corpus(tmp_path / "a", seed=0, n_train=200, n_test=30)
    b = write_pirate_corpus(tmp_path / "b", seed=0, n_train=200, n_test=30)
    assert {s: p.read_bytes() for s, p in a.items()} == {s: p.read_bytes() for s, p in b.items()}
    train = a["train"].read_text(encoding="utf-8").splitlines()
    test = a["test"].read_text(encoding="utf-8").splitlines()
    assert len(train) == 200 and len(test) == 30 and all(s.strip() for s in train + test)
    assert marker_rate(train) == 1.0 and marker_rate(test) == 1.0
    assert pirate_corpus(seed=1, n_train=200)["train"] != train
    assert pirate_corpus(seed=0, n_train=200, n_test=5)["train"] == train  # splits have their own streams
    # at least two markers in every wording; content words are the demo's
    assert all(len(set(re.findall(r"[a-z]+", t)) & set(MARKERS)) >= 2 for t in pirate_captions(sample_content(random.Random(0))))
    assert {content_from_caption(s)["colour"] for s in train} == {"red", "green", "blue", "yellow", "purple", "orange"}


def test_no_other_demo_caption_has_a_pirate_marker():
    """So a style's marker rate measures the Pirate style: 0 for every other demo caption."""
    rng = random.Random(0)
    contents = [sample_content(rng) for _ in range(30)]
    others = [x for c in contents for x in en_captions(c)] + \
             [x for c in contents for s in STYLE_TEMPLATES for x in styled_captions(s, c)]
    assert len(others) == 30 * (len(EN_TEMPLATES) + 5 * len(STYLE_TEMPLATES))
    assert marker_rate(others) == 0.0
    assert marker_rate(["a yellow square on gray", "ye be here"]) == 0.5  # whole words: "yellow" is no "ye"


def test_bad_data_folder_is_a_user_error(tmp_path, small_models):
    """A UserError (run_main prints it as one line, exit code 2), before anything is trained."""
    from scripts.make_small_models import main
    with pytest.raises(UserError, match="is not a demo PersonalityCaptions folder"):
        main(["--out", str(small_models), "--aligned_data", str(tmp_path / "nowhere")])
    data = tmp_path / "p"
    (data / "personality_captions").mkdir(parents=True)
    (data / "personality_captions" / "train.json").write_text(json.dumps([{"image_hash": "x", "comment": "a dog"}]))
    with pytest.raises(UserError, match="not a demo caption file"):
        read_split(data, "train")
