"""StyleCap vs the reference ClipCap algorithms (bench/reference.py): speed and memory ratios on this machine.

    python -m bench.bench [--quick] [--out bench/results.json] [--only KEY,...]

Every figure is a ratio against a baseline measured in the same run, in the same process (memory: in child
processes), on the same inputs and weights. Default mode uses full-size shapes with random weights:
CLIP ViT-B/32 (``clip.model.CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)``) and GPT-2 small
(``GPT2Config()``: 12 layers, 768 wide, 50257 tokens) with GPT-2's real tokenizer. ``--quick`` uses the small
models of scripts/make_small_models.py (finishes in under two minutes; its ratios are NOT the published ones:
tiny models are dominated by per-call overheads). Results go to bench/results.json (written atomically):
one entry per key, ``{"value", "target", "met", "ours", "baseline", "unit", "note", ...}``, plus
"machine", "mode" and "date".

Timing: torch.set_num_threads(2); one warm-up before each timed section; medians of repeats where cheap.
The machine is shared and noisy: ratios of interleaved measurements are what to read, not absolute rates.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import memory, reference  # noqa: E402

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


# ============================================================================== helpers
def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median(xs):
    return statistics.median(xs)


def _r(xs) -> list:
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


@contextlib.contextmanager
def eval_mode(model):
    """Decode with dropout off (issue 8): the model in eval mode inside, its previous mode restored after."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
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
                from scripts.make_small_models import make_gpt2
                make_gpt2(out, seed=0)
            else:
                make_full_gpt2(out, seed=0)
            self._gpt2_dir = out
        return self._gpt2_dir

    def clip(self):
        """(model fp32 eval, preprocess) - random weights."""
        if self._clip is None:
            import clip
            from scripts.make_small_models import SMALL_CLIP
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


