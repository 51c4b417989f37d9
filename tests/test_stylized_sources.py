"""Stylized caption sources (issue 10, section 4): the generic jsonl/csv input, FlickrStyle10K and
SentiCap readers, end to end through process_stylized.py with the small CLIP, on the demo layouts."""
from __future__ import annotations

import json
import pickle
from collections import defaultdict
from pathlib import Path

import pytest
import torch

import process_stylized
import train
from stylecap.features import load_features
from stylecap.extract.splits import seeded_split
from stylecap.extract.readers import detect_stylized_format, read_stylized
from stylecap.extract.stylized_sources import read_flickrstyle, read_jsonl, read_py2_pickle, read_senticap
from stylecap.utils import UserError

SPLITS = ("train", "val", "test")


def run(models, root: Path, exp: dict, out: Path, *extra) -> int:
    return process_stylized.main(["--caption_path", str(root / exp["caption_path"]),
                                  "--image_path", str(root / exp["image_path"]), "--output_path", str(out),
                                  "--clip_model_path", str(models / "small_clip.pt"), "--batch_size", "8",
                                  "--num_workers", "0", *extra])


def expected(root: Path) -> dict:
    return json.loads((root / "stylized" / "expected.json").read_text(encoding="utf-8"))


def load(path: Path):
    return load_features(path)


def split_files(out: Path) -> dict:
    return {s: load(out.with_name(f"{out.stem}_{s}{out.suffix}")) for s in SPLITS
            if out.with_name(f"{out.stem}_{s}{out.suffix}").exists()}


def check(d: dict, styles: list[str]) -> dict[str, list[dict]]:
    """One row per image, every record styled with a listed style; -> image_id -> records."""
    by_image = defaultdict(list)
    for c in d["captions"]:
        assert c["style"] in styles and c["caption"].strip()
        by_image[c["image_id"]].append(c)
        assert by_image[c["image_id"]][0]["clip_embedding"] == c["clip_embedding"]
    assert len(by_image) == d["clip_embedding"].shape[0] == d["meta"]["counts"]["images"]
    assert d["meta"]["styles"] == styles
    return by_image


# ----------------------------------------------------------------------------- end to end on good data
def test_generic_jsonl_keeps_its_split_and_styles(small_models, demo_data, tmp_path):
    exp = expected(demo_data)["jsonl"]
    assert run(small_models, demo_data, exp, tmp_path / "j.pkl") == 0
    files = split_files(tmp_path / "j.pkl")
    assert set(files) == set(SPLITS)
    n_records = 0
    for s, d in files.items():
        by_image = check(d, ["positive", "negative"])
        assert all(exp["splits"][i] == s for i in by_image)            # the file's own split, by image
        assert all(sorted(c["style"] for c in recs) == ["negative", "positive"] for recs in by_image.values())
        assert d["meta"]["split_method"] == "source" and d["meta"]["dataset"] == "stylized"
        assert d["meta"]["counts"]["malformed"] == 0
        n_records += len(d["captions"])
    assert n_records == exp["records"]
    assert sum(len(check(d, ["positive", "negative"])) for d in files.values()) == exp["images"]


def test_generic_csv_seeded_split_and_style_modes_train(small_models, demo_data, tmp_path):
    exp = expected(demo_data)["csv"]
    assert run(small_models, demo_data, exp, tmp_path / "c.pkl", "--val_ratio", "0.1", "--test_ratio", "0.1",
               "--seed", "4") == 0
    files = split_files(tmp_path / "c.pkl")
    ids = {s: set(check(d, ["positive", "negative"])) for s, d in files.items()}
    order = list(dict.fromkeys(l.split(",")[0][:-4] for l in
                               (demo_data / exp["caption_path"]).read_text().splitlines()[1:]))
    want = seeded_split(order, 0.1, 0.1, 4)
    assert ids == {s: {i for i in order if want[i] == s} for s in SPLITS}
    assert files["val"]["meta"]["split_method"] == "seeded"
    # the files train with every style mode, as PersonalityCaptions files do
    for mode in ("token",):  # style strings become tokens: the mode that reads them most
        assert train.main(["--data_path", str(tmp_path / "c_train.pkl"), "--val_path", str(tmp_path / "c_val.pkl"),
                           "--gpt2_path", str(small_models / "small_gpt2"), "--output_path", str(tmp_path / mode),
                           "--bs_train", "8", "--bs_eval", "8", "--epochs", "1", "--style_mode", mode,
                           "--num_samples", "0", "--eval_subset", "0"]) == 0


