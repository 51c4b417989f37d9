"""Memory of the training data, measured in child processes (bench.bench's "memory" and "store" stages).

* ``features_fp16_memory``: one training process's data memory for an fp16 vs an fp32 feature file.
* ``store_*``: a synthetic Conceptual-Captions-size file (3.3M captions of 3.3M images, fp16, 512-d:
  3.4 GB of features) opened by one process and by four at once, as DDP ranks on one machine do, and
  against StyleCap's first format (a pickled list of caption dicts) of the same captions.

Every child imports torch and loads the tokenizer first; its figures are rises over what it had then.
RSS counts every page a process has touched, its private pages (RssAnon) and the file pages it maps
(RssFile: the page cache, shared by every process that maps the same file). PSS divides each shared page
between the processes that map it, so the sum of PSS over processes is what they use together.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import Env, entry
from bench.synthetic import coco_like_captions

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
path, gpt2_dir, root, cache, fmt, touch = sys.argv[1:7]
sys.path.insert(0, root)
from models.tokenizer import CaptionTokenizer, load_hf_tokenizer
from stylecap.train.data import CaptionDataset, encode_data
from stylecap.features import load_features
def kb(field):  # kB from /proc/self/status; VmHWM = peak RSS of this process image (set at exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith(field + ":")).split()[1])
tok = CaptionTokenizer(load_hf_tokenizer(gpt2_dir))
tok.encode_captions(["warm up the tokenizer"])
r0, a0 = kb("VmRSS"), kb("RssAnon")
t0 = time.perf_counter()
if fmt == "dict":  # StyleCap's first format: what its load_features did, torch.load of the whole pickle
    data = torch.load(path, weights_only=True)
    out = {"open_s": time.perf_counter() - t0}
else:
    data = load_features(path)
    out = {"open_s": time.perf_counter() - t0}
    enc = encode_data(data, tok, max_len=64, cache_dir=cache or None)  # a cache hit when the parent made it
    ds = CaptionDataset(data.clip_embedding, enc)
    item = ds[len(ds) - 1]
    out["ready_s"] = time.perf_counter() - t0
out.update(rss_ready_kb=kb("VmRSS") - r0, anon_ready_kb=kb("RssAnon") - a0)
if touch == "1":  # an epoch's reads: every feature row, in chunks (no full-size temporary)
    feats, acc = data["clip_embedding"], 0.0
    for i in range(0, feats.shape[0], 2048):  # (2048, 512): a 4 MiB temporary at most
        acc += float(feats[i:i + 2048].sum())
out.update(rss_kb=kb("VmRSS") - r0, anon_kb=kb("RssAnon") - a0, peak_kb=kb("VmHWM") - r0, rss_before_kb=r0)
print(json.dumps(out), flush=True)
sys.stdin.read()  # stay alive (and mapped) until the parent has read /proc/<pid>/smaps
"""


def mapped_kb(pid: int, files: set[str]) -> dict:
    """Rss and Pss (kB) of the mappings of ``files`` in process ``pid`` (/proc/<pid>/smaps)."""
    out = {"Rss": 0, "Pss": 0}
    current = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if len(head) >= 5 and "-" in head[0] and ":" not in head[0]:  # a mapping's header line
            current = len(head) >= 6 and head[5] in files
        elif current and head[0] in ("Rss:", "Pss:"):
            out[head[0][:-1]] += int(head[1])
    return out


def run_children(n: int, path: Path, gpt2_dir: Path, cache: Path | None, fmt: str = "columnar",
                 touch: bool = True) -> list[dict]:
    """Start n children on the same file at once; when all are ready, read each one's mappings of the data
    files (the feature file, the token cache): ``data_kb`` = its private memory rise + those mappings' Rss,
    ``data_pss_kb`` = the same with their Pss (a page that k processes map counts 1/k in each)."""
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(gpt2_dir), str(ROOT), str(cache or ""),
                               fmt, "1" if touch else "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    results = []
    try:
        for p in procs:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"memory child exited with {p.wait()}")
            results.append(json.loads(line))
        files = {str(path)} | ({str(f) for f in Path(cache).glob("*.pt")} if cache else set())
        for p, r in zip(procs, results):  # all n are alive and mapped now
            m = mapped_kb(p.pid, files)
            r.update(mapped_rss_kb=m["Rss"], data_kb=r["anon_kb"] + m["Rss"], data_pss_kb=r["anon_kb"] + m["Pss"])
    finally:
        for p in procs:
            p.stdin.close()
            p.wait()
    return results