def make_full_gpt2(out: Path, seed: int = 0) -> None:
    """A random-weight GPT-2 small (GPT2Config defaults) in a Hugging Face folder with GPT-2's tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer
    from scripts.make_small_models import gpt2_vocab_files
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    vocab, merges = gpt2_vocab_files()
    shutil.copyfile(vocab, out / "vocab.json")
    shutil.copyfile(merges, out / "merges.txt")
    GPT2Tokenizer.from_pretrained(str(out)).save_pretrained(str(out))
    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(str(out))


# ============================================================================== synthetic captions
_SUBJ = ["a man", "a woman", "two dogs", "a small child", "a group of people", "an old man", "a young girl",
         "a brown horse", "three boys", "a cat", "a surfer", "a skier", "the players", "a chef", "a bird"]
_VERB = ["is riding", "is sitting on", "walks along", "plays near", "stands next to", "looks at", "jumps over",
         "is holding", "runs across", "rests beside", "waits by", "climbs"]
_OBJ = ["a bicycle", "the beach", "a wooden bench", "a red car", "the green grass", "a large rock", "the street",
        "a white fence", "the snowy hill", "a tall building", "the river", "a blue umbrella"]
_TAIL = ["in the park", "on a sunny day", "at night", "in the city", "near the water", "with a friend",
         "under a tree", "in front of a crowd", "during the winter", "while smiling at the camera"]
_WORDS = ("a an the man woman dog cat people group street table plate food pizza train bus sitting standing "
          "walking holding white black red blue green large small two young next near front top side room "
          "water field grass tree building car truck player ball game sky snow beach park kitchen").split()


def stop_training_data(n: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """n random CLIP-like features and n templated captions of 6-18 words."""
    rng = random.Random(seed)
    caps = []
    for _ in range(n):
        parts = [rng.choice(_SUBJ), rng.choice(_VERB), rng.choice(_OBJ)]
        parts += rng.sample(_TAIL, rng.randint(0, 2))
        caps.append(" ".join(parts))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 512, generator=g) * 0.5, caps


def train_to_stop(model, feats: torch.Tensor, captions: list[str], steps: int, lr: float,
                  precision: str = "bf16", styles: list[str | None] | None = None, top_blocks: int | None = None,
                  until=None, check_every: int = 10, min_steps: int = 0) -> tuple[float, int]:
    """Briefly train the model on a few captions (with their styles, if any) so that greedy/beam decoding ends
    with END at a realistic length instead of running to the token limit. -> (last loss, steps done).

    ``top_blocks`` None trains everything (mapper + GPT-2); n trains only GPT-2's last n blocks and final
    LayerNorm, which is several times cheaper per step: no weight gradients below them, and AdamW over a few
    million parameters instead of the whole model. ``until()`` (checked every ``check_every`` steps from
    ``min_steps`` on, model in eval mode) ends training early when it returns True."""
    from stylecap.train.data import collate
    from stylecap.train.engine import autocast_ctx
    tok = model.tokenizer
    styles = styles if styles is not None else [None] * len(captions)
    ids = tok.encode_captions(captions)
    rows = []
    for i, (cap_ids, style) in enumerate(zip(ids, styles)):
        ctx = tok.context_ids(style) if tok.style_mode in ("token", "prompt") else []
        rows.append((feats[i], torch.tensor(model.style_id(style)), ctx + cap_ids, len(ctx)))
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate(rows, pad_id=tok.pad_id).items()}
    if top_blocks is None:
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        mods = [*model.gpt.transformer.h[-top_blocks:], model.gpt.transformer.ln_f]
        params = [p for m in mods for p in m.parameters()]
    was = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    loss, step = torch.tensor(float("nan")), 0
    try:
        for step in range(1, steps + 1):
            model.train()
            with autocast_ctx(device, precision):
                loss = model(batch["features"], batch["style_ids"], batch["input_ids"], batch["attention_mask"],
                             batch["labels"]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if until is not None and step >= min_steps and step % check_every == 0:
                with eval_mode(model):
                    if until():
                        break
    finally:
        for p, r in was.items():
            p.requires_grad_(r)
        model.eval()
    return float(loss.item()), step


def ends_like(model, feats: torch.Tensor, captions: list[str], slack: int = 3) -> bool:
    """Greedy captions of ``feats`` all end with END, none longer than the longest training caption + slack."""
    from models.decoding import DecodeConfig, generate_captions
    longest = max(len(t) for t in model.tokenizer.encode_captions(captions))
    with eval_mode(model):
        out = generate_captions(model, feats, None, DecodeConfig(max_len=longest + slack), with_scores=False)
    return all(o[0]["tokens"] and o[0]["tokens"][-1] == model.tokenizer.eos_id for o in out)


def coco_like_captions(n: int, seed: int = 0) -> list[str]:
    """Captions whose word counts follow COCO's (mean 10.5, sd 2.4, at least 6) with a 0.5% tail of 20-40-word
    captions, as real caption sets have: what ClipCap's fixed length (mean + 10 std) is computed from."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(20, 40) if rng.random() < 0.005 else max(6, round(rng.gauss(10.5, 2.4)))
        out.append(" ".join(rng.choice(_WORDS) for _ in range(k)) + ".")
    return out


