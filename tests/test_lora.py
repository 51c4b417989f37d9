"""LoRA adapters on the frozen LM (issue 18 §3, models/lora.py): what trains, what checkpoints hold, exact resume,
merging for inference, eval mode and predict.py, and the flags' errors. Small random models, offline."""
from __future__ import annotations

import json
import shutil
from functools import partial

import pytest
import torch

import predict
import train
from models import ModelConfig, build_model, load_model
from models.captioner import checkpoint_payload, gpt2_fingerprint, model_from_checkpoint, trainable_parameters
from models.decoding import DecodeConfig, eval_mode, generate_captions
from models.lora import adapter_parameters, is_adapter_key, merge_lora
from stylecap.features import load_features
from stylecap.utils import UserError, run_main
from tests.helpers import STYLES, synthetic_features
from tests.test_train import CtrlCAtForward

R = 4  # the adapters' rank in these tests


def lora_args(small_models, data, out, *extra) -> list[str]:
    """A 2-epoch LoRA run (5 steps an epoch), adapter dropout on: the resume must restore its RNG stream."""
    return ["--data_path", str(data), "--gpt2_path", str(small_models / "small_gpt2"), "--output_path", str(out),
            "--bs_train", "8", "--bs_eval", "16", "--lr", "1e-3", "--warmup_steps", "2", "--num_samples", "0",
            "--eval_subset", "0", "--seed", "3", "--epochs", "2", "--max_checkpoint_num", "0",
            "--max_len", "12", "--lora_r", str(R), "--lora_dropout", "0.1", *extra]


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return synthetic_features(tmp_path_factory.mktemp("feat") / "train.pkl", n_images=36)


@pytest.fixture(scope="module")
def lora_run(small_models, features, tmp_path_factory):
    """An uninterrupted LoRA run's folder."""
    out = tmp_path_factory.mktemp("lora") / "run"
    assert train.main(lora_args(small_models, features, out)) == 0
    return out


def small_lora_model(small_models, **cfg) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = {"style_mode": "embedding", "styles": STYLES, "finetune_gpt2": False, "max_len": 8, **cfg}
    return build_model(ModelConfig(gpt2_path=str(small_models / "small_gpt2"), **cfg))


def adapter_count(lm: torch.nn.Module, targets: list[str], r: int) -> int:
    """r * (d_in + d_out) for every module of ``lm`` that a target names (peft's suffix rule)."""
    from transformers.pytorch_utils import Conv1D
    n = 0
    for name, m in lm.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets) and isinstance(m, (Conv1D, torch.nn.Linear)):
            d_in, d_out = (m.nx, m.nf) if isinstance(m, Conv1D) else (m.in_features, m.out_features)
            n += r * (d_in + d_out)
    return n


def lora_b(model) -> list[torch.Tensor]:
    return [p for n, p in model.named_parameters() if ".lora_B." in n]


# ---------------------------------------------------------------------------- what trains
def test_trainable_parameters_are_the_adapters_the_mapper_and_the_style_embedding(small_models):
    frozen = small_lora_model(small_models)
    rng_after_frozen = torch.get_rng_state()
    model = small_lora_model(small_models, lora_r=R)
    assert torch.equal(torch.get_rng_state(), rng_after_frozen)  # the adapters draw from a fork of the RNG
    gpt2 = ["c_attn", "attn.c_proj"]  # GPT-2's default targets: q,k,v (fused) and the attention's output
    assert model.cfg.lora_targets == gpt2  # resolved and recorded in the config (and so in checkpoints)
    from transformers import GPT2LMHeadModel
    base = GPT2LMHeadModel.from_pretrained(str(small_models / "small_gpt2"))
    n_adapters = adapter_count(base, gpt2, R)
    e, layers = base.config.n_embd, base.config.n_layer
    assert n_adapters == layers * R * ((e + 3 * e) + (e + e))  # 2 layers x (c_attn E->3E, attn.c_proj E->E)
    assert adapter_parameters(model) == n_adapters
    mapper = sum(p.numel() for p in model.clip_project.parameters())
    style = model.style_embedding.weight.numel()
    assert trainable_parameters(model) == n_adapters + mapper + style
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(is_adapter_key(n) or n.startswith(("clip_project.", "style_embedding.")) for n in trained)
    assert type(model.gpt.transformer.h[0].mlp.c_proj).__name__ == "Conv1D"  # the MLP's c_proj is not adapted
    # B starts at zero: a fresh LoRA model computes exactly what the frozen model computes
    ids, mask = torch.tensor([[11, 12, 13]]), torch.ones(1, 3, dtype=torch.long)
    x, style_ids = torch.randn(1, 512), torch.tensor([1])
    with eval_mode(frozen), eval_mode(model):
        assert torch.equal(frozen(x, style_ids, ids, mask).logits, model(x, style_ids, ids, mask).logits)
    assert ModelConfig.from_dict({"gpt2_path": "x"}).lora_r == 0  # configs saved before LoRA load as no LoRA