def test_flickrstyle_one_humor_and_one_romantic_caption_per_image(small_models, demo_data, tmp_path):
    exp = expected(demo_data)["flickrstyle"]
    assert run(small_models, demo_data, exp, tmp_path / "fs.pkl", "--val_ratio", "0", "--test_ratio", "0") == 0
    assert not list(tmp_path.glob("fs_*.pkl"))  # no split asked for: the single file
    d = load(tmp_path / "fs.pkl")
    by_image = check(d, ["humor", "romantic"])
    assert all(sorted(c["style"] for c in recs) == ["humor", "romantic"] for recs in by_image.values())
    names = read_py2_pickle(demo_data / exp["caption_path"] / "humor" / "train.p")
    assert list(by_image) == [n.split("_")[0] for n in names]      # Flickr30k file = photo id of the name
    humor = (demo_data / exp["caption_path"] / "humor" / "funny_train.txt").read_text().splitlines()
    assert [recs[0]["caption"] for recs in by_image.values()] == humor  # line i is name i's caption
    assert len(d["captions"]) == exp["records"] and d["meta"]["dataset"] == "flickrstyle10k"


@pytest.mark.parametrize("key", ["senticap", "senticap_csv"])
def test_senticap_json_split_and_csv(small_models, demo_data, tmp_path, key):
    exp = expected(demo_data)[key]
    assert run(small_models, demo_data, exp, tmp_path / "s.pkl") == 0
    files = split_files(tmp_path / "s.pkl")
    n = 0
    for s, d in files.items():
        by_image = check(d, ["positive", "negative"])
        if key == "senticap":  # the release's own split
            assert all(exp["splits"][i] == s for i in by_image) and d["meta"]["split_method"] == "source"
        else:
            assert d["meta"]["split_method"] == "seeded"
        assert all(i.startswith("COCO_val2014_") for i in by_image)
        n += len(d["captions"])
    assert n == exp["records"]
    raw = {c["caption"] for d in files.values() for c in d["captions"]}
    assert any(c.endswith(".") for c in raw) == (key == "senticap")  # json: raw text; csv: its tokenised text


def test_senticap_images_in_val2014_or_a_flat_folder(demo_data):
    exp = expected(demo_data)["senticap"]
    coco = demo_data / exp["image_path"]
    for image_dir, prefix in ((coco, "val2014/"), (coco / "val2014", "")):
        src = read_senticap(demo_data / exp["caption_path"], image_dir)
        assert all(f.startswith(prefix + "COCO_val2014_") and (image_dir / f).is_file()
                   for f in src.image_files.values())


def test_auto_detects_every_layout(demo_data):
    formats = {"jsonl": "jsonl", "csv": "csv", "flickrstyle": "flickrstyle", "senticap": "senticap",
               "senticap_csv": "senticap"}
    for key, exp in expected(demo_data).items():
        assert detect_stylized_format(demo_data / exp["caption_path"]) == formats[key]


# ----------------------------------------------------------------------------- malformed lines and files
def test_dirty_malformed_lines_are_counted_and_skipped(dirty_data):
    for key, exp in expected(dirty_data).items():
        src = read_stylized(dirty_data / exp["caption_path"], "auto", dirty_data / exp["image_path"])
        assert len(src.malformed) == exp["malformed"] > 0, (key, src.malformed)
        assert len(src.captions) == exp["records"] and len(src.image_files) == exp["images"], key


def test_dirty_jsonl_end_to_end_reports_malformed(small_models, dirty_data, tmp_path):
    exp = expected(dirty_data)["jsonl"]
    assert run(small_models, dirty_data, exp, tmp_path / "j.pkl") == 0
    d = load(tmp_path / "j_train.pkl")
    assert d["meta"]["counts"]["malformed"] == exp["malformed"] == len(d["meta"]["malformed"])
    reasons = " ".join(m["reason"] for m in d["meta"]["malformed"])
    assert "invalid JSON" in reasons and "splits are by image" in reasons and "'caption'" in reasons
    assert "malformed caption lines" in (tmp_path / "j_train.pkl.skipped.txt").read_text()


def test_flickrstyle_non_utf8_romantic_line_is_kept(dirty_data):
    src = read_flickrstyle(dirty_data / expected(dirty_data)["flickrstyle"]["caption_path"])
    assert any("darling\u2019s dream" in c["caption"] and c["style"] == "romantic" for c in src.captions)


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


