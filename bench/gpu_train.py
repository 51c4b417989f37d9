"""The GPU suite's training figures: samples/s and MFU per precision vs ClipCap's loop, the frozen run, epoch
times, and the peak memory of the "4 GB recipe" (see bench/gpu.py)."""
from __future__ import annotations

import math
from functools import partial

import torch

from bench import reference
from bench.common import Env, log, train_step_flops
from bench.gpu_common import CLIPCAP_COCO_EPOCH_MIN, COCO_CAPTIONS, PERSONALITY_CAPTIONS, fig, free, timed
from bench.synthetic import coco_like_captions
from models.compat import enable_activation_checkpointing


# ============================================================================== training
class TrainData:
    """COCO-like captions and random features, tokenized once, on the CPU (the DataLoader moves them)."""

    def __init__(self, env: Env, n_caps: int):
        from stylecap.train.data import CaptionDataset, encode_data
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
    """Train a fresh model for warmup + steps optimizer steps with stylecap.train.engine.train_one_epoch.
    -> {"samples_per_s", "steps_per_s", "flops_per_s", "peak_bytes", "seconds"} over the timed steps."""
    from stylecap.train.data import collate
    from stylecap.train.engine import TrainState, train_one_epoch
    free(device)
    base_bytes = 0
    if measure_memory and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the peak then covers weights, optimizer state, activations
        base_bytes = torch.cuda.memory_allocated(device)  # anything still held from before (normally 0)
    model = env.model(seed=0, finetune_gpt2=tuned, mapping_type=mapping, max_len=64)
    if checkpointing:  # models.compat: activation_checkpointing_enable, gradient_checkpointing_enable before 5
        enable_activation_checkpointing(model.gpt)
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
            f"(autocast{' + GradScaler' if prec == 'fp16' else ''}), fused AdamW, stylecap.train.engine.train_one_epoch; "
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
