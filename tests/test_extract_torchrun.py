"""Issue 20 section 1: extraction under torchrun, through the real launcher (python -m torch.distributed.run), on
the CPU with gloo. The ranks split the work (whole batches of each file's images), write their shard files,
and rank 0 combines them into the file one process writes; a kill -9 resumes; a failing rank stops the job
with a message naming the rank and its input."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import process_conceptual
import process_flickr
from stylecap.extract import pipeline as extract
from tests.helpers import free_port
from stylecap.cpu import one_thread
from tests.test_extract import SPLITS, _large_photos, load

ROOT = Path(__file__).resolve().parents[1]


def torchrun_cmd(argv: list[str], script: str = "process_flickr.py") -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", str(free_port()), script, *argv]


def torchrun(argv: list[str], script: str = "process_flickr.py") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(torchrun_cmd(argv, script), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def demo_argv(small_models, demo_data, out: Path, *extra: str) -> list[str]:
    fl = demo_data / "flickr30k"
    return ["--caption_path", str(fl / "dataset_flickr30k.json"), "--image_path", str(fl / "flickr30k-images"),
            "--clip_model_path", str(small_models / "small_clip.pt"), "--output_path", str(out),
            "--batch_size", "4", "--num_workers", "0", "--device", "cpu", *extra]


def assert_same_content(a: Path, b: Path) -> None:
    """Equal tensors (values and dtype) and captions; meta equal except when/which code/how many ranks."""
    da, db = load(a), load(b)
    assert da["clip_embedding"].dtype == db["clip_embedding"].dtype
    assert torch.equal(da["clip_embedding"], db["clip_embedding"])
    assert da["captions"] == db["captions"]
    strip = lambda m: {k: (v if k != "extraction" else {x: y for x, y in v.items() if x not in extract.RANK_META})
                       for k, v in m.items() if k not in extract.VOLATILE_META}
    assert strip(da["meta"]) == strip(db["meta"])


def test_torchrun_two_ranks_split_the_images_and_equal_one_process(small_models, demo_data, tmp_path):
    """2 ranks write the same three split files as one process (same thread count per process: the
    float32 sums inside a matrix product depend on it), each rank encoding whole batches (half of train's); the
    meta says how many images each rank encoded; no shard file is left behind."""
    with one_thread():
        assert process_flickr.main(demo_argv(small_models, demo_data, tmp_path / "one.pkl")) == 0
    proc = torchrun(demo_argv(small_models, demo_data, tmp_path / "two.pkl"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for s in SPLITS:
        one, two = tmp_path / f"one_{s}.pkl", tmp_path / f"two_{s}.pkl"
        assert_same_content(two, one)
        ext = load(two)["meta"]["extraction"]
        n = load(one)["clip_embedding"].shape[0]
        assert ext["world_size"] == 2 and sum(ext["rank_images"]) == n and len(ext["rank_images"]) == 2
    # train: 24 images = 6 batches of 4, 3 per rank; val and test (3 images) are one batch, one rank's
    assert load(tmp_path / "two_train.pkl")["meta"]["extraction"]["rank_images"] == [12, 12]
    assert not list(tmp_path.glob("*shard*")) and not list(tmp_path.glob("*.partial"))
    assert "rank 1" in (tmp_path / "two.rank1.log").read_text()  # each rank logs to its own file


def _rank_pid(torchrun_pid: int, rank: int) -> int | None:
    """The pid of the worker with RANK=rank among torchrun's children (from /proc)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == torchrun_pid and f"RANK={rank}".encode() in env:
            return int(d.name)
    return None


def test_torchrun_kill_9_of_one_rank_then_rerun_resumes(small_models, tmp_path):
    """kill -9 of rank 1 after its first chunk: torchrun stops the job without a final file; the rerun
    resumes rank 1 from its finished chunks and writes the file one process writes."""
    n = 6  # 3 chunks of one image per rank
    token = _large_photos(tmp_path / "img", n)
    argv = lambda out: ["--caption_path", str(token), "--image_path", str(token.parent), "--clip_model_path",
                        str(small_models / "small_clip.pt"), "--output_path", str(out), "--val_ratio", "0",
                        "--test_ratio", "0", "--batch_size", "1", "--num_workers", "0", "--chunk_batches", "1",
                        "--device", "cpu"]
    out = tmp_path / "fl.pkl"
    part = Path(f"{extract.shard_path(out, 1, 2)}.partial")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(torchrun_cmd(argv(out)), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "killed.err", "w"))
    deadline = time.monotonic() + 90
    while not list(part.glob("chunk_*.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None, (tmp_path / "killed.err").read_text()[-3000:]
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=60) != 0  # torchrun stops the other rank too and fails
    done = len(list(part.glob("chunk_*.pt")))
    assert 1 <= done < n // 2 and not out.exists()

    proc = torchrun(argv(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming after {done} of {n // 2} chunks" in (tmp_path / "fl.rank1.log").read_text()
    with one_thread():
        assert process_flickr.main(argv(tmp_path / "one.pkl")) == 0
    assert_same_content(out, tmp_path / "one.pkl")


def test_torchrun_failing_rank_stops_the_job_naming_rank_and_input(small_models, demo_data, tmp_path):
    """Rank 1 cannot write its progress (a plain file sits where its partial folder goes): it fails, rank 0
    finishes its share and does not wait for ever, and the message names rank 1 and its images."""
    out = tmp_path / "f.pkl"
    argv = demo_argv(small_models, demo_data, out, "--val_ratio", "0", "--test_ratio", "0", "--format", "token")
    argv[1] = str(demo_data / "flickr30k" / "results_20130124.token")
    Path(f"{extract.shard_path(out, 1, 2)}.partial").write_text("not a folder")
    t0 = time.monotonic()
    proc = torchrun(argv)
    assert proc.returncode != 0 and time.monotonic() - t0 < 60
    assert "rank 1 failed" in proc.stderr and "f.shard1of2.pkl" in proc.stderr, proc.stderr[-3000:]
    assert "images 16-29 of 30" in proc.stderr, proc.stderr[-3000:]
    assert not out.exists()


def test_torchrun_conceptual_ranks_take_whole_tars_and_equal_one_process(small_models, demo_data, tmp_path):
    """process_conceptual.py: each rank encodes a contiguous block of whole tars into its parts, rank 0
    combines them into the file one process writes; the meta counts each rank's images."""
    argv = lambda out: ["--data_path", str(demo_data / "conceptual"), "--output_path", str(out), "--clip_model_path",
                        str(small_models / "small_clip.pt"), "--batch_size", "4", "--num_workers", "0",
                        "--device", "cpu"]
    with one_thread():
        assert process_conceptual.main(argv(tmp_path / "one.pkl")) == 0
    proc = torchrun(argv(tmp_path / "two.pkl"), "process_conceptual.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_content(tmp_path / "two.pkl", tmp_path / "one.pkl")
    ext = load(tmp_path / "two.pkl")["meta"]["extraction"]
    tars = sorted(p.name for p in (demo_data / "conceptual").glob("*.tar"))
    parts = {t: torch.load(tmp_path / "two.pkl.parts" / t.replace(".tar", ".pt"), weights_only=True)["emb"].shape[0]
             for t in tars}
    half = len(tars) // 2
    assert ext["world_size"] == 2
    assert ext["rank_images"] == [sum(parts[t] for t in tars[:half]), sum(parts[t] for t in tars[half:])]
    assert min(ext["rank_images"]) > 0


def test_torchrun_hung_rank_is_named_after_ddp_timeout(small_models, demo_data, tmp_path):
    """A rank that hangs (SIGSTOP) does not keep the others waiting for ever: after --ddp_timeout (here 6 s)
    rank 0 stops with a message naming the rank that did not arrive."""
    out = tmp_path / "h.pkl"
    argv = demo_argv(small_models, demo_data, out, "--val_ratio", "0", "--test_ratio", "0", "--ddp_timeout", "0.1")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    err = tmp_path / "hung.err"
    proc = subprocess.Popen(torchrun_cmd(argv), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    deadline = time.monotonic() + 60
    joined = lambda: "torchrun: rank 1 of 2" in (tmp_path / "h.rank1.log").read_text() \
        if (tmp_path / "h.rank1.log").exists() else False
    while not joined() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None, err.read_text()[-3000:]
    os.kill(pid, signal.SIGSTOP)  # rank 1 hangs once in the process group
    try:
        while "not every rank reported" not in err.read_text() and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.kill(pid, signal.SIGKILL)  # a stopped process waits for torchrun's SIGTERM for ever
        proc.wait(timeout=60)
    text = err.read_text()
    assert proc.returncode != 0 and "rank 0: not every rank reported within --ddp_timeout 0.1 min" in text, text[-3000:]
    assert "Rank 1" in text or "rank 1" in text.split("not every rank reported", 1)[1][:400], text[-3000:]
    assert not out.exists()