# ============================================================================== decoding
def _chunks(n: int, parts: int) -> list[range]:
    step = -(-n // parts)
    return [range(i, min(n, i + step)) for i in range(0, n, step)]


def bench_greedy(env: Env) -> dict:
    from models.decoding import DecodeConfig, generate_captions
    s = env.sizes
    model, feats, _ = env.stop_model()
    with eval_mode(model):  # every decode with dropout off (issue 8)
        feats = feats[:s["greedy_n"]]
        n_ref = s["greedy_ref_n"]
        dc = DecodeConfig(strategy="greedy", max_len=s["decode_max_len"])
        generate_captions(model, feats, None, dc)  # warm-up
        generate_captions(model, feats, None, dc, with_scores=False)
        reference.reference_greedy(model, feats[:1], max_tokens=s["decode_max_len"])
        ours_t, ours_ns_t, ref_time, ref_out = [], [], 0.0, []
        ours_out = None
        for part in _chunks(n_ref, s["decode_rounds"]):  # interleaved, so load drift hits both sides alike
            t = time.perf_counter()
            ours_out = generate_captions(model, feats, None, dc)
            ours_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            generate_captions(model, feats, None, dc, with_scores=False)
            ours_ns_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            ref_out += reference.reference_greedy(model, feats[part.start:part.stop], max_tokens=s["decode_max_len"])
            ref_time += time.perf_counter() - t
        ours_tokens = [o[0]["tokens"] for o in ours_out]
        identical = all(a == b for a, b in zip(ours_tokens[:n_ref], ref_out))
        lengths = [len(t) for t in ref_out]
        stop = set(model.tokenizer.stop_ids)
        ended = sum(1 for t in ref_out if t and t[-1] in stop)
        ours_cps = len(feats) / median(ours_t)
        ref_cps = n_ref / ref_time
        top = s["stop_train_top"]
        trained = "mapper + GPT-2" if top is None else f"GPT-2's last {top} blocks + final LayerNorm"
        return entry(
            "greedy_vs_reference", ours_cps, ref_cps, "captions/s",
            f"models.decoding.generate_captions (HF generate, KV cache, batch {len(feats)}; default with_scores=True, "
            f"which adds one teacher-forced pass for the log-prob) vs ClipCap generate2 (batch 1, no cache, top-p "
            f"filter + argmax, stop token kept) on the first {n_ref} of the same features, interleaved in "
            f"{s['decode_rounds']} rounds (ours: median). Weights: random init, then "
            f"{trained} "
            f"trained {env.stop_steps} steps (bf16 autocast, AdamW lr {s['stop_train_lr']}; until every greedy caption "
            f"ends with END within 3 tokens of the longest training caption) on the {s['stop_train_captions']} "
            f"templated captions of these features, so captions end at a realistic length; both sides stop at "
            f"model.tokenizer.stop_ids (END) or {s['decode_max_len']} new tokens.",
            captions_identical=identical, ours_without_scores=round(len(feats) / median(ours_ns_t), 4),
            value_without_scores=round(len(feats) / median(ours_ns_t) / ref_cps, 4),
            caption_tokens_mean=round(sum(lengths) / len(lengths), 2), caption_tokens_max=max(lengths),
            captions_ended_by_stop_token=f"{ended}/{len(ref_out)}", example=model.tokenizer.decode(ref_out[0]),
            runs_s={"ours": _r(ours_t), "ours_without_scores": _r(ours_ns_t), "reference_total": round(ref_time, 3)})


def bench_beam(env: Env) -> dict:
    from models.decoding import DecodeConfig, generate_captions
    s = env.sizes
    model, feats, _ = env.stop_model()
    with eval_mode(model):  # every decode with dropout off (issue 8)
        feats = feats[:s["beam_n"]]
        n_ref = s["beam_ref_n"]
        dc = DecodeConfig(strategy="beam", beam_size=5, length_penalty=1.0, max_len=s["decode_max_len"])
        generate_captions(model, feats[:4], None, dc)  # warm-up
        reference.reference_beam(model, feats[:1], beam_size=5, max_tokens=s["decode_max_len"])
        ours_t, ref_time, ref_out = [], 0.0, []
        ours_out = None
        for part in _chunks(n_ref, s["decode_rounds"]):
            t = time.perf_counter()
            ours_out = generate_captions(model, feats, None, dc)
            ours_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            ref_out += reference.reference_beam(model, feats[part.start:part.stop], beam_size=5,
                                                max_tokens=s["decode_max_len"])
            ref_time += time.perf_counter() - t
        same = sum(o[0]["tokens"] == r["tokens"] for o, r in zip(ours_out, ref_out))
        ours_cps = len(feats) / median(ours_t)
        ref_cps = n_ref / ref_time
        return entry(
            "beam_vs_reference", ours_cps, ref_cps, "captions/s",
            f"generate_captions beam 5 (HF beam search, KV cache, batch {len(feats)} = {5 * len(feats)} rows, "
            f"length_penalty 1 = score / length like ClipCap, the context run once per image, + the scoring pass) vs "
            f"ClipCap generate_beam (one image at a time, 5 rows recomputed in full every step) on "
            f"{'the same' if n_ref == len(feats) else f'the first {n_ref} of the same'} features, interleaved in "
            f"{s['decode_rounds']} rounds; same briefly trained weights as greedy; stop at END, limit "
            f"{s['decode_max_len']}.",
            same_best_caption=f"{same}/{n_ref}", runs_s={"ours": _r(ours_t), "reference_total": round(ref_time, 3)})


# ============================================================================== training
def _block_params(gpt) -> int:
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
    return (mult * _block_params(model.gpt) * batch_size * s + mult * model.gpt.lm_head.weight.numel() * n_labelled
            + mult / 6 * 12 * cfg.n_layer * cfg.n_embd * batch_size * s * s + 6 * n_map * batch_size)


def bench_train(env: Env, peak: dict) -> list[tuple[str, dict]]:
    from stylecap.train.data import CaptionDataset, collate, encode_data
    from stylecap.train.engine import TrainState, train_one_epoch
    s = env.sizes
    bs, rounds = s["train_bs"], s["train_rounds"]
    n_caps = 20_000
    captions = coco_like_captions(n_caps, seed=1)
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(n_caps, 512, generator=g)
    data = {"clip_embedding": feats, "captions": [{"image_id": str(i), "caption": c, "clip_embedding": i}
                                                   for i, c in enumerate(captions)]}
    model = env.model(seed=0, finetune_gpt2=True, max_len=64)  # ClipCap's default: "MLP + GPT-2 tuning"
    tok = model.tokenizer
    enc = encode_data(data, tok, max_len=64)
    ds = CaptionDataset(feats, enc)
    # ClipCap's dataset: the caption tokens without END, padded to ONE length for the whole dataset
    tok_lists = enc.tokens  # every sample's ids as lists, built once
    ref_tokens = [t[:-1] for t in tok_lists]
    fixed = reference.reference_max_seq_len(len(t) for t in ref_tokens)
    order = torch.randperm(n_caps, generator=g).tolist()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)

    def ours(idx: list[int], precision: str) -> float:
        loader = torch.utils.data.DataLoader(ds, batch_size=bs, sampler=idx,
                                             collate_fn=partial(collate, pad_id=tok.pad_id))
        t = time.perf_counter()
        train_one_epoch(model, loader, opt, sched, TrainState(), device=torch.device("cpu"), precision=precision,
                        max_grad_norm=1.0, show_progress=False, total_batches=len(loader))
        return time.perf_counter() - t

    def ref(idx: list[int]) -> float:
        return reference.reference_train_loop(model, feats, ref_tokens, bs, opt, sched, order=idx,
                                              max_seq_len=fixed)["seconds"]

    ours(order[:bs], "fp32"), ours(order[:bs], "bf16"), ref(order[:bs])  # warm-up on one batch
    t_ours = t_bf16 = t_ref = 0.0
    pad_lens, labelled = [], []
    for r in range(1, rounds + 1):  # the same batch through each path, alternating batch by batch
        idx = order[r * bs:(r + 1) * bs]
        pad_lens.append(max(len(tok_lists[i]) for i in idx))
        labelled.append(sum(len(tok_lists[i]) for i in idx))
        t_ours += ours(idx, "fp32")
        t_ref += ref(idx)
        t_bf16 += ours(idx, "bf16")
    n = rounds * bs
    sps_ours, sps_ref, sps_bf16 = n / t_ours, n / t_ref, n / t_bf16
    lengths = [len(t) for t in tok_lists]
    mean_len = sum(lengths) / len(lengths)
    mean_pad = sum(pad_lens) / len(pad_lens)
    out = [("train_vs_reference", entry(
        "train_vs_reference", sps_ours, sps_ref, "samples/s",
        f"stylecap.train.engine.train_one_epoch (DataLoader + stylecap.train.data.collate padding to the batch's longest, fp32, "
        f"AdamW, grad clip 1.0) vs ClipCap's loop (every batch padded to the dataset's fixed length "
        f"min(int(mean + 10 std), max) = {fixed} tokens, fp32, AdamW); same model (MLP mapper K=10 + GPT-2 "
        f"fine-tuned), batch {bs}, the same {rounds} batches through both, alternating batch by batch. Data: "
        f"{n_caps} synthetic captions with COCO's word-count distribution (mean 10.5, sd 2.4) and a 0.5% tail of "
        f"20-40-word captions; mean {mean_len:.1f} tokens incl. END; our batches padded to {mean_pad:.1f} on average.",
        reference_fixed_len=fixed, ours_mean_padded_len=round(mean_pad, 2)))]
    # model FLOP/s share of the measured fp32 matmul peak (padded tokens: what the hardware runs)
    flops = sum(train_step_flops(model, bs, L, n) for L, n in zip(pad_lens, labelled))
    achieved = flops / t_ours / 1e9
    out.append(("train_model_flops_share", entry(
        "train_model_flops_share", achieved, peak["fp32"], "GFLOP/s",
        f"model FLOPs of our fp32 training steps / their time, over the 2048^2 fp32 matmul rate measured in this run "
        f"({peak['fp32']:.0f} GFLOP/s). FLOPs per step = 6 * N_blocks * B * S + 6 * V * d * N_labelled + "
        f"12 * L * d * B * S^2 + 6 * N_mapper * B: S = K + padded length, N_blocks = GPT-2 block matmul weights "
        f"({_block_params(model.gpt) / 1e6:.1f}M), the LM head (V * d = {model.gpt.lm_head.weight.numel() / 1e6:.1f}M) "
        f"only at the N_labelled positions our forward runs it on, N_mapper = mapper weight matrices; optimizer, "
        f"embeddings, norms and softmax are not counted. bf16 matmul rate: {peak['bf16']:.0f} GFLOP/s; "
        f"bf16 training reaches "
        f"{flops / t_bf16 / 1e9:.1f} GFLOP/s = {flops / t_bf16 / 1e9 / peak['bf16']:.3f} of it.",
        bf16_share=round(flops / t_bf16 / 1e9 / peak["bf16"], 4))))
    out.append(("train_bf16_vs_fp32", entry(
        "train_bf16_vs_fp32", sps_bf16, sps_ours, "samples/s",
        "train_one_epoch with precision bf16 (torch.autocast bf16 on CPU) vs fp32, same batches and model.")))
    return out


