"""The columnar, memory-mapped feature file (issue 12 section 2): layout, compatibility, memory, tokens."""
from __future__ import annotations

import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.tokenizer import CaptionTokenizer, load_hf_tokenizer
from scripts import convert_features
from stylecap.train.data import encode_data, split_by_image
from stylecap.features import FORMAT, FeatureStore, load_features, save_features
from stylecap.utils import UserError
from tests.helpers import synthetic_features

ROOT = Path(__file__).resolve().parent.parent


def records_with_chinese_and_styles() -> tuple[torch.Tensor, list[dict]]:
    emb = torch.randn(4, 8)
    caps = [{"image_id": "a.jpg", "caption": "一只狗在草地上奔跑", "clip_embedding": 0, "style": "Happy"},
            {"image_id": "a.jpg", "caption": "a dog — running", "clip_embedding": 0, "style": "Happy"},
            {"image_id": "b.jpg", "caption": "", "clip_embedding": 1},
            {"image_id": "c.jpg", "caption": "café au lait", "clip_embedding": 3,
             "style": "Cynical (Doubtful, Skeptical)"}]
    return emb, caps


def test_columns_round_trip_records_and_read_with_plain_torch_load(tmp_path):
    emb, caps = records_with_chinese_and_styles()
    path = tmp_path / "f.pt"
    save_features(path, {"clip_embedding": emb, "captions": caps, "meta": {"split": "test"}})
    raw = torch.load(path, weights_only=True)  # the documented one-line read: only tensors and builtins
    assert raw["format"] == FORMAT and raw["styles"] == ["Happy", "Cynical (Doubtful, Skeptical)"]
    assert raw["caption_row"].tolist() == [0, 0, 1, 3] and raw["caption_style"].tolist() == [0, 0, -1, 1]
    off = raw["caption_offsets"]
    assert bytes(raw["caption_bytes"][off[0]:off[1]].tolist()).decode() == "一只狗在草地上奔跑"
    data = load_features(path)
    assert data["captions"] == caps and torch.equal(data["clip_embedding"], emb) and data["meta"] == {"split": "test"}
    assert data.image_ids() == ["a.jpg", "b.jpg", "", "c.jpg"]  # row 2 has no caption: no id
    assert data.record(3) == caps[3] and data.texts(1, 3) == ["a dog — running", ""]


def test_a_selection_saves_compacted_and_loads_equal(tmp_path):
    emb, caps = records_with_chinese_and_styles()
    data = FeatureStore.from_records(emb, caps)
    part = data.subset(torch.tensor([3, 0]))
    save_features(tmp_path / "p.pt", part)
    back = load_features(tmp_path / "p.pt")
    assert back["captions"] == [caps[3], caps[0]]
    assert back.caption_bytes.numel() == len(caps[3]["caption"].encode()) + len(caps[0]["caption"].encode())


def test_open_maps_the_file_instead_of_reading_it(tmp_path):
    """Opening costs almost no private memory; touching every row maps the file's pages, which other
    processes share through the page cache (RssFile), not private copies (RssAnon)."""
    path = synthetic_features(tmp_path / "big.pt", n_images=20000, styled=False)  # 40 MB of fp32 features
    child = r"""
import sys; sys.path.insert(0, sys.argv[2])
from stylecap.features import load_features
def kb(f): return int(next(l for l in open("/proc/self/status") if l.startswith(f + ":")).split()[1])
a0, f0 = kb("RssAnon"), kb("RssFile")
d = load_features(sys.argv[1])
a1 = kb("RssAnon")
s = float(d.clip_embedding.sum())  # an epoch's worth of feature reads
print(a1 - a0, kb("RssAnon") - a0, kb("RssFile") - f0)
"""
    out = subprocess.run([sys.executable, "-c", child, str(path), str(ROOT)], capture_output=True, text=True, check=True)
    anon_open, anon_touched, file_touched = map(int, out.stdout.split())
    assert anon_open < 8 * 1024 and anon_touched < 8 * 1024, out.stdout  # kB: no private copy of 40 MB
    assert file_touched > 35 * 1024, out.stdout  # the features were read from the mapping


