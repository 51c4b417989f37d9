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
timed region, medians of repeats.
"""
from __future__ import annotations

import datetime
import gc
import math
import os
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from bench import reference
from bench.bench import (Env, coco_like_captions, eval_mode, log, make_images, stop_training_data, train_step_flops,
                         train_to_stop, ends_like)

COCO_CAPTIONS = 566_747          # COCO Karpathy train + restval captions, ClipCap's epoch
PERSONALITY_CAPTIONS = 186_858   # PersonalityCaptions train records (paper)
CLIPCAP_COCO_EPOCH_MIN = 42.0    # ClipCap: 7 h for 10 epochs of MLP + GPT-2 tuning on a GTX 1080 (paper)
FOUR_GIB = 4 * 2 ** 30

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


# ============================================================================== training
class TrainData:
    """COCO-like captions and random features, tokenized once, on the CPU (the DataLoader moves them)."""

    def __init__(self, env: Env, n_caps: int):
        from stylecap.data import CaptionDataset, encode_data
        caps = coco_like_captions(n_caps, seed=1)
        g = torch.Generator().manual_seed(1)
        self.feats = torch.randn(n_caps, 512, generator=g)  # (N, 512)
        data = {"clip_embedding": self.feats,
                "captions": [{"image_id": str(i), "caption": c, "clip_embedding": i} for i, c in enumerate(caps)]}
        from models.tokenizer import CaptionTokenizer, load_hf_tokenizer
        tok = CaptionTokenizer(load_hf_tokenizer(str(env.gpt2_dir)))  # the models' tokenizer, without a model
        self.pad_id = tok.pad_id
        enc = encode_data(data, tok, max_len=64)
        self.ds = CaptionDataset(self.feats, enc)
        self.tokens = enc.tokens  # every sample's ids (caption + END) as lists
        self.order = torch.randperm(n_caps, generator=g).tolist()
        self.longest = sorted(range(n_caps), key=lambda i: -len(self.tokens[i]))  # worst case for memory


def run_training(env: Env, data: TrainData, device: torch.device, *, precision: str, bs: int, steps: int,
                 warmup: int, accum: int = 1, tuned: bool = True, mapping: str = "mlp", checkpointing: bool = False,
                 idx: list[int] | None = None, measure_memory: bool = False) -> dict:
    """Train a fresh model for warmup + steps optimizer steps with stylecap.engine.train_one_epoch.
    -> {"samples_per_s", "steps_per_s", "flops_per_s", "peak_bytes", "seconds"} over the timed steps."""
    from stylecap.data import collate
    from stylecap.engine import TrainState, train_one_epoch
    free(device)
    base_bytes = 0
    if measure_memory and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the peak then covers weights, optimizer state, activations
        base_bytes = torch.cuda.memory_allocated(device)  # anything still held from before (normally 0)
    model = env.model(seed=0, finetune_gpt2=tuned, mapping_type=mapping, max_len=64)
    if checkpointing:  # transformers 5: the new name of gradient_checkpointing_enable (deprecated alias)
        model.gpt.activation_checkpointing_enable()
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")  # train.py: fused AdamW
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    per_step = bs * accum
    idx = data.order if idx is None else idx
    need = (warmup + steps) * per_step
    idx = (idx * (need // len(idx) + 1))[:need]

    def run(part: list[int]) -> None:
        loader = torch.utils.data.DataLoader(data.ds, batch_size=bs, sampler=part, pin_memory=device.type == "cuda",
                                             collate_fn=partial(collate, pad_id=data.pad_id))
        train_one_epoch(model, loader, opt, sched, TrainState(), device=device, precision=precision, scaler=scaler,
                        grad_accum=accum, max_grad_norm=1.0, show_progress=False, total_batches=len(loader))

    warm, timed_idx = idx[:warmup * per_step], idx[warmup * per_step:]
    if warm:
        run(warm)
    secs = timed(lambda: run(timed_idx), device)
    flops = 0.0
    for lo in range(0, len(timed_idx), bs):
        b = timed_idx[lo:lo + bs]
        lens = [len(data.tokens[i]) for i in b]
        flops += train_step_flops(model, len(b), max(lens), sum(lens))
    peak = torch.cuda.max_memory_allocated(device) - base_bytes if measure_memory and device.type == "cuda" else None
    n_params = sum(p.numel() for p in params)
    del model, opt, sched, scaler
    free(device)
    return {"samples_per_s": len(timed_idx) / secs, "steps_per_s": steps / secs, "flops_per_s": flops / secs,
            "peak_bytes": peak, "seconds": secs, "trainable_parameters": n_params}


def run_reference_training(env: Env, data: TrainData, device: torch.device, bs: int, steps: int) -> dict:
    """ClipCap's loop (fp32, every batch padded to the dataset's fixed length) on the same device and batches."""
    model = env.model(seed=0, finetune_gpt2=True, max_len=64).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ref_tokens = [t[:-1] for t in data.tokens]  # ClipCap's tokens: no END
    fixed = reference.reference_max_seq_len(len(t) for t in ref_tokens)
    reference.reference_train_loop(model, data.feats, ref_tokens, bs, opt, order=data.order[:bs], max_seq_len=fixed)
    idx = data.order[bs:bs * (steps + 1)]
    res = {}
    secs = timed(lambda: res.update(reference.reference_train_loop(model, data.feats, ref_tokens, bs, opt, order=idx,
                                                                   max_seq_len=fixed)), device)
    del model, opt
    free(device)
    return {"samples_per_s": res["samples"] / secs, "steps_per_s": steps / secs, "fixed_len": fixed}


def bench_training(env: Env, device: torch.device, sz: dict, peak_tflops: float) -> dict:
    data = TrainData(env, sz["n_caps"])
    bs, steps, warm = sz["train_bs"], sz["steps"], sz["warmup"]
    precisions = ["fp32", "bf16", "fp16"]
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        precisions.remove("bf16")
    ref = run_reference_training(env, data, device, bs, sz["ref_steps"])
    out, runs = {}, {}
    for prec in precisions:
        r = runs[prec] = run_training(env, data, device, precision=prec, bs=bs, steps=steps, warmup=warm)
        log(f"  train {prec}: {r['samples_per_s']:.1f} samples/s")
        out[f"train_tuned_{prec}"] = fig(
            r["samples_per_s"], ref["samples_per_s"], "samples/s",
            f"MLP + GPT-2 tuning ({r['trainable_parameters'] / 1e6:.1f}M trainable), batch {bs}, {prec} "
            f"(autocast{' + GradScaler' if prec == 'fp16' else ''}), fused AdamW, stylecap.engine.train_one_epoch; "
            f"{steps} steps after {warm} warm-up; baseline: ClipCap's loop in fp32 (every batch padded to "
            f"{ref['fixed_len']} tokens) on the same GPU, {sz['ref_steps']} steps.",
            mfu=round(r["flops_per_s"] / (peak_tflops * 1e12), 4), model_tflops=round(r["flops_per_s"] / 1e12, 3),
            steps_per_s=round(r["steps_per_s"], 3))
    frozen = run_training(env, data, device, precision="bf16" if "bf16" in precisions else "fp32", bs=bs,
                          steps=steps, warmup=warm, tuned=False, mapping="transformer")
    base = runs["bf16" if "bf16" in precisions else "fp32"]
    out["train_frozen_transformer"] = fig(
        frozen["samples_per_s"], base["samples_per_s"], "samples/s",
        f"Transformer mapper with GPT-2 frozen ({frozen['trainable_parameters'] / 1e6:.1f}M trainable), batch {bs}, "
        f"same precision, vs MLP + GPT-2 tuning above (ratio > 1: faster). MFU counts the mapper once per "
        f"sample (6 x its weights): an undercount for the Transformer mapper, which runs over its 20 tokens.",
        mfu=round(frozen["flops_per_s"] / (peak_tflops * 1e12), 4), steps_per_s=round(frozen["steps_per_s"], 3))
    out["epoch_times"] = epoch_times(runs, ref, bs)
    return out


def epoch_times(runs: dict, ref: dict, bs: int) -> dict:
    """Minutes per epoch from the measured steps/s at batch bs (data loading of in-memory features included)."""
    res = {}
    for name, n in (("coco", COCO_CAPTIONS), ("personality", PERSONALITY_CAPTIONS)):
        steps = math.ceil(n / bs)
        for prec, r in runs.items():
            minutes = steps / r["steps_per_s"] / 60
            key = f"{name}_epoch_minutes_{prec}"
            res[key] = fig(minutes, CLIPCAP_COCO_EPOCH_MIN if name == "coco" else None, "minutes",
                           f"{n:,} captions / batch {bs} = {steps:,} steps at the measured {r['steps_per_s']:.2f} "
                           f"steps/s ({prec}, MLP + GPT-2 tuning)"
                           + ("; baseline: ClipCap's ~42 min per COCO epoch on a GTX 1080 (7 h / 10 epochs, paper); "
                              "value = ours / baseline" if name == "coco" else ""),
                           key=key)
        res[f"{name}_epoch_minutes_reference_fp32"] = fig(
            steps / ref["steps_per_s"] / 60, None, "minutes", "ClipCap's loop (fp32) on this GPU, same arithmetic")
    return res


def bench_memory(env: Env, device: torch.device, sz: dict) -> dict:
    """The 4 GB recipe: peak allocated memory of a whole training process (weights, AdamW state, activations)."""
    data = TrainData(env, min(sz["n_caps"], 2000))
    bs, accum = sz["mem_bs"], sz["accum"]
    out = {}
    cases = [("memory_tuned_fp16_b8_accum5", dict(tuned=True)),
             ("memory_tuned_fp16_b8_accum5_checkpointing", dict(tuned=True, checkpointing=True)),
             ("memory_frozen_transformer_fp16_b8_accum5", dict(tuned=False, mapping="transformer"))]
    for key, kw in cases:
        r = run_training(env, data, device, precision="fp16", bs=bs, accum=accum, steps=sz["mem_steps"], warmup=0,
                         idx=data.longest, measure_memory=True, **kw)
        gib = None if r["peak_bytes"] is None else r["peak_bytes"] / 2 ** 30
        out[key] = fig(gib, None if gib is None else 4.0, "GiB",
                       f"peak torch.cuda.max_memory_allocated over model build + {sz['mem_steps']} optimizer steps "
                       f"of batch {bs}, fp16 + GradScaler, grad_accum {accum}, "
                       f"{'GPT-2 tuned' if kw.get('tuned') else 'GPT-2 frozen, Transformer mapper'}"
                       f"{', gradient checkpointing' if kw.get('checkpointing') else ''}; worst case: the longest "
                       f"captions of the data (64 tokens + K=10); value = share of a 4 GiB card (CUDA context and "
                       f"allocator cache not included: add ~0.3-0.5 GiB)."
                       + ("" if gib is not None else " Not measured: no CUDA device."))
    return out


# ============================================================================== extraction
def bench_extraction(env: Env, device: torch.device, sz: dict) -> dict:
    from stylecap.extract import ImageDataset, collate, default_workers, extract_features, split_preprocess
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

    from stylecap.clip_utils import load_image
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
            f"stylecap.extract.extract_features, {w} DataLoader workers decoding {n} 500x375 JPEGs, batch {bs}, "
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
    from models.decoding import DecodeConfig, generate_captions
    model = env.model(seed=0, finetune_gpt2=True).to(device)
    base_feats, caps = stop_training_data(16, seed=0)
    base_feats = base_feats.to(device)
    t = time.perf_counter()
    # brief training so that captions end with END at a realistic length (bench.bench.train_to_stop)
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
    rows = [("figure", "ours", "baseline", "unit", "ratio", "target", "met")]
    fmt = lambda x: "-" if x is None else f"{x:.4g}"
    for stage in ("extraction", "memory", "training", "decoding"):
        figs = res.get(stage, {})
        flat = {**{k: v for k, v in figs.items() if k != "epoch_times"}, **figs.get("epoch_times", {})}
        for k, v in flat.items():
            if isinstance(v, dict) and "unit" in v:
                rows.append((k, fmt(v["ours"]), fmt(v["baseline"]), v["unit"], fmt(v["value"]), v["target"] or "-",
                             {True: "yes", False: "NO", None: "-"}[v["met"]]))
            elif k == "error":
                rows.append((stage, "ERROR", str(v)[:60], "", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
