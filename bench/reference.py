"""The reference ClipCap algorithms (Mokady et al. 2021, github.com/rmokady/CLIP_prefix_caption), re-implemented
faithfully so the benchmarks measure StyleCap against what users would otherwise run.

These are the baselines, defects included (see /work/shared/DESIGN.md section 1):

* :func:`reference_greedy` - ``generate2``: one image at a time, no KV cache (every step re-runs GPT-2 over
  the prefix and all generated embeddings), nucleus filter then argmax, stop at the stop token (kept in
  the output) or after ``max_tokens`` (67).
* :func:`reference_beam` - ``generate_beam``: one image at a time, no cache, ``beam_size`` rows recomputed in
  full each step, scores are summed log-probs, finished beams stop growing (their length is frozen, they
  keep their slot), final ranking by score / sequence length.
* :func:`reference_train_loop` - ``train``: every batch padded (or truncated) to ONE fixed length
  ``min(mean + 10 std, max)`` of the token lengths (``ClipCocoDataset.max_seq_len``), pad id 0,
  ``ignore_index=0`` loss over the whole padded caption, fp32.
* :func:`reference_extract` - ``parse_coco``: one caption record at a time; the record's image is read,
  preprocessed and encoded again for every caption it has; batch 1.

They work on a :class:`models.captioner.StyleCapModel` (the same weights StyleCap decodes with), so the same
functions are also the "uncached single-image" oracle for equality tests: the prefix/context come from
:func:`models.decoding.context_embeds` and the default stop token is ``model.tokenizer.stop_ids`` (END for
StyleCap models, '.' for imported ClipCap models).
"""
from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------- decoding
def _stop_id(model, stop_token) -> int:
    if stop_token is None:
        return int(model.tokenizer.stop_ids[0])
    if isinstance(stop_token, int):
        return stop_token
    return int(model.tokenizer.tok(stop_token, add_special_tokens=False)["input_ids"][0])


def _context(model, features: torch.Tensor, i: int, styles) -> torch.Tensor:
    from models.decoding import context_embeds
    style = None if styles is None else styles[i]
    return context_embeds(model, features[i:i + 1], [style])  # (1, K + C, E)


@torch.no_grad()
def reference_greedy(model, features: torch.Tensor, styles: Sequence[str | None] | None = None,
                     max_tokens: int = 67, stop_token: str | int | None = None, top_p: float = 0.8,
                     temperature: float = 1.0) -> list[list[int]]:
    """ClipCap's ``generate2`` for each row of ``features`` (B, D): -> B token lists (stop token included).

    ``stop_token`` None = the model's stop token (END, or '.' for imported ClipCap models); a string is
    tokenized, an int is an id. The nucleus filter (``top_p``) is kept for fidelity: it never removes the
    most likely token, so the result is the argmax at every step.
    """
    model.eval()
    device = next(model.parameters()).device
    features = features.to(device)
    stop = _stop_id(model, stop_token)
    out = []
    for i in range(features.shape[0]):
        generated = _context(model, features, i, styles)  # (1, K + C, E)
        tokens: list[int] = []
        for _ in range(max_tokens):
            logits = model.gpt(inputs_embeds=generated, use_cache=False).logits  # full recompute, no cache
            logits = logits[:, -1, :] / (temperature if temperature > 0 else 1.0)
            sorted_logits, sorted_indices = torch.sort(logits, descending=True)
            cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
            remove = cumulative_probs > top_p
            remove[..., 1:] = remove[..., :-1].clone()
            remove[..., 0] = False
            logits[:, sorted_indices[remove]] = -float("inf")
            next_token = torch.argmax(logits, -1).unsqueeze(0)  # (1, 1)
            tokens.append(int(next_token.item()))
            next_embed = model.embed_tokens(next_token).to(generated.dtype)
            generated = torch.cat((generated, next_embed), dim=1)
            if tokens[-1] == stop:
                break
        out.append(tokens)
    return out