def test_training_moves_adapters_and_mapper_but_not_gpt2s_weights(small_models, tmp_path):
    from stylecap.train.data import CaptionDataset, collate, encode_data
    from stylecap.train.engine import TrainState, train_one_epoch
    model = small_lora_model(small_models, lora_r=R, lora_dropout=0.1)
    data = load_features(synthetic_features(tmp_path / "f.pkl", n_images=12))
    ds = CaptionDataset(data["clip_embedding"], encode_data(data, model.tokenizer, max_len=8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=partial(collate, pad_id=model.tokenizer.pad_id))
    train_one_epoch(model, loader, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), TrainState(),
                    device=torch.device("cpu"), show_progress=False)
    after = model.state_dict()
    base = [k for k in after if k.startswith("gpt.") and not is_adapter_key(k)]
    assert base and all(torch.equal(before[k], after[k]) for k in base)  # GPT-2 itself untouched
    moved = [k for k in after if not torch.equal(before[k], after[k])]
    assert any(".lora_B." in k for k in moved) and any(".lora_A." in k for k in moved)
    assert any(k.startswith("clip_project.") for k in moved) and "style_embedding.weight" in moved


# ---------------------------------------------------------------------------- checkpoints and resume
def test_checkpoint_holds_adapters_mapper_and_style_and_no_gpt2_weights(small_models, lora_run):
    ck = torch.load(lora_run / "checkpoints/last.pt", weights_only=True)
    gpt = [k for k in ck["model"] if k.startswith("gpt.")]
    assert gpt and all(is_adapter_key(k) for k in gpt)
    assert len(gpt) == 2 * 2 * 2  # 2 layers x (c_attn, attn.c_proj) x (A, B): no base weight, no buffer
    assert ck["config"]["lora_r"] == R and ck["config"]["lora_dropout"] == 0.1
    assert ck["config"]["lora_alpha"] == 16.0 and ck["config"]["lora_targets"] == ["c_attn", "attn.c_proj"]
    assert not ck["config"]["finetune_gpt2"]
    assert ck["gpt2_fingerprint"] == gpt2_fingerprint(small_models / "small_gpt2")  # base weights: the folder's
    # the optimizer holds state for exactly what trains, and config.json counts it
    n_stored = sum(v.numel() for v in ck["model"].values())
    assert json.loads((lora_run / "config.json").read_text())["trainable_parameters"] == n_stored
    assert sum(len(g["params"]) for g in ck["optimizer"]["param_groups"]) == len(ck["model"])
    assert all(bool(b.abs().sum() > 0) for b in lora_b(model_from_checkpoint(ck)))  # the adapters learned


