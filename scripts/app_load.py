r"""Load test of the web demo on 127.0.0.1: a few concurrent clients for a bounded time, through its HTTP API.

    .venv/bin/python scripts/app_load.py --model_path output/demo_personality/checkpoints/best.pt \
        --clip_model_path pre_model/small_clip_aligned.pt --images data/demo/personality/yfcc_images \
        --clients 4 --seconds 60 --out load.json
    .venv/bin/python scripts/app_load.py --url http://127.0.0.1:7860/ --images DIR ...   # a running app

Each client (its own gradio_client) sends, in turn, well-formed requests (1 image x 1 style greedy;
2 images x 2 styles beam 3; a mix of one good image, an oversized PNG and a text file) and bad ones (an
oversized PNG alone, a text file alone). The oversized PNG is a real, fully decodable image of
--oversized_side x --oversized_side pixels (13000: 169 MP in ~0.5 MB, the case that used to cost 15 s
and 1.3 GB to decode). It records p50/p95/max latency per kind of request, and checks that every request
was answered (well-formed ones with captions, bad ones with a message naming the problem), that none was
turned away by a full queue, and that the server is still up and captioning afterwards. Writes the figures
as JSON (--out) and prints them as a Markdown table; exits 1 when a check fails.
"""
from __future__ import annotations

import argparse
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from stylecap import DEFAULT_CLIP  # noqa: E402  (dependency-free package root)

# kind -> (well-formed, text the status must contain)
KINDS = {"good": (True, "for 1 image"), "good_beam": (True, "for 2 images"), "mixed": (True, "ignored: notes.txt"),
         "oversized": (False, "this demo's limit is"), "non_image": (False, "ignored: notes.txt (not an image)")}


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--url", help="a running app to load (default: start app.py with --model_path on a free port)")
    a("--model_path", help="checkpoint the started app serves")
    a("--clip_model_path", default=DEFAULT_CLIP, help="CLIP model of the started app")
    a("--images", required=True, help="folder of .jpg images to send (the first two are used)")
    a("--clients", type=int, default=4, help="concurrent clients")
    a("--seconds", type=float, default=30.0, help="how long the clients keep sending")
    a("--oversized_side", type=int, default=13000, help="side of the oversized PNG, in pixels")
    a("--timeout", type=float, default=120.0, help="seconds a request may take before it counts as unanswered")
    a("--pid", type=int, help="with --url: the app's process id, to report its peak memory (Linux)")
    a("--out", help="write the figures here (JSON)")
    return p


