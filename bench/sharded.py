"""A sharded feature set vs one memory-mapped file, per training rank (issue 20 section 3; bench.bench's "sharded" stage).

A synthetic set (fp16 512-d features, one short caption per image) is written once as one columnar file and once as
shards of it (scripts/shard_features.py's write_shards). Then one fresh child process per case plays rank 0 of
``world`` ranks for one epoch, reading the feature row of every sample in its order:
  one file:  load_features(file), DistributedSampler's order (a seeded permutation, every world-th sample)
  sharded:   open_sharded(folder), then stylecap.train.sharded_data.rank_order; a shard is mapped (and its sha256
             checked) when the order first reaches it, and with a window only that window's shards stay mapped
Figures, as ratios of the same run (the files were just written: the page cache is warm for both):
  open:    seconds until the rank can read its first sample (one file: load_features; sharded: the index, a stat
           of every shard, and the first shard mapped with its sha256 checked)
  memory:  the child's peak RSS rise over the epoch (VmHWM: private pages plus the file pages it mapped and touched),
           that is the data memory of this rank; only features are read (1 KiB of the ~1.1 KiB per sample)

    python -m bench.bench --only sharded_open_vs_one_file,sharded_memory_vs_one_file [--quick]
    python -m bench.sharded [--images 600000] [--rows_per_shard 5000] [--world 8]   (prints the entries as JSON)
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZES = {"quick": dict(images=60_000, rows_per_shard=2_500, world=8),
         "full": dict(images=600_000, rows_per_shard=5_000, world=8)}  # full: 2 x 0.63 GB on disk

CHILD = r"""
import json, sys, time, collections, bisect
import numpy.random  # imported lazily by numpy; a training process has it already (its RNG state is saved)
import torch
root, mode, path, world, window, epoch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
sys.path.insert(0, root)
from stylecap.features import load_features
from stylecap.sharded import open_sharded
from stylecap.train.sharded_data import rank_order
def kb(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field + ":")).split()[1])
import gc
gc.collect()
gc.freeze()  # the imports' objects: a full collection over them (~0.5 s here) would land in whichever timing it hits
r0 = kb("VmRSS")
t0 = time.perf_counter()
if mode == "one":
    store = load_features(path)
    order = torch.randperm(len(store), generator=torch.Generator().manual_seed(0))[0::world].tolist()  # rank 0
    rows = store.caption_row
    row = lambda i: store.clip_embedding[rows[i]]
    row(order[0])
else:
    data = open_sharded(path)
    starts = [0]
    for c in data.caption_counts:
        starts.append(starts[-1] + c)
    order = rank_order(data.caption_counts, world, 0, 0, 0, window).tolist()
    mapped = collections.OrderedDict()
    def row(i):
        k = bisect.bisect_right(starts, i) - 1
        if k not in mapped:
            mapped[k] = data.open_shard(k)
            if window and len(mapped) > window:
                mapped.popitem(last=False)
        else:
            mapped.move_to_end(k)
        s = mapped[k]
        return s.clip_embedding[s.caption_row[i - starts[k]]]
    row(order[0])
out = {"open_s": time.perf_counter() - t0, "open_rss_kb": kb("VmRSS") - r0}
acc = 0.0
for i in order if epoch else []:
    acc += float(row(i)[0])
out.update(epoch_s=time.perf_counter() - t0, samples=len(order), peak_kb=kb("VmHWM") - r0, end_kb=kb("VmRSS") - r0)
if mode != "one":
    out["shards_opened"] = len(data.opened)
