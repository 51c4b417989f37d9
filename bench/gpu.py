"""The GPU suite of the benchmarks: `make bench DEVICE=cuda` (``python -m bench.bench --device cuda``).

Full-size random-weight models (CLIP ViT-B/32; GPT-2 small, GPT-2's real 50257-token vocabulary), every figure
absolute and as a ratio against a baseline measured in the same run on the same GPU:

- training: MLP + GPT-2 tuning at batch 40 in fp32 / bf16 / fp16 vs ClipCap's loop (bench/reference.py, fp32),
  samples/s and MFU (model FLOP/s over the GPU's dense bf16 peak); the frozen-GPT-2 Transformer run too;
- memory: peak ``torch.cuda.max_memory_allocated`` of the "4 GB recipe" (batch 8, fp16, grad_accum 5) with and
  without gradient checkpointing, and of the frozen run, against a 4 GiB card;
- extraction: end to end with DataLoader workers vs the bare encoder and vs JPEG decoding alone (which limits);
- decoding: greedy and beam 5 at batch 64 and 256 vs ClipCap's batch-1 algorithms, captions/s;
- epoch times: a COCO-size (566,747 captions) and a PersonalityCaptions (186,858) epoch from the measured steps/s,
  against ClipCap's ~42 minutes per COCO epoch on a GTX 1080.

``--gpu-suite --device cpu --quick`` runs the same code on the CPU with the small models (memory figures null): a
test of the suite's logic, not a measurement. Timings: warm-up first, ``torch.cuda.synchronize`` around every
timed region, medians of repeats. Training and memory figures: bench/gpu_train.py; sizes, targets, the bf16 peak
table and helpers: bench/gpu_common.py.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from bench import reference
from bench.common import THREADS, Env, error_row, figure_row, log, print_table, quiet_libraries, read_results
from bench.gpu_common import GPU_SIZES, device_info, fig, free, measured_matmul_tflops, peak_table, timed
from bench.gpu_train import bench_memory, bench_training
from bench.synthetic import ends_like, make_images, stop_training_data, train_to_stop
from models.decoding import DecodeConfig, eval_mode, generate_captions
from stylecap.clip_utils import load_image
from stylecap.extract.image_encoder import (ImageDataset, collate, default_workers, extract_features,
                                            split_preprocess)
from stylecap.utils import atomic_write_json


# ============================================================================== extraction
def bench_extraction(env: Env, device: torch.device, sz: dict) -> dict:
    model, preprocess = env.clip()
    model = model.to(device)
    paths = [str(p) for p in make_images(env.tmp / "gpu_images", sz["images"])]
    bs, n = sz["extract_bs"], len(paths)
    workers = sorted({default_workers(), os.cpu_count() or 1}) if not env.quick else [min(2, default_workers())]
    amp = "fp16" if device.type == "cuda" else "none"  # "auto": fp16 on CUDA, none on CPU

    def decode_only(w: int) -> None:
        tf, _ = split_preprocess(preprocess)
        loader = torch.utils.data.DataLoader(ImageDataset(paths, tf), batch_size=bs, num_workers=w, collate_fn=collate,
                                             pin_memory=device.type == "cuda", prefetch_factor=4 if w > 0 else None)
        for _ in loader:
            pass

    pre = torch.stack([preprocess(load_image(p)) for p in paths[:bs]]).to(device)  # (bs, 3, 224, 224) on device

    @torch.inference_mode()
    def encoder() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp == "fp16"):
            for _ in range(0, n, bs):
                model.encode_image(pre)

    e2e = lambda w: extract_features(paths, model, preprocess, batch_size=bs, num_workers=w, device=device,
                                     autocast=amp)
    encoder(), e2e(workers[0]), decode_only(workers[0])  # warm-up (cuDNN autotuning, worker start)
    t_enc = statistics.median(timed(encoder, device) for _ in range(sz["extract_repeats"]))
    out = {}
    for w in workers:
        t_e2e = statistics.median(timed(lambda: e2e(w), device) for _ in range(sz["extract_repeats"]))
        t_dec = statistics.median(timed(lambda: decode_only(w), device) for _ in range(sz["extract_repeats"]))
        ips_e2e, ips_enc, ips_dec = n / t_e2e, n / t_enc, n / t_dec
        slower = min(ips_enc, ips_dec)
        limit = ("JPEG decoding" if ips_dec < ips_enc else "the encoder (GPU)") if ips_e2e >= 0.85 * slower else \
            "StyleCap (end to end < 85% of both decoding alone and the encoder alone)"
        out[f"extract_e2e_vs_encoder_w{w}"] = fig(
            ips_e2e, ips_enc, "images/s",
            f"stylecap.extract.image_encoder.extract_features, {w} DataLoader workers decoding {n} 500x375 JPEGs, batch {bs}, "
            f"autocast {amp}, vs the bare encode_image on preloaded preprocessed tensors on the device; JPEG decoding "
            f"+ preprocessing alone with the same {w} workers: {ips_dec:.1f} images/s. Limited by: {limit}.",
            decode_only_images_per_s=round(ips_dec, 2), e2e_vs_decode_only=round(ips_e2e / ips_dec, 4),
            limited_by=limit, workers=w, default_workers=default_workers())
    env._clip = None
    del model
    free(device)
    return out


# ============================================================================== decoding
def bench_decoding(env: Env, device: torch.device, sz: dict) -> dict:
    model = env.model(seed=0, finetune_gpt2=True).to(device)
    base_feats, caps = stop_training_data(16, seed=0)
    base_feats = base_feats.to(device)
    t = time.perf_counter()
    # brief training so that captions end with END at a realistic length (bench.synthetic.train_to_stop)
    loss, steps = train_to_stop(model, base_feats, caps, steps=sz["stop_steps"], lr=2e-3,
                                precision="bf16" if device.type == "cuda" else "fp32",
                                until=lambda: ends_like(model, base_feats, caps), check_every=10,
                                min_steps=min(15, sz["stop_steps"]))
    log(f"  stop-training on {device}: {steps} steps, loss {loss:.3f}, {time.perf_counter() - t:.0f}s")
    g = torch.Generator().manual_seed(5)
    out = {}
    with eval_mode(model):  # every decode with dropout off (issue 8)
        n_tok = sz["decode_len"]  # 67: ClipCap's limit; quick: 4
        for strategy, n_ref in (("greedy", sz["greedy_ref_n"]), ("beam", sz["beam_ref_n"])):
            dc = DecodeConfig(strategy=strategy, beam_size=5, length_penalty=1.0, max_len=n_tok)
            ref_fn = (partial(reference.reference_greedy, max_tokens=n_tok) if strategy == "greedy"
                      else partial(reference.reference_beam, beam_size=5, max_tokens=n_tok))
            ref_feats = base_feats[:n_ref]
            ref_fn(model, ref_feats[:1])  # warm-up
            t_ref = timed(lambda: ref_fn(model, ref_feats), device)
            ref_cps = n_ref / t_ref
            for b in sz["decode_batches"]:
                # the 16 trained features tiled to batch b, jittered so no two rows are equal (B, 512)
                feats = base_feats.repeat(-(-b // 16), 1)[:b]
                feats = feats + 0.01 * torch.randn(feats.shape, generator=g).to(device)
                generate_captions(model, feats, None, dc)  # warm-up
                res = {}
                secs = statistics.median(timed(lambda: res.update(o=generate_captions(model, feats, None, dc)), device)
                                         for _ in range(sz["decode_repeats"]))
                lengths = [len(o[0]["tokens"]) for o in res["o"]]
                key = f"{strategy}_b{b}_captions_per_s"
                out[key] = fig(b / secs, ref_cps, "captions/s",
                               f"models.decoding.generate_captions {strategy}{' 5' if strategy == 'beam' else ''}, "
                               f"batch {b}, fp32, scores included, stop at END or {n_tok} tokens; baseline: ClipCap's "
                               f"{'generate2' if strategy == 'greedy' else 'generate_beam'} (batch 1, no KV cache) on "
                               f"{n_ref} of the same features on the same device. Mean caption length "
                               f"{sum(lengths) / len(lengths):.1f} tokens.", key=key)
    del model
    free(device)
    return out


# ============================================================================== the suite
def run_suite(device: torch.device, quick: bool, tmp: Path) -> dict:
    """All GPU-suite figures on ``device`` -> a dict for results.json's "cuda" key."""
    sz = GPU_SIZES["quick" if quick else "full"]
    env = Env(quick, tmp)
    info = device_info(device)
    measured = measured_matmul_tflops(device)
    table, source = peak_table(info.get("gpu", ""))
    peak = table or measured
    info.update(bf16_peak_tflops_table=table, bf16_peak_source=source, bf16_matmul_tflops_measured=round(measured, 2),
                mfu_against="table" if table else "measured bf16 matmul (GPU not in the table)")
    res: dict = {"info": info, "mode": "quick" if quick else "full"}
    stages = [("extraction", lambda: bench_extraction(env, device, sz)),
              ("memory", lambda: bench_memory(env, device, sz)),
              ("training", lambda: bench_training(env, device, sz, peak)),
              ("decoding", lambda: bench_decoding(env, device, sz))]
    for name, fn in stages:
        t = time.perf_counter()
        log(f"gpu suite: {name} on {device} ...")
        try:
            res[name] = fn()
        except Exception as e:  # one broken stage must not lose the others' figures
            import traceback
            traceback.print_exc()
            res[name] = {"error": f"{type(e).__name__}: {e}"}
        res.setdefault("stage_seconds", {})[name] = round(time.perf_counter() - t, 1)
    return res


