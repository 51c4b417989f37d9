"""CPU figures of LoRA (issue 18 §3): GPT-2 frozen vs LoRA adapters vs full tuning (ClipCap's "MLP + GPT-2
tuning"), at GPT-2 small size in full mode: trainable parameters, training step time and peak memory; and
greedy decoding with the adapters merged into GPT-2 (what load_model does) vs unmerged (two stages of bench.bench:
lora_train and lora_decode).

Each training setting runs in its own child process (peak memory is per process); the three are alive at once
and take their steps in turn, driven by the parent, so that load drift hits every setting alike. A child builds the
model (MLP mapper K = 10, style none), the fused AdamW of stylecap.train.trainer over its trainable parameters,
and runs stylecap.train.engine.train_one_epoch on one batch at a time (the same seeded batches in every child):
one warm-up step, then the timed steps. Peak memory: the process's peak RSS during those steps (VmHWM, reset
after the model is built through /proc/self/clear_refs, so GPT-2's loading is not counted) minus its RSS after
the imports: GPT-2's weights, gradients, AdamW's state and the activations.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import THREADS, Env, entry, log, median, rounded

ROOT = Path(__file__).resolve().parents[1]
LORA_R = 8  # the rank docs/lora.md suggests
SETTINGS = ("frozen", "lora", "full")

CHILD = r"""
import json, sys, time, torch
root, gpt2_dir, setting, bs, steps, r, threads = sys.argv[1:8]
bs, steps, r = int(bs), int(steps), int(r)
torch.set_num_threads(int(threads))
sys.path.insert(0, root)
from functools import partial
from models import ModelConfig, build_model
from models.captioner import trainable_parameters
from bench.synthetic import coco_like_captions
from stylecap.train.data import CaptionDataset, collate, encode_data
from stylecap.train.engine import TrainState, train_one_epoch
def kb(field):  # kB from /proc/self/status
    return int(next(l for l in open("/proc/self/status") if l.startswith(field + ":")).split()[1])
r0 = kb("VmRSS")
torch.manual_seed(0)
lora = {"lora_r": r} if setting == "lora" else {}
model = build_model(ModelConfig(gpt2_path=gpt2_dir, finetune_gpt2=setting == "full", max_len=64, **lora))
n = bs * (steps + 1)
feats = torch.randn(n, 512, generator=torch.Generator().manual_seed(1))
data = {"clip_embedding": feats, "captions": [{"image_id": str(i), "caption": c, "clip_embedding": i}
                                              for i, c in enumerate(coco_like_captions(n, seed=1))]}