def test_legacy_files_load_and_convert(tmp_path):
    emb, caps = records_with_chinese_and_styles()
    plain = [{k: v for k, v in c.items() if k != "style"} for c in caps]
    # ClipCap's parse_coco.py: a plain pickle, integer COCO ids, one row per caption
    coco = {"clip_embedding": emb, "captions": [dict(c, image_id=i) for i, c in enumerate(plain[:2])]}
    coco["captions"][1]["clip_embedding"] = 1
    (tmp_path / "coco.pkl").write_bytes(pickle.dumps(coco))
    # ClipCap-Chinese: [[(image_id, caption), ...], {image_id: Tensor [1, D]}]
    zh = [[("a", "一只狗"), ("a", "两只猫"), ("z", "no feature")], {"a": emb[:1], "b": emb[1:2]}]
    (tmp_path / "zh.pkl").write_bytes(pickle.dumps(zh))
    # StyleCap's first format: torch.save of ClipCap's dict plus meta
    torch.save({"clip_embedding": emb, "captions": caps, "meta": {"split": "val"}}, tmp_path / "v1.pkl")
    expect = {
        "coco.pkl": [{"image_id": "0", "caption": caps[0]["caption"], "clip_embedding": 0},
                     {"image_id": "1", "caption": caps[1]["caption"], "clip_embedding": 1}],
        "zh.pkl": [{"image_id": "a", "caption": "一只狗", "clip_embedding": 0},
                   {"image_id": "a", "caption": "两只猫", "clip_embedding": 0}],
        "v1.pkl": caps,
    }
    for name, records in expect.items():
        assert load_features(tmp_path / name)["captions"] == records, name
        assert convert_features.main([str(tmp_path / name), str(tmp_path / f"{name}.pt")]) == 0
        new = tmp_path / f"{name}.pt"
        assert torch.load(new, weights_only=True)["format"] == FORMAT
        assert load_features(new)["captions"] == records, name
    assert load_features(tmp_path / "v1.pkl.pt")["meta"] == {"split": "val"}


def test_malformed_columns_fail_with_the_file_name(tmp_path):
    path = synthetic_features(tmp_path / "f.pt", n_images=6)
    raw = torch.load(path, weights_only=True)
    raw["caption_row"][2] = 99
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(UserError, match=r"bad.pt: malformed feature file: a caption points at a feature row outside \[0, 6\)"):
        load_features(tmp_path / "bad.pt")
    del raw["caption_bytes"]
    torch.save(raw, tmp_path / "bad2.pt")
    with pytest.raises(UserError, match="bad2.pt: malformed feature file: no column caption_bytes"):
        load_features(tmp_path / "bad2.pt")
    with pytest.raises(UserError, match="one feature row is one image"):
        FeatureStore.from_records(torch.zeros(2, 4), [{"image_id": "x", "caption": "a", "clip_embedding": 0},
                                                      {"image_id": "y", "caption": "b", "clip_embedding": 0}])


def test_split_by_image_is_the_seeded_shuffle_of_sorted_image_ids(tmp_path):
    """Vectorised, and the same split as before: sorted ids, random.Random(seed).shuffle, first n_val."""
    emb = torch.randn(30, 4)
    caps = [{"image_id": f"im{(7 * r) % 30:02d}", "caption": f"c{r}-{k}", "clip_embedding": r}
            for r in range(30) for k in range(2)]
    train_part, val_part = split_by_image({"clip_embedding": emb, "captions": caps, "meta": {}}, 0.2, seed=5)
    images = sorted({c["image_id"] for c in caps})
    random.Random(5).shuffle(images)
    val_ids = set(images[:6])
    assert {c["image_id"] for c in val_part["captions"]} == val_ids
    assert [c for c in caps if c["image_id"] not in val_ids] == train_part["captions"]


