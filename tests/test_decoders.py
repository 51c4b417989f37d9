"""Issue 18 §2: any AutoModelForCausalLM folder as the language model (--lm_path, alias --gpt2_path).

For GPT-2, a Llama-style and a Qwen2-style model (tiny random models of the real classes, built offline by
stylecap.demo.small_models with GPT-2's BPE and each family's special tokens, BOS, pad and chat template):
the prefix through inputs_embeds in every style mode; greedy, beam and sampling with the KV cache equal a
no-cache reference; captions carry no BOS and end with the tokenizer's EOS, padding is masked, never the
EOS; train.py trains and resumes exactly, --mode eval, predict.py and app.py run on the checkpoint.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import app
import predict
import train
from bench.reference import reference_greedy
from models import ModelConfig, build_model, load_model
from models.captioner import checkpoint_payload, model_from_checkpoint
from models.decoding import DecodeConfig, context_embeds, generate_captions, padded_vocabulary, sequence_logprob
from models.language_model import tokenizer_files
from models.style_modes import STYLE_MODES
from stylecap.eval.captioning import load_clip_for
from stylecap.train.data import CaptionDataset, collate, encode_data
from stylecap.utils import UserError
from tests.helpers import STYLES, synthetic_features

ARCHS = ["gpt2", "llama", "qwen2"]
# (class, BOS the tokenizer adds for special tokens, EOS that ends captions, pad id of the batches)
EXPECTED = {"gpt2": ("GPT2LMHeadModel", None, 50256, 50256),
            "llama": ("LlamaForCausalLM", 50257, 50258, 50258),   # no pad token: EOS pads
            "qwen2": ("Qwen2ForCausalLM", None, 50257, 50256)}    # <|im_end|> ends, <|endoftext|> pads


@pytest.fixture(scope="module")
def lm_dirs(small_models, tmp_path_factory) -> dict[str, Path]:
    from stylecap.demo.small_models import make_llama, make_qwen2
    out = tmp_path_factory.mktemp("lms")
    make_llama(out / "small_llama", seed=0)
    make_qwen2(out / "small_qwen2", seed=0)
    return {"gpt2": small_models / "small_gpt2", "llama": out / "small_llama", "qwen2": out / "small_qwen2"}


def tiny(lm_dirs, arch: str, seed: int = 0, **cfg):
    torch.manual_seed(seed)
    return build_model(ModelConfig(gpt2_path=str(lm_dirs[arch]), **cfg))


def styles_for(mode: str) -> list[str]:
    return STYLES if mode != "none" else []


def batch_for(model, captions, styles):
    data = {"clip_embedding": torch.randn(len(captions), 512),
            "captions": [{"image_id": str(i), "caption": c, "clip_embedding": i, "style": s}
                         for i, (c, s) in enumerate(zip(captions, styles))]}
    ds = CaptionDataset(data["clip_embedding"], encode_data(data, model.tokenizer, max_len=32))
    return collate([ds[i] for i in range(len(ds))], model.tokenizer.pad_id)


# ------------------------------------------------------------------------------ building and tokens
@pytest.mark.parametrize("arch", ARCHS)
def test_folder_gives_its_class_and_tokens_follow_bos_eos_pad_rules(lm_dirs, arch):
    cls, bos, eos, pad = EXPECTED[arch]
    model = tiny(lm_dirs, arch, style_mode="prompt", styles=STYLES)
    tok = model.tokenizer
    assert type(model.gpt).__name__ == cls and model.gpt.dtype == torch.float32
    assert (tok.tok.bos_token_id if arch == "llama" else None, tok.eos_id, tok.pad_id) == (bos, eos, pad)
    if arch != "gpt2":
        assert tok.tok.chat_template  # the folder has one; nothing below uses it
    plain = tok.tok("a red circle", add_special_tokens=False)["input_ids"]
    if bos is not None:  # the tokenizer itself would put BOS first ...
        assert tok.tok("a red circle")["input_ids"] == [bos] + plain
    assert tok.encode_caption("a red circle") == plain + [eos]  # ... captions never have one: the prefix starts
    assert tok.decode(plain + [eos] + plain) == "a red circle"  # generation stops at EOS
    # a training batch: "prompt" context, then caption + EOS, padded with pad_id; labels -100 on context/padding
    b = batch_for(model, ["wow!", "a much longer caption about a red circle"], ["Happy", "Gloomy"])
    ctx = len(tok.context_ids("Happy"))
    n = int(b["attention_mask"][0].sum())
    row, lab = b["input_ids"][0], b["labels"][0]
    assert bos is None or bos not in b["input_ids"].tolist()[0] + b["input_ids"].tolist()[1]
    assert (lab[:ctx] == -100).all() and (row[ctx:n] == lab[ctx:n]).all()
    assert lab[n - 1] == eos and row[n - 1] == eos  # the real EOS keeps its loss ...
    assert (row[n:] == pad).all() and (lab[n:] == -100).all()  # ... padding (EOS itself for Llama) has none
    # the loss (output layer only where a label is) equals cross-entropy over the full logits
    out = model(b["features"], b["style_ids"], b["input_ids"], b["attention_mask"], b["labels"])
    k = model.cfg.prefix_len
    logits = model(b["features"], b["style_ids"], b["input_ids"], b["attention_mask"]).logits[:, k - 1:-1]
    manual = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b["labels"].reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss, manual, atol=1e-5) and out.n_tokens == int((b["labels"] != -100).sum())


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("mode", STYLE_MODES)
def test_every_style_mode_trains_through_inputs_embeds(lm_dirs, arch, mode):
    model = tiny(lm_dirs, arch, style_mode=mode, styles=styles_for(mode), num_layers=2)
    styles = [STYLES[0], STYLES[2]] if mode != "none" else [None, None]
    b = batch_for(model, ["a red circle", "a blue circle on white"], styles)
    out = model(b["features"], b["style_ids"], b["input_ids"], b["attention_mask"], b["labels"])
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.clip_project.model[0].weight.grad.abs().sum() > 0
    if mode == "token":  # <style_k> ids sit above the tokenizer's vocabulary, inside Qwen2's padded rows
        ids = [model.tokenizer.context_ids(s)[0] for s in STYLES]
        assert ids == [50259, 50260, 50261]
        assert model.style_token_embedding.weight.grad[[0, 2]].abs().sum() > 0


def test_frozen_llama_has_no_attention_dropout_and_is_fingerprinted(lm_dirs, tmp_path):
    """The tiny Llama has attention_dropout 0.1, a float that LlamaAttention applies in train mode (no
    nn.Dropout module): frozen, train mode equals eval mode; tuned, it does not."""
    for frozen in (True, False):
        model = tiny(lm_dirs, "llama", style_mode="token", styles=STYLES, finetune_gpt2=not frozen)
        b = batch_for(model, ["a red circle"], [STYLES[0]])
        args = (b["features"], b["style_ids"], b["input_ids"], b["attention_mask"])
        with torch.no_grad():
            reference = model.eval()(*args).logits
            model.train()
            assert torch.equal(model(*args).logits, reference) == frozen
    payload = checkpoint_payload(model.eval())  # tuned: LM weights in the checkpoint, config rebuilds the class
    assert payload["gpt2_config"]["model_type"] == "llama" and payload["gpt2_fingerprint"] is None
    frozen_model = tiny(lm_dirs, "llama", finetune_gpt2=False)
    payload = checkpoint_payload(frozen_model)
    assert payload["gpt2_fingerprint"] and not any(k.startswith("gpt.") for k in payload["model"])
    assert {"tokenizer.json", "tokenizer_config.json", "config.json"} <= set(payload["tokenizer_files"])
    loaded = model_from_checkpoint(payload)
    assert type(loaded.gpt).__name__ == "LlamaForCausalLM"
    assert loaded.tokenizer.encode_caption("a red circle") == frozen_model.tokenizer.encode_caption("a red circle")


def test_gradient_checkpointing_gives_the_same_gradients(lm_dirs):
    grads = []
    for checkpointing in (False, True):
        model = tiny(lm_dirs, "llama", finetune_gpt2=True).train()
        if checkpointing:
            model.gpt.activation_checkpointing_enable()
        b = batch_for(model, ["a red circle", "a blue circle on white"], [None, None])
        torch.manual_seed(1)  # the same attention-dropout masks (checkpointing replays the RNG)
        model(b["features"], b["style_ids"], b["input_ids"], b["attention_mask"], b["labels"]).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.gpt.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_tokenizer_without_eos_or_smaller_than_the_lm_is_a_user_error(lm_dirs):
    from models.tokenizer import CaptionTokenizer, load_hf_tokenizer
    hf = load_hf_tokenizer(lm_dirs["llama"])
    hf.eos_token = None
    with pytest.raises(UserError, match="eos_token"):
        CaptionTokenizer(hf)
    cfg = ModelConfig(gpt2_path=str(lm_dirs["llama"]))
    small = {**tiny(lm_dirs, "llama").gpt.config.to_dict(), "vocab_size": 1000}  # 1000 rows for 50259 tokens
    with pytest.raises(UserError, match="50259 tokens but its language model only 1000"):
        build_model(cfg, gpt2_config=small)


def test_binary_tokenizer_files_survive_the_checkpoint(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\x80\xff\x00sentencepiece")
    (tmp_path / "tokenizer_config.json").write_text('{"a": 1}', encoding="utf-8")
    files = tokenizer_files(tmp_path)
    torch.save({"tokenizer_files": files}, tmp_path / "c.pt")
    back = torch.load(tmp_path / "c.pt", weights_only=True)["tokenizer_files"]
    assert back == {"tokenizer.model": b"\x80\xff\x00sentencepiece", "tokenizer_config.json": '{"a": 1}'}


# ------------------------------------------------------------------------------ decoding: cache vs no cache
def features(n, seed=0):
    return torch.randn(n, 512, generator=torch.Generator().manual_seed(seed))


def no_cache_logprobs(model, context, tokens: list[list[int]]) -> torch.Tensor:
    """(N, V) next-token log-probs after each row's tokens, by a full forward without a cache."""
    x = context if not tokens[0] else torch.cat(
        (context, model.embed_tokens(torch.tensor(tokens)).to(context.dtype)), dim=1)
    logits = model.gpt(inputs_embeds=x, use_cache=False).logits[:, -1].float()
    if (n := padded_vocabulary(model)) is not None:
        logits[:, n:] = float("-inf")
    return F.log_softmax(logits, dim=-1)


