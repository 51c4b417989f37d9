"""Model: labels, mappers x style modes, frozen GPT-2, checkpoints rebuilt from themselves alone."""
from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from models import DecodeConfig, ModelConfig, build_model, generate_captions, load_model
from models.captioner import checkpoint_payload
from models.style_modes import STYLE_MODES
from stylecap.train.data import CaptionDataset, collate, encode_data
from stylecap.utils import UserError
from tests.helpers import STYLES


def make(small_models, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(gpt2_path=str(small_models / "small_gpt2"), num_layers=2, **kw)
    return build_model(cfg)


def batch_for(model, captions, styles):
    data = {"clip_embedding": torch.randn(len(captions), 512),
            "captions": [{"image_id": str(i), "caption": c, "clip_embedding": i, "style": s}
                         for i, (c, s) in enumerate(zip(captions, styles))]}
    enc = encode_data(data, model.tokenizer, max_len=32)
    ds = CaptionDataset(data["clip_embedding"], enc)
    return collate([ds[i] for i in range(len(ds))], model.tokenizer.pad_id)


def test_labels_keep_end_and_bang_mask_context_and_padding(small_models):
    model = make(small_models, style_mode="prompt", styles=STYLES)
    tok = model.tokenizer
    b = batch_for(model, ["wow!", "a much longer caption about a red circle"], ["Happy", "Gloomy"])
    bang = tok.tok("!", add_special_tokens=False)["input_ids"][0]
    assert bang == 0  # GPT-2's id 0 is "!": ClipCap's ignore_index=0 dropped its loss
    ctx = len(tok.context_ids("Happy"))
    row, lab = b["input_ids"][0], b["labels"][0]
    n = int(b["attention_mask"][0].sum())
    assert (lab[:ctx] == -100).all()                       # the prompt carries no loss
    assert (row[ctx:n] == lab[ctx:n]).all()                # caption tokens carry loss ...
    assert bang in lab[ctx:n].tolist()                     # ... "!" included
    assert lab[n - 1] == tok.eos_id == 50256               # the END token carries loss
    assert (lab[n:] == -100).all() and (b["attention_mask"][0, n:] == 0).all()  # padding excluded
    # the forward pass adds K prefix positions without loss: loss == CE over the labelled tokens only
    out = model(b["features"], b["style_ids"], b["input_ids"], b["attention_mask"], b["labels"])
    k = model.cfg.prefix_len
    logits = model(b["features"], b["style_ids"], b["input_ids"], b["attention_mask"]).logits[:, k - 1:-1]
    manual = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b["labels"].reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss, manual, atol=1e-5)
    assert out.n_tokens == int((b["labels"] != -100).sum())


def test_chinese_bert_tokenizer_ends_with_sep_and_decodes_without_spaces(small_models):
    torch.manual_seed(0)
    model = build_model(ModelConfig(gpt2_path=str(small_models / "small_gpt2_chinese")))
    tok = model.tokenizer
    ids = tok.encode_caption("白色背景上有一个大的红色圆形")
    assert ids[-1] == tok.tok.sep_token_id and tok.tok.cls_token_id not in ids
    assert tok.decode(ids) == "白色背景上有一个大的红色圆形"


@pytest.mark.parametrize("mapping_type", ["mlp", "transformer"])
@pytest.mark.parametrize("style_mode", STYLE_MODES)
def test_forward_backward_every_mapper_and_style_mode(small_models, mapping_type, style_mode):
    styles = STYLES if style_mode != "none" else []
    model = make(small_models, mapping_type=mapping_type, style_mode=style_mode, styles=styles)
    b = batch_for(model, ["a red circle", "yay! a blue square!"], [styles[0], styles[1]] if styles else [None, None])
    out = model(b["features"], b["style_ids"], b["input_ids"], b["attention_mask"], b["labels"])
    assert out.loss.isfinite()
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.clip_project.parameters())
    if style_mode == "embedding":
        assert model.style_embedding.weight.grad[:2].abs().sum() > 0
    if style_mode == "token":
        assert model.style_token_embedding.weight.grad[:2].abs().sum() > 0
        assert len(model.tokenizer.tok) == model.tokenizer.vocab_size + len(STYLES)  # <style_k> added
    gens = generate_captions(model.eval(), b["features"], [styles[0], styles[-1]] if styles else None,
                             DecodeConfig(max_len=4))
    assert len(gens) == 2 and all(isinstance(g[0]["caption"], str) for g in gens)