# ============================================================================== extraction
def make_images(folder: Path, n: int, seed: int = 0, size=(500, 375)) -> list[Path]:
    """n JPEGs of Flickr30k's typical size (500 x 375, quality 90): a shape on a noisy background."""
    import numpy as np
    from PIL import Image
    from scripts.make_demo_data import render, sample_content
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = render(sample_content(rng), rng, size=size)
        arr = np.asarray(img).astype(np.int16) + nrng.integers(-20, 21, (size[1], size[0], 3), dtype=np.int16)
        p = folder / f"{i:06d}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(p, "JPEG", quality=90)
        paths.append(p)
    return paths


def _extract_api():
    """The extraction engine's public function (stylecap/extract/pipeline.py, written by another helper)."""
    try:
        from stylecap.extract.image_encoder import extract_features
    except ImportError as e:  # pragma: no cover - depends on the other helper's file
        raise RuntimeError(f"stylecap.extract.image_encoder.extract_features is not available ({e})") from None
    return extract_features


def bench_extract(env: Env) -> list[tuple[str, dict]]:
    from stylecap.features import save_features
    extract_features = _extract_api()
    from stylecap.extract.image_encoder import default_workers
    s = env.sizes
    model, preprocess = env.clip()
    paths = make_images(env.tmp / "images", s["extract_images"])
    bs = s["extract_bs"]
    workers = default_workers()
    out_file = env.tmp / "features.pt"

    def ours(autocast: str) -> float:
        t = time.perf_counter()
        emb, ok, bad = extract_features([str(p) for p in paths], model, preprocess, batch_size=bs,
                                        num_workers=workers, device="cpu", autocast=autocast)
        caps = [{"image_id": paths[i].stem, "caption": f"caption {j} of image {i}", "clip_embedding": r}
                for r, i in enumerate(ok) for j in range(5)]
        save_features(out_file, {"clip_embedding": emb, "captions": caps, "meta": {}})
        dt = time.perf_counter() - t
        assert not bad and len(ok) == len(paths)
        return dt

    from stylecap.clip_utils import load_image
    pre = torch.stack([preprocess(load_image(p)) for p in paths])  # preloaded tensors for the bare encoder

    @torch.inference_mode()
    def encoder(bf16: bool) -> float:
        t = time.perf_counter()
        for i in range(0, len(pre), bs):
            if bf16:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    model.encode_image(pre[i:i + bs])
            else:
                model.encode_image(pre[i:i + bs])
        return time.perf_counter() - t

    n_ref = s["extract_ref_images"]
    records = [{"image_path": str(p), "image_id": p.stem, "caption": f"caption {j} of image {p.stem}"}
               for p in paths[:n_ref] for j in range(5)]  # 5 captions per image, as Flickr30k / COCO

    def ref(recs=records) -> float:
        t = time.perf_counter()
        reference.reference_extract(model, preprocess, recs, out_path=env.tmp / "ref_features.pkl")
        return time.perf_counter() - t

    encoder(False), encoder(True), ref(records[:2])  # warm-up
    t_enc, t_ext, t_enc16, t_ext16, t_ref = [], [], [], [], []
    for _ in range(s["extract_repeats"]):  # interleaved
        t_enc.append(encoder(False))
        t_ext.append(ours("none"))
        t_ref.append(ref())
        t_enc16.append(encoder(True))
        t_ext16.append(ours("bf16"))
    n = len(paths)
    ips_enc, ips_ext, ips_ref = n / median(t_enc), n / median(t_ext), n_ref / median(t_ref)
    ips_enc16, ips_ext16 = n / median(t_enc16), n / median(t_ext16)
    size = f"{'small CLIP (2 layers, 64 wide)' if env.quick else 'ViT-B/32'} (random weights)"
    return [
        ("extract_vs_encoder", entry(
            "extract_vs_encoder", ips_ext, ips_enc, "images/s",
            f"stylecap.extract.image_encoder.extract_features ({workers} threads decoding 500x375 JPEGs + CLIP preprocessing "
            f"between encoder batches (the CPU path), batch {bs}, fp32) + save_features (5 caption records per image) vs the bare "
            f"encode_image on preloaded preprocessed tensors, batch {bs}, fp32; {n} images, {size}; median of "
            f"{len(t_ext)} interleaved runs. bf16 autocast: extraction {ips_ext16:.1f} vs encoder {ips_enc16:.1f} "
            f"images/s = {ips_ext16 / ips_enc16:.3f}.",
            value_bf16=round(ips_ext16 / ips_enc16, 4), runs_s={"extraction": _r(t_ext), "encoder": _r(t_enc)})),
        ("extract_vs_reference", entry(
            "extract_vs_reference", ips_ext, ips_ref, "images/s",
            f"our extraction (above, fp32 = the CPU default) vs ClipCap's parse_coco: one caption record at a time, "
            f"its image decoded in full, preprocessed and encoded (batch 1, fp32) again for each of its 5 captions; "
            f"{n_ref} images x 5 captions (the first {n_ref} of ours). With bf16 autocast ours is "
            f"{ips_ext16 / ips_ref:.1f}x.",
            value_bf16=round(ips_ext16 / ips_ref, 4), runs_s={"extraction": _r(t_ext), "reference": _r(t_ref)})),
        ("extract_bf16_vs_fp32", entry(
            "extract_bf16_vs_fp32", ips_ext16, ips_ext, "images/s",
            f"extraction with --autocast bf16 vs fp32 (none), same images; bare encoder bf16/fp32: "
            f"{ips_enc16 / ips_enc:.3f}.", encoder_bf16_vs_fp32=round(ips_enc16 / ips_enc, 4))),
    ]


