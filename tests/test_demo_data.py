"""Tests for the demo data (stylecap/demo/, scripts/make_demo_data.py): real on-disk formats, determinism, and the
dirty variant's manifest matching the files it describes."""
import collections
import importlib.util
import json
import re
import time
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from stylecap.demo import content
from stylecap.demo.datasets import generate

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_demo_data", ROOT / "scripts/make_demo_data.py")
script = importlib.util.module_from_spec(_spec)  # the command line, loaded as `python scripts/...` runs it
_spec.loader.exec_module(script)

TRAITS = json.loads((ROOT / "stylecap/data/personality_traits.json").read_text(encoding="utf-8"))
SMALL = dict(n_flickr=20, n_personality=30)  # 2/2 Flickr val/test, 3/3 personality val/test


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    t0 = time.perf_counter()
    paths = generate(out, seed=3, **SMALL)
    assert time.perf_counter() - t0 < 5, "small generation must stay fast for the test suite"
    return out, paths


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    out = tmp_path_factory.mktemp("dirty")
    paths = generate(out, seed=3, variant="dirty")
    return out, paths, json.loads(paths["manifest"].read_text(encoding="utf-8"))


def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 7), (b, 7), (c, 8)):
        generate(out, seed=seed, n_flickr=6, n_personality=5)
    ta, tb, tc = _tree(a), _tree(b), _tree(c)
    assert ta.keys() == tb.keys() and len(ta) > 20
    assert all(ta[k] == tb[k] for k in ta), [k for k in ta if ta[k] != tb[k]]
    assert ta["flickr30k/results_20130124.token"] != tc["flickr30k/results_20130124.token"]


def test_dirty_is_deterministic_too(tmp_path):
    generate(tmp_path / "a", seed=1, variant="dirty", n_dirty_good=4)
    generate(tmp_path / "b", seed=1, variant="dirty", n_dirty_good=4)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_flickr_token_file_has_five_numbered_captions_per_image(clean):
    out, paths = clean
    per_image = collections.defaultdict(list)
    for line in paths["flickr_token"].read_text(encoding="utf-8").splitlines():
        key, cap = line.split("\t")
        m = re.fullmatch(r"(\d{10})\.jpg#(\d)", key)
        assert m, key
        per_image[m.group(1)].append(int(m.group(2)))
        assert cap.strip()
    assert len(per_image) == 20
    assert all(sorted(v) == [0, 1, 2, 3, 4] for v in per_image.values())
    files = {p.stem for p in paths["flickr_images"].glob("*.jpg")}
    assert files == set(per_image)


def test_karpathy_json_splits_by_image(clean):
    _, paths = clean
    d = json.loads(paths["flickr_karpathy"].read_text(encoding="utf-8"))
    assert d["dataset"] == "flickr30k"
    splits = collections.Counter(im["split"] for im in d["images"])
    assert splits == {"train": 16, "val": 2, "test": 2}
    sentids = []
    for i, im in enumerate(d["images"]):
        assert im["imgid"] == i and len(im["sentences"]) == 5
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
        for s in im["sentences"]:
            assert s["imgid"] == i
            assert s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"].lower())
        sentids += im["sentids"]
    assert sentids == list(range(len(sentids)))
    # captions name the content the image shows: same wording in both files
    token = paths["flickr_token"].read_text(encoding="utf-8")
    first = d["images"][0]
    assert f"{first['filename']}#0\t{first['sentences'][0]['raw'][:-1]} ." in token


def test_five_different_wordings_share_content_words(clean):
    _, paths = clean
    d = json.loads(paths["flickr_karpathy"].read_text(encoding="utf-8"))
    for im in d["images"]:
        raws = [s["raw"] for s in im["sentences"]]
        assert len(set(raws)) == 5
        colours = {w for r in raws for w in s_words(r) if w in content.COLOURS}
        bgs = {w for r in raws for w in s_words(r) if w in content.BACKGROUNDS}
        assert len(colours) == 1 and len(bgs) == 1, raws


def s_words(text):
    return re.findall(r"[a-z]+", text.lower())