def test_tokens_in_chunks_equal_one_pass_and_the_cache_is_mapped_and_keyed_by_content(small_models, tmp_path):
    path = synthetic_features(tmp_path / "f.pt", n_images=24)
    data = load_features(path)
    tok = CaptionTokenizer(load_hf_tokenizer(small_models / "small_gpt2"), "prompt", sorted(data.present_styles()))
    whole = encode_data(data, tok, max_len=6, chunk=10_000)
    chunked = encode_data(data, tok, max_len=6, chunk=5)
    for a in ("rows", "style_ids", "flat", "offsets", "n_ctx"):
        assert torch.equal(getattr(whole, a), getattr(chunked, a)), a
    assert whole.truncated == chunked.truncated > 0
    for i, c in enumerate(data["captions"]):  # context + caption tokens (truncated to 6) + END
        ctx = tok.context_ids(c["style"])
        cap = tok.encode_caption(c["caption"])[:-1][:6] + [tok.eos_id]
        assert whole.ids(i).tolist() == ctx + cap and int(whole.n_ctx[i]) == len(ctx)
    cache = tmp_path / "cache"
    first = encode_data(data, tok, max_len=6, cache_dir=cache)
    again = encode_data(data, tok, max_len=6, cache_dir=cache)
    assert len(list(cache.iterdir())) == 1 and torch.equal(first.flat, again.flat) and torch.equal(first.flat, whole.flat)
    _, val = split_by_image(data, 0.25, seed=0)  # another selection of the same file: another key
    encode_data(val, tok, max_len=6, cache_dir=cache)
    assert len(list(cache.iterdir())) == 2


def test_two_processes_share_one_copy_of_the_mapped_data(small_models, tmp_path):
    """What bench/memory.py measures, on a 40 MB file: two processes that read every feature row use about
    the memory of one (their PSS of the mapped file splits each page), where private copies would double it."""
    from bench.memory import run_children
    path = synthetic_features(tmp_path / "f.pt", n_images=20000, styled=False)
    gpt2 = small_models / "small_gpt2"
    encode_data(load_features(path), CaptionTokenizer(load_hf_tokenizer(gpt2)), max_len=64, cache_dir=tmp_path / "cache")
    one = run_children(1, path, gpt2, tmp_path / "cache")[0]
    two = run_children(2, path, gpt2, tmp_path / "cache")
    assert one["mapped_rss_kb"] > 38 * 1024 and one["anon_kb"] < 8 * 1024, one  # read through the mapping
    assert all(r["mapped_rss_kb"] > 38 * 1024 for r in two), two
    assert sum(r["data_pss_kb"] for r in two) < 1.3 * one["data_kb"], (one, two)



def test_a_leading_selection_is_saved_without_the_rest_of_the_text(tmp_path):
    emb, caps = records_with_chinese_and_styles()
    first_two = FeatureStore.from_records(emb, caps).subset(torch.tensor([0, 1]))
    save_features(tmp_path / "two.pt", first_two)
    raw = torch.load(tmp_path / "two.pt", weights_only=True)
    assert raw["caption_bytes"].untyped_storage().nbytes() == sum(len(c["caption"].encode()) for c in caps[:2])
    assert load_features(tmp_path / "two.pt")["captions"] == caps[:2]


def test_token_cache_key_changes_with_every_tokenizer_setting_that_changes_the_ids(small_models):
    """Issue 22 section 5: the key hashed only the class and the vocabulary, so the same GPT-2 folder with
    add_prefix_space on (other ids for the same caption) got the same key, and a resume reused stale tokens."""
    from stylecap.train.data import _tokenizer_key
    from transformers import AutoTokenizer
    gpt2 = str(small_models / "small_gpt2")
    plain, again = CaptionTokenizer(load_hf_tokenizer(gpt2)), CaptionTokenizer(load_hf_tokenizer(gpt2))
    prefixed = CaptionTokenizer(AutoTokenizer.from_pretrained(gpt2, add_prefix_space=True))
    assert plain.encode_caption("a dog") != prefixed.encode_caption("a dog")  # the premise: other ids
    assert _tokenizer_key(plain) == _tokenizer_key(again)  # a fresh load of the same folder: the same key
    assert _tokenizer_key(plain) != _tokenizer_key(prefixed)
    extra = load_hf_tokenizer(gpt2)
    extra.add_special_tokens({"additional_special_tokens": ["<x>"]})  # one more special token: other ids
    assert _tokenizer_key(CaptionTokenizer(extra)) != _tokenizer_key(plain)