print(json.dumps(out), flush=True)
"""


def write_set(tmp: Path, n: int, rows_per_shard: int) -> tuple[Path, Path, dict]:
    """(one file, shard folder, seconds): n images with one caption each, fp16 512-d features."""
    from stylecap.features import FeatureStore, save_features, utf8_column
    from stylecap.sharded import write_shards
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    emb = torch.empty(n, 512, dtype=torch.float16)
    for i in range(0, n, 131072):  # fp32 temporaries of one chunk only
        emb[i:i + 131072] = torch.randn(min(131072, n - i), 512, generator=g)
    ids, ids_off = utf8_column([f"{i:09d}" for i in range(n)])
    caps, caps_off = utf8_column([f"a photo number {i} of a {('red', 'blue', 'green')[i % 3]} thing" for i in range(n)])
    store = FeatureStore(emb, ids, ids_off, caps, caps_off[:-1], caps_off[1:], torch.arange(n),
                         torch.full((n,), -1, dtype=torch.int32), [], {"synthetic": "sharded bench"})
    one = tmp / "one.pt"
    save_features(one, store)
    t = {"write_one_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    write_shards([one], tmp / "shards", rows_per_shard)
    t["write_shards_s"] = time.perf_counter() - t0
    return one, tmp / "shards", t


def run_child(mode: str, path: Path, world: int, window: int = 0, epoch: bool = True) -> dict:
    """One fresh process as rank 0 (``epoch``: reading its epoch's features after opening)."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), mode, str(path), str(world), str(window),
                           "1" if epoch else "0"],
                          capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(tmp: Path, images: int, rows_per_shard: int, world: int) -> dict:
    """Write the set, run the children (open times: the median of 3 fresh processes each), delete the set."""
    one, shards, t = write_set(tmp, images, rows_per_shard)
    try:
        sizes = {"one_file_mib": one.stat().st_size / 2**20,
                 "shards_mib": sum(p.stat().st_size for p in shards.glob("shard_*.pt")) / 2**20,
                 "shards": len(list(shards.glob("shard_*.pt")))}
        res = {"one": run_child("one", one, world), "sharded": run_child("sharded", shards, world),
               "sharded_window2": run_child("sharded", shards, world, window=2)}
        for mode, path in (("one", one), ("sharded", shards)):  # open only: the machine is shared and noisy
            res[mode]["open_s"] = statistics.median(run_child(mode, path, world, epoch=False)["open_s"] for _ in range(3))
    finally:
        shutil.rmtree(shards, ignore_errors=True)
        one.unlink(missing_ok=True)
    return {"images": images, "rows_per_shard": rows_per_shard, "world": world, "seconds": t, **sizes, **res}


def entries(m: dict) -> list[tuple[str, dict]]:
    from bench.common import entry
    one, sh, win = m["one"], m["sharded"], m["sharded_window2"]
    mib = lambda kb: round(kb / 1024, 1)
    common = (f"Synthetic set: {m['images']} images, one caption each, fp16 512-d features; one file of "
              f"{m['one_file_mib']:.0f} MiB vs {m['shards']} shards of {m['rows_per_shard']} images "
              f"({m['shards_mib']:.0f} MiB), rank 0 of {m['world']} reading one epoch's features, warm page cache.")
    return [
        ("sharded_open_vs_one_file", entry(
            "sharded_open_vs_one_file", sh["open_s"], one["open_s"], "s",
            f"{common} Time until the rank reads its first sample: sharded = index.json, a stat of every shard, the "
            "first shard mapped with its sha256 checked; one file = load_features (columns validated).",
            sharded_open_s=round(sh["open_s"], 4), one_file_open_s=round(one["open_s"], 4),
            epoch_s={"one": round(one["epoch_s"], 2), "sharded": round(sh["epoch_s"], 2),
                     "sharded_window2": round(win["epoch_s"], 2)}, seconds=m["seconds"])),
        ("sharded_memory_vs_one_file", entry(
            "sharded_memory_vs_one_file", mib(sh["peak_kb"]), mib(one["peak_kb"]), "MiB (peak RSS rise)",
            f"{common} Data memory of the rank over the epoch (peak RSS rise: touched pages of the mapped files + "
            f"private memory). One file: its 1/{m['world']} of the rows is spread over the whole file, so the rank "
            f"touches most pages of it; sharded: only its {sh['shards_opened']} shards. With --shard_window 2 only "
            f"two shards stay mapped: {mib(win['peak_kb'])} MiB ({win['peak_kb'] / max(one['peak_kb'], 1):.3f} of "
            "the one file's).",
            window2_mib=mib(win["peak_kb"]), window2_vs_one_file=round(win["peak_kb"] / max(one["peak_kb"], 1), 4),
            shards_opened=sh["shards_opened"], samples=sh["samples"])),
    ]


def bench_sharded(env) -> list[tuple[str, dict]]:
    """bench.bench's stage: sizes by mode, in the run's temporary folder."""
    return entries(measure(env.tmp, **SIZES["quick" if env.quick else "full"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for k, v in SIZES["full"].items():
        p.add_argument(f"--{k}", type=int, default=v, help=f"default {v}")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="stylecap_sharded_") as tmp:
        m = measure(Path(tmp), args.images, args.rows_per_shard, args.world)
    print(json.dumps({"raw": m, "entries": dict(entries(m))}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
