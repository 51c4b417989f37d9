"""Batched caption decoding with transformers' ``generate()`` on ``inputs_embeds`` (KV cache on).

Greedy, beam search and sampling; several captions per image; stops at the END token (or '.' for
imported ClipCap models) and at the length limit. Rows whose style context has a different length
are decoded in separate groups, so no row is ever padded on the left: batched greedy output equals
one-image-at-a-time output.

Any causal LM (GPT-2, Llama, Qwen2, ...): the prefix goes in through ``inputs_embeds``, and generate() derives
the positions (GPT-2's learned ones, the others' rotary ones) from the KV cache's length. When the LM's output
layer is wider than the tokenizer (Qwen2.5 pads 151665 tokens to 151936 rows), the extra ids, which no text
has and which the <style_k> tokens reuse as ids, are never generated and do not count in the scores.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from models.blending import StyleBlend, blend_context_embeds
from models.captioner import StyleCapModel
from models.compat import cache_kwargs, output_cache
from models.errors import UserError


@dataclass
class DecodeConfig:
    strategy: str = "greedy"      # greedy | beam | sample
    beam_size: int = 5
    length_penalty: float = 1.0   # beam: score = sum log p / length ** length_penalty
    temperature: float = 1.0
    topk: int = 0                 # sample: 0 = no top-k filter
    topp: float = 1.0             # sample: nucleus mass (1.0 = off)
    num_generate: int = 1         # captions per image
    max_len: int | None = None    # new tokens; default: the model's max_len + 1 (67 for ClipCap models)

    def check(self) -> None:
        if self.strategy not in ("greedy", "beam", "sample"):
            raise UserError(f"--decode {self.strategy!r} is not one of greedy, beam, sample")
        if self.strategy == "greedy" and self.num_generate > 1:
            raise UserError("--num_generate > 1 needs --decode beam or --decode sample (greedy has one answer)")
        if self.strategy == "beam" and self.num_generate > self.beam_size:
            raise UserError(f"--num_generate {self.num_generate} exceeds --beam_size {self.beam_size}")


class ChosenTokenLogprob(LogitsProcessor):
    """Collects log p(chosen token) of each generate() step under the raw logits, in O(rows x vocab) memory.

    A logits processor sees a step's scores before its token is drawn, so it keeps that step's log-softmax
    and takes the drawn token's entry at the next call (from ``input_ids``'s last column); ``finish`` does
    the last step. Replaces ``output_logits=True``, which keeps every step's (rows, V) logits (for GPT-2 at
    64 rows x 67 steps: 0.86 GB). generate() runs custom processors after its own default processors (none
    with our settings) and before the sampling warpers (temperature, top-k, top-p), so the scores are the
    raw logits, as with ``output_logits``."""

    def __init__(self) -> None:
        self.pending: torch.Tensor | None = None  # (N, V) log-probs of the step whose token is not known yet
        self.chosen: list[torch.Tensor] = []      # (N,) per finished step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.pending is not None:
            self.chosen.append(self.pending.gather(1, input_ids[:, -1:]).squeeze(1))
        self.pending = F.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """sequences (N, T) new tokens -> (N, T) log p of each token."""
        if self.pending is not None:
            self.chosen.append(self.pending.gather(1, sequences[:, -1:]).squeeze(1))
            self.pending = None
        if len(self.chosen) != sequences.shape[1]:
            raise RuntimeError(f"scored {len(self.chosen)} steps for {sequences.shape[1]} generated tokens")
        return torch.stack(self.chosen, dim=1)


class OutsideVocabulary(LogitsProcessor):
    """Scores -inf for the ids >= ``n``, the tokenizer's vocabulary size: the LM's padding rows."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores.index_fill(-1, torch.arange(self.n, scores.shape[-1], device=scores.device), float("-inf"))


def padded_vocabulary(model: StyleCapModel) -> int | None:
    """The tokenizer's vocabulary size when the LM's output layer has more rows than it, else None (GPT-2:
    50257 both)."""
    rows = model.gpt.get_output_embeddings().weight.shape[0]
    return model.tokenizer.vocab_size if rows > model.tokenizer.vocab_size else None