ds = CaptionDataset(feats, encode_data(data, model.tokenizer, max_len=64))
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-5, fused=True)  # as stylecap.train.trainer.Trainer
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
r_model = kb("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS: the peak of the training steps only
print("ready", flush=True)
for b in range(steps + 1):  # one step per "step" line from the parent; batch 0: warm-up (allocates AdamW's state)
    sys.stdin.readline()
    loader = torch.utils.data.DataLoader(ds, batch_size=bs, sampler=range(b * bs, (b + 1) * bs),
                                         collate_fn=partial(collate, pad_id=model.tokenizer.pad_id))
    t = time.perf_counter()
    train_one_epoch(model, loader, opt, sched, TrainState(), device=torch.device("cpu"), max_grad_norm=1.0,
                    show_progress=False, total_batches=1)
    print(time.perf_counter() - t, flush=True)
print(json.dumps({"trainable": trainable_parameters(model), "model_kb": r_model - r0,
                  "peak_kb": kb("VmHWM") - r0}), flush=True)
"""


def _line(proc: subprocess.Popen, setting: str) -> str:
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"LoRA bench child ({setting}) exited with {proc.wait()}")
    return line.strip()


def train_figures(env: Env) -> dict[str, dict]:
    """{setting: {"trainable", "step_s" (every timed step), "peak_mib", "model_mib"}}. One child process per
    setting, all alive at once; the parent has them take their steps in turn (one at a time, the order reversed
    every round), so that the step times are interleaved while each process's peak memory is its own."""
    s = env.sizes
    bs, steps = s["train_bs"], s["lora_steps"]
    procs = {k: subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), str(env.gpt2_dir), k, str(bs), str(steps),
                                  str(LORA_R), str(THREADS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, cwd=ROOT) for k in SETTINGS}
    times: dict[str, list[float]] = {k: [] for k in SETTINGS}
    try:
        for k, p in procs.items():
            assert _line(p, k) == "ready"
        for b in range(steps + 1):
            for k in (SETTINGS if b % 2 == 0 else SETTINGS[::-1]):
                procs[k].stdin.write("step\n")
                procs[k].stdin.flush()
                times[k].append(float(_line(procs[k], k)))
        stats = {k: json.loads(_line(p, k)) for k, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:  # only after an error: a child that finished has exited
                p.kill()
            p.wait()
    return {k: {"trainable": v["trainable"], "step_s": times[k][1:], "peak_mib": v["peak_kb"] / 1024,
                "model_mib": v["model_kb"] / 1024} for k, v in stats.items()}


def bench_lora_decode(env: Env) -> list[tuple[str, dict]]:
    """Greedy decoding (batch 16) of a LoRA model, merged (models.lora.merge_lora) vs unmerged, in alternating
    rounds; the adapters' B is set to random values so that merging changes GPT-2's weights. Value: the median
    over rounds of unmerged time / merged time (a ratio per round: load drift between rounds cancels)."""
    from models.decoding import DecodeConfig, eval_mode, generate_captions
    from models.lora import merge_lora
    s = env.sizes
    unmerged = env.model(seed=0, finetune_gpt2=False, lora_r=LORA_R)
    with torch.no_grad():
        for name, p in unmerged.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(2))
    merged = merge_lora(copy.deepcopy(unmerged))
    feats = torch.randn(s["greedy_n"], 512, generator=torch.Generator().manual_seed(3))
    dc = DecodeConfig(strategy="greedy", max_len=8)  # random weights never stop: 8 new tokens per caption
    wall: dict[str, list[float]] = {"merged": [], "unmerged": []}
    cpu: dict[str, list[float]] = {"merged": [], "unmerged": []}  # this process's CPU time: less load-sensitive
    out = {}
    with eval_mode(unmerged), eval_mode(merged):
        for r in range(s["lora_decode_rounds"] + 1):  # round 0: warm-up
            pair = (("unmerged", unmerged), ("merged", merged))
            for name, model in (pair if r % 2 else pair[::-1]):
                t, c = time.perf_counter(), time.process_time()
                out[name] = generate_captions(model, feats, None, dc, with_scores=False)
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
    same = [a[0]["tokens"] for a in out["merged"]] == [b[0]["tokens"] for b in out["unmerged"]]
    m, u = wall["merged"][1:], wall["unmerged"][1:]
    n = len(feats)
    cpu_ratio = median([b / a for a, b in zip(cpu["merged"][1:], cpu["unmerged"][1:])])
    return [("lora_merged_decode", entry(
        "lora_merged_decode", n / median(m), n / median(u), "captions/s",
        f"greedy decoding, batch {n}, 8 new tokens per caption, GPT-2 with LoRA r = {LORA_R} merged into its weights "
        f"(models.lora.merge_lora, what load_model does) vs unmerged, {len(m)} alternating rounds; value: the median "
        f"of the rounds' unmerged / merged wall time; cpu_ratio: the same with the process's CPU time "
        f"{cpu_ratio:.3f}. Captions token for token identical: {same} (bench/cpu_lora.py).",
        value=median([b / a for a, b in zip(m, u)]), cpu_ratio=round(cpu_ratio, 4), identical=same,
        merged_runs_s=rounded(m), unmerged_runs_s=rounded(u), merged_cpu_s=rounded(cpu["merged"][1:]),
        unmerged_cpu_s=rounded(cpu["unmerged"][1:])))]


def bench_lora_train(env: Env) -> list[tuple[str, dict]]:
    t = time.perf_counter()
    fig = train_figures(env)
    log(f"lora: training steps done in {time.perf_counter() - t:.0f}s")
    bs, full = env.sizes["train_bs"], fig["full"]
    step = {k: median(v["step_s"]) for k, v in fig.items()}
    common = (f"GPT-2 {'small (12 layers, 768 wide)' if not env.quick else '(small test model)'} with random "
              f"weights, MLP mapper K = 10, batch {bs}, fp32, fused AdamW, grad clip 1.0; LoRA r = {LORA_R}, alpha "
              f"16 on c_attn and attn.c_proj. Each setting in its own child process, their steps interleaved "
              f"(bench/cpu_lora.py).")
    out = []
    for setting in ("lora", "frozen"):
        f = fig[setting]
        out += [
            (f"{setting}_vs_full_params", entry(
                f"{setting}_vs_full_params", f["trainable"], full["trainable"], "parameters",
                f"trainable parameters, {setting} vs full tuning. {common}")),
            (f"{setting}_vs_full_step", entry(
                f"{setting}_vs_full_step", step[setting], step["full"], "s/step",
                f"median training step time, {setting} vs full tuning (below 1: faster). {common}",
                runs_s=rounded(f["step_s"]), full_runs_s=rounded(full["step_s"]))),
            (f"{setting}_vs_full_memory", entry(
                f"{setting}_vs_full_memory", f["peak_mib"], full["peak_mib"], "MiB",
                f"peak RSS rise of the training steps over the process after its imports (weights, gradients, "
                f"AdamW state, activations), {setting} vs full tuning. The model alone: {f['model_mib']:.0f} MiB. "
                f"{common}")),
        ]
    return out
