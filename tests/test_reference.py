"""The reference ClipCap algorithms (bench/reference.py) as oracles for StyleCap's decoding and import.

* batched, KV-cached greedy decoding (models.decoding.generate_captions) equals ClipCap's uncached
  one-image-at-a-time greedy token for token, in every style mode, with rows of different styles;
* beam search finds captions at least as likely as greedy's;
* ClipCap state dicts (MLP, Transformer, single-Linear mappers, old GPT-2 buffers) import, unknown keys are
  refused, and the imported model decodes exactly like ClipCap's generate2 (stop at '.').
Small random-weight models (tests/conftest.py's small_models); CPU; well under a minute.
"""
from __future__ import annotations

import pytest
import torch

from bench.synthetic import stop_training_data, train_to_stop
from bench.reference import (reference_beam, reference_collate, reference_greedy, reference_max_seq_len)
from models import ModelConfig, build_model, load_model
from models.decoding import DecodeConfig, context_embeds, generate_captions, sequence_logprob
from models.style_modes import STYLE_MODES

# Prompt-mode contexts of different lengths, so a batch splits into groups; exact trait strings.
STYLES = ["Happy", "Sad (Gloomy)", "Cynical (Doubtful, Skeptical)"]


def small_model(small_models, seed=0, **cfg):
    torch.manual_seed(seed)
    return build_model(ModelConfig(gpt2_path=str(small_models / "small_gpt2"), **cfg)).eval()


def features(n, seed=0):
    return torch.randn(n, 512, generator=torch.Generator().manual_seed(seed))


def ours_tokens(model, feats, styles, **dc):
    out = generate_captions(model, feats, styles, DecodeConfig(**dc))
    return [rows[0]["tokens"] for rows in out]


# ------------------------------------------------------------------------------------------ greedy
@pytest.mark.parametrize("mode", STYLE_MODES)
def test_batched_greedy_equals_uncached_single_image_greedy(small_models, mode):
    """Random weights never emit END, so both run to the 12-token limit: full sequences compared."""
    styles = STYLES if mode != "none" else []
    model = small_model(small_models, seed=1, style_mode=mode, styles=styles)
    feats = features(6, seed=1)
    row_styles = [STYLES[i % 3] for i in range(6)] if styles else None  # rows of different styles, interleaved
    ours = ours_tokens(model, feats, row_styles, max_len=12)
    ref = reference_greedy(model, feats, row_styles, max_tokens=12)
    assert all(len(t) == 12 for t in ref)
    assert ours == ref
    if styles:  # the style really conditions the caption: same image, other style, other tokens
        same_image = ours_tokens(model, feats[:1].repeat(3, 1), STYLES, max_len=12)
        assert len({tuple(t) for t in same_image}) > 1


@pytest.fixture(scope="module")
def stopping_models(small_models):
    """Models trained a few steps so captions END at different lengths (style modes none and prompt)."""
    feats, caps = stop_training_data(8, seed=0)
    out = {}
    for mode in ("none", "prompt"):
        styles = STYLES if mode != "none" else []
        model = small_model(small_models, seed=0, style_mode=mode, styles=styles, finetune_gpt2=True)
        row_styles = [STYLES[i % 3] for i in range(len(caps))] if styles else None
        train_to_stop(model, feats, caps, steps=25, lr=3e-3, styles=row_styles)
        out[mode] = (model, feats, row_styles)
    return out


@pytest.mark.parametrize("mode", ["none", "prompt"])
def test_batched_greedy_equals_reference_when_captions_end(stopping_models, mode):
    model, feats, row_styles = stopping_models[mode]
    end = model.tokenizer.eos_id
    ours = ours_tokens(model, feats, row_styles, max_len=67)
    ref = reference_greedy(model, feats, row_styles, max_tokens=67)
    assert ours == ref
    ended = [t for t in ref if t[-1] == end]
    assert len(ended) == len(ref), "every caption should end with END after the brief training"
    assert len({len(t) for t in ended}) > 1, "rows should end at different steps (finished rows wait in the batch)"
    assert all(end not in t[:-1] for t in ref)  # the stop token is the last token, kept once


# ------------------------------------------------------------------------------------------ beam
def _logprob(model, feats, styles, token_lists):
    """Sum of log p over each caption's tokens, by one teacher-forced pass (sequence_logprob)."""
    embeds = context_embeds(model, feats, styles or [None] * len(feats))
    n = torch.tensor([len(t) for t in token_lists])
    padded = torch.full((len(token_lists), int(n.max())), model.tokenizer.pad_id, dtype=torch.long)
    for i, t in enumerate(token_lists):
        padded[i, :len(t)] = torch.tensor(t)
    return sequence_logprob(model, embeds, padded, n)


