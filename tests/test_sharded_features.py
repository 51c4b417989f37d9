"""Issue 20 section 3: the sharded feature layout (stylecap/sharded.py, scripts/shard_features.py) and its training
order (stylecap/train/sharded_data.py): round trip, each rank reads only its shards, a seeded per-epoch order,
exact mid-epoch resume through train.py, and bad indexes refused in one line."""
from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from models.tokenizer import CaptionTokenizer, load_hf_tokenizer
from scripts.shard_features import main as shard_main
from stylecap.features import load_features
from stylecap.sharded import open_sharded
from stylecap.train.data import SkipSampler, encode_data
from stylecap.train.sharded_data import ShardedCaptionDataset, assign_shards, rank_order
from stylecap.utils import UserError
from tests.helpers import STYLES, synthetic_features
from tests.test_train import CtrlCAtForward, base_args, weights, with_flag


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return synthetic_features(tmp_path_factory.mktemp("src") / "train.pt", n_images=24)


@pytest.fixture(scope="module")
def shards(source, tmp_path_factory) -> Path:
    """24 images in 6 shards of 4."""
    out = tmp_path_factory.mktemp("sharded") / "set"
    assert shard_main([str(source), str(out), "--rows_per_shard", "4"]) == 0
    return out


def test_index_round_trip_equals_the_source_files_rows(source, shards, tmp_path):
    index = json.loads((shards / "index.json").read_text())
    assert [s["images"] for s in index["shards"]] == [4] * 6 and index["captions"] == 24
    assert index["dim"] == 512 and index["dtype"] == "float32" and index["styles"] == STYLES
    whole, src = open_sharded(shards).load_all(), load_features(source)
    assert whole.records() == src.records() and torch.equal(whole.clip_embedding, src.clip_embedding)
    # several inputs (extraction parts): one set, the style lists merged, a plain file's captions stay plain
    plain = synthetic_features(tmp_path / "plain.pt", n_images=5, styled=False, seed=1)
    assert shard_main([str(source), str(plain), str(tmp_path / "two"), "--rows_per_shard", "10"]) == 0
    two = open_sharded(tmp_path / "two" / "index.json")  # the index file itself works as the path too
    assert [s["images"] for s in two.shards] == [10, 10, 4, 5]
    shifted = [{**r, "clip_embedding": r["clip_embedding"] + 24} for r in load_features(plain).records()]
    assert two.load_all().records() == src.records() + shifted


def _tokenize(small_models):
    tok = CaptionTokenizer(load_hf_tokenizer(small_models / "small_gpt2"), "embedding", STYLES)
    return lambda store, where: encode_data(store, tok, 16)


def _opened_by(dataset: ShardedCaptionDataset, indices: list[int], root: Path) -> set[str]:
    """The shard files really opened (the 'open' audit event of Python's io, which torch.load goes through) while
    ``dataset`` serves ``indices``."""
    seen: list[str] = []
    _AUDIT.update(root=str(root), seen=seen)
    try:
        for i in indices:
            dataset[i]
    finally:
        _AUDIT["root"] = None
    return {Path(p).name for p in seen}


_AUDIT: dict = {"root": None}


def _audit(event: str, args: tuple) -> None:
    if _AUDIT["root"] is not None and event == "open" and isinstance(args[0], str) and args[0].startswith(_AUDIT["root"]):
        _AUDIT["seen"].append(args[0])


sys.addaudithook(_audit)  # cannot be removed: it does nothing while _AUDIT["root"] is None


def test_each_rank_reads_only_its_shards(small_models, shards):
    encode, world = _tokenize(small_models), 3
    counts = open_sharded(shards).caption_counts
    per_rank = []
    for rank in range(world):
        data = open_sharded(shards)  # a fresh process's view: nothing opened or verified yet
        ds = ShardedCaptionDataset(data, encode)
        order = rank_order(counts, world, rank, seed=5, epoch=1)
        files = _opened_by(ds, order.tolist(), shards)
        mine = {data.shards[k]["file"] for k in assign_shards(counts, world, 5, 1)[rank]}
        assert files == mine and set(data.opened) == mine and len(mine) == 2  # 6 shards of 4 for 3 ranks
        mapped = {Path(line.split()[-1]).name for line in Path("/proc/self/maps").read_text().splitlines()
                  if str(shards) in line}
        assert mapped <= mine  # no other shard is even mapped
        per_rank.append(mine)
        del ds, data
        gc.collect()
    assert set.union(*per_rank) == {f"shard_{k:05d}.pt" for k in range(6)} and sum(map(len, per_rank)) == 6


def test_a_node_with_only_its_ranks_shards_trains_with_fixed_assignment(small_models, shards, tmp_path):
    """--shard_assignment fixed: rank 0 of 3 reads the same 2 shards every epoch, so a node that holds only those
    (and index.json) serves every epoch; the shards it lacks are never asked for."""
    counts = open_sharded(shards).caption_counts
    local = tmp_path / "node0"
    local.mkdir()
    (local / "index.json").write_bytes((shards / "index.json").read_bytes())
    mine = assign_shards(counts, 3, 5, 0)[0]
    for k in mine:
        (local / f"shard_{k:05d}.pt").write_bytes((shards / f"shard_{k:05d}.pt").read_bytes())
    with pytest.raises(UserError, match="is missing"):
        open_sharded(local)  # the default check: every shard (right for a shared filesystem)
    ds = ShardedCaptionDataset(open_sharded(local, check=False), _tokenize(small_models), assignment="fixed")
    sampler = ds.make_sampler(3, 0, 5)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert len([ds[i] for i in sampler]) == 8
    assert set(ds.data.opened) == {f"shard_{k:05d}.pt" for k in mine}