@pytest.mark.parametrize("name,data,fmt,match", [
    ("empty.jsonl", "", "jsonl", "no usable JSON line"),
    ("bad.jsonl", "{oops\n[1]\n{\"image\": \"a.jpg\"}\n", "jsonl", "first problem: line 1"),
    ("nocol.csv", "file,text\na.jpg,hello\n", "csv", "lacks image and caption columns"),
    ("header.csv", "image,caption,style\n", "csv", "no usable CSV row"),
    ("empty.csv", "", "csv", "empty CSV file"),
    ("list.json", "[1, 2]", "senticap", "not senticap_dataset.json"),
    ("bad.json", "{\"images\": [", "senticap", "invalid JSON"),
    ("senti.csv", "filename,sentiment,caption\na.jpg,1,x\n", "senticap", "is not SentiCap's"),
])
def test_malformed_files_are_one_line_user_errors(tmp_path, name, data, fmt, match):
    path = _write(tmp_path / name, data)
    with pytest.raises(UserError, match=match) as e:
        read_stylized(path, fmt)
    assert "\n" not in str(e.value)


def test_mixed_styles_splits_and_same_stem_images_are_malformed_lines(tmp_path):
    path = _write(tmp_path / "m.jsonl", "\n".join(json.dumps(r) for r in [
        {"image": "a.jpg", "caption": "one", "style": "humor"},
        {"image": "b.jpg", "caption": "two"},                           # no style while others have one
        {"image": "sub/a.jpg", "caption": "three", "style": "humor"},   # same stem as a.jpg
        {"image": "a.jpg", "caption": "four", "style": "romantic"},
    ]) + "\n")
    src = read_jsonl(path)
    assert [(c["caption"], c["style"]) for c in src.captions] == [("one", "humor"), ("four", "romantic")]
    assert [m["where"] for m in src.malformed] == ["line 2", "line 3"]
    assert "same file stem" in src.malformed[1]["reason"]
    path = _write(tmp_path / "s.jsonl", "\n".join(json.dumps(r) for r in [
        {"image": "a.jpg", "caption": "one"},
        {"image": "c.jpg", "caption": "two", "split": "val"},           # a split on one record only
        {"image": "c.jpg", "caption": "three", "split": "holdout"},     # not a split name
    ]) + "\n")
    src = read_jsonl(path)
    assert [c["caption"] for c in src.captions] == ["two"] and src.splits == {"c": "val"}
    assert "give every record a split or none" in src.malformed[0]["reason"]
    assert "'holdout' is not train/val/test" in src.malformed[1]["reason"]