def test_cn_captions_five_per_image_and_charset_covers_them(clean):
    out, paths = clean
    counts = collections.Counter()
    charset = set(content.chinese_charset())
    assert content.chinese_charset() == sorted(charset)
    for line in paths["cn_captions"].read_text(encoding="utf-8").splitlines():
        img_id, cap = line.split("\t")
        assert re.fullmatch(r"\d{10}", img_id)  # no .jpg suffix in this format
        assert set(cap) <= charset, set(cap) - charset
        assert re.search(r"[\u4e00-\u9fff]", cap)
        counts[img_id] += 1
    assert set(counts.values()) == {5} and len(counts) == 20
    # same images as Flickr30k, as real copies (not symlinks)
    for img_id in counts:
        cn, en = paths["cn_images"] / f"{img_id}.jpg", paths["flickr_images"] / f"{img_id}.jpg"
        assert not cn.is_symlink() and cn.read_bytes() == en.read_bytes()
    assert "，" in charset and "。" in charset


def test_personality_splits_styles_and_references(clean):
    _, paths = clean
    demo_styles = {"Happy", "Romantic", "Sarcastic", "Gloomy", "Cynical (Doubtful, Skeptical)"}
    assert demo_styles <= set(TRAITS["traits"])
    seen = {}
    for split, n in (("train", 30), ("val", 3), ("test", 3)):
        recs = json.loads(paths[f"personality_{split}"].read_text(encoding="utf-8"))
        assert len(recs) == n
        for r in recs:
            assert r["personality"] in demo_styles
            assert re.fullmatch(r"[0-9a-f]{32}", r["image_hash"])
            assert isinstance(r["comment"], str) and r["comment"]
            assert r["image_hash"] not in seen, "each image in exactly one split"
            seen[r["image_hash"]] = split
            assert (paths["yfcc_images"] / f"{r['image_hash']}.jpg").is_file()
            if split == "test":
                refs = [r["comment"], *r["additional_comments"]]
                assert len(r["additional_comments"]) == 4 and len(set(refs)) == 5
            else:
                assert "additional_comments" not in r
    train = json.loads(paths["personality_train"].read_text(encoding="utf-8"))
    counts = collections.Counter(r["personality"] for r in train)
    assert set(counts) == demo_styles and max(counts.values()) - min(counts.values()) <= 3
    assert any("!" in r["comment"] for r in train)


def test_styles_have_distinct_templates():
    c = {"colour": "red", "size": "large", "bg": "white", "shape": "circle"}
    all_caps = {s: content.styled_captions(s, c) for s in content.STYLES}
    flat = [x for caps in all_caps.values() for x in caps]
    assert len(flat) == len(set(flat)) == 25
    assert all("red" in x and "white" in x and "big" in x for x in flat)
    assert all("!" in x for x in all_caps["Happy"])
    assert not any("!" in x for s, caps in all_caps.items() if s != "Happy" for x in caps)


def test_personalities_txt_lists_all_traits_with_headers(clean):
    _, paths = clean
    lines = paths["personalities_txt"].read_text(encoding="utf-8").splitlines()
    headers = [l for l in lines if "Trait" in l]
    traits = [l for l in lines if "Trait" not in l]
    assert headers == ["Positive Traits:", "Neutral Traits:", "Negative Traits:"]
    assert len(traits) == 215 and set(traits) == set(TRAITS["traits"])
    assert lines.index("Neutral Traits:") == 1 + len(TRAITS["groups"]["positive"])


def test_clean_images_are_224_rgb_jpegs(clean):
    out, paths = clean
    files = [*paths["flickr_images"].glob("*"), *paths["yfcc_images"].glob("*")]
    assert len(files) == 20 + 36
    for f in files:
        with Image.open(f) as im:
            im.load()
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (224, 224)), f
    assert not (out / "dirty_manifest.json").exists()


def test_refuses_to_overwrite_foreign_dataset_dir(tmp_path):
    (tmp_path / "flickr30k").mkdir()
    (tmp_path / "flickr30k" / "real.jpg").write_bytes(b"x")
    with pytest.raises(SystemExit):
        generate(tmp_path, n_flickr=3, n_personality=3)
    assert (tmp_path / "flickr30k" / "real.jpg").exists()


def test_regenerating_removes_stale_files(tmp_path):
    generate(tmp_path, variant="dirty", n_dirty_good=3)
    generate(tmp_path, n_flickr=3, n_personality=3)
    assert not (tmp_path / "dirty_manifest.json").exists()
    assert len(list((tmp_path / "flickr30k/flickr30k-images").iterdir())) == 3


