"""What the CPU benchmarks (bench/bench.py) and the GPU suite (bench/gpu.py) share: sizes and targets, the
run's models (``Env``), logging, figure entries, machine facts, training FLOPs and the results table.
Imports no other benchmark module but bench/synthetic.py, so that the stage modules can all import it."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from loguru import logger

from bench.synthetic import ends_like, stop_training_data, train_to_stop
from stylecap.cpu import bf16_support
from stylecap.demo.small_models import SMALL_CLIP, make_full_gpt2, make_gpt2

THREADS = 2
FULL_CLIP = (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)  # ViT-B/32

# key -> target (comparison, value)
TARGETS = {
    "extract_vs_encoder": (">=", 0.85),
    "extract_vs_reference": (">=", 8.0),
    "train_vs_reference": (">=", 1.5),
    "greedy_vs_reference": (">=", 8.0),
    "beam_vs_reference": (">=", 5.0),
    "features_fp16_memory": ("<=", 0.55),
    "store_4proc_vs_one": ("<=", 1.5),
    "store_open_vs_dicts": (None, None),
    "store_rss_vs_dicts": (None, None),
    "train_model_flops_share": (None, None),
    "train_bf16_vs_fp32": (None, None),
    "extract_bf16_vs_fp32": (None, None),
    "sharded_open_vs_one_file": (None, None),
    "sharded_memory_vs_one_file": (None, None),
}

# Sizes per mode. Full mode is sized to finish well under 15 minutes on 2 cores.
# beam_ref_n = beam_n (issue 12): the reference beam decodes the same features as ours. With the first 4 of 16
# only, it timed captions shorter than the batch's (in one run: 9.2 vs 11.6 tokens on average, longest 13 vs 20)
# while ours paid for all 16; its uncached cost grows with the square of the length (sum over steps t of
# 5 * (K + t) positions), so that baseline was about 1.3-1.4x too fast per caption (0.81 s per caption on the
# first 4, 1.08 s on all 16, Intel Xeon, 2026-11-25).
SIZES = {
    "quick": dict(decode_max_len=67, greedy_n=16, greedy_ref_n=8, beam_n=8, beam_ref_n=8, decode_rounds=2,
                  stop_train_captions=8, stop_train_steps=40, stop_train_lr=3e-3, stop_train_top=None,
                  stop_train_min=15, stop_train_check=5,
                  train_bs=8, train_rounds=3, extract_images=64, extract_bs=32, extract_ref_images=4,
                  extract_repeats=2, mem_images=10_000, mem_captions=50_000, store_captions=200_000),
    "full": dict(decode_max_len=67, greedy_n=16, greedy_ref_n=16, beam_n=16, beam_ref_n=16, decode_rounds=4,
                 stop_train_captions=16, stop_train_steps=100, stop_train_lr=2e-3, stop_train_top=2,
                 stop_train_min=30, stop_train_check=10,
                 train_bs=16, train_rounds=4, extract_images=128, extract_bs=32, extract_ref_images=6,
                 extract_repeats=3, mem_images=40_000, mem_captions=200_000, store_captions=3_300_000),
}

GPU_KEYS = ("cuda", "gpu_suite_on_cpu")  # results.json keys the GPU suite writes


# ============================================================================== helpers
def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median(xs) -> float:
    return statistics.median(xs)


def rounded(xs) -> list:
    """Seconds to 3 decimals, for the runs_s lists of results.json."""
    return [round(x, 3) for x in xs]


def rss_mib() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def entry(key: str, ours: float, baseline: float, unit: str, note: str, value: float | None = None, **extra) -> dict:
    op, target = TARGETS[key]
    value = ours / baseline if value is None else value
    met = None if op is None else (value >= target if op == ">=" else value <= target)
    return {"value": round(value, 4), "target": None if op is None else f"{op} {target}", "met": met,
            "ours": round(ours, 4), "baseline": round(baseline, 4), "unit": unit, "note": note, **extra}


def machine_info() -> dict:
    """The machine of this run. ``cpu_flags``: the CPU flags that decide whether bf16 autocast is faster or about
    3x slower than fp32 here (amx_bf16 / amx_tile, avx512_bf16, avx512_vnni and bf16_native; stylecap.cpu)."""
    support = bf16_support()
    cpu = support.model if support.model != "unknown" else (platform.processor() or "unknown")
    return {"cpu": cpu, "cpu_flags": support.record(), "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_start": list(os.getloadavg())}


def matmul_peak_gflops(dtype=torch.float32, n: int = 2048, reps: int = 5) -> float:
    """Median GFLOP/s of an n x n matmul (the machine's practical peak for this dtype)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    rates = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        rates.append(2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return median(rates)


# ============================================================================== models
class Env:
    """Models and data shared by the benchmarks of one run (built lazily)."""

    def __init__(self, quick: bool, tmp: Path):
        self.quick, self.tmp = quick, tmp
        self.sizes = SIZES["quick" if quick else "full"]
        self._gpt2_dir = self._clip = self._stop_model = None
        self.stop_steps = 0

    # ---- GPT-2 folder: small (quick) or GPT-2 small shapes (full), GPT-2's real tokenizer both ways
    @property
    def gpt2_dir(self) -> Path:
        if self._gpt2_dir is None:
            out = self.tmp / ("small_gpt2" if self.quick else "gpt2")
            if self.quick:
                make_gpt2(out, seed=0)
            else:
                make_full_gpt2(out, seed=0)
            self._gpt2_dir = out
        return self._gpt2_dir

    def clip(self):
        """(model fp32 eval, preprocess) - random weights."""
        if self._clip is None:
            import clip
            torch.manual_seed(0)
            model = clip.model.CLIP(**SMALL_CLIP) if self.quick else clip.model.CLIP(*FULL_CLIP)
            model = model.float().eval()
            self._clip = (model, clip.clip._transform(model.visual.input_resolution))
        return self._clip

    def model(self, seed: int = 0, **cfg):
        from models import ModelConfig, build_model
        torch.manual_seed(seed)
        return build_model(ModelConfig(gpt2_path=str(self.gpt2_dir), **cfg))

    def stop_model(self):
        """A model briefly trained to end its captions (see train_to_stop), and its features."""
        if self._stop_model is None:
            s = self.sizes
            model = self.model(seed=0, finetune_gpt2=True)
            feats, caps = stop_training_data(s["stop_train_captions"], seed=0)
            t = time.perf_counter()
            loss, steps = train_to_stop(model, feats, caps, steps=s["stop_train_steps"], lr=s["stop_train_lr"],
                                        top_blocks=s["stop_train_top"], until=lambda: ends_like(model, feats, caps),
                                        check_every=s["stop_train_check"], min_steps=s["stop_train_min"])
            self.stop_steps = steps
            log(f"stop-training: {steps} steps, final loss {loss:.3f}, {time.perf_counter() - t:.0f}s")
            self._stop_model = (model.eval(), feats, caps)
        return self._stop_model


# ============================================================================== FLOPs (CPU and GPU training)
def block_params(gpt) -> int:
    """Weights used in matmuls at every position: the Linear/Conv1D weights of GPT-2's blocks."""
    n = 0
    for block in gpt.transformer.h:
        for mod in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            n += mod.weight.numel()
    return n


def train_step_flops(model, batch_size: int, seq_len: int, n_labelled: int) -> float:
    """Model FLOPs of one training step (forward + backward) on a (B, K + T) batch.

    6 * N_blocks * B * S             GPT-2 block matmuls at every position, S = K + T (2 forward, 4 backward)
    + 6 * V * d * N_labelled         the LM head: StyleCapModel.forward runs it only at positions that predict
                                     a labelled token (caption + END)
    + 12 * L * d * B * S^2           attention scores and weighted sum (4 L d S^2 forward, x3)
    + 6 * N_mapper * B               the mapper runs once per sample
    (a frozen GPT-2 would have 4 instead of 6: no weight gradients; this benchmark fine-tunes it).
    """
    cfg = model.gpt.config
    s = seq_len + model.cfg.prefix_len
    mult = 6 if model.cfg.finetune_gpt2 else 4
    n_map = sum(p.numel() for p in model.clip_project.parameters() if p.dim() > 1)
    return (mult * block_params(model.gpt) * batch_size * s + mult * model.gpt.lm_head.weight.numel() * n_labelled
            + mult / 6 * 12 * cfg.n_layer * cfg.n_embd * batch_size * s * s + 6 * n_map * batch_size)


# ============================================================================== results file and table
def read_results(out: Path) -> dict:
    try:
        return json.loads(out.read_text()) if out.is_file() else {}
    except (OSError, ValueError):
        return {}


def quiet_libraries() -> None:
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


MET = {True: "yes", False: "NO", None: "-"}


def figure_row(name: str, fig: dict, value_spec: str = ".4g") -> tuple[str, ...]:
    """One table row of a figure: ours, baseline, unit, value (ratio), target, met ("-" for a missing number)."""
    fmt = lambda x, spec=".4g": "-" if x is None else format(x, spec)
    return (name, fmt(fig["ours"]), fmt(fig["baseline"]), fig["unit"], fmt(fig["value"], value_spec),
            fig["target"] or "-", MET[fig["met"]])


def error_row(name: str, message: str) -> tuple[str, ...]:
    return (name, "ERROR", message[:60], "", "", "", "")


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """The rows under the header in aligned columns, a dashed line under the header."""
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for j, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