@torch.no_grad()
def reference_beam(model, features: torch.Tensor, beam_size: int = 5, max_tokens: int = 67,
                   styles: Sequence[str | None] | None = None, stop_token: str | int | None = None,
                   temperature: float = 1.0) -> list[dict]:
    """ClipCap's ``generate_beam`` for each row of ``features``.

    -> per image {"tokens": best beam's tokens (stop included), "score": its score / length,
    "beams": [(tokens, score / length), ...] best first}.
    """
    model.eval()
    device = next(model.parameters()).device
    features = features.to(device)
    stop = _stop_id(model, stop_token)
    results = []
    for i in range(features.shape[0]):
        generated = _context(model, features, i, styles)  # (1, K + C, E)
        tokens = scores = None
        seq_lengths = torch.ones(beam_size, device=device)
        is_stopped = torch.zeros(beam_size, device=device, dtype=torch.bool)
        for _ in range(max_tokens):
            logits = model.gpt(inputs_embeds=generated, use_cache=False).logits
            logits = logits[:, -1, :] / (temperature if temperature > 0 else 1.0)
            logits = logits.softmax(-1).log()
            if scores is None:
                scores, next_tokens = logits.topk(beam_size, -1)
                generated = generated.expand(beam_size, *generated.shape[1:])
                next_tokens, scores = next_tokens.permute(1, 0), scores.squeeze(0)
                tokens = next_tokens
            else:
                logits[is_stopped] = -float("inf")
                logits[is_stopped, 0] = 0
                scores_sum = scores[:, None] + logits
                seq_lengths[~is_stopped] += 1
                scores_sum_average = scores_sum / seq_lengths[:, None]
                scores_sum_average, next_tokens = scores_sum_average.view(-1).topk(beam_size, -1)
                next_tokens_source = torch.div(next_tokens, scores_sum.shape[1], rounding_mode="floor")
                seq_lengths = seq_lengths[next_tokens_source]
                next_tokens = (next_tokens % scores_sum.shape[1]).unsqueeze(1)
                tokens = torch.cat((tokens[next_tokens_source], next_tokens), dim=1)
                generated = generated[next_tokens_source]
                scores = scores_sum_average * seq_lengths
                is_stopped = is_stopped[next_tokens_source]
            next_embed = model.embed_tokens(next_tokens.reshape(-1)).view(generated.shape[0], 1, -1)
            generated = torch.cat((generated, next_embed.to(generated.dtype)), dim=1)
            is_stopped = is_stopped + next_tokens.eq(stop).squeeze(1)
            if is_stopped.all():
                break
        norm = scores / seq_lengths
        order = norm.argsort(descending=True).tolist()
        rows = tokens.cpu().tolist()
        beams = [(rows[j][:int(seq_lengths[j])], float(norm[j])) for j in order]
        results.append({"tokens": beams[0][0], "score": beams[0][1], "beams": beams})
    return results


# ----------------------------------------------------------------------------------------------- training
def reference_max_seq_len(lengths: Iterable[int]) -> int:
    """``ClipCocoDataset.max_seq_len``: min(int(mean + 10 std), max) of the caption token lengths."""
    all_len = torch.tensor(list(lengths), dtype=torch.float32)
    return min(int(all_len.mean() + all_len.std() * 10), int(all_len.max()))