def _gen_kwargs(model: StyleCapModel, dc: DecodeConfig) -> dict:
    tok = model.tokenizer
    max_new = dc.max_len or (67 if model.cfg.legacy_clipcap else model.cfg.max_len + 1)
    kw = dict(max_new_tokens=max_new, eos_token_id=tok.stop_ids, pad_token_id=tok.pad_id,
              num_return_sequences=dc.num_generate, use_cache=True)
    if dc.strategy == "greedy":
        kw.update(do_sample=False, num_beams=1)
    elif dc.strategy == "beam":
        kw.update(do_sample=False, num_beams=dc.beam_size, length_penalty=dc.length_penalty, early_stopping=True)
    else:
        kw.update(do_sample=True, num_beams=1, temperature=dc.temperature, top_k=dc.topk or None,
                  top_p=dc.topp if dc.topp < 1.0 else None)
    return kw


def context_embeds(model: StyleCapModel, features: torch.Tensor, styles: list[str | None]) -> torch.Tensor:
    """(B, D) features -> (B, K + C, E): the prefix, then the style context (equal length C in the batch).
    A batch holding a StyleBlend (a mix of styles, or a style at another strength) is models/blending.py's."""
    if any(isinstance(s, StyleBlend) for s in styles):
        return blend_context_embeds(model, features, styles)
    device = features.device
    style_ids = torch.tensor([model.style_id(s) for s in styles], device=device)
    prefix = model.prefix(features, style_ids)  # (B, K, E)
    ctx = torch.tensor([model.tokenizer.context_ids(s) for s in styles], dtype=torch.long, device=device)  # (B, C)
    if ctx.shape[1] == 0:
        return prefix
    return torch.cat((prefix, model.embed_tokens(ctx).to(prefix.dtype)), dim=1)


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Run the block with ``model`` in eval mode (no dropout), then restore its previous mode.

    Every decode goes through here: validation during training (which runs between train steps),
    evaluation, prediction and the benchmarks all caption with dropout off."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


SCORE_ROWS = 16  # rows per scoring pass: (16, T, V) fp32 logits, at most 216 MB for GPT-2 at T = 67


