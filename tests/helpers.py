"""Test helpers: small synthetic feature files whose captions depend on the feature and the style."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from stylecap.features import save_features

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ["red", "blue", "green", "yellow"]
STYLES = ["Happy", "Gloomy", "Cynical (Doubtful, Skeptical)"]
PHRASE = {"Happy": "yay! a {} circle!", "Gloomy": "a sad {} circle", "Cynical (Doubtful, Skeptical)": "sure, a {} circle"}


def synthetic_features(path: Path, n_images: int = 36, styled: bool = True, seed: int = 0,
                       dtype: torch.dtype = torch.float32) -> Path:
    """Feature i carries its colour in dims 0..3; the caption names the colour in the style's words."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n_images, 512, generator=g)
    caps = []
    for i in range(n_images):
        c = i % len(COLOURS)
        emb[i, c] += 6.0
        style = STYLES[(i // len(COLOURS)) % len(STYLES)] if styled else None
        text = PHRASE[style].format(COLOURS[c]) if styled else f"a {COLOURS[c]} circle"
        rec = {"image_id": f"img{i:03d}", "caption": text, "clip_embedding": i}
        if styled:
            rec["style"] = style
        caps.append(rec)
    save_features(path, {"clip_embedding": emb.to(dtype), "captions": caps, "meta": {"synthetic": True}})
    return path


def kill_9_when(argv: list[str], ready: Callable[[], bool], err: Path) -> int:
    """Run ``python argv`` in the repo root and SIGKILL it (as kill -9 from a shell) once ``ready()``
    (polled every 2 ms) or it ended; -> its exit code (-SIGKILL when killed). Its stderr goes to ``err``."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    try:
        deadline = time.monotonic() + 120
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        rc = proc.wait(timeout=60)
    return rc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