def test_same_order_for_same_seed_and_world_and_another_each_epoch():
    counts = [10, 10, 10, 10, 10, 7]  # a short last shard
    order = lambda world, rank, epoch, seed=0, **kw: rank_order(counts, world, rank, seed, epoch, **kw).tolist()
    assert order(2, 0, 0) == order(2, 0, 0) and order(2, 1, 3) == order(2, 1, 3)
    assert order(2, 0, 0) != order(2, 0, 1) and order(2, 0, 0) != order(2, 0, 0, seed=1)
    for epoch in range(3):
        ranks = [order(2, r, epoch) for r in range(2)]
        assert [len(o) for o in ranks] == [29, 29]  # ceil(57 / 2) each: DDP ranks take the same number of steps
        assert len(set(ranks[0]) | set(ranks[1])) >= 57 - 1  # the heavier rank drops at most the overhang
        assert not set(ranks[0]) & set(ranks[1])  # a shard belongs to one rank in an epoch
    # window 1: a rank reads its shards one after the other; fixed assignment: the same shards every epoch
    first = order(2, 0, 0, window=1)[:10]
    assert len({i // 10 for i in first}) == 1
    shards_of = lambda o: {i // 10 for i in o}
    assert shards_of(order(2, 0, 0, assignment="fixed")) == shards_of(order(2, 0, 4, assignment="fixed"))
    assert order(2, 0, 0, assignment="fixed") != order(2, 0, 4, assignment="fixed")
    # resume: SkipSampler over the epoch's order replays nothing and loses nothing
    from stylecap.train.sharded_data import ShardedSampler
    sampler = ShardedSampler(counts, 2, 1, 0, window=2)
    sampler.set_epoch(2)
    assert list(SkipSampler(sampler, 12)) == order(2, 1, 2, window=2)[12:]
    with pytest.raises(UserError, match="6 training shards for 8 ranks"):
        assign_shards(counts, 8, 0, 0)


def test_sharded_training_resumes_exactly_mid_epoch(small_models, shards, tmp_path):
    """train.py --data_path <sharded set>: 5 training shards (one held out for validation), 20 captions, batches
    of 10, windows of 2 shards; Ctrl-C mid-epoch 1 saves at a step boundary; --resume auto (set_epoch(1), a fresh
    dataset mapping its shards again) ends with the uninterrupted run's weights."""
    argv = base_args(small_models, shards, "OUT", "--epochs", "2", "--max_len", "16", "--shard_window", "2",
                     "--max_checkpoint_num", "0")
    argv = with_flag(with_flag(argv, "--bs_train", "10"), "--num_samples", "0")
    args = lambda out: with_flag(argv, "--output_path", str(out))
    assert train.main(args(tmp_path / "a")) == 0
    log = (tmp_path / "a" / "train.log").read_text()
    assert "20 train / 4 val captions" in log
    with CtrlCAtForward(4):  # epoch 0: 2 steps + validation (1 batch); then step 3, the first of epoch 1
        assert train.main(args(tmp_path / "b")) == 130
    (ck,) = [torch.load(p, weights_only=True)["train_state"] for p in (tmp_path / "b/checkpoints").glob("step_*.pt")]
    assert ck["epoch"] == 1 and ck["batch_in_epoch"] == 1
    assert train.main(args(tmp_path / "b") + ["--resume", "auto"]) == 0
    a, b = weights(tmp_path / "a/checkpoints/last.pt"), weights(tmp_path / "b/checkpoints/last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _one_line(e: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_index_is_refused_in_one_line(shards, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    shard = bad / "shard_00002.pt"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, other content
    shard.write_bytes(bytes(raw))
    data = open_sharded(bad)  # stat only: the size still matches
    with pytest.raises(UserError) as e:
        data.open_shard(2)
    assert "shard_00002.pt: its sha256 differs" in _one_line(e)
    shard.write_bytes(bytes(raw[:-10]))
    with pytest.raises(UserError) as e:
        open_sharded(bad)
    assert "the index says" in _one_line(e)
    shard.unlink()
    with pytest.raises(UserError) as e:
        open_sharded(bad, check=False).open_shard(2)  # without the check at open, when the shard is opened
    assert "shard shard_00002.pt is missing" in _one_line(e)
    with pytest.raises(UserError) as e:
        train.main(["--data_path", str(bad), "--output_path", str(tmp_path / "run")])
    assert "shard shard_00002.pt is missing" in _one_line(e)
    (bad / "index.json").write_text("{}")
    with pytest.raises(UserError, match="not a stylecap-sharded-1 index"):
        open_sharded(bad)
    with pytest.raises(UserError, match="already holds a sharded set"):
        shard_main([str(bad / "shard_00000.pt"), str(bad)])


@pytest.mark.parametrize("flag,old,new", [("shard_window", 0, 2), ("shard_assignment", "epoch", "fixed")])
def test_resume_with_another_shard_order_is_refused(tmp_path, flag, old, new):
    """--shard_window and --shard_assignment decide the order: resuming with others would not continue the epoch."""
    import argparse
    from stylecap.train.trainer import check_resume
    base = dict(bs_train=8, grad_accum=1, shard_window=0, shard_assignment="epoch", epochs=1, lr=1e-3,
                warmup_steps=2, finetune_gpt2=True)
    check_resume({"args": {**base, flag: old}, "world_size": 1}, argparse.Namespace(**base), 1, tmp_path)
    with pytest.raises(UserError, match=f"made with --{flag} {old}, this run has --{flag} {new}"):
        check_resume({"args": {**base, flag: old}, "world_size": 1}, argparse.Namespace(**{**base, flag: new}), 1,
                     tmp_path)