@torch.inference_mode()
def sequence_logprob(model: StyleCapModel, embeds: torch.Tensor, tokens: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token) over the first n_tokens[i] tokens of each row, given the context embeds.

    embeds (B, C, E); tokens (B, T); n_tokens (B,) -> (B,). Teacher-forced forward passes of at most
    SCORE_ROWS rows each, so the (rows, T, V) logits stay bounded whatever the evaluation batch size.
    """
    if tokens.shape[1] == 0:
        return torch.zeros(tokens.shape[0], device=tokens.device)
    if tokens.shape[0] > SCORE_ROWS:
        return torch.cat([sequence_logprob(model, embeds[i:i + SCORE_ROWS], tokens[i:i + SCORE_ROWS],
                                           n_tokens[i:i + SCORE_ROWS]) for i in range(0, tokens.shape[0], SCORE_ROWS)])
    # the last token predicts nothing, and only the T positions from the context's last one on need the
    # LM head (50257 x 768 per position): logits_to_keep skips it at the K + C - 1 context positions before
    x = torch.cat((embeds, model.embed_tokens(tokens[:, :-1]).to(embeds.dtype)), dim=1)  # (B, C + T - 1, E)
    logits = model.gpt(inputs_embeds=x, use_cache=False, logits_to_keep=tokens.shape[1]).logits.float()  # (B, T, V)
    if (n := padded_vocabulary(model)) is not None:  # as generate() saw them: the padding rows at -inf
        logits[..., n:] = float("-inf")
    lp = F.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)
    keep = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0) < n_tokens.unsqueeze(1)
    return (lp * keep).sum(1)


def beam_prefill(model: StyleCapModel, embeds: torch.Tensor, beams: int):
    """The KV cache of all context positions but the last, computed once per image and repeated per beam.

    generate(num_beams=n) copies every input n times before its first forward, so it would run GPT-2 over
    the whole context (prefix + style tokens) n times per image, a fifth of a beam-5 decode's work for
    ClipCap's short captions. Here the context runs once per image (G rows); generate() then runs only the
    last context position, for the n beams, from this cache. embeds (G, K + C, E) -> DynamicCache of
    G * n rows (image-major, as generate expands) and K + C - 1 positions, or None for a 1-position context.
    """
    if embeds.shape[1] < 2:
        return None
    cache = output_cache(model.gpt(inputs_embeds=embeds[:, :-1], use_cache=True, logits_to_keep=1))
    cache.batch_repeat_interleave(beams)  # (G * n, H, K + C - 1, d) per layer
    return cache


@torch.inference_mode()
def generate_captions(model: StyleCapModel, features: torch.Tensor, styles: list[str | None] | None,
                      dc: DecodeConfig = DecodeConfig(), with_scores: bool = True) -> list[list[dict]]:
    """features (B, D) -> for each row, ``num_generate`` dicts {"caption", "score", "tokens"}.

    ``score`` is the caption's log-probability under the model, summed over its tokens (END included);
    None with ``with_scores=False``, which also keeps no per-step logits (validation needs no scores).
    The model decodes in eval mode whatever its mode; its mode is restored afterwards.
    """
    with eval_mode(model):
        return _generate(model, features, styles, dc, with_scores)


def _generate(model: StyleCapModel, features: torch.Tensor, styles: list[str | None] | None,
              dc: DecodeConfig, with_scores: bool) -> list[list[dict]]:
    dc.check()
    device = next(model.parameters()).device
    tok = model.tokenizer
    styles = styles if styles is not None else [None] * features.shape[0]
    features = features.to(device)
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(styles):  # rows with equal context length decode together, unpadded
        groups.setdefault(len(tok.context_ids(s)), []).append(i)
    out: list[list[dict]] = [[] for _ in styles]
    kw = _gen_kwargs(model, dc)
    stop = set(tok.stop_ids)
    for rows in groups.values():
        embeds = context_embeds(model, features[rows], [styles[i] for i in rows])  # (G, K+C, E)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)
        # greedy/sample: each step's raw logits give the chosen token's log-prob, taken as the steps go (one
        # step's (G*n, V) kept, not all of them); beam's winners are re-scored in one teacher-forced pass
        tracker = ChosenTokenLogprob() if with_scores and dc.strategy != "beam" else None
        extra = cache_kwargs(beam_prefill(model, embeds, dc.beam_size)) if dc.strategy == "beam" else {}
        processors = [OutsideVocabulary(n)] if (n := padded_vocabulary(model)) is not None else []
        processors += [tracker] if tracker else []  # the tracker last: it scores what the others left
        gen = model.gpt.generate(inputs_embeds=embeds, attention_mask=mask, return_dict_in_generate=True,
                                 logits_processor=processors or None, **kw, **extra)
        seqs = gen.sequences  # (G*n, T) new tokens only
        lengths = []
        for row in seqs.tolist():  # tokens up to and including the first stop token
            n = next((j + 1 for j, t in enumerate(row) if t in stop), len(row))
            lengths.append(n)
        n_tok = torch.tensor(lengths, device=seqs.device)
        scores = [None] * len(lengths)
        if tracker is not None and seqs.shape[1] > 0:
            total = torch.zeros(len(lengths), device=seqs.device)
            for t, lp in enumerate(tracker.finish(seqs).unbind(1)):  # (G*n,) per step, summed up to the stop token
                total += torch.where(t < n_tok, lp, torch.zeros_like(lp))
            scores = total.tolist()
        elif with_scores and seqs.shape[1] > 0:
            rep = embeds.repeat_interleave(dc.num_generate, dim=0)
            scores = sequence_logprob(model, rep, seqs, n_tok).tolist()
        seqs = seqs.cpu()
        for j, row in enumerate(seqs.tolist()):
            r = rows[j // dc.num_generate]
            ids = row[:lengths[j]]
            out[r].append({"caption": tok.decode(ids), "score": scores[j], "tokens": ids})
    return out