@torch.no_grad()
def no_cache_beam(model, feats, beams: int, steps: int) -> list[list[list[int]]]:
    """Plain beam search, one image at a time, recomputing every step without a cache: the beams, best first
    (no EOS in reach of random weights: every beam runs ``steps`` tokens)."""
    out = []
    for i in range(feats.shape[0]):
        context = context_embeds(model, feats[i:i + 1], [None])
        hyps = [([], 0.0)]
        for _ in range(steps):
            lp = no_cache_logprobs(model, context.expand(len(hyps), -1, -1), [h for h, _ in hyps])
            total = lp + torch.tensor([s for _, s in hyps]).unsqueeze(1)  # (beams, V)
            best = total.flatten().topk(beams)
            hyps = [(hyps[j // lp.shape[1]][0] + [j % lp.shape[1]], float(v))
                    for v, j in zip(best.values.tolist(), best.indices.tolist())]
        out.append([h for h, _ in hyps])
    return out


@torch.no_grad()
def no_cache_sample(model, feats, num: int, steps: int, topk: int) -> list[list[int]]:
    """Top-k sampling of all rows at once, as generate() draws (one multinomial over the rows per step)."""
    context = context_embeds(model, feats, [None] * feats.shape[0]).repeat_interleave(num, dim=0)
    tokens: list[list[int]] = [[] for _ in range(context.shape[0])]
    for _ in range(steps):
        scores = no_cache_logprobs(model, context, tokens)
        scores = scores.masked_fill(scores < scores.topk(topk)[0][..., -1:], float("-inf"))
        nxt = torch.multinomial(F.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        tokens = [t + [int(x)] for t, x in zip(tokens, nxt)]
    return tokens


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("mode", ["embedding", "token", "prompt"])  # none: the beam/sampling test below
def test_cached_greedy_equals_uncached_reference(lm_dirs, arch, mode):
    """Batched rows of different styles (context lengths differ in prompt mode) against ClipCap's uncached
    one-image-at-a-time greedy (bench/reference.py, the oracle of tests/test_reference.py for GPT-2)."""
    model = tiny(lm_dirs, arch, seed=1, style_mode=mode, styles=styles_for(mode), max_len=10).eval()
    feats = features(3, seed=1)
    row_styles = STYLES if mode != "none" else None
    ours = [r[0]["tokens"] for r in generate_captions(model, feats, row_styles, DecodeConfig(max_len=5))]
    assert ours == reference_greedy(model, feats, row_styles, max_tokens=5)


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_beam_with_prefill_and_sampling_equal_uncached(lm_dirs, arch):
    model = tiny(lm_dirs, arch, seed=2, max_len=10).eval()
    feats = features(2, seed=2)
    beam = generate_captions(model, feats, None, DecodeConfig(strategy="beam", beam_size=3, num_generate=3,
                                                              length_penalty=0.0, max_len=5))
    assert [[r["tokens"] for r in rows] for rows in beam] == no_cache_beam(model, feats, beams=3, steps=5)
    torch.manual_seed(5)
    sample = generate_captions(model, feats, None, DecodeConfig(strategy="sample", num_generate=2, topk=20, max_len=5))
    torch.manual_seed(5)
    assert [r["tokens"] for rows in sample for r in rows] == no_cache_sample(model, feats, num=2, steps=5, topk=20)
    # the scores taken step by step from the cached logits are the uncached log-probabilities
    toks = torch.tensor([r["tokens"] for rows in sample for r in rows])
    ctx = context_embeds(model, feats, [None] * 2).repeat_interleave(2, dim=0)
    uncached = sequence_logprob(model, ctx, toks, torch.full((4,), 5))
    assert torch.allclose(torch.tensor([r["score"] for rows in sample for r in rows]), uncached, atol=1e-4)


def test_captions_that_end_stop_at_the_eos_like_the_uncached_reference(lm_dirs):
    """Llama pads with its EOS: trained briefly so that greedy captions end (at different steps), the cached
    batch stops each row at </s> and equals the uncached reference."""
    from bench.synthetic import stop_training_data, train_to_stop
    model = tiny(lm_dirs, "llama", seed=0, finetune_gpt2=True)
    feats, caps = stop_training_data(4, seed=0)
    train_to_stop(model, feats, caps, steps=30, lr=3e-3, precision="fp32")
    ours = [r[0]["tokens"] for r in generate_captions(model, feats, None, DecodeConfig(max_len=20))]
    ref = reference_greedy(model, feats, None, max_tokens=20)
    assert ours == ref
    ended = [t for t in ref if t[-1] == 50258]
    assert len(ended) >= 2 and len({len(t) for t in ended}) > 1, ref


def test_padded_vocabulary_rows_are_never_generated(lm_dirs):
    """Qwen2's output layer has 50304 rows for 50259 tokens (+ <style_k> ids 50259..): even rows made to win
    every step are masked in greedy, beam and sampling, and in the scores."""
    model = tiny(lm_dirs, "qwen2", style_mode="token", styles=STYLES).eval()
    with torch.no_grad():
        emb = model.gpt.get_input_embeddings().weight  # tied: the output layer too
        emb[50259:] = emb[:50259].abs().max(0).values * 50
    feats = features(2)
    for dc in (DecodeConfig(max_len=5), DecodeConfig(strategy="beam", beam_size=3, max_len=5),
               DecodeConfig(strategy="sample", num_generate=2, max_len=5)):
        for rows in generate_captions(model, feats, STYLES[:2], dc):
            assert all(t < 50259 for r in rows for t in r["tokens"]) and all(r["score"] > -1e4 for r in rows)


# ------------------------------------------------------------------------------ the scripts, end to end
def train_args(lm: Path, data: Path, out: Path, mode: str) -> list[str]:
    """1 epoch of 4 steps (15 training captions, batches of 4), a checkpoint every 2 steps, all kept."""
    return ["--data_path", str(data), "--lm_path", str(lm), "--output_path", str(out), "--style_mode", mode,
            "--bs_train", "4", "--bs_eval", "16", "--lr", "1e-3", "--warmup_steps", "2", "--finetune_gpt2",
            "--num_samples", "2", "--eval_subset", "0", "--seed", "3", "--epochs", "1", "--save_by", "step",
            "--save_step", "2", "--max_checkpoint_num", "0"]


MODE_OF = {"llama": "prompt", "qwen2": "token"}


@pytest.fixture(scope="module", params=["llama", "qwen2"])  # GPT-2's: tests/test_train.py, test_predict.py, test_app.py
def run(request, lm_dirs, tmp_path_factory):
    arch = request.param
    d = tmp_path_factory.mktemp(f"run_{arch}")
    data = synthetic_features(d / "train.pkl", n_images=16)
    argv = train_args(lm_dirs[arch], data, d / "a", MODE_OF[arch])
    assert train.main(argv) == 0
    return arch, d, argv


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_train_and_exact_resume(run):
    arch, d, argv = run
    a = d / "a"
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["gpt2"]["model_type"] == arch and cfg["args"]["gpt2_path"].endswith(f"small_{arch}")
    # a run stopped after step 2 (mid-epoch) and resumed ends with the uninterrupted run's weights
    shutil.copytree(a, d / "b")
    for late in ("step_00000004.pt", "last.pt", "best.pt"):
        (d / "b" / "checkpoints" / late).unlink()
    assert sorted(p.name for p in (d / "b" / "checkpoints").iterdir()) == ["step_00000002.pt"]
    b_argv = [d / "b" if x == str(a) else x for x in argv]
    assert train.main([str(x) for x in b_argv] + ["--resume", "auto"]) == 0
    wa, wb = weights(a / "checkpoints/last.pt"), weights(d / "b/checkpoints/last.pt")
    assert wa.keys() == wb.keys() and any(k.startswith("gpt.") for k in wa)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_eval_mode_and_predict(run):
    arch, d, _ = run
    ckpt = d / "a" / "checkpoints" / "last.pt"
    feats = synthetic_features(d / "test.pkl", n_images=4, seed=1)
    out = d / "eval"
    assert train.main(["--mode", "eval", "--model_path", str(ckpt), "--data_path", str(feats), "--output_path",
                       str(out), "--no_java", "--train_captions", str(feats), "--decode", "beam", "--beam_size", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["scored"] == 4 and isinstance(metrics["CIDEr"], float)
    pred = d / "pred"
    assert predict.main(["--model_path", str(ckpt), "--features", str(feats), "--style", "all", "--output_path",
                         str(pred), "--decode", "sample", "--num_generate", "2"]) == 0
    rows = [json.loads(line) for line in open(pred / "predictions.jsonl", encoding="utf-8")]
    assert len(rows) == 4 * len(STYLES) * 2 and all(isinstance(r["caption"], str) for r in rows)
    assert f"{arch} fine-tuned" in (pred / "predict.log").read_text(encoding="utf-8")


def test_app_loads_and_captions(run, small_models, tmp_path):
    from PIL import Image
    arch, d, _ = run
    ckpt = d / "a" / "checkpoints" / "last.pt"
    model = load_model(ckpt, None, "cpu")
    assert type(model.gpt).__name__ == EXPECTED[arch][0]
    clip_model, preprocess = load_clip_for(model, str(small_models / "small_clip.pt"), "cpu", ckpt)
    demo = app.Demo(model, clip_model, preprocess, torch.device("cpu"), batch_size=8, max_images=2)
    Image.new("RGB", (48, 32), (200, 30, 30)).save(tmp_path / "red.jpg")
    status, page, jsonl = demo.caption([str(tmp_path / "red.jpg")], [STYLES[0]], decode="beam", beam_size=2)
    preds = [json.loads(line) for line in open(jsonl, encoding="utf-8")]
    assert len(preds) == 1 and preds[0]["style"] == STYLES[0]


def test_lm_path_and_gpt2_path_are_one_setting(tmp_path):
    import evaluate
    for name in ("--lm_path", "--gpt2_path"):
        assert train.parse_args(["--data_path", "x", name, "LM"]).gpt2_path == "LM"
        assert predict.get_parser().parse_args(["--model_path", "m", name, "LM"]).gpt2_path == "LM"
        assert app.get_parser().parse_args(["--model_path", "m", name, "LM"]).gpt2_path == "LM"
        assert evaluate.build_parser().parse_args(["--model_path", "m", name, "LM"]).gpt2_path == "LM"
    assert train.parse_args(["--data_path", "x"]).gpt2_path == "pre_model/gpt2"  # the default is unchanged
    (tmp_path / "run.json").write_text(json.dumps({"data_path": "x", "lm_path": "LM"}), encoding="utf-8")
    assert train.parse_args(["--config", str(tmp_path / "run.json")]).gpt2_path == "LM"  # a --config file's name too