def test_beam_logprob_at_least_greedy(small_models):
    model = small_model(small_models, seed=2)
    feats = features(6, seed=2)
    greedy = ours_tokens(model, feats, None, max_len=8)
    beam = ours_tokens(model, feats, None, strategy="beam", beam_size=5, length_penalty=0.0, max_len=8)
    assert all(len(t) == 8 for t in greedy + beam)  # equal lengths: pure log-prob comparison
    lp_greedy, lp_beam = _logprob(model, feats, None, greedy), _logprob(model, feats, None, beam)
    assert bool((lp_beam >= lp_greedy - 1e-4).all()), (lp_beam, lp_greedy)
    assert bool((lp_beam > lp_greedy + 1e-3).any()), "beam search never improved on greedy"


@torch.no_grad()
def _stepwise_logprob(model, feature, tokens) -> float:
    """Independent oracle: ClipCap-style incremental passes, summing log p(token | prefix, earlier tokens)."""
    generated, total = context_embeds(model, feature[None], [None]), 0.0
    for t in tokens:
        logits = model.gpt(inputs_embeds=generated, use_cache=False).logits[0, -1]
        total += float(torch.log_softmax(logits, -1)[t])
        generated = torch.cat((generated, model.embed_tokens(torch.tensor([[t]]))), dim=1)
    return total


def test_beam_scores_are_log_probabilities(stopping_models):
    """generate_captions' 'score' is the caption's summed log-prob (END included); ClipCap's beam is greedy at
    width 1, and its normalised score is that log-prob / length."""
    model, feats, _ = stopping_models["none"]
    feats = feats[:3]
    out = generate_captions(model, feats, None, DecodeConfig(strategy="beam", beam_size=4, num_generate=2, max_len=67))
    for rows, f in zip(out, feats):
        assert len(rows) == 2 and rows[0]["tokens"] != rows[1]["tokens"]
        for r in rows:
            assert r["score"] == pytest.approx(_stepwise_logprob(model, f, r["tokens"]), abs=1e-3)
    width1 = reference_beam(model, feats, beam_size=1, max_tokens=67)
    assert [r["tokens"] for r in width1] == reference_greedy(model, feats, max_tokens=67)
    ref = reference_beam(model, feats, beam_size=5, max_tokens=67)
    for r, f in zip(ref, feats):
        tokens, score = r["beams"][0]
        assert tokens == r["tokens"] and tokens[-1] == model.tokenizer.eos_id
        assert score * len(tokens) == pytest.approx(_stepwise_logprob(model, f, tokens), abs=1e-3)