def mib(kb: float) -> float:
    return round(kb / 1024, 1)


# ---------------------------------------------------------------------------- features_fp16_memory
def bench_fp16_memory(env: Env) -> dict:
    """One training process's data memory: open + tokenize + one pass over every feature row, for the same
    captions with fp16 vs fp32 features. Value: fp16 / fp32 of the data memory (see run_children)."""
    from stylecap.features import save_features
    s = env.sizes
    n_img, n_cap = s["mem_images"], s["mem_captions"]

    def pair(n_images: int, seed: int) -> tuple[dict, dict]:
        per = n_cap // n_images
        emb = torch.randn(n_images, 512, generator=torch.Generator().manual_seed(seed))
        records = [{"image_id": f"{i // per:012d}.jpg", "caption": c, "clip_embedding": i // per}
                   for i, c in enumerate(coco_like_captions(n_cap, seed=seed))]
        res = []
        for dtype in (torch.float32, torch.float16):
            path = env.tmp / f"mem_{str(dtype).split('.')[-1]}.pt"
            save_features(path, {"clip_embedding": emb.to(dtype), "captions": records, "meta": {}})
            cache = env.tmp / f"mem_cache_{seed}_{dtype}"  # empty: tokenizes and caches, as train.py's first run
            res.append(run_children(1, path, env.gpt2_dir, cache)[0])
            path.unlink()
            shutil.rmtree(cache)
        return res[0], res[1]

    r32, r16 = pair(n_img, seed=2)
    p32, p16 = pair(n_cap, seed=3)  # PersonalityCaptions' layout: one caption per image
    return entry(
        "features_fp16_memory", mib(r16["data_kb"]), mib(r32["data_kb"]), "MiB (data memory)",
        f"child processes, as train.py: load_features + encode_data (tokenizing into an empty cache folder, then "
        f"mapping the cache) + CaptionDataset + one pass over every feature row, {n_cap} captions over {n_img} "
        f"images x 512, fp16 file vs fp32 file. Data memory = private memory rise (RssAnon over the value after "
        f"imports and tokenizer load) + the pages of the feature file and token cache the process maps (shared "
        f"with other processes through the page cache). The feature tensor alone is {n_img * 512 * 2 / 2**20:.0f} "
        f"vs {n_img * 512 * 4 / 2**20:.0f} MiB; private rise {mib(r16['anon_kb'])} vs {mib(r32['anon_kb'])} MiB. "
        f"Whole-process peak RSS rise (VmHWM, which also counts library code pages loaded on first use): "
        f"{mib(r16['peak_kb'])} vs {mib(r32['peak_kb'])} MiB = {r16['peak_kb'] / r32['peak_kb']:.3f}. One caption "
        f"per image ({n_cap} images, PersonalityCaptions' layout): {mib(p16['data_kb'])} vs {mib(p32['data_kb'])} "
        f"MiB = {p16['data_kb'] / p32['data_kb']:.3f}.",
        peak_rss_ratio=round(r16["peak_kb"] / r32["peak_kb"], 4),
        one_caption_per_image_ratio=round(p16["data_kb"] / p32["data_kb"], 4),
        anon_mib={"fp16": mib(r16["anon_kb"]), "fp32": mib(r32["anon_kb"])})


# ---------------------------------------------------------------------------- the CC3M-size store
def write_cc3m_like(tmp: Path, n: int, seed: int = 0) -> tuple[Path, Path, dict]:
    """(columnar file, first-format file, seconds) for n images with one caption each (CC3M's layout:
    img2dataset keys as image ids), fp16 512-d features. Written in parts, never as caption dicts for the
    columnar file."""
    from stylecap.features import FeatureStore, save_features, utf8_column
    t = {}
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    emb = torch.empty(n, 512, dtype=torch.float16)
    for i in range(0, n, 262144):  # (chunk, 512) fp32 temporaries only
        emb[i:i + 262144] = torch.randn(min(262144, n - i), 512, generator=g)
    captions = coco_like_captions(n, seed=seed)
    ids = [f"{i:09d}" for i in range(n)]
    t["generate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    id_bytes, id_off = utf8_column(ids)
    cap_bytes, cap_off = utf8_column(captions)
    store = FeatureStore(emb, id_bytes, id_off, cap_bytes, cap_off[:-1], cap_off[1:], torch.arange(n),
                         torch.full((n,), -1, dtype=torch.int32), [], {"synthetic": "cc3m-size"})
    columnar = tmp / "cc3m_like.pt"
    save_features(columnar, store)
    t["write_columnar_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    first = tmp / "cc3m_like_dicts.pt"  # StyleCap's first format: the same data as a list of dicts
    torch.save({"clip_embedding": emb, "captions": [{"image_id": i, "caption": c, "clip_embedding": r}
                                                    for r, (i, c) in enumerate(zip(ids, captions))], "meta": {}}, first)
    t["write_dicts_s"] = time.perf_counter() - t0
    return columnar, first, t


def bench_store(env: Env) -> list[tuple[str, dict]]:
    from models.tokenizer import CaptionTokenizer, load_hf_tokenizer
    from stylecap.train.data import encode_data
    from stylecap.features import load_features
    n = env.sizes["store_captions"]
    columnar, first, t = write_cc3m_like(env.tmp, n)
    cache = env.tmp / "token_cache"
    t0 = time.perf_counter()  # what local rank 0 does once per machine and dataset
    encode_data(load_features(columnar), CaptionTokenizer(load_hf_tokenizer(env.gpt2_dir)), max_len=64, cache_dir=cache)
    t["tokenize_s"] = time.perf_counter() - t0
    size_gib = columnar.stat().st_size / 2**30
    one = run_children(1, columnar, env.gpt2_dir, cache)[0]
    four = run_children(4, columnar, env.gpt2_dir, cache)
    old = run_children(1, first, env.gpt2_dir, None, fmt="dict", touch=False)[0]
    first.unlink()
    columnar.unlink()
    total4 = sum(r["data_pss_kb"] for r in four)
    ready = max(r["ready_s"] for r in four + [one])
    ready_rss = max(r["rss_ready_kb"] for r in four + [one])
    feats_mib = n * 512 * 2 / 2**20
    common = (f"Synthetic CC3M-size file: {n} captions of {n} images (ids as img2dataset keys), fp16 512-d "
              f"features ({feats_mib:.0f} MiB), {size_gib:.2f} GiB on disk; written in {t['write_columnar_s']:.1f} s. "
              f"Tokens cached once ({t['tokenize_s']:.0f} s, what local rank 0 does once per machine).")
    return [
        ("store_open_vs_dicts", entry(
            "store_open_vs_dicts", one["open_s"], old["open_s"], "s",
            f"{common} Opening it: load_features (memory-mapped, columns validated) vs torch.load(weights_only=True) "
            f"of StyleCap's first format with the same captions as a list of dicts (the old load_features did that "
            f"and more). Ready to train (open + token cache + dataset): {ready:.2f} s at most over 5 processes "
            f"(target < 10 s). RSS rise when ready, before any feature row is read: {mib(ready_rss)} MiB at most "
            f"(target < 1 GiB beyond the features' pages); the first format: {mib(old['rss_ready_kb'])} MiB "
            f"after torch.load alone.",
            open_s=round(one["open_s"], 3), ready_s=round(ready, 3), ready_rss_mib=mib(ready_rss),
            ready_under_10_s=ready < 10, ready_rss_under_1_gib=ready_rss < 2**20,
            dicts_rss_mib=mib(old["rss_ready_kb"]), seconds=t)),
        ("store_rss_vs_dicts", entry(
            "store_rss_vs_dicts", mib(ready_rss), mib(old["rss_ready_kb"]), "MiB (RSS rise)",
            f"{common} RSS rise of one process when ready to train (columnar: open + token cache + dataset, no "
            f"feature row read yet) vs after torch.load of the first format (features and caption dicts read "
            f"into private memory).")),
        ("store_4proc_vs_one", entry(
            "store_4proc_vs_one", mib(total4), mib(one["data_kb"]), "MiB",
            f"{common} Four processes open it at once and each reads every feature row (an epoch's reads), as 4 DDP "
            f"ranks on one machine. Data memory: private memory rise (RssAnon) + the pages of the feature file and "
            f"token cache they map; the four's total counts a shared page once (summed PSS of those mappings), vs "
            f"one process doing the same alone. Separate copies would make the value 4.",
            per_process_data_mib=[mib(r["data_kb"]) for r in four],
            per_process_private_mib=[mib(r["anon_kb"]) for r in four], one_private_mib=mib(one["anon_kb"]))),
    ]
