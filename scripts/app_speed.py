r"""The web demo's speed, measured through its HTTP API (gradio_client) as a page would call it.

    .venv/bin/python scripts/app_speed.py --model_path output/demo_personality/checkpoints/best.pt \
        --clip_model_path pre_model/small_clip_aligned.pt --images data/demo/personality/yfcc_images

Prints: start-up (process start until it serves), time to the first caption (one image, one style,
greedy, the first request), and captions/s for --n_images images in every style (greedy, then beam 3).
"""
from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from stylecap import DEFAULT_CLIP  # noqa: E402  (dependency-free package root)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", html).strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="checkpoint the app serves")
    p.add_argument("--clip_model_path", default=DEFAULT_CLIP, help="CLIP model of the app")
    p.add_argument("--images", required=True, help="folder of .jpg images to send")
    p.add_argument("--n_images", type=int, default=4, help="images per throughput request")
    p.add_argument("--repeats", type=int, default=3, help="throughput requests per decoding (best kept)")
    args = p.parse_args(argv)
    from gradio_client import Client, handle_file

    images = sorted(Path(args.images).glob("*.jpg"))[:args.n_images]
    import torch
    cfg = torch.load(args.model_path, map_location="cpu", weights_only=True, mmap=True)["config"]
    styles = list(cfg["styles"]) if cfg.get("style_mode", "none") != "none" else []
    n_styles = max(1, len(styles))
    port = free_port()
    log = Path(tempfile.mkdtemp()) / "app.log"
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--model_path", args.model_path, "--clip_model_path",
                                 args.clip_model_path, "--port", str(port), "--device", "cpu"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        while "running at" not in log.read_text():
            if proc.poll() is not None:
                raise SystemExit(log.read_text())
            time.sleep(0.1)
        startup = time.perf_counter() - t0
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)

        def ask(files, all_styles, decode="greedy", styles=None):
            status, _, jsonl = client.predict([handle_file(str(f)) for f in files], styles or [], all_styles, decode,
                                              3, 1.0, 0.9, 1, 0, api_name="/caption")
            return status, [json.loads(ln) for ln in open(jsonl, encoding="utf-8")]

        # the first request: one image in one style (the page's default: the model's first style)
        t1 = time.perf_counter()
        status, first = ask(images[:1], False, styles=styles[:1])
        first_s = time.perf_counter() - t1
        print(f"start-up {startup:.1f} s (process start until it serves); first caption (1 image x 1 style, "
              f"the first request) {first_s:.2f} s later: {startup + first_s:.1f} s from start; server: {plain(status)}")
        for decode in ("greedy", "beam"):
            best = None
            for _ in range(args.repeats):
                t = time.perf_counter()
                status, preds = ask(images, True, decode)
                dt = time.perf_counter() - t
                best = dt if best is None else min(best, dt)
            print(f"{decode}: {len(preds)} captions ({len(images)} images x {n_styles} styles) in {best:.2f} s "
                  f"= {len(preds) / best:.1f} captions/s (best of {args.repeats}, upload and HTTP included)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