# ============================================================================== memory: bench/memory.py


# ============================================================================== main
def print_table(results: dict) -> None:
    rows = [("key", "ours", "baseline", "unit", "value", "target", "met")]
    for k, v in results.items():
        if isinstance(v, dict) and "value" in v:
            rows.append((k, f"{v['ours']:.4g}", f"{v['baseline']:.4g}", v["unit"], f"{v['value']:.3f}",
                         v["target"] or "-", {True: "yes", False: "NO", None: "-"}[v["met"]]))
        elif isinstance(v, dict) and "error" in v:
            rows.append((k, "ERROR", v["error"][:60], "", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


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
        ("memory", ["features_fp16_memory"],
         lambda: [("features_fp16_memory", memory.bench_fp16_memory(entry, env, coco_like_captions))]),
        ("store", ["store_open_vs_dicts", "store_rss_vs_dicts", "store_4proc_vs_one"],
         lambda: memory.bench_store(entry, env, coco_like_captions)),
        ("greedy", ["greedy_vs_reference"], lambda: [("greedy_vs_reference", bench_greedy(env))]),
        ("beam", ["beam_vs_reference"], lambda: [("beam_vs_reference", bench_beam(env))]),
        ("train", ["train_vs_reference", "train_model_flops_share", "train_bf16_vs_fp32"], train_stage),
    ]


GPU_KEYS = ("cuda", "gpu_suite_on_cpu")  # results.json keys the GPU suite writes


def read_results(out: Path) -> dict:
    try:
        return json.loads(out.read_text()) if out.is_file() else {}
    except (OSError, ValueError):
        return {}


def quiet_libraries() -> None:
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    from loguru import logger
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def main(argv: list[str] | None = None) -> int:
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
    args = p.parse_args(argv)
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
    results: dict = {}
    old = read_results(out)
    if args.only and old.get("mode") == mode:  # --only updates the entries it ran, keeps the others of the same mode
        results = old
    results.update({k: old[k] for k in GPU_KEYS if k in old})  # the GPU suite's figures survive a CPU run
    results.update({"machine": machine_info(), "mode": mode,
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    t_start = time.perf_counter()
    from stylecap.utils import atomic_write_json
    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="stylecap_bench_") as tmp:
        env = Env(args.quick, Path(tmp))
        want = set(keys)
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
                import traceback
                traceback.print_exc()
                for k in want & set(stage_keys):
                    results[k] = {"error": f"{type(e).__name__}: {e}", "stage": name}
            results.setdefault("stage_seconds", {})[name] = round(time.perf_counter() - t, 1)
            log(f"{name} done in {time.perf_counter() - t:.0f}s")
            atomic_write_json(out, results)  # after every stage: a partial run still leaves its figures
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    # our own threads add about THREADS to the load while we run
    if results["machine"]["load_average_at_start"][0] > 0.75 * THREADS or os.getloadavg()[0] > 1.5 * THREADS:
        results["warning"] = ("other processes were using the CPU during this run (see load averages): the "
                              "figures are noisy; rerun on an idle machine for publishable ratios")
    atomic_write_json(out, results)
    print_table(results)
    print(f"wrote {out} ({mode} mode, {results['total_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