def test_main_cli(tmp_path, capsys):
    assert script.main(["--out", str(tmp_path), "--n_flickr", "4", "--n_personality", "3", "--seed", "2"]) == 0
    assert "flickr_token" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "personality/personality_captions/test.json").read_text())) == 1


# ----------------------------------------------------------------------------- dirty variant
def _open_rgb(path: Path) -> Image.Image:
    """What an extractor is expected to do with a loadable file."""
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


@pytest.mark.parametrize("ds", ["flickr30k", "flickr30k_cn", "personality"])
def test_dirty_manifest_matches_files(dirty, ds):
    out, _, manifest = dirty
    m = manifest[ds]
    img_dir = out / m["image_dir"]
    kinds = m["kinds"]
    assert set(kinds.values()) == {"zero_byte", "truncated", "not_an_image", "missing", "cmyk", "grayscale",
                                   "palette", "rgba", "i16", "exif_rotated", "huge"}
    assert set(m["bad"]) & set(m["good"]) == set()
    # 12 good Flickr images (val/test inside); personality: 12 train + 2 val + 2 test; + 7 loadable specials
    assert len(m["good"]) == {"personality": 16}.get(ds, 12) + 7
    for img_id, reason in m["bad"].items():
        f = img_dir / f"{img_id}.jpg"
        if reason == "missing":
            assert not f.exists()
        elif reason == "zero_byte":
            assert f.stat().st_size == 0
        else:
            assert f.stat().st_size > 0
            with pytest.raises(Exception):
                with Image.open(f) as im:
                    im.load()
    for img_id in m["good"]:
        rgb = _open_rgb(img_dir / f"{img_id}.jpg")
        assert rgb.mode == "RGB"
        exp = m["expected"].get(img_id, {"mode": "RGB", "size": [224, 224]})
        with Image.open(img_dir / f"{img_id}.jpg") as raw:
            assert raw.mode == exp["mode"], (kinds.get(img_id), raw.mode)
            assert list(raw.size) == exp.get("size", [224, 224])
        assert list(rgb.size) == exp.get("transposed_size", exp.get("size", [224, 224]))
    # everything in the folder is accounted for by the manifest
    on_disk = {p.stem for p in img_dir.iterdir()}
    assert on_disk == set(m["good"]) | {i for i, r in m["bad"].items() if r != "missing"}


def test_dirty_captions_reference_every_special_and_malformed_lines(dirty):
    out, paths, manifest = dirty
    # Flickr token file + CN file: every image id (bad ones too) is captioned;
    # exactly the listed lines lack a TAB.
    for ds, key, id_of in (("flickr30k", "flickr_token", lambda k: k.split(".jpg#")[0]),
                           ("flickr30k_cn", "cn_captions", lambda k: k)):
        m = manifest[ds]
        lines = paths[key].read_text(encoding="utf-8").splitlines()
        no_tab = [(i + 1, l) for i, l in enumerate(lines) if "\t" not in l]
        assert no_tab == [(e["line"], e["text"]) for e in m["malformed_lines"]]
        referenced = {id_of(l.split("\t")[0]) for l in lines if "\t" in l}
        assert referenced == set(m["good"]) | set(m["bad"])
    # PersonalityCaptions: malformed records sit in train.json at the listed indices
    m = manifest["personality"]
    train = json.loads(paths["personality_train"].read_text(encoding="utf-8"))
    bad_idx = [i for i, r in enumerate(train) if not isinstance(r.get("comment"), str)]
    assert bad_idx == [e["index"] for e in m["malformed_records"]]
    assert any("comment" not in train[i] for i in bad_idx)
    all_recs = train + [r for s in ("val", "test") for r in json.loads(paths[f"personality_{s}"].read_text())]
    assert {r["image_hash"] for r in all_recs} == set(m["good"]) | set(m["bad"])


def test_no_library_module_imports_the_demo_package():
    """stylecap.demo is for scripts, the bench and the tests: the library never depends on synthetic data."""
    import ast
    bad = []
    for folder in ("stylecap", "models"):
        for p in (ROOT / folder).rglob("*.py"):
            if p.is_relative_to(ROOT / "stylecap" / "demo"):
                continue
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:  # `from stylecap import demo` too
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                else:
                    continue
                bad += [f"{p.relative_to(ROOT)}: {n}" for n in names if (n + ".").startswith("stylecap.demo.")]
    assert not bad, bad