def test_interrupted_and_resumed_lora_run_equals_the_uninterrupted_one(small_models, features, lora_run, tmp_path):
    argv = lora_args(small_models, features, tmp_path / "b")
    with CtrlCAtForward(4):  # Ctrl-C during step 4 of 10: that step finishes, a checkpoint is saved
        assert train.main(argv) == 130
    assert train.main(argv + ["--resume", "auto"]) == 0
    a = torch.load(lora_run / "checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["train_state"]["step"] == b["train_state"]["step"] == 10


def test_resume_with_other_lora_settings_is_refused(small_models, features, lora_run, tmp_path):
    argv = lora_args(small_models, features, tmp_path / "c") + ["--resume", str(lora_run / "checkpoints/last.pt")]
    with pytest.raises(UserError, match="--lora_r 4, this run has --lora_r 8"):
        train.main([*argv[:-2], "--lora_r", "8", *argv[-2:]])


# ---------------------------------------------------------------------------- inference: merged adapters
def test_merged_model_captions_equal_the_unmerged_ones(lora_run, features):
    from peft.tuners.tuners_utils import BaseTunerLayer
    path = lora_run / "checkpoints/last.pt"
    unmerged, merged = load_model(path, merge_lora=False), load_model(path)  # load_model merges by default
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules()) and adapter_parameters(merged) == 0
    assert trainable_parameters(merged) == trainable_parameters(unmerged)  # eval_config.json = config.json
    data = load_features(features)
    feats, styles = data["clip_embedding"][:6], [STYLES[i % 3] for i in range(6)]
    for dc in (DecodeConfig(), DecodeConfig(strategy="beam", beam_size=3)):
        a = generate_captions(unmerged, feats, styles, dc)
        b = generate_captions(merged, feats, styles, dc)
        assert [o[0]["tokens"] for o in a] == [o[0]["tokens"] for o in b]
    ids, mask, style_ids = torch.tensor([[11, 12, 13]] * 2), torch.ones(2, 3, dtype=torch.long), torch.tensor([0, 2])
    logits = [m(feats[:2], style_ids, ids, mask).logits for m in (unmerged, merged)]
    torch.testing.assert_close(logits[0], logits[1], atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        for b in lora_b(unmerged):
            b.zero_()  # the adapters off: GPT-2 as the folder has it
    assert (logits[0] - unmerged(feats[:2], style_ids, ids, mask).logits).abs().max() > 1e-2  # they mattered
    with pytest.raises(RuntimeError, match="inference only"):
        checkpoint_payload(merged)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llama_and_qwen2_get_adapters_on_qkvo_and_merge(small_models, arch):
    """The per-architecture defaults, on tiny random Llama / Qwen2 LMs (the decoders of issue 18 §2)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from models.captioner import StyleCapModel
    from models.tokenizer import CaptionTokenizer, load_hf_tokenizer
    cfg = AutoConfig.for_model(arch, vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(cfg)
    qkvo = ["q_proj", "k_proj", "v_proj", "o_proj"]
    expected = adapter_count(lm, qkvo, R)  # before the adapters wrap the layers
    mc = ModelConfig(gpt2_path=str(small_models / "small_gpt2"), finetune_gpt2=False, lora_r=R)
    model = StyleCapModel(mc, lm, CaptionTokenizer(load_hf_tokenizer(small_models / "small_gpt2"), "none", []))
    assert mc.lora_targets == qkvo
    assert adapter_parameters(model) == expected == 2 * R * (64 + 48 + 48 + 64)  # per layer q, k, v, o (k, v: 32->16)
    with torch.no_grad():
        for b in lora_b(model):
            b.normal_(0, 0.1)
    x = torch.randn(2, 5, 32)
    with eval_mode(model):
        before = model.gpt(inputs_embeds=x).logits
        merge_lora(model)
        torch.testing.assert_close(model.gpt(inputs_embeds=x).logits, before, atol=1e-4, rtol=1e-4)


def test_eval_mode_and_predict_on_a_lora_checkpoint(lora_run, features, tmp_path):
    ckpt = lora_run / "checkpoints/last.pt"
    feats = synthetic_features(tmp_path / "test.pkl", n_images=2)
    out = tmp_path / "eval"
    assert train.main(["--mode", "eval", "--model_path", str(ckpt), "--data_path", str(feats), "--output_path",
                       str(out), "--no_java", "--train_captions", str(features)]) == 0
    assert json.loads((out / "metrics.json").read_text())["counts"]["scored"] == 2
    trained = json.loads((lora_run / "config.json").read_text())["trainable_parameters"]
    assert json.loads((out / "eval_config.json").read_text())["trainable_parameters"] == trained
    assert predict.main(["--model_path", str(ckpt), "--features", str(feats), "--style", "all",
                         "--output_path", str(tmp_path / "pred")]) == 0
    preds = [json.loads(line) for line in (tmp_path / "pred/predictions.jsonl").read_text().splitlines()]
    unmerged = load_model(ckpt, merge_lora=False)
    data = load_features(feats)
    want = generate_captions(unmerged, data["clip_embedding"][[0] * 3], STYLES, DecodeConfig(), with_scores=False)
    got = {p["style"]: p["caption"] for p in preds if p["image"] == "img000"}
    assert got == {s: o[0]["caption"] for s, o in zip(STYLES, want)}  # predict.py's merged model = unmerged


def test_lora_checkpoint_refuses_another_gpt2(lora_run, small_models, tmp_path):
    """Base weights come from the folder: a LoRA checkpoint checks the folder's fingerprint as a frozen one."""
    from transformers import GPT2LMHeadModel
    other = tmp_path / "gpt2"
    shutil.copytree(small_models / "small_gpt2", other)
    lm = GPT2LMHeadModel.from_pretrained(str(other))
    with torch.no_grad():
        lm.transformer.h[0].attn.c_attn.weight.mul_(1.01)
    lm.save_pretrained(str(other))
    with pytest.raises(UserError, match="fingerprint"):
        load_model(lora_run / "checkpoints/last.pt", gpt2_path=str(other))


# ---------------------------------------------------------------------------- bad flags
@pytest.mark.parametrize("extra, message", [
    (["--lora_r", "8", "--finetune_gpt2"], "pass one of them"),
    (["--lora_alpha", "32"], "--lora_alpha needs --lora_r"),
    (["--lora_targets", "c_attn", "--lora_dropout", "0.1"], "--lora_dropout, --lora_targets needs --lora_r"),
    (["--lora_r", "-2"], "--lora_r -2 is negative"),
    (["--lora_r", "8", "--lora_dropout", "1.5"], "outside [0, 1)"),
    (["--lora_r", "8", "--lora_alpha", "0"], "must be positive"),
    (["--lora_r", "8", "--lora_targets", ","], "names no module"),
])
def test_bad_lora_flags_are_one_line_user_errors(extra, message, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["train.py"])
    with pytest.raises(SystemExit) as e:
        run_main(lambda: train.main(["--data_path", "never_read.pkl", *extra]))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("train.py: error: ") and message in err


def test_unknown_lora_target_names_the_models_layers(small_models):
    with pytest.raises(UserError, match=r"--lora_targets q_proj: no such module in the gpt2 model; .*c_attn") as e:
        small_lora_model(small_models, lora_r=R, lora_targets=["c_attn", "q_proj"])
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"--lora_targets ln_1: Target module LayerNorm.* is not supported"):
        small_lora_model(small_models, lora_r=R, lora_targets=["ln_1"])
    with pytest.raises(UserError, match="keeps its LM frozen"):
        small_lora_model(small_models, lora_r=R, finetune_gpt2=True)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lora_on_llama_and_qwen2_folders_trains_saves_adapters_and_merges(arch, tmp_path):
    """--lm_path with a tiny random Llama / Qwen2 folder (issue 18 §2's decoders) and --lora_r: the checkpoint
    holds the q, k, v, o adapters only, and the merged model decodes as the unmerged one."""
    from stylecap.demo import small_models as sm
    lm = tmp_path / arch
    (sm.make_llama if arch == "llama" else sm.make_qwen2)(lm, seed=0)
    data = synthetic_features(tmp_path / "train.pkl", n_images=16)
    out = tmp_path / "run"
    assert train.main(["--data_path", str(data), "--lm_path", str(lm), "--output_path", str(out), "--bs_train", "4",
                       "--lr", "1e-3", "--warmup_steps", "2", "--num_samples", "0", "--eval_subset", "0", "--epochs",
                       "1", "--max_len", "12", "--lora_r", str(R)]) == 0
    ck = torch.load(out / "checkpoints/last.pt", weights_only=True)
    gpt = [k for k in ck["model"] if k.startswith("gpt.")]
    qkvo = ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert gpt and all(is_adapter_key(k) for k in gpt) and ck["config"]["lora_targets"] == qkvo
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in gpt} == set(qkvo)
    path = out / "checkpoints/last.pt"
    unmerged, merged = load_model(path, merge_lora=False), load_model(path)
    feats = load_features(data)["clip_embedding"][:4]
    styles = [STYLES[i % 3] for i in range(4)]
    a, b = (generate_captions(m, feats, styles, DecodeConfig(), with_scores=False) for m in (unmerged, merged))
    assert [o[0]["tokens"] for o in a] == [o[0]["tokens"] for o in b]
