"""CPU decoding figures: batched, KV-cached greedy and beam search (models.decoding.generate_captions) vs
ClipCap's batch-1 uncached algorithms (bench/reference.py), on the stop-trained model of ``Env.stop_model``."""
from __future__ import annotations

import time
from typing import Callable

from bench import reference
from bench.common import Env, entry, median, rounded
from models.decoding import DecodeConfig, eval_mode, generate_captions


def _chunks(n: int, parts: int) -> list[range]:
    step = -(-n // parts)
    return [range(i, min(n, i + step)) for i in range(0, n, step)]


def interleaved(ours: dict[str, Callable[[], list]], ref: Callable[[range], list], n_ref: int,
                rounds: int) -> tuple[dict[str, list[float]], dict[str, list], float, list]:
    """Time each of ``ours`` (the whole batch, every round) and ``ref`` (its share of the first ``n_ref``
    features per round) in ``rounds`` interleaved rounds, so that load drift hits both sides alike.
    -> (seconds of each of ours per round, the last output of each of ours, the reference's total seconds,
    the reference's outputs in order)."""
    times: dict[str, list[float]] = {k: [] for k in ours}
    last: dict[str, list] = {}
    ref_time, ref_out = 0.0, []
    for part in _chunks(n_ref, rounds):
        for k, fn in ours.items():
            t = time.perf_counter()
            last[k] = fn()
            times[k].append(time.perf_counter() - t)
        t = time.perf_counter()
        ref_out += ref(part)
        ref_time += time.perf_counter() - t
    return times, last, ref_time, ref_out


def bench_greedy(env: Env) -> dict:
    s = env.sizes
    model, feats, _ = env.stop_model()
    with eval_mode(model):  # every decode with dropout off (issue 8)
        feats = feats[:s["greedy_n"]]
        n_ref = s["greedy_ref_n"]
        dc = DecodeConfig(strategy="greedy", max_len=s["decode_max_len"])
        generate_captions(model, feats, None, dc)  # warm-up
        generate_captions(model, feats, None, dc, with_scores=False)
        reference.reference_greedy(model, feats[:1], max_tokens=s["decode_max_len"])
        times, last, ref_time, ref_out = interleaved(
            {"ours": lambda: generate_captions(model, feats, None, dc),
             "ours_without_scores": lambda: generate_captions(model, feats, None, dc, with_scores=False)},
            lambda part: reference.reference_greedy(model, feats[part.start:part.stop],
                                                    max_tokens=s["decode_max_len"]),
            n_ref, s["decode_rounds"])
        ours_t, ours_ns_t = times["ours"], times["ours_without_scores"]
        ours_tokens = [o[0]["tokens"] for o in last["ours"]]
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
            runs_s={"ours": rounded(ours_t), "ours_without_scores": rounded(ours_ns_t),
                    "reference_total": round(ref_time, 3)})


def bench_beam(env: Env) -> dict:
    s = env.sizes
    model, feats, _ = env.stop_model()
    with eval_mode(model):  # every decode with dropout off (issue 8)
        feats = feats[:s["beam_n"]]
        n_ref = s["beam_ref_n"]
        dc = DecodeConfig(strategy="beam", beam_size=5, length_penalty=1.0, max_len=s["decode_max_len"])
        generate_captions(model, feats[:4], None, dc)  # warm-up
        reference.reference_beam(model, feats[:1], beam_size=5, max_tokens=s["decode_max_len"])
        times, last, ref_time, ref_out = interleaved(
            {"ours": lambda: generate_captions(model, feats, None, dc)},
            lambda part: reference.reference_beam(model, feats[part.start:part.stop], beam_size=5,
                                                  max_tokens=s["decode_max_len"]),
            n_ref, s["decode_rounds"])
        ours_t = times["ours"]
        same = sum(o[0]["tokens"] == r["tokens"] for o, r in zip(last["ours"], ref_out))
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
            same_best_caption=f"{same}/{n_ref}",
            runs_s={"ours": rounded(ours_t), "reference_total": round(ref_time, 3)})
