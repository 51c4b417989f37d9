"""process_conceptual.py: features from img2dataset's webdataset tar shards (CPU, small CLIP, demo shards)."""
from __future__ import annotations

import io
import json
import signal
import tarfile
from pathlib import Path

import pytest
import torch

import process_conceptual
from stylecap.clip_utils import load_clip
from stylecap.demo.img2dataset import write_shard, write_stats
from stylecap.extract.image_encoder import extract_features
from stylecap.utils import UserError, run_main
from tests.helpers import kill_9_when
from tests.test_extract import assert_same_file, load


def argv(models, data, out, *extra) -> list[str]:
    return ["--data_path", str(data), "--output_path", str(out), "--clip_model_path", str(models / "small_clip.pt"),
            "--batch_size", "4", "--num_workers", "0", *extra]


def conceptual(models, data, out, *extra) -> int:
    return process_conceptual.main(argv(models, data, out, *extra))


@pytest.fixture(scope="module")
def shards(demo_data) -> tuple[Path, dict]:
    d = demo_data / "conceptual"
    return d, json.loads((d / "expected.json").read_text())


@pytest.fixture(scope="module")
def single(small_models, shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cc") / "cc.pkl"
    assert conceptual(small_models, shards[0], out) == 0
    return out


def test_features_equal_the_engine_on_the_same_images(single, shards, small_models, tmp_path):
    """Each row is the image's own encoding (as extract_features encodes it from a file), under its key and caption."""
    folder, want = shards
    d = load(single)
    assert [c["image_id"] for c in d["captions"]] == list(want["captions"])  # tar order, one record per sample
    assert {c["image_id"]: c["caption"] for c in d["captions"]} == want["captions"]
    assert [c["clip_embedding"] for c in d["captions"]] == list(range(d["clip_embedding"].shape[0]))
    files = []
    for tar in sorted(folder.glob("*.tar")):  # the images as files, read back with tarfile independently
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".jpg") and m.name[:-4] in want["captions"]:
                    files.append(tmp_path / m.name)
                    files[-1].write_bytes(tf.extractfile(m).read())
    model, preprocess, _ = load_clip(str(small_models / "small_clip.pt"))
    emb, ok, bad = extract_features([str(f) for f in files], model, preprocess, batch_size=4, num_workers=0)
    assert not bad and ok == list(range(len(files))) and [f.stem for f in files] == list(want["captions"])
    torch.testing.assert_close(d["clip_embedding"], emb, atol=1e-6, rtol=0)
    assert d["meta"]["clip_sha256"] and d["meta"]["source"] == "img2dataset" and d["meta"]["shards"] == want["shards"]


def test_bad_samples_skipped_and_counted_never_a_zero_row(single, shards):
    """ClipCap's parse_conceptual.py inserted a zero vector for an image it could not read (its issue #60)."""
    _, want = shards
    d = load(single)
    emb, meta = d["clip_embedding"], d["meta"]
    assert emb.shape[0] == len(want["captions"]) == meta["counts"]["images"]
    assert bool((emb.abs().sum(dim=1) > 0).all())  # no placeholder row
    assert not set(want["skipped"]) & {c["image_id"] for c in d["captions"]}
    c = meta["counts"]
    assert c["samples"] == want["samples"] and c["skipped_images"] == len(want["skipped"])
    assert c["skipped_by_reason"] == {r: list(want["skipped"].values()).count(r) for r in set(want["skipped"].values())}
    assert (c["failed_to_download"], c["failed_to_resize"]) == (want["failed_to_download"], want["failed_to_resize"])
    assert c["caption_from_json"] == want["caption_from_json"] == 1
    listed = [l.split("\t") for l in Path(f"{single}.skipped.txt").read_text().splitlines() if not l.startswith("#")]
    assert {k: r.split(":")[0] for k, _, r in listed} == want["skipped"]
    # the parts are kept once combined, so that a rerun with one more tar encodes only that one
    parts = sorted(p.name for p in Path(f"{single}.parts").glob("*.pt"))
    assert parts == [f"{Path(t).stem}.pt" for t in want["shards"]]


def _photo_shards(folder: Path, n_tars: int, per_tar: int) -> Path:
    """Tars of distinct 1600x1200 photo-like JPEGs: tens of ms each to decode and resize, so a run takes long
    enough for a test to kill it from outside between shards."""
    import numpy as np
    from PIL import Image
    from stylecap.demo.photos import photo_like
    folder.mkdir()
    base = np.asarray(photo_like(0, 1600, 1200))
    for t in range(n_tars):
        samples = []
        for i in range(per_tar):
            buf, k = io.BytesIO(), t * per_tar + i
            Image.fromarray(np.roll(base, (37 * k, 53 * k), axis=(0, 1))).save(buf, "JPEG", quality=90)
            samples.append({"key": f"{t:05d}{i:04d}", "image": buf.getvalue(), "caption": f"photo {k}"})
        write_stats(write_shard(folder / f"{t:05d}.tar", samples), per_tar)
    return folder


