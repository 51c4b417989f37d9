"""Shared pieces of the GPU suite (bench/gpu.py): sizes, targets, the bf16 peak table, timing and figure helpers."""
from __future__ import annotations

import datetime
import gc
import os
import platform
import statistics
import time

import torch

COCO_CAPTIONS = 566_747          # COCO Karpathy train + restval captions, ClipCap's epoch
PERSONALITY_CAPTIONS = 186_858   # PersonalityCaptions train records (paper)
CLIPCAP_COCO_EPOCH_MIN = 42.0    # ClipCap: 7 h for 10 epochs of MLP + GPT-2 tuning on a GTX 1080 (paper)

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's datasheets / architecture whitepapers,
# matched in order against torch.cuda.get_device_name(). The suite also measures a bf16 matmul in-run and
# reports MFU against both; a GPU not listed here gets the measured figure only.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0, "H100 PCIe datasheet (1,513 with sparsity)"),
    ("H100 NVL", 835.0, "H100 NVL datasheet (1,671 with sparsity)"),
    ("H100", 989.4, "H100 SXM5 datasheet (1,979 with sparsity)"),
    ("H200 NVL", 835.0, "H200 NVL datasheet (1,671 with sparsity)"),
    ("H200", 989.4, "H200 SXM datasheet (1,979 with sparsity)"),
    ("A100", 312.0, "A100 datasheet (624 with sparsity)"),
    ("L40S", 362.1, "L40S datasheet (733 with sparsity)"),
    ("L4", 121.0, "L4 datasheet (242 with sparsity)"),
    ("RTX 4090", 165.2, "Ada whitepaper, fp32 accumulate (330.3 with sparsity)"),
    ("RTX 3090", 71.0, "GA102 whitepaper, fp32 accumulate (142 with sparsity)"),
    ("A10", 125.0, "A10 datasheet (250 with sparsity)"),
]

# per mode: steps timed (after warm-up), batch sizes, images, decode sizes
GPU_SIZES = {
    "quick": dict(train_bs=2, mem_bs=1, accum=2, mem_steps=1, warmup=0, steps=1, ref_steps=1, images=8,
                  extract_bs=4, extract_repeats=1, decode_batches=(2, 4), greedy_ref_n=1, beam_ref_n=1,
                  decode_repeats=1,                  n_caps=100, stop_steps=1, decode_len=4),
    "full": dict(train_bs=40, mem_bs=8, accum=5, mem_steps=2, warmup=5, steps=30, ref_steps=10, images=2048,
                 extract_bs=128, extract_repeats=3, decode_batches=(64, 256), greedy_ref_n=32, beam_ref_n=8,
                 decode_repeats=3,                 n_caps=20_000, stop_steps=200, decode_len=67),
}

TARGETS = {  # key -> (op, target) for the figures issue 9 sets a target on
    "coco_epoch_minutes_bf16": ("<=", 5.0),
    "greedy_b256_captions_per_s": (">=", 1000.0),
}


# ============================================================================== helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds of fn(), with the GPU's queued work finished before and after."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def peak_table(name: str) -> tuple[float | None, str | None]:
    for key, tflops, source in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return tflops, source
    return None, None


def measured_matmul_tflops(device: torch.device, dtype=torch.bfloat16, n: int = 8192, reps: int = 10) -> float:
    """Median TFLOP/s of an n x n matmul on the device (smaller on the CPU)."""
    n = n if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    return statistics.median(2 * n ** 3 / timed(lambda: a @ b, device) / 1e12 for _ in range(reps))


def fig(ours: float | None, baseline: float | None, unit: str, note: str, key: str | None = None,
        value: float | None = None, **extra) -> dict:
    """One figure: the absolute ``ours``, its ``baseline`` and their ratio ``value`` (or a given value)."""
    if value is None and ours is not None and baseline:
        value = ours / baseline
    op, target = TARGETS.get(key, (None, None))
    judged = ours if key in TARGETS else None
    met = None if op is None or judged is None else (judged >= target if op == ">=" else judged <= target)
    rnd = lambda x: None if x is None else round(x, 4)
    return {"value": rnd(value), "ours": rnd(ours), "baseline": rnd(baseline), "unit": unit,
            "target": None if op is None else f"{op} {target} (ours)", "met": met, "note": note, **extra}


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), gpu_memory_gib=round(p.total_memory / 2 ** 30, 1),
                    capability=f"{p.major}.{p.minor}", cudnn=torch.backends.cudnn.version())
    return info