def test_frozen_gpt2_gets_no_gradient_no_dropout_and_is_not_saved(small_models):
    model = make(small_models, style_mode="token", styles=STYLES, finetune_gpt2=False)
    b = batch_for(model, ["a red circle"], [STYLES[0]])
    args = (b["features"], b["style_ids"], b["input_ids"], b["attention_mask"])
    with torch.no_grad():
        reference = model.eval()(*args).logits
        model.train()  # GPT-2 follows train mode (gradient checkpointing needs it) but adds no dropout noise
        assert model.gpt.training and torch.equal(model(*args).logits, reference)
    model(b["features"], b["style_ids"], b["input_ids"], b["attention_mask"], b["labels"]).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.gpt.parameters())
    assert model.style_token_embedding.weight.grad is not None
    sd = model.trainable_state_dict()
    assert sd and not any(k.startswith("gpt.") for k in sd)


def test_checkpoint_rebuilds_model_from_itself_alone(small_models, tmp_path):
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(small_models / "small_gpt2", gpt2)
    model = make(small_models, style_mode="embedding", styles=STYLES, normalize_prefix=True)
    model.cfg.gpt2_path = str(gpt2)
    torch.save(checkpoint_payload(model), tmp_path / "ckpt.pt")
    shutil.rmtree(gpt2)  # fine-tuned: the checkpoint alone must suffice
    loaded = load_model(tmp_path / "ckpt.pt")
    assert loaded.cfg.styles == STYLES and loaded.cfg.normalize_prefix
    feats = torch.randn(3, 512)
    dc = DecodeConfig(max_len=6)
    a = generate_captions(model.eval(), feats, STYLES, dc)
    b = generate_captions(loaded, feats, STYLES, dc)
    assert [x[0]["tokens"] for x in a] == [x[0]["tokens"] for x in b]
    with pytest.raises(UserError, match="closest valid"):
        generate_captions(loaded, feats[:1], ["Hapy"], dc)


def test_frozen_checkpoint_checks_gpt2_fingerprint(small_models, tmp_path):
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(small_models / "small_gpt2", gpt2)
    torch.manual_seed(0)
    model = build_model(ModelConfig(gpt2_path=str(gpt2), finetune_gpt2=False))
    torch.save(checkpoint_payload(model), tmp_path / "ckpt.pt")
    assert load_model(tmp_path / "ckpt.pt") is not None
    from transformers import GPT2LMHeadModel
    other = GPT2LMHeadModel.from_pretrained(str(gpt2))
    with torch.no_grad():
        other.transformer.wte.weight.add_(1.0)
    other.save_pretrained(str(gpt2))
    with pytest.raises(UserError, match="not the one this model was trained with"):
        load_model(tmp_path / "ckpt.pt")


def test_normalize_prefix_is_applied(small_models):
    model = make(small_models, normalize_prefix=True)
    x = torch.randn(2, 512)
    assert torch.allclose(model.prefix(x), model.prefix(x * 7.0), atol=1e-5)


def test_decoding_runs_in_eval_mode_and_restores_train_mode(small_models):
    """Issue 8 item 1: a model in train mode (dropout on) decodes exactly as in eval mode, comes back in
    train mode, and validation decoding (with_scores=False) keeps none of generate()'s per-step logits."""
    model = make(small_models, style_mode="embedding", styles=STYLES)
    feats = torch.randn(6, 512)
    styles = [STYLES[i % 3] for i in range(6)]
    dc = DecodeConfig(max_len=8)
    expected = [o[0]["tokens"] for o in generate_captions(model.eval(), feats, styles, dc)]
    seen = []
    real_generate = model.gpt.generate

    def recording_generate(*args, **kwargs):  # the real generate(), with its options recorded
        seen.append(kwargs.get("output_logits", False))
        return real_generate(*args, **kwargs)

    model.gpt.generate = recording_generate
    model.train()
    for _ in range(3):  # dropout would make these differ from each other and from eval mode
        outs = generate_captions(model, feats, styles, dc, with_scores=False)
        assert [o[0]["tokens"] for o in outs] == expected and all(o[0]["score"] is None for o in outs)
        assert model.training and model.gpt.training
    assert seen and not any(seen)


def test_checkpoint_with_code_is_refused_without_relaying_torchs_advice(tmp_path):
    """Issue 8 item 9: a checkpoint holding anything but tensors and plain containers is refused, and
    the message never suggests weights_only=False (that advice is the attack)."""
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"format": "stylecap-checkpoint-v1", "model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError) as err:
        load_model(tmp_path / "evil.pt")
    msg = str(err.value)
    assert "holds objects other than tensors and plain containers" in msg and "\n" not in msg
    assert "weights_only" not in msg and not (tmp_path / "pwned").exists()