def blank_png(path: Path, width: int, height: int | None = None) -> Path:
    """A valid black width x height (default square) RGB PNG, written row by row (no full-size buffer):
    tiny on disk, huge decoded."""
    height = width if height is None else height
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z, row = zlib.compressobj(9), b"\0" * (1 + 3 * width)  # filter byte + RGB
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def start_app(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path(tempfile.mkdtemp()) / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--model_path", args.model_path, "--clip_model_path",
                                 args.clip_model_path, "--port", str(port), "--device", "cpu"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    while "running at" not in log.read_text():
        if proc.poll() is not None:
            raise SystemExit(f"app.py exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.2)
    return proc, f"http://127.0.0.1:{port}/"


def peak_rss_mb(pid: int | None) -> float | None:
    """The process's peak resident memory so far (VmHWM in /proc; None where there is no /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def page_styles(client) -> list[str]:
    """The model's styles, as the page's style box lists them (empty for a plain model)."""
    for comp in client.config["components"]:
        if comp.get("props", {}).get("elem_id") == "sc-styles":
            return [c[0] if isinstance(c, (list, tuple)) else c for c in comp["props"].get("choices", [])]
    return []


def requests_for(images: list[Path], big: Path, notes: Path, styles: list[str]) -> dict[str, tuple]:
    """kind -> (files, styles, all_styles, decode, beam size) of the page's caption call."""
    one, two = styles[:1], styles[:2]
    return {"good": ([images[0]], one, False, "greedy", 3), "good_beam": (images[:2], two, False, "beam", 3),
            "mixed": ([big, notes, images[0]], one, False, "greedy", 3),
            "oversized": ([big], one, False, "greedy", 3), "non_image": ([notes], one, False, "greedy", 3)}


def client_loop(url: str, plan: dict, deadline: float, offset: int, timeout: float, log: list,
                at_least: int = 1) -> None:
    """Send the kinds of ``plan`` in turn (starting at ``offset``) until ``deadline``, and at least
    ``at_least`` requests; append
    (kind, seconds, outcome) to ``log``: ok, wrong (answered, but not as expected), queue_full or failed."""
    from gradio_client import Client, handle_file
    client = Client(url, verbose=False, download_files=tempfile.mkdtemp())
    kinds, k = list(plan), offset
    while k - offset < at_least or time.perf_counter() < deadline:
        kind = kinds[k % len(kinds)]
        k += 1
        files, styles, all_styles, decode, beam = plan[kind]
        t0 = time.perf_counter()
        try:
            job = client.submit([handle_file(str(f)) for f in files], styles, all_styles, decode, beam, 1.0, 0.9,
                                1, 0, api_name="/caption")
            status, _, jsonl = job.result(timeout=timeout)
            well_formed, expect = KINDS[kind]
            good = expect in status and (bool(jsonl) == well_formed) and ("Error" in status) != well_formed
            outcome = "ok" if good else "wrong"
        except Exception as e:  # the client raises on a full queue, a timeout or a dropped connection
            outcome = "queue_full" if "queue" in str(e).lower() and "full" in str(e).lower() else "failed"
            status = f"{type(e).__name__}: {e}"
        log.append((kind, time.perf_counter() - t0, outcome, status[:300]))


def summarize(log: list, clients: int, seconds: float) -> dict:
    def stats(xs: list[float]) -> dict:
        return {"n": len(xs), "p50_s": round(float(np.percentile(xs, 50)), 3) if xs else None,
                "p95_s": round(float(np.percentile(xs, 95)), 3) if xs else None,
                "max_s": round(max(xs), 3) if xs else None}
    by_kind = {kind: stats([s for k, s, o, _ in log if k == kind and o in ("ok", "wrong")]) for kind in KINDS}
    outcomes = {o: sum(1 for *_, x, _ in log if x == o) for o in ("ok", "wrong", "queue_full", "failed")}
    well = [s for k, s, o, _ in log if KINDS[k][0] and o in ("ok", "wrong")]
    problems = [f"{k}: {o}: {st}" for k, _, o, st in log if o != "ok"][:10]
    turned_away = [s for _, s, o, _ in log if o == "queue_full"]  # how fast a full queue says no
    return {"clients": clients, "seconds": seconds, "requests": len(log), "outcomes": outcomes,
            "well_formed": stats(well), "by_kind": by_kind, "queue_full": stats(turned_away), "problems": problems}


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if not args.url and not args.model_path:
        raise SystemExit("give --url (a running app) or --model_path (to start one)")
    work = Path(tempfile.mkdtemp(prefix="app-load-"))
    images = sorted(Path(args.images).glob("*.jpg"))[:2]
    if len(images) < 2:
        raise SystemExit(f"--images {args.images}: needs two .jpg images")
    big = blank_png(work / "oversized.png", args.oversized_side)
    notes = work / "notes.txt"
    notes.write_text("not an image")
    proc, url = start_app(args) if not args.url else (None, args.url)
    try:
        from gradio_client import Client
        plan = requests_for(images, big, notes, page_styles(Client(url, verbose=False)))
        log: list = []
        deadline = time.perf_counter() + args.seconds
        share = -(-len(plan) // args.clients)  # each kind is sent at least once, however short the run
        threads = [threading.Thread(target=client_loop, args=(url, plan, deadline, i * share, args.timeout, log,
                                                               share)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after: list = []  # the server is up and captioning after the load
        client_loop(url, {"good": plan["good"]}, 0.0, 0, args.timeout, after)
        figures = summarize(log, args.clients, args.seconds)
        figures["oversized_side"] = args.oversized_side
        figures["oversized_png_bytes"] = big.stat().st_size
        figures["server_up_after"] = bool(after) and after[0][2] == "ok" and (proc is None or proc.poll() is None)
        figures["server_peak_rss_mb"] = peak_rss_mb(proc.pid if proc is not None else args.pid)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    figures["passed"] = (figures["outcomes"]["ok"] == figures["requests"] > 0 and figures["server_up_after"])
    if args.out:
        from stylecap.utils import atomic_write_json
        atomic_write_json(args.out, figures)
    print_table(figures)
    return 0 if figures["passed"] else 1


def print_table(f: dict) -> None:
    print(f"{f['clients']} clients for {f['seconds']:g} s: {f['requests']} requests, outcomes {f['outcomes']}, "
          f"server up after: {f['server_up_after']}, server peak memory: {f['server_peak_rss_mb']} MB")
    print("| request | n | p50 | p95 | max |\n|---|---|---|---|---|")
    for kind, s in [("all well-formed", f["well_formed"])] + list(f["by_kind"].items()) + [
            ("turned away (queue full)", f["queue_full"])]:
        if s["n"]:
            print(f"| {kind} | {s['n']} | {s['p50_s']:.2f} s | {s['p95_s']:.2f} s | {s['max_s']:.2f} s |")
    for p in f["problems"]:
        print("problem:", p)


if __name__ == "__main__":
    sys.exit(main())
