"""StyleCap vs the reference ClipCap algorithms (bench/reference.py): speed and memory ratios on this machine.

    python -m bench.bench [--quick] [--out bench/results.json] [--only KEY,...]

Every figure is a ratio against a baseline measured in the same run, in the same process (memory: in child
processes), on the same inputs and weights. Default mode uses full-size shapes with random weights:
CLIP ViT-B/32 (``clip.model.CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)``) and GPT-2 small
(``GPT2Config()``: 12 layers, 768 wide, 50257 tokens) with GPT-2's real tokenizer. ``--quick`` uses the small
models of stylecap/demo/small_models.py (finishes in under two minutes; its ratios are NOT the published ones:
tiny models are dominated by per-call overheads). Results go to bench/results.json (written atomically):
one entry per key, ``{"value", "target", "met", "ours", "baseline", "unit", "note", ...}``, plus
"machine", "mode" and "date".

Timing: torch.set_num_threads(2); one warm-up before each timed section; medians of repeats where cheap.
The machine is shared and noisy: ratios of interleaved measurements are what to read, not absolute rates.

Modules: bench/common.py (sizes, targets, ``Env``, entries, the table), bench/synthetic.py (captions, images,
stop-training), and one per stage: bench/cpu_extract.py, bench/memory.py, bench/cpu_decode.py,
bench/cpu_train.py; ``--device cuda`` or ``--gpu-suite``: bench/gpu.py.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import memory  # noqa: E402
from bench.common import (GPU_KEYS, TARGETS, THREADS, Env, error_row, figure_row, log, machine_info,  # noqa: E402
                          matmul_peak_gflops, print_table, quiet_libraries, read_results, rss_mib)
from bench.cpu_decode import bench_beam, bench_greedy  # noqa: E402
from bench.cpu_extract import bench_extract  # noqa: E402
from bench.cpu_train import bench_train  # noqa: E402
from bench.sharded import bench_sharded  # noqa: E402
from stylecap.utils import atomic_write_json  # noqa: E402


def print_results(results: dict) -> None:
    """The CPU figures of results.json as a table (the GPU suite's "cuda" entry is printed by bench/gpu.py)."""
    rows = []
    for k, v in results.items():
        if isinstance(v, dict) and "value" in v:
            rows.append(figure_row(k, v, value_spec=".3f"))
        elif isinstance(v, dict) and "error" in v:
            rows.append(error_row(k, v["error"]))
    print_table(("key", "ours", "baseline", "unit", "value", "target", "met"), rows)


def stages_for(env: Env, results: dict) -> list:
    """(name, keys it produces, function) in run order."""
    def train_stage():
        peak = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}
        results["matmul_peak_gflops"] = {k: round(v, 1) for k, v in peak.items()}
        return bench_train(env, peak)
    def extract_stage():
        try:
            return bench_extract(env)
        finally:
            env._clip = None  # CLIP is not needed after this stage
            gc.collect()

    # Extraction first, while this process is small: DataLoader workers are forked from it, and forking a
    # process that already holds GPT-2 models (GBs) costs time no real process_*.py run pays.
    return [
        ("extract", ["extract_vs_encoder", "extract_vs_reference", "extract_bf16_vs_fp32"], extract_stage),
        ("memory", ["features_fp16_memory"], lambda: [("features_fp16_memory", memory.bench_fp16_memory(env))]),
        ("store", ["store_open_vs_dicts", "store_rss_vs_dicts", "store_4proc_vs_one"],
         lambda: memory.bench_store(env)),
        ("greedy", ["greedy_vs_reference"], lambda: [("greedy_vs_reference", bench_greedy(env))]),
        ("beam", ["beam_vs_reference"], lambda: [("beam_vs_reference", bench_beam(env))]),
        ("train", ["train_vs_reference", "train_model_flops_share", "train_bf16_vs_fp32"], train_stage),
        ("sharded", ["sharded_open_vs_one_file", "sharded_memory_vs_one_file"], lambda: bench_sharded(env)),
    ]


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small models (< 2 minutes); ratios not the published ones")
    p.add_argument("--out", default=str(ROOT / "bench" / "results.json"), help="results file (default: %(default)s)")
    p.add_argument("--only", default=None, help=f"comma-separated keys to run: {', '.join(TARGETS)}")
    p.add_argument("--device", default="cpu",
                   help="cpu (default): the CPU benchmarks above; cuda, cuda:1 ...: the GPU suite (bench/gpu.py) with "
                        "full-size models, stored under the file's \"cuda\" key")
    p.add_argument("--gpu-suite", "--gpu_suite", dest="gpu_suite", action="store_true",
                   help="run the GPU suite on --device even when it is the CPU (with --quick: a seconds-long test "
                        "of its logic; memory figures are null without CUDA)")
    return p, p.parse_args(argv)


def start_results(out: Path, mode: str, only: bool) -> dict:
    """What results.json starts from: with --only, the other entries of a run in the same mode; always the GPU
    suite's figures; then this run's machine, mode and date."""
    results: dict = {}
    old = read_results(out)
    if only and old.get("mode") == mode:  # --only updates the entries it ran, keeps the others of the same mode
        results = old
    results.update({k: old[k] for k in GPU_KEYS if k in old})  # the GPU suite's figures survive a CPU run
    results.update({"machine": machine_info(), "mode": mode,
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    return results


def run_stages(env: Env, results: dict, want: set[str], out: Path) -> None:
    """Each stage that produces a wanted key, its figures (or its error) into results, written after each."""
    for name, stage_keys, fn in stages_for(env, results):
        if not want & set(stage_keys):
            continue
        t = time.perf_counter()
        log(f"{name} ... (RSS {rss_mib():.0f} MiB)")
        try:
            for k, v in fn():
                if k in want:
                    results[k] = v
        except Exception as e:  # one broken stage must not lose the others' results
            traceback.print_exc()
            for k in want & set(stage_keys):
                results[k] = {"error": f"{type(e).__name__}: {e}", "stage": name}
        results.setdefault("stage_seconds", {})[name] = round(time.perf_counter() - t, 1)
        log(f"{name} done in {time.perf_counter() - t:.0f}s")
        atomic_write_json(out, results)  # after every stage: a partial run still leaves its figures


def main(argv: list[str] | None = None) -> int:
    p, args = parse_args(argv)
    if args.gpu_suite or args.device != "cpu":
        from bench import gpu  # the GPU suite: bench/gpu.py
        return gpu.main(args)
    torch.set_num_threads(THREADS)
    keys = list(TARGETS) if not args.only else [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in TARGETS]
    if unknown:
        p.error(f"unknown key(s) {unknown}; choose from {', '.join(TARGETS)}")
    mode = "quick" if args.quick else "full"
    out = Path(args.out)
    results = start_results(out, mode, bool(args.only))
    t_start = time.perf_counter()
    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="stylecap_bench_") as tmp:
        run_stages(Env(args.quick, Path(tmp)), results, set(keys), out)
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    # our own threads add about THREADS to the load while we run
    if results["machine"]["load_average_at_start"][0] > 0.75 * THREADS or os.getloadavg()[0] > 1.5 * THREADS:
        results["warning"] = ("other processes were using the CPU during this run (see load averages): the "
                              "figures are noisy; rerun on an idle machine for publishable ratios")
    atomic_write_json(out, results)
    print_results(results)
    print(f"wrote {out} ({mode} mode, {results['total_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