def test_kill_and_resume_redoes_only_unfinished_shards(small_models, tmp_path):
    n_tars = 4
    data = _photo_shards(tmp_path / "shards", n_tars, 2)
    args = lambda out: argv(small_models, data, out, "--batch_size", "1")
    clean = tmp_path / "clean.pkl"
    assert process_conceptual.main(args(clean)) == 0

    out = tmp_path / "cc.pkl"
    parts = Path(f"{out}.parts")
    rc = kill_9_when(["process_conceptual.py", *args(out)], lambda: bool(list(parts.glob("*.pt"))),
                     tmp_path / "killed.err")
    assert rc == -signal.SIGKILL, (tmp_path / "killed.err").read_text()[-2000:]  # killed, not finished
    done = sorted(p.name for p in parts.glob("*.pt"))
    assert 1 <= len(done) < n_tars and not out.exists()
    last = parts / f"{n_tars - 1:05d}.pt"  # not done: make it a part of another run (stale), to be redone
    assert last.name not in done
    torch.save({"run_key": "other"}, last)

    log = tmp_path / "cc.log"
    before = len(log.read_text())
    assert process_conceptual.main(args(out)) == 0
    rerun = log.read_text()[before:]
    assert rerun.count("done earlier") == len(done) and rerun.count(": encoded ") == n_tars - len(done)
    assert all(f"{Path(p).stem}.tar: done earlier" in rerun for p in done)
    assert f"{last.stem}.tar: its part was made with other arguments" in rerun
    assert_same_file(out, clean)
    mtime = out.stat().st_mtime_ns  # same command again: up to date, not redone
    assert process_conceptual.main(args(out)) == 0 and out.stat().st_mtime_ns == mtime


def test_shards_merge_to_single_run(small_models, shards, single, tmp_path):
    data = shards[0]
    out = tmp_path / "cc.pkl"
    run = lambda *x: conceptual(small_models, data, out, *x)
    assert run("--shard", "0/2", "--batch_size", "2") == 0
    assert sorted(p.name for p in Path(f"{out}.parts").iterdir()) == ["00000.pt"] and not out.exists()
    with pytest.raises(UserError, match=r"no part for 00001.tar and 1 more tar shards"):
        run("--merge")
    assert run("--shard", "1/2", "--num_workers", "2") == 0
    with pytest.raises(UserError, match=r"00000.pt \(made by --shard 0/2\) was made with other arguments"):
        run("--merge")  # shard 0 used another batch size
    assert run("--shard", "0/2") == 0
    assert run("--merge") == 0
    assert_same_file(out, single)
    mtime = out.stat().st_mtime_ns
    assert run("--merge") == 0 and out.stat().st_mtime_ns == mtime  # merged already: up to date


def test_fp16_and_limit(small_models, shards, single, tmp_path):
    full = load(single)
    assert conceptual(small_models, shards[0], tmp_path / "h.pkl", "--fp16", "--limit", "2") == 0
    d = load(tmp_path / "h.pkl")
    assert d["clip_embedding"].dtype == torch.float16 and d["meta"]["limit"] == 2
    assert [c["image_id"] for c in d["captions"]] == ["000000000", "000000001", "000010000", "000020000", "000020001"]
    rows = [c["clip_embedding"] for c in full["captions"] if c["image_id"] in {x["image_id"] for x in d["captions"]}]
    torch.testing.assert_close(d["clip_embedding"].float(), full["clip_embedding"][rows], atol=2e-3, rtol=2e-3)


