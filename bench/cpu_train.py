"""CPU training figures: stylecap.train.engine.train_one_epoch vs ClipCap's loop (bench/reference.py) on the
same batches, the model-FLOP share of the measured matmul peak, and bf16 vs fp32."""
from __future__ import annotations

import time
from functools import partial

import torch

from bench import reference
from bench.common import Env, block_params, entry, train_step_flops
from bench.synthetic import coco_like_captions


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
        f"({block_params(model.gpt) / 1e6:.1f}M), the LM head (V * d = {model.gpt.lm_head.weight.numel() / 1e6:.1f}M) "
        f"only at the N_labelled positions our forward runs it on, N_mapper = mapper weight matrices; optimizer, "
        f"embeddings, norms and softmax are not counted. bf16 matmul rate: {peak['bf16']:.0f} GFLOP/s; "
        f"bf16 training reaches "
        f"{flops / t_bf16 / 1e9:.1f} GFLOP/s = {flops / t_bf16 / 1e9 / peak['bf16']:.3f} of it.",
        bf16_share=round(flops / t_bf16 / 1e9 / peak["bf16"], 4))))
    out.append(("train_bf16_vs_fp32", entry(
        "train_bf16_vs_fp32", sps_bf16, sps_ours, "samples/s",
        "train_one_epoch with precision bf16 (torch.autocast bf16 on CPU) vs fp32, same batches and model.")))
    return out