def test_flickrstyle_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="no humor/ or romantic/ folder"):
        read_flickrstyle(tmp_path)
    _write(tmp_path / "humor" / "funny_train.txt", "a funny caption\n")
    with pytest.raises(UserError, match="needs both humor/train.p"):
        read_flickrstyle(tmp_path)
    _write(tmp_path / "humor" / "train.p", b"not a pickle at all")
    with pytest.raises(UserError, match="not a readable pickle"):
        read_flickrstyle(tmp_path)
    _write(tmp_path / "humor" / "train.p", pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(UserError, match="expected a pickled list of image names"):
        read_flickrstyle(tmp_path)
    # a blank line and a name that is no image name: malformed lines, the rest read (more lines than
    # names stops: test_flickrstyle_line_count_must_equal_name_count)
    _write(tmp_path / "humor" / "train.p", pickle.dumps(["11_x.jpg", "22_y.jpg", " "], protocol=2))
    _write(tmp_path / "humor" / "funny_train.txt", "first\n\nthird\n")
    src = read_flickrstyle(tmp_path)
    assert [(c["image_id"], c["caption"]) for c in src.captions] == [("11", "first")]
    assert [m["reason"][:13] for m in src.malformed] == ["empty caption", "not an image "]


# ----------------------------------------------------------------------------- train.p: Python 2 pickles
# What Python 2's pickle.dump wrote for ['1000092795_8c9bb3bd3b.jpg', 'caf\xe9_1.jpg'] (str items),
# protocol 0 ('S' opcodes) and protocol 2 ('U' SHORT_BINSTRING): no globals, byte strings that Python 3
# decodes with the unpickler's encoding (latin-1).
PY2_PROTO0 = b"(lp0\nS'1000092795_8c9bb3bd3b.jpg'\np1\naS'caf\\xe9_1.jpg'\np2\na."
PY2_PROTO2 = (b"\x80\x02]q\x00(U\x191000092795_8c9bb3bd3b.jpgq\x01U\x0acaf\xe9_1.jpgq\x02e.")


@pytest.mark.parametrize("blob", [PY2_PROTO0, PY2_PROTO2, pickle.dumps(["1000092795_8c9bb3bd3b.jpg", "caf\xe9_1.jpg"],
                                                                         protocol=2)])
def test_python2_train_p_read_through_restricted_unpickler(tmp_path, blob):
    path = _write(tmp_path / "train.p", blob)
    assert read_py2_pickle(path) == ["1000092795_8c9bb3bd3b.jpg", "caf\xe9_1.jpg"]


def test_malicious_train_p_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    _write(tmp_path / "humor" / "train.p", evil)
    _write(tmp_path / "humor" / "funny_train.txt", "a caption\n")
    with pytest.raises(UserError, match="refused to unpickle.*os.system"):
        read_flickrstyle(tmp_path)
    # Python 3's own pickle of bytes calls _codecs.encode: a global, refused too
    _write(tmp_path / "humor" / "train.p", pickle.dumps([b"1_a.jpg"], protocol=2))
    with pytest.raises(UserError, match="refused to unpickle"):
        read_flickrstyle(tmp_path)
    assert not marker.exists()


def test_main_refuses_a_file_without_usable_line_before_loading_clip(tmp_path):
    path = _write(tmp_path / "c.jsonl", "{not json\n")
    (tmp_path / "images").mkdir()
    with pytest.raises(UserError, match="no usable JSON line"):
        process_stylized.main(["--caption_path", str(path), "--image_path", str(tmp_path / "images"),
                               "--output_path", str(tmp_path / "o.pkl"), "--clip_model_path", str(tmp_path / "none.pt")])


# ----------------------------------------------------------------------------- the reader table
def test_reader_table_gives_choices_detection_and_meta(demo_data, tmp_path):
    import process_flickr
    from stylecap.extract import readers
    assert readers.formats("flickr") == ("token", "karpathy", "cn")
    assert readers.formats("stylized") == ("jsonl", "csv", "flickrstyle", "senticap")
    for script, mod in (("flickr", process_flickr), ("stylized", process_stylized)):
        fmt = next(a for a in mod.build_parser()._actions if a.dest == "format")
        assert tuple(fmt.choices) == ("auto",) + readers.formats(script)
    fl, cn = demo_data / "flickr30k", demo_data / "flickr30k_cn"
    for path, want in ((fl / "results_20130124.token", "token"), (fl / "dataset_flickr30k.json", "karpathy"),
                       (cn / "captions_cn.txt", "cn")):
        assert readers.detect("flickr", path) == want
    for exp in expected(demo_data).values():  # the stylized detectors exclude each other: one yes per layout
        path = demo_data / exp["caption_path"]
        assert sum(readers.READERS[f].detect(path) for f in readers.formats("stylized")) == 1
    with pytest.raises(UserError, match="caption file .*nope not found; pass --caption_path"):
        readers.detect("flickr", tmp_path / "nope")
    with pytest.raises(UserError, match="caption file .* not found; pass --caption_path"):
        readers.detect("flickr", tmp_path)  # a folder is not a Flickr caption source
    fmt, src = readers.read_source("flickr", cn / "captions_cn.txt", image_dir=cn / "flickr30k-images")
    meta = readers.source_meta(fmt, src, cn / "flickr30k-images")
    assert list(meta) == ["dataset", "source_format", "sources", "image_dir", "styles"]
    assert meta["dataset"] == "flickr30k-cn" and meta["source_format"] == "cn" and meta["styles"] == []


def test_a_new_reader_is_one_table_entry(tmp_path, monkeypatch):
    """A made-up 'pipe' format (image|style|caption lines): its reader plus one entry make process_stylized.py
    offer it, detect it and read it."""
    from stylecap.extract import readers
    from stylecap.extract.caption_sources import CaptionSource

    def read_pipe(path: Path, image_dir: Path | None = None) -> CaptionSource:
        src = CaptionSource(format="pipe", files=[str(path)])
        for line in path.read_text().splitlines():
            image, style, caption = line.split("|")
            src.add(image, caption, style=style)
        return src

    monkeypatch.setitem(readers.READERS, "pipe", readers.Reader(
        "stylized", "pipes", read_pipe, lambda p: p.is_file() and p.suffix == ".pipe", styles=("sad", "happy")))
    path = _write(tmp_path / "c.pipe", "1.jpg|happy|a dog\n2.jpg|sad|a cat\n")
    fmt = next(a for a in process_stylized.build_parser()._actions if a.dest == "format")
    assert "pipe" in fmt.choices and readers.detect("stylized", path) == "pipe"
    name, src = readers.read_source("stylized", path)
    meta = readers.source_meta(name, src, tmp_path)
    assert meta["dataset"] == "pipes" and meta["styles"] == ["sad", "happy"]  # the entry's fixed order


def test_karpathy_and_senticap_share_the_walker(tmp_path):
    from stylecap.extract.caption_sources import read_karpathy
    images = [{"filename": "a.jpg", "split": "restval", "sentences": [{"raw": " one ", "sentiment": 1}]},
              {"filename": "b.jpg", "split": "holdout", "sentences": [{"raw": "two", "sentiment": 0}]},
              {"filename": "c.jpg", "split": "val", "sentences": []},
              {"split": "test", "sentences": [{"raw": "x"}]},
              {"filename": "d.jpg", "split": "test", "sentences": [{"sentiment": 1}, {"raw": "four", "sentiment": 0}]}]
    path = _write(tmp_path / "k.json", json.dumps({"images": images}))
    k, s = read_karpathy(path), read_senticap(path)
    where = lambda src: [(m["where"], m["reason"]) for m in src.malformed]
    assert where(k) == [("images[1]", "unknown split 'holdout' (expected train/restval/val/test)"),
                        ("images[2]", "no 'sentences' (or an empty list)"), ("images[3]", "no 'filename'"),
                        ("images[4].sentences[0]", "no 'raw' caption text")]
    assert where(s)[:2] == [("images[0]", "unknown split 'restval' (expected train/val/test)"),
                            ("images[1]", "unknown split 'holdout' (expected train/val/test)")]
    assert where(s)[2:] == where(k)[1:]
    assert k.splits == {"a": "train", "d": "test"} and s.splits == {"d": "test"}
    assert [c["caption"] for c in k.captions] == ["one", "four"]
    assert [(c["caption"], c["style"]) for c in s.captions] == [("four", "negative")]


# ----------------------------------------------------------------------------- issue 22, section 3
def test_flickrstyle_stray_cr_does_not_shift_captions(tmp_path):
    """A lone \\r inside a line (\\r\\r\\n) split the line in two with bytes.splitlines(), so every later
    caption landed on the wrong image. Lines end at \\n only; one trailing \\r is stripped."""
    names = ["11_a.jpg", "22_b.jpg", "33_c.jpg", "44_d.jpg"]
    _write(tmp_path / "humor" / "train.p", pickle.dumps(names, protocol=0))
    _write(tmp_path / "humor" / "funny_train.txt", b"one\r\r\ntwo\r\nthree and\rmore\r\nfour\r\n")
    src = read_flickrstyle(tmp_path)
    assert [(c["image_id"], c["caption"]) for c in src.captions] == [
        ("11", "one"), ("22", "two"), ("33", "three and more"), ("44", "four")]
    assert src.malformed == []


@pytest.mark.parametrize("text,n_lines", [(b"first\nsecond\n", 2), (b"first\nsecond\nthird\nfourth", 4)])
def test_flickrstyle_line_count_must_equal_name_count(tmp_path, text, n_lines):
    """Pairing by position is only right when the counts agree: stop, naming both, instead of guessing."""
    _write(tmp_path / "humor" / "train.p", pickle.dumps(["11_a.jpg", "22_b.jpg", "33_c.jpg"], protocol=0))
    _write(tmp_path / "humor" / "funny_train.txt", text)
    with pytest.raises(UserError, match=rf"funny_train.txt has {n_lines} caption lines but .*train.p lists 3 "
                                        r"image names") as e:
        read_flickrstyle(tmp_path)
    assert "\n" not in str(e.value)


def test_senticap_image_in_two_splits_is_malformed(tmp_path):
    """The first split won silently; the generic reader refuses the same thing, and so does SentiCap's now."""
    images = [{"filename": "COCO_val2014_000000000001.jpg", "split": "train",
               "sentences": [{"raw": "A lovely cat.", "sentiment": 1}]},
              {"filename": "COCO_val2014_000000000002.jpg", "split": "val",
               "sentences": [{"raw": "A dull dog.", "sentiment": 0}]},
              {"filename": "COCO_val2014_000000000001.jpg", "split": "test",
               "sentences": [{"raw": "An ugly cat.", "sentiment": 0}]},
              {"filename": "COCO_val2014_000000000002.jpg", "split": "val",   # same split again: fine
               "sentences": [{"raw": "A nice dog.", "sentiment": 1}]}]
    src = read_senticap(_write(tmp_path / "senticap_dataset.json", json.dumps({"images": images})))
    assert [c["caption"] for c in src.captions] == ["A lovely cat.", "A dull dog.", "A nice dog."]
    assert src.splits == {"COCO_val2014_000000000001": "train", "COCO_val2014_000000000002": "val"}
    assert [m["where"] for m in src.malformed] == ["images[2]"]
    reason = src.malformed[0]["reason"]
    assert "COCO_val2014_000000000001.jpg" in reason and "'train'" in reason and "'test'" in reason