# ------------------------------------------------------------------------------------------ ClipCap import
def _gpt_state(small_models) -> dict:
    from transformers import GPT2LMHeadModel
    gpt = GPT2LMHeadModel.from_pretrained(str(small_models / "small_gpt2"))
    state = {f"gpt.{k}": v.clone() for k, v in gpt.state_dict().items()}
    n_pos = gpt.config.n_positions
    for i in range(gpt.config.n_layer):  # the buffers old transformers saved with every GPT-2
        causal = torch.tril(torch.ones(n_pos, n_pos, dtype=torch.uint8))
        state[f"gpt.transformer.h.{i}.attn.bias"] = causal.view(1, 1, n_pos, n_pos)
        state[f"gpt.transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    # make '.' (id 13) a likely token so that ClipCap's stop rule is exercised, not just the 67-token limit
    wte = state["gpt.transformer.wte.weight"]
    wte[13] *= 6.0
    state["gpt.lm_head.weight"] = wte  # tied, as in ClipCap's files
    return state


def _mapper_state(kind: str, e: int = 128, clip: int = 512) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(3)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.05
    if kind == "mlp":
        k = 10
        return ({"clip_project.model.0.weight": r(e * k // 2, clip), "clip_project.model.0.bias": r(e * k // 2),
                 "clip_project.model.2.weight": r(e * k, e * k // 2), "clip_project.model.2.bias": r(e * k)},
                {"mapping_type": "mlp", "prefix_len": k, "clip_size": clip})
    if kind == "linear":  # ClipCap's inference code for K > 10
        k = 12
        return ({"clip_project.weight": r(e * k, clip), "clip_project.bias": r(e * k)},
                {"mapping_type": "linear", "prefix_len": k, "clip_size": clip})
    k, c, layers, clip = 4, 3, 2, 640  # RN50x4-sized input, like the released transformer_weights.pt
    sd = {"clip_project.prefix_const": torch.randn(k, e, generator=g),
          "clip_project.linear.weight": r(c * e, clip), "clip_project.linear.bias": r(c * e)}
    for i in range(layers):
        p = f"clip_project.transformer.layers.{i}."
        sd.update({p + "norm1.weight": 1 + r(e), p + "norm1.bias": r(e), p + "norm2.weight": 1 + r(e),
                   p + "norm2.bias": r(e), p + "attn.to_queries.weight": r(e, e),
                   p + "attn.to_keys_values.weight": r(2 * e, e), p + "attn.project.weight": r(e, e),
                   p + "attn.project.bias": r(e), p + "mlp.fc1.weight": r(2 * e, e), p + "mlp.fc1.bias": r(2 * e),
                   p + "mlp.fc2.weight": r(e, 2 * e), p + "mlp.fc2.bias": r(e)})
    return sd, {"mapping_type": "transformer", "prefix_len": k, "constant_len": c, "num_layers": layers,
                "clip_size": clip, "normalize_prefix": True}


@pytest.mark.parametrize("kind", ["mlp", "transformer", "linear"])
def test_clipcap_state_dict_imports_and_decodes_like_clipcap(small_models, tmp_path, kind):
    mapper, expect = _mapper_state(kind)
    state = {**mapper, **_gpt_state(small_models)}
    path = tmp_path / f"{kind}_weights.pt"
    torch.save(state, path)
    gpt2 = str(small_models / "small_gpt2")
    model = load_model(path, gpt2_path=gpt2)
    for key, value in expect.items():
        assert getattr(model.cfg, key) == value, key
    assert model.cfg.legacy_clipcap and model.tokenizer.stop_ids == [13]  # '.'
    for key, value in mapper.items():  # every mapper tensor landed where ClipCap's module had it
        assert torch.equal(model.state_dict()[key], value), key
    assert torch.equal(model.gpt.transformer.wte.weight, state["gpt.transformer.wte.weight"])
    feats = torch.randn(5, expect["clip_size"], generator=torch.Generator().manual_seed(4))
    if kind == "mlp":  # the prefix is ClipCap's MLP applied to the raw feature
        w = mapper
        want = (torch.tanh(feats @ w["clip_project.model.0.weight"].T + w["clip_project.model.0.bias"])
                @ w["clip_project.model.2.weight"].T + w["clip_project.model.2.bias"]).view(5, 10, 128)
        torch.testing.assert_close(model.prefix(feats).detach(), want)
    ours = ours_tokens(model, feats, None)  # default limit: 67 new tokens, as ClipCap
    ref = reference_greedy(model, feats, max_tokens=67, stop_token=".")
    assert ours == ref
    assert any(t[-1] == 13 and len(t) < 67 for t in ref), "no caption stopped at '.'"
    assert all(13 not in t[:-1] for t in ref)
    for rows, tokens in zip(generate_captions(model, feats, None), ref):
        if tokens[-1] == 13:
            assert rows[0]["caption"].endswith(".")  # ClipCap keeps its '.'

    state["clip_project.extra_head.weight"] = torch.zeros(3)  # an unknown key must not be silently dropped
    torch.save(state, path)
    with pytest.raises(Exception, match="extra_head"):
        load_model(path, gpt2_path=gpt2)


# ------------------------------------------------------------------------------------------ training baseline
def test_reference_fixed_padding_is_clipcaps():
    lengths = [10] * 99 + [40]
    t = torch.tensor(lengths, dtype=torch.float32)
    assert reference_max_seq_len(lengths) == min(int(t.mean() + 10 * t.std()), 40) == 40
    assert reference_max_seq_len([5, 6, 7, 6]) == 7  # capped at the longest caption
    feats16 = torch.ones(2, 4, dtype=torch.float16)
    tokens, mask, feats = reference_collate(feats16, [[5, 6, 7], [8] * 9], 6, prefix_len=2)
    assert tokens.tolist() == [[5, 6, 7, 0, 0, 0], [8] * 6]  # pad id 0, truncated to the fixed length
    assert mask.tolist() == [[1, 1, 1, 1, 1, 0, 0, 0], [1] * 8] and feats.dtype == torch.float32


# ------------------------------------------------------------------------------------------ greedy/sample scores
@pytest.mark.parametrize("dc", [DecodeConfig(max_len=67),
                                DecodeConfig("sample", temperature=3.0, topk=20, num_generate=2, max_len=67)],
                         ids=["greedy", "sample"])
def test_greedy_and_sample_scores_are_log_probabilities_without_per_step_logits(stopping_models, dc):
    """Issue 12 item 3: greedy/sample scores are each caption's summed log-prob under the model (raw logits:
    not the temperature/top-k ones it was sampled from), with captions ending at different steps, and
    generate() is never asked for every step's (B, V) logits (output_logits), so memory does not grow
    with steps x vocabulary."""
    model, feats, row_styles = stopping_models["prompt"]
    asked = []
    real_generate = model.gpt.generate

    def recording_generate(*args, **kwargs):  # the real generate(), with its options recorded
        asked.append(kwargs.get("output_logits", False) or kwargs.get("output_scores", False))
        return real_generate(*args, **kwargs)

    model.gpt.generate = recording_generate
    try:
        torch.manual_seed(0)
        out = generate_captions(model, feats, row_styles, dc)
    finally:
        del model.gpt.generate
    assert asked and not any(asked)
    rows = [(f, s, r) for f, s, gens in zip(feats, row_styles, out) for r in gens]
    assert len(rows) == len(feats) * dc.num_generate and len({len(r["tokens"]) for _, _, r in rows}) > 1
    oracle = [_logprob(model, f[None], [s], [r["tokens"]]).item() for f, s, r in rows]  # styles' contexts differ
    assert [r["score"] for _, _, r in rows] == pytest.approx(oracle, abs=1e-4)