def reference_collate(features: torch.Tensor, token_lists: Sequence[Sequence[int]], max_seq_len: int,
                      prefix_len: int):
    """``ClipCocoDataset.pad_tokens`` for a batch: tokens padded with 0 / truncated to ``max_seq_len``;
    mask = ones for the prefix, then 1 on real tokens. -> (tokens (B, L), mask (B, K + L), features (B, D) fp32)."""
    b = len(token_lists)
    tokens = torch.zeros(b, max_seq_len, dtype=torch.int64)
    text_mask = torch.zeros(b, max_seq_len, dtype=torch.float32)
    for i, ids in enumerate(token_lists):
        ids = list(ids)[:max_seq_len]
        tokens[i, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
        text_mask[i, :len(ids)] = 1
    mask = torch.cat((torch.ones(b, prefix_len), text_mask), dim=1)
    return tokens, mask, features.to(torch.float32)


def reference_train_step(model, tokens: torch.Tensor, mask: torch.Tensor, prefix: torch.Tensor, optimizer,
                         scheduler=None) -> float:
    """One step of ClipCap's ``train``: ClipCaptionModel.forward, loss on logits[:, K-1:-1] vs the padded
    tokens with ``ignore_index=0``, backward, step. fp32 (no autocast)."""
    model.zero_grad()
    embedding_text = model.embed_tokens(tokens)
    prefix_projections = model.prefix(prefix)  # (B, K, E)
    embedding_cat = torch.cat((prefix_projections, embedding_text.to(prefix_projections.dtype)), dim=1)
    outputs = model.gpt(inputs_embeds=embedding_cat, attention_mask=mask, use_cache=False)
    k = prefix_projections.shape[1]
    logits = outputs.logits[:, k - 1:-1]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.flatten(), ignore_index=0)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad()
    return float(loss.item())


def reference_train_loop(model, features: torch.Tensor, token_lists: Sequence[Sequence[int]], batch_size: int,
                         optimizer, scheduler=None, order: Sequence[int] | None = None,
                         max_seq_len: int | None = None, max_steps: int | None = None) -> dict:
    """ClipCap's training loop over ``(features[i], token_lists[i])`` in ``order`` (default: as given).

    ``max_seq_len`` defaults to :func:`reference_max_seq_len` of all the token lists (the dataset's fixed
    length). -> {"samples", "seconds", "losses", "max_seq_len"}.
    """
    device = next(model.parameters()).device
    if max_seq_len is None:
        max_seq_len = reference_max_seq_len(len(t) for t in token_lists)
    order = list(range(len(token_lists))) if order is None else list(order)
    k = model.cfg.prefix_len
    model.train()
    losses, samples, t0 = [], 0, time.perf_counter()
    for step, lo in enumerate(range(0, len(order), batch_size)):
        if max_steps is not None and step >= max_steps:
            break
        idx = order[lo:lo + batch_size]
        tokens, mask, prefix = reference_collate(features[idx], [token_lists[j] for j in idx], max_seq_len, k)
        losses.append(reference_train_step(model, tokens.to(device), mask.to(device), prefix.to(device),
                                           optimizer, scheduler))
        samples += len(idx)
    return {"samples": samples, "seconds": time.perf_counter() - t0, "losses": losses, "max_seq_len": max_seq_len}


# ----------------------------------------------------------------------------------------------- extraction
def reference_extract(clip_model, preprocess, records: Sequence[dict], out_path: str | Path | None = None,
                      device: str | torch.device = "cpu") -> dict:
    """ClipCap's ``parse_coco``: for every caption record {"image_path", "caption", ...} read the image
    (full decode, as ``skimage.io.imread`` does), preprocess, ``encode_image`` at batch 1 -> one row per
    CAPTION. Writes ``{"clip_embedding", "captions"}`` with pickle to ``out_path`` when given."""
    from PIL import Image
    all_embeddings, all_captions = [], []
    for i, d in enumerate(records):
        with Image.open(d["image_path"]) as im:
            image = np.asarray(im.convert("RGB"))  # io.imread: the full-size RGB array
        image = preprocess(Image.fromarray(image)).unsqueeze(0).to(device)
        with torch.no_grad():
            prefix = clip_model.encode_image(image).cpu()
        all_embeddings.append(prefix)
        all_captions.append({**{k: v for k, v in d.items() if k != "image_path"}, "clip_embedding": i})
    data = {"clip_embedding": torch.cat(all_embeddings, dim=0), "captions": all_captions}
    if out_path is not None:
        with open(out_path, "wb") as f:
            pickle.dump(data, f)
    return data
