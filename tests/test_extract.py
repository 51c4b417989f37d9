"""Feature extraction: process_flickr.py / process_personality.py on the demo and dirty data (CPU, small CLIP)."""
from __future__ import annotations

import json
import os
import pickle
import signal
from collections import defaultdict
from pathlib import Path

import pytest
import torch

import process_flickr
import process_personality
from stylecap.extract import pipeline as extract
from stylecap.clip_utils import load_clip, load_image
from stylecap.features import load_features
from stylecap.utils import UserError, run_main
from tests.helpers import kill_9_when

SPLITS = ("train", "val", "test")


def flickr(models, caption_file, image_dir, out, *extra, clip="small_clip.pt") -> int:
    return process_flickr.main(["--caption_path", str(caption_file), "--image_path", str(image_dir),
                                "--clip_model_path", str(models / clip), "--output_path", str(out),
                                "--batch_size", "4", "--num_workers", "0", *extra])


def personality(models, root, out, *extra) -> int:
    return process_personality.main([
        "--data_path", str(root / "personality" / "personality_captions"),
        "--image_path", str(root / "personality" / "yfcc_images"), "--clip_model_path", str(models / "small_clip.pt"),
        "--output_path", str(out), "--batch_size", "4", *extra])


def load(path):
    """The file as ClipCap's dict view (load_features); the plain one-line torch.load must work too."""
    raw = torch.load(path, map_location="cpu", weights_only=True)  # must work: only tensors and builtins
    assert raw["format"] == "stylecap-columnar-1" and torch.equal(raw["clip_embedding"], load_features(path)["clip_embedding"])
    return load_features(path)


def assert_same_file(a: Path, b: Path) -> None:
    """Identical tensor, captions and meta, except the keys that record when/which code wrote it."""
    da, db = load(a), load(b)
    assert torch.equal(da["clip_embedding"], db["clip_embedding"]) and da["clip_embedding"].dtype == db["clip_embedding"].dtype
    assert da["captions"] == db["captions"]
    strip = lambda m: {k: v for k, v in m.items() if k not in extract.VOLATILE_META}
    assert strip(da["meta"]) == strip(db["meta"])


def check_file(path: Path) -> dict:
    """Shape, one row per unique image, every caption pointing at its image's row."""
    d = load(path)
    emb, caps = d["clip_embedding"], d["captions"]
    assert emb.ndim == 2 and emb.shape[1] == 512 and emb.dtype == torch.float32
    row_of = {}
    for c in caps:
        assert isinstance(c["image_id"], str) and isinstance(c["caption"], str) and c["caption"]
        assert 0 <= c["clip_embedding"] < emb.shape[0]
        assert row_of.setdefault(c["image_id"], c["clip_embedding"]) == c["clip_embedding"]
    assert len(row_of) == emb.shape[0] == d["meta"]["counts"]["images"]   # one row per image
    assert sorted(row_of.values()) == list(range(emb.shape[0]))
    assert d["meta"]["normalized"] is False and d["meta"]["dim"] == 512
    assert d["meta"]["counts"]["captions"] == len(caps)
    return d