def print_suite(res: dict) -> None:
    rows = []
    for stage in ("extraction", "memory", "training", "decoding"):
        figs = res.get(stage, {})
        flat = {**{k: v for k, v in figs.items() if k != "epoch_times"}, **figs.get("epoch_times", {})}
        for k, v in flat.items():
            if isinstance(v, dict) and "unit" in v:
                rows.append(figure_row(k, v))
            elif k == "error":
                rows.append(error_row(stage, str(v)))
    print_table(("figure", "ours", "baseline", "unit", "ratio", "target", "met"), rows)


def main(args) -> int:
    """The GPU suite (bench/gpu.py): figures under results.json's "cuda" key ("gpu_suite_on_cpu" for a CPU trial)."""
    try:
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cuda", "cpu"):
        print(f"error: --device {args.device}: the benchmarks run on cpu or cuda (cuda:1 ...)", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: CUDA is not available on this machine (torch.cuda.is_available() is "
              f"False); run the GPU suite on a machine with an NVIDIA GPU, or drop DEVICE/--device for the CPU "
              f"benchmarks", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(THREADS)
    quiet_libraries()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stylecap_bench_gpu_") as tmp:
        suite = run_suite(device, args.quick, Path(tmp))
    suite["total_seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    results = read_results(out)
    results["cuda" if device.type == "cuda" else "gpu_suite_on_cpu"] = suite
    atomic_write_json(out, results)
    print_suite(suite)
    print(f"wrote {out} (GPU suite on {device}, {suite['mode']} mode, {suite['total_seconds']:.0f}s)")
    return 0
