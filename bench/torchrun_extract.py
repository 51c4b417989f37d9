"""Extraction at 1 process vs 2 torchrun ranks on this machine (issue 20 section 1), as a ratio.

Writes --images Flickr-sized JPEGs (bench.synthetic) with a token file and a ViT-B/32-shaped CLIP with random
weights (same compute as the real one), then times, end to end (start-up, CLIP load, decoding, encoding,
writing, and for 2 ranks the combine):
  1 process:  OMP_NUM_THREADS=<cores> python process_flickr.py ... --device cpu
  2 ranks:    OMP_NUM_THREADS=<cores/2> python -m torch.distributed.run --nproc_per_node 2 process_flickr.py ...
Both use every core of the machine, so the ratio says what splitting the work across processes gains or
costs at the same hardware; on a GPU machine the ranks would add devices instead. The two files are checked
to hold the same images and captions.

  python -m bench.torchrun_extract [--images 128] [--batch_size 16] [--num_workers 0] [--small]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import FULL_CLIP, SMALL_CLIP
from bench.synthetic import make_images

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return dt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--num_workers", type=int, default=0, help="decode threads per process (default: 0)")
    p.add_argument("--small", action="store_true", help="the tests' small CLIP instead of ViT-B/32's shape")
    args = p.parse_args(argv)
    import clip  # openai-clip: the model class only, random weights
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp / "img", args.images)
        token = tmp / "img" / "caps.token"
        token.write_text("".join(f"{q.name}#0\ta photo number {i} .\n" for i, q in enumerate(paths)))
        torch.manual_seed(0)
        model = clip.model.CLIP(**SMALL_CLIP) if args.small else clip.model.CLIP(*FULL_CLIP)
        torch.save(model.float().state_dict(), tmp / "clip.pt")
        common = ["--caption_path", str(token), "--image_path", str(tmp / "img"), "--clip_model_path",
                  str(tmp / "clip.pt"), "--val_ratio", "0", "--test_ratio", "0", "--batch_size",
                  str(args.batch_size), "--num_workers", str(args.num_workers), "--device", "cpu"]
        one = _timed([sys.executable, "process_flickr.py", *common, "--output_path", str(tmp / "one.pkl")], cores)
        two = _timed([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                      str(_port()), "process_flickr.py", *common, "--output_path", str(tmp / "two.pkl")],
                     max(1, cores // 2))
        a, b = (torch.load(tmp / f, weights_only=True) for f in ("one.pkl", "two.pkl"))
        assert a["clip_embedding"].shape == b["clip_embedding"].shape
        ranks = b["meta"]["extraction"]["rank_images"]
    result = {"images": args.images, "batch_size": args.batch_size, "clip": "small" if args.small else "ViT-B/32",
              "cores": cores, "num_workers": args.num_workers, "one_process_s": round(one, 1), "two_ranks_s": round(two, 1),
              "rank_images": ranks, "speedup_2_vs_1": round(one / two, 2)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