def test_bad_input_fails_in_one_line(small_models, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for folder, msg in ((tmp_path / "empty", r"no tar shards \(00000.tar, ...\) in .*empty; pass the --output_folder "
                                             r"of an img2dataset run made with --output_format webdataset"),
                        (tmp_path / "nowhere", r"img2dataset output folder .*nowhere not found; pass --data_path")):
        with pytest.raises(UserError, match=msg):
            conceptual(small_models, folder, tmp_path / "o.pkl")
    bad = tmp_path / "bad"
    bad.mkdir()
    write_shard(bad / "00000.tar", [{"key": "000000000", "image": b"GIF89a broken", "caption": "a broken image"}])
    with pytest.raises(SystemExit) as e:
        run_main(lambda: conceptual(small_models, bad, tmp_path / "o.pkl"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and ": error: no image could be encoded: all 1 samples of the 1 tar shards" in err
    assert not (tmp_path / "o.pkl").exists() and (tmp_path / "o.pkl.skipped.txt").exists()


def test_truncated_tar_keeps_the_samples_before_the_damage(small_models, shards, single, tmp_path):
    """img2dataset killed while writing a tar: the complete samples are used, the cut one is counted."""
    src = shards[0] / "00002.tar"
    with tarfile.open(src) as tf:
        third = [m for m in tf.getmembers() if m.name.endswith(".jpg")][2]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "00002.tar").write_bytes(src.read_bytes()[:third.offset_data + third.size // 2])
    assert conceptual(small_models, tmp_path / "in", tmp_path / "t.pkl") == 0
    d, full = load(tmp_path / "t.pkl"), load(single)
    ids = [c["image_id"] for c in d["captions"]]
    assert ids == ["000020000", "000020001"]
    rows = [c["clip_embedding"] for c in full["captions"] if c["image_id"] in ids]
    torch.testing.assert_close(d["clip_embedding"], full["clip_embedding"][rows], atol=1e-6, rtol=0)
    c = d["meta"]["counts"]
    assert c["skipped_by_reason"] == {"truncated tar": 1} and list(c["tar_errors"]) == ["00002.tar"]
    assert c["samples"] == 3 and c["shards_without_stats"] == ["00002.tar"]


# ----------------------------------------------------------------------------- issue 22, section 2
def _copy(src: Path, dst: Path, stems) -> Path:
    dst.mkdir(exist_ok=True)
    for s in stems:
        for name in (f"{s}.tar", f"{s}_stats.json"):
            (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_tar_cut_at_member_boundary_is_counted_as_missing_from_shards(small_models, shards, tmp_path):
    """tarfile ends quietly when a file stops exactly between members: the samples after the cut were lost
    with no count. Each shard's samples are compared with its _stats.json successes."""
    data = _copy(shards[0], tmp_path / "in", ["00000", "00001"])
    with tarfile.open(data / "00001.tar") as tf:
        fifth = next(m for m in tf.getmembers() if m.name.startswith("000010004."))
    (data / "00001.tar").write_bytes((data / "00001.tar").read_bytes()[:fifth.offset])  # 4 of 6 samples left
    out = tmp_path / "cut.pkl"
    assert conceptual(small_models, data, out) == 0
    d = load(out)
    c = d["meta"]["counts"]
    assert c["samples"] == 6 + 4 and not c["tar_errors"]  # the cut itself raised nothing
    assert c["missing_from_shards"] == 2 and c["missing_by_shard"] == {"00001.tar": 2}
    log = (tmp_path / "cut.log").read_text()
    assert "WARNING" in log and "00001.tar: 4 samples in the tar, 6 successes in 00001_stats.json" in log
    assert "2 missing from shards" in log


def test_adding_a_shard_encodes_only_the_new_tar(small_models, shards, tmp_path):
    """img2dataset --incremental_mode incremental adds a shard: the rerun encodes that tar only (the finished
    tars' parts are kept), and the file equals a from-scratch run's."""
    data = _copy(shards[0], tmp_path / "in", ["00000", "00001"])
    out, log = tmp_path / "cc.pkl", tmp_path / "cc.log"
    assert conceptual(small_models, data, out) == 0
    assert sorted(p.name for p in Path(f"{out}.parts").glob("*.pt")) == ["00000.pt", "00001.pt"]  # kept
    _copy(shards[0], data, ["00002"])
    before = len(log.read_text())
    assert conceptual(small_models, data, out) == 0
    rerun = log.read_text()[before:]
    assert rerun.count(": encoded ") == 1 and "00002.tar: encoded" in rerun and rerun.count("done earlier") == 2
    assert conceptual(small_models, data, tmp_path / "fresh.pkl") == 0
    assert_same_file(out, tmp_path / "fresh.pkl")
    # a changed tar of the same name and size (a shard downloaded again, in another order) is encoded again
    with tarfile.open(data / "00000.tar") as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(data / "00000.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        for m, b in members[3:] + members[:3]:  # the first sample last
            tf.addfile(m, io.BytesIO(b))
    assert (data / "00000.tar").stat().st_size == (shards[0] / "00000.tar").stat().st_size
    before = len(log.read_text())
    assert conceptual(small_models, data, out) == 0
    rerun = log.read_text()[before:]
    assert rerun.count(": encoded ") == 1 and "00000.tar: its part was made with other" in rerun
    # a tar removed from the folder: its part is removed with it
    (data / "00002.tar").unlink()
    assert conceptual(small_models, data, out) == 0
    assert sorted(p.name for p in Path(f"{out}.parts").glob("*.pt")) == ["00000.pt", "00001.pt"]


def test_caption_whitespace_stripped_and_counted(small_models, tmp_path):
    """Leading/trailing whitespace is stripped (it is no part of the caption); the captions it changed are
    counted in meta["counts"]["captions_stripped"]; blank captions are skipped and counted, as before."""
    from stylecap.demo.photos import photo_like
    img = io.BytesIO()
    photo_like(0, 64, 48).save(img, "JPEG")
    caps = ["a dog", " a cat", "a bird\n", "  a fish \t", "   ", "a cow"]
    (tmp_path / "in").mkdir()
    write_stats(write_shard(tmp_path / "in" / "00000.tar", [{"key": f"0000000{i:02d}", "image": img.getvalue(),
                                                             "caption": c} for i, c in enumerate(caps)]), 6)
    assert conceptual(small_models, tmp_path / "in", tmp_path / "w.pkl") == 0
    d = load(tmp_path / "w.pkl")
    assert [c["caption"] for c in d["captions"]] == ["a dog", "a cat", "a bird", "a fish", "a cow"]
    c = d["meta"]["counts"]
    assert c["captions_stripped"] == 3 and c["skipped_by_reason"] == {"no caption": 1}
    assert c["missing_from_shards"] == 0 and c["missing_by_shard"] == {}
