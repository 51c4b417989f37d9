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
    assert not Path(f"{single}.parts").exists()  # the parts are removed once combined


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