@pytest.fixture(scope="module")
def karpathy_out(small_models, demo_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("karpathy") / "fl.pkl"
    fl = demo_data / "flickr30k"
    assert flickr(small_models, fl / "dataset_flickr30k.json", fl / "flickr30k-images", out) == 0
    return out


@pytest.fixture(scope="module")
def token_single(small_models, demo_data, tmp_path_factory) -> Path:
    """Token file, no split (--val_ratio 0 --test_ratio 0): the single file --output_path."""
    out = tmp_path_factory.mktemp("token") / "all.pkl"
    fl = demo_data / "flickr30k"
    assert flickr(small_models, fl / "results_20130124.token", fl / "flickr30k-images", out,
                  "--val_ratio", "0", "--test_ratio", "0") == 0
    return out


def test_karpathy_split_by_image(karpathy_out, demo_data):
    k = json.loads((demo_data / "flickr30k" / "dataset_flickr30k.json").read_text())
    want = {s: [Path(i["filename"]).stem for i in k["images"] if i["split"] == s] for s in SPLITS}
    seen = {}
    for s in SPLITS:
        d = check_file(karpathy_out.with_name(f"fl_{s}.pkl"))
        rows = {c["clip_embedding"]: c["image_id"] for c in d["captions"]}
        assert [rows[r] for r in range(len(rows))] == want[s]  # rows in first-appearance order
        assert all(n == 5 for n in _per_image(d).values())     # 5 captions, one encoding
        assert d["meta"]["split"] == s and d["meta"]["source_format"] == "karpathy" and d["meta"]["styles"] == []
        for image_id in rows.values():
            assert seen.setdefault(image_id, s) == s            # no image in two splits
    assert not karpathy_out.exists()


def _per_image(d) -> dict:
    n = defaultdict(int)
    for c in d["captions"]:
        n[c["image_id"]] += 1
    return n


def test_features_equal_direct_encoding(karpathy_out, small_models, demo_data):
    d = load(karpathy_out.with_name("fl_train.pkl"))
    model, preprocess, _ = load_clip(str(small_models / "small_clip.pt"))
    for c in (d["captions"][0], d["captions"][-1]):
        img = load_image(demo_data / "flickr30k" / "flickr30k-images" / f"{c['image_id']}.jpg")
        with torch.inference_mode():
            direct = model.encode_image(preprocess(img).unsqueeze(0))[0]
        torch.testing.assert_close(d["clip_embedding"][c["clip_embedding"]], direct, atol=1e-5, rtol=1e-4)


def test_token_seeded_split_and_cn_single_file(small_models, demo_data, karpathy_out, token_single, tmp_path):
    fl, cn = demo_data / "flickr30k", demo_data / "flickr30k_cn"
    assert flickr(small_models, fl / "results_20130124.token", fl / "flickr30k-images", tmp_path / "tok.pkl",
                  "--val_ratio", "0.1", "--test_ratio", "0.1", "--seed", "3") == 0
    ids = {s: set(_per_image(check_file(tmp_path / f"tok_{s}.pkl"))) for s in SPLITS}
    assert len(ids["val"]) == len(ids["test"]) == 3 and len(ids["train"]) == 24
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert load(tmp_path / "tok_val.pkl")["meta"]["split_method"] == "seeded"

    assert flickr(small_models, cn / "captions_cn.txt", cn / "flickr30k-images", tmp_path / "cn.pkl",
                  "--val_ratio", "0", "--test_ratio", "0") == 0
    assert not list(tmp_path.glob("cn_*.pkl"))  # the single file, --output_path exactly
    d = check_file(tmp_path / "cn.pkl")
    assert d["meta"]["source_format"] == "cn" and d["meta"]["split"] is None and len(_per_image(d)) == 30
    assert any("背景" in c["caption"] for c in d["captions"])
    # Same image, same bytes: the token, cn and karpathy runs agree on its features.
    tok = load(token_single)
    assert tok["meta"]["source_format"] == "token"
    torch.testing.assert_close(d["clip_embedding"], tok["clip_embedding"])


def test_personality(small_models, demo_data, tmp_path):
    assert personality(small_models, demo_data, tmp_path / "pc", "--num_workers", "2") == 0
    records = {s: json.loads((demo_data / "personality/personality_captions" / f"{s}.json").read_text())
               for s in SPLITS}
    styles = None
    for s in SPLITS:
        d = check_file(tmp_path / "pc" / f"{s}.pkl")
        styles = styles or d["meta"]["styles"]
        assert d["meta"]["styles"] == styles and "Cynical (Doubtful, Skeptical)" in styles
        by_image = defaultdict(list)
        for c in d["captions"]:
            by_image[c["image_id"]].append(c)
        assert len(by_image) == len(records[s])
        for r in records[s]:
            caps = by_image[r["image_hash"]]
            assert {c["style"] for c in caps} == {r["personality"]}  # exact trait string
            assert len({c["clip_embedding"] for c in caps}) == 1
            refs = [r["comment"]] + r.get("additional_comments", [])
            assert [c["caption"] for c in caps] == refs              # test: all 5 references kept
            assert len(caps) == (5 if s == "test" else 1)


def _large_photos(folder: Path, n: int) -> Path:
    """n distinct 1600x1200 photo-like JPEGs and a token file: tens of ms each to decode and resize, so an
    extraction takes long enough for a test to kill it from outside between chunks."""
    import numpy as np
    from PIL import Image
    from stylecap.demo.photos import photo_like, save_jpeg
    folder.mkdir()
    base = np.asarray(photo_like(0, 1600, 1200))
    for i in range(n):  # shifted copies: distinct content without generating n photos
        save_jpeg(Image.fromarray(np.roll(base, (37 * i, 53 * i), axis=(0, 1))), folder / f"p{i:03d}.jpg")
    token = folder / "caps.token"
    token.write_text("".join(f"p{i:03d}.jpg#0\ta photo number {i} .\n" for i in range(n)))
    return token


def test_kill_and_resume_equals_clean_run(small_models, tmp_path):
    """kill -9 from outside after some chunks; the rerun resumes and writes the uninterrupted run's file."""
    n, per_chunk = 12, 1  # 12 chunks of one image
    token = _large_photos(tmp_path / "img", n)
    argv = lambda out: ["--caption_path", str(token), "--image_path", str(token.parent), "--clip_model_path",
                        str(small_models / "small_clip.pt"), "--output_path", str(out), "--val_ratio", "0",
                        "--test_ratio", "0", "--batch_size", "1", "--num_workers", "0",
                        "--chunk_batches", str(per_chunk)]
    clean = tmp_path / "clean.pkl"
    assert process_flickr.main(argv(clean)) == 0

    out = tmp_path / "fl.pkl"
    part = Path(f"{out}.partial")
    rc = kill_9_when(["process_flickr.py", *argv(out)], lambda: len(list(part.glob("chunk_*.pt"))) >= 2,
                     tmp_path / "killed.err")
    assert rc == -signal.SIGKILL, (tmp_path / "killed.err").read_text()[-2000:]  # killed, not finished
    done = len(list(part.glob("chunk_*.pt")))
    assert 2 <= done < n // per_chunk and not out.exists()  # no final file after the kill

    assert process_flickr.main(argv(out)) == 0
    assert f"resuming after {done} of {n // per_chunk} chunks" in (tmp_path / "fl.log").read_text()
    assert_same_file(out, clean)
    assert not part.exists()

    # A partial folder from other arguments is stale: discarded, not reused.
    part.mkdir()
    (part / "manifest.json").write_text(json.dumps({"run_key": "other"}))
    torch.save({"first": 0, "count": 1}, part / "chunk_00000.pt")
    out.unlink()
    assert process_flickr.main(argv(out)) == 0
    assert_same_file(out, clean)
    # Same command again: up to date, not redone.
    mtime = out.stat().st_mtime_ns
    assert process_flickr.main(argv(out)) == 0 and out.stat().st_mtime_ns == mtime


def test_dirty_flickr(small_models, dirty_data, tmp_path):
    man = json.loads((dirty_data / "dirty_manifest.json").read_text())["flickr30k"]
    fl = dirty_data / "flickr30k"
    out = tmp_path / "dirty.pkl"
    assert flickr(small_models, fl / "results_20130124.token", fl / "flickr30k-images", out,
                  "--val_ratio", "0", "--test_ratio", "0") == 0
    d = check_file(out)
    assert {s["image_id"]: s["reason"] for s in d["meta"]["skipped"]}.keys() == man["bad"].keys()
    assert set(_per_image(d)) == set(man["good"])  # CMYK, L, P, RGBA, I;16, EXIF-rotated, 6000x4000 encoded
    listed = [l.split("\t")[0] for l in Path(f"{out}.skipped.txt").read_text().splitlines() if not l.startswith("#")]
    assert sorted(listed) == sorted(man["bad"])
    c = d["meta"]["counts"]
    assert c["skipped_images"] == 4 and c["skipped_captions"] == 20 and c["malformed"] == 1
    assert d["meta"]["malformed"][0]["where"] == f"line {man['malformed_lines'][0]['line']}"

    assert flickr(small_models, fl / "results_20130124.token", fl / "flickr30k-images", tmp_path / "t.pkl",
                  "--val_ratio", "0", "--test_ratio", "0", "--allow_truncated") == 0
    truncated = [i for i, kind in man["bad"].items() if kind == "truncated"]
    assert truncated[0] in _per_image(load(tmp_path / "t.pkl"))
    assert {s["image_id"] for s in load(tmp_path / "t.pkl")["meta"]["skipped"]} == set(man["bad"]) - set(truncated)


def test_dirty_images_decode_to_rgb_with_exif(dirty_data):
    man = json.loads((dirty_data / "dirty_manifest.json").read_text())["flickr30k"]
    for image_id, want in man["expected"].items():
        img = load_image(dirty_data / man["image_dir"] / f"{image_id}.jpg")
        assert img.mode == "RGB"
        if "transposed_size" in want:
            assert list(img.size) == want["size"]  # stored pixels by default, as openai-clip encodes them
            rotated = load_image(dirty_data / man["image_dir"] / f"{image_id}.jpg", exif_transpose=True)
            assert list(rotated.size) == want["transposed_size"]  # EXIF orientation honoured on request


def test_dirty_personality(small_models, dirty_data, tmp_path):
    man = json.loads((dirty_data / "dirty_manifest.json").read_text())["personality"]
    assert personality(small_models, dirty_data, tmp_path / "pc", "--num_workers", "0") == 0
    d = check_file(tmp_path / "pc" / "train.pkl")
    assert {s["image_id"] for s in d["meta"]["skipped"]} == set(man["bad"])
    assert d["meta"]["counts"]["malformed"] == len(man["malformed_records"]) == 2
    assert set(man["bad"]) <= set(Path(tmp_path / "pc" / "train.pkl.skipped.txt").read_text().split())


def test_all_bad_and_malformed_files_fail_clearly(small_models, tmp_path, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "b.jpg").write_bytes(b"")
    tok = tmp_path / "caps.token"
    tok.write_text("a.jpg#0\ta missing image .\nb.jpg#0\ta zero-byte image .\n")
    with pytest.raises(SystemExit) as e:
        run_main(lambda: flickr(small_models, tok, tmp_path / "img", tmp_path / "o.pkl", "--val_ratio", "0",
                                "--test_ratio", "0"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (loguru also logs to the captured stderr)
    assert ": error: no image could be encoded: all 2 listed images were skipped" in err
    assert not (tmp_path / "o.pkl").exists() and (tmp_path / "o.pkl.skipped.txt").exists()

    bad_json = tmp_path / "dataset_flickr30k.json"
    bad_json.write_text('{"images": [\n{"filename": "a.jpg",,}]}')
    with pytest.raises(UserError, match=r"dataset_flickr30k.json: invalid JSON at line 2"):
        flickr(small_models, bad_json, tmp_path / "img", tmp_path / "o.pkl")
    no_tabs = tmp_path / "notabs.token"
    no_tabs.write_text("a.jpg#0 no tab here\nb.jpg#1 nor here\n")
    with pytest.raises(UserError, match=r"notabs.token: no usable caption line.*line 1: no TAB"):
        flickr(small_models, no_tabs, tmp_path / "img", tmp_path / "o.pkl", "--format", "token")


def test_state_dict_and_torchscript_agree_missing_clip_exits_2(small_models, demo_data, tmp_path, capsys):
    cn = demo_data / "flickr30k_cn"
    for name in ("small_clip.pt", "small_clip_jit.pt"):
        assert flickr(small_models, cn / "captions_cn.txt", cn / "flickr30k-images", tmp_path / f"{name}.pkl",
                      "--val_ratio", "0", "--test_ratio", "0", "--limit", "8", clip=name) == 0
    a, b = load(tmp_path / "small_clip.pt.pkl"), load(tmp_path / "small_clip_jit.pt.pkl")
    assert a["clip_embedding"].shape == (8, 512)
    torch.testing.assert_close(a["clip_embedding"], b["clip_embedding"])

    with pytest.raises(SystemExit) as e:
        run_main(lambda: flickr(tmp_path / "nowhere", cn / "captions_cn.txt", cn / "flickr30k-images",
                                tmp_path / "x.pkl", clip="ViT-B-32.pt"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "ViT-B-32.pt" in err and "pre_model" in err


def test_shards_merge_to_single_run(small_models, demo_data, token_single, tmp_path):
    fl = demo_data / "flickr30k"
    out = tmp_path / "all.pkl"
    args = lambda *x: flickr(small_models, fl / "results_20130124.token", fl / "flickr30k-images", out,
                             "--val_ratio", "0", "--test_ratio", "0", *x)
    assert args("--shard", "0/3") == 0 and args("--shard", "2/3", "--num_workers", "2") == 0
    with pytest.raises(UserError, match=r"shard\(s\) \[1\] of 3 missing"):
        args("--merge")
    assert args("--shard", "1/3") == 0
    assert sum(load(tmp_path / f"all.shard{i}of3.pkl")["clip_embedding"].shape[0] for i in range(3)) == 30
    assert args("--merge") == 0
    assert_same_file(out, token_single)
    with pytest.raises(UserError, match="other arguments"):  # shards of another selection are refused
        args("--merge", "--limit", "10")


def test_limit_and_fp16(small_models, demo_data, token_single, tmp_path):
    fl = demo_data / "flickr30k"
    assert flickr(small_models, fl / "results_20130124.token", fl / "flickr30k-images", tmp_path / "l.pkl",
                  "--val_ratio", "0", "--test_ratio", "0", "--limit", "5", "--fp16") == 0
    d, full = load(tmp_path / "l.pkl"), load(token_single)
    assert d["clip_embedding"].shape == (5, 512) and d["clip_embedding"].dtype == torch.float16
    assert d["meta"]["dtype"] == "float16" and d["meta"]["limit"] == 5 and len(d["captions"]) == 25
    assert d["captions"] == full["captions"][:25]
    torch.testing.assert_close(d["clip_embedding"].float(), full["clip_embedding"][:5], atol=2e-3, rtol=2e-3)


class _Evil:
    def __init__(self, call):
        self.call = call

    def __reduce__(self):
        return self.call


def test_legacy_pickles_read_and_malicious_refused(tmp_path):
    emb = torch.randn(3, 512)
    clipcap = tmp_path / "clipcap.pkl"
    with open(clipcap, "wb") as f:  # ClipCap's parse_coco.py: pickle.dump of the dict
        pickle.dump({"clip_embedding": emb, "captions": [{"image_id": 9, "caption": "a dog", "clip_embedding": 2}]}, f)
    d = load_features(clipcap)
    assert torch.equal(d["clip_embedding"], emb) and d["captions"][0]["image_id"] == "9"

    chinese = tmp_path / "chinese.pkl"  # ClipCap-Chinese: [caption_list, image_id2embed]
    with open(chinese, "wb") as f:
        pickle.dump([[("a", "一只狗"), ("b", "一只猫"), ("a", "狗")], {"a": emb[:1], "b": emb[1]}], f)
    d = load_features(chinese)
    assert d["clip_embedding"].shape == (2, 512) and [c["clip_embedding"] for c in d["captions"]] == [0, 1, 0]

    marker = tmp_path / "pwned"
    for i, call in enumerate([(os.system, (f"touch {marker}",)), (open, (str(marker), "w"))]):
        evil = tmp_path / f"evil{i}.pkl"
        with open(evil, "wb") as f:
            pickle.dump({"clip_embedding": emb, "captions": [], "x": _Evil(call)}, f)
        with pytest.raises(UserError, match="refused"):
            load_features(evil)
        torch.save({"clip_embedding": emb, "captions": [], "x": _Evil(call)}, tmp_path / f"evil{i}.pt")
        with pytest.raises(UserError):
            load_features(tmp_path / f"evil{i}.pt")
    assert not marker.exists()


def test_settings_object_from_flags():
    """The scripts' shared flags become one typed, frozen ExtractSettings; the library never sees the Namespace."""
    import dataclasses
    from stylecap.extract.settings import CHUNK_IMAGES, ExtractSettings
    parse = lambda *a: ExtractSettings.from_args(process_flickr.build_parser().parse_args(
        ["--caption_path", "c", "--image_path", "i", "--output_path", "o.pkl", *a]))
    s = parse("--batch_size", "64", "--fp16", "--shard", "1/4")
    assert (s.batch_size, s.fp16, s.chunk_batches, s.shard_index, s.shard_count, s.sharded) == \
        (64, True, CHUNK_IMAGES // 64, 1, 4, True)
    assert s.clip_model_path == "pre_model/ViT-B-32.pt" and s.device is None and s.autocast == "auto"
    assert not parse().sharded and parse("--chunk_batches", "3").chunk_batches == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.batch_size = 1
    for bad, msg in ((["--batch_size", "0"], "--batch_size and --limit must be >= 1"),
                     (["--chunk_batches", "0"], "--chunk_batches must be >= 1"),
                     (["--shard", "4/4"], r"--shard 4/4: expected i/n"),
                     (["--shard", "0/2", "--merge"], "--merge combines the shard files")):
        with pytest.raises(UserError, match=msg):
            parse(*bad)
    library = "".join(p.read_text() for p in (Path(__file__).parents[1] / "stylecap" / "extract").glob("*.py"))
    assert "device_obj" not in library and "getattr(args" not in library
