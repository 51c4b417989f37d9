"""export.py: a self-contained model folder (config.json + model.safetensors + tokenizer + README.md) that every
entry point takes wherever it takes a checkpoint, with the same captions."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import export
import predict
import train
from models import ModelConfig, build_model, checkpoint_payload, load_model
from models.model_folder import write_model_folder
from stylecap.utils import UserError
from tests.helpers import STYLES, synthetic_features


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def predictions(model_path, feats: Path, out: Path, *extra: str) -> list[dict]:
    assert predict.main(["--model_path", str(model_path), "--features", str(feats), "--style", "all",
                         "--output_path", str(out), "--decode", "beam", "--beam_size", "3", *extra]) == 0
    return read_jsonl(out / "predictions.jsonl")


@pytest.fixture(scope="module")
def feats(tmp_path_factory) -> Path:
    return synthetic_features(tmp_path_factory.mktemp("feats") / "test.pkl", n_images=3)


@pytest.fixture(scope="module")
def exported(styled_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "my_model"
    assert export.main([str(styled_ckpt), str(out)]) == 0
    return out


def test_export_then_predict_gives_the_checkpoints_captions(styled_ckpt, exported, feats, tmp_path, capsys):
    tok_files = set(torch.load(styled_ckpt, weights_only=True)["tokenizer_files"]) - {"config.json"}
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= tok_files
    assert {p.name for p in exported.iterdir()} == {"README.md", "config.json", "model.safetensors", *tok_files}
    from_ckpt = predictions(styled_ckpt, feats, tmp_path / "ckpt")
    from_folder = predictions(exported, feats, tmp_path / "folder")
    assert len(from_ckpt) == 3 * len(STYLES) and from_folder == from_ckpt  # captions, scores and tokens
    capsys.readouterr()
    assert predict.main(["--model_path", str(exported), "--list_styles"]) == 0
    assert capsys.readouterr().out.splitlines() == STYLES
    # load_model (app.py's loader) too: the same weights, tied embedding included
    a, b = load_model(styled_ckpt), load_model(exported)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b.gpt.lm_head.weight.data_ptr() == b.gpt.transformer.wte.weight.data_ptr()


def test_the_folder_holds_no_pickle_and_loads_with_safetensors_and_json_alone(exported):
    from safetensors import safe_open
    for p in exported.iterdir():
        head = p.read_bytes()[:4]
        assert not head.startswith((b"\x80", b"PK\x03\x04")), f"{p.name} looks like a pickle / torch.save zip"
        if p.name != "model.safetensors":
            p.read_text(encoding="utf-8")  # text files only
    cfg = json.loads((exported / "config.json").read_text())
    assert cfg["format"] == "stylecap-model-folder-v1" and cfg["styles"] == STYLES
    assert cfg["model"]["style_mode"] == "embedding" and "clip" in cfg["model"]
    assert cfg["tokenizer"]["end_token_id"] == 50256 and cfg["lm"]["config"]["model_type"] == "gpt2"
    with safe_open(str(exported / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert f.metadata()["format"] == "pt"
    assert {"clip_project.model.0.weight", "style_embedding.weight", "gpt.transformer.wte.weight"} <= keys
    assert cfg["tied_weights"] == {"gpt.lm_head.weight": "gpt.transformer.wte.weight"}
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: stylecap\n") and "\n---\n" in card and "Happy" in card


def test_a_frozen_gpt2_travels_in_the_folder(small_models, feats, tmp_path):
    """A frozen GPT-2 is not in the checkpoint (it names its folder); the export holds it: once that GPT-2
    folder is gone, the checkpoint no longer loads and the folder still captions as before."""
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(small_models / "small_gpt2", gpt2)
    torch.manual_seed(1)
    model = build_model(ModelConfig(gpt2_path=str(gpt2), style_mode="embedding", styles=STYLES, max_len=8,
                                    finetune_gpt2=False))
    ckpt = tmp_path / "frozen.pt"
    torch.save(checkpoint_payload(model), ckpt)
    assert export.main([str(ckpt), str(tmp_path / "folder")]) == 0
    before = predictions(ckpt, feats, tmp_path / "p1")
    shutil.rmtree(gpt2)
    with pytest.raises(UserError, match="GPT-2 folder"):
        load_model(ckpt)
    assert predictions(tmp_path / "folder", feats, tmp_path / "p2") == before
    cfg = json.loads((tmp_path / "folder" / "config.json").read_text())
    assert cfg["lm"]["fine_tuned"] is False and cfg["lm"]["fingerprint"] and "frozen in training" in \
        (tmp_path / "folder" / "README.md").read_text()


def test_eval_dir_metrics_and_command_go_into_the_card_and_the_folder_evaluates_the_same(styled_ckpt, feats,
                                                                                         tmp_path):
    common = ["--data_path", str(feats), "--no_java", "--train_captions", str(feats)]
    assert train.main(["--mode", "eval", "--model_path", str(styled_ckpt), *common,
                       "--output_path", str(tmp_path / "eval")]) == 0
    out = tmp_path / "model"
    assert export.main([str(styled_ckpt), str(out), "--eval_dir", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    card = (out / "README.md").read_text()
    assert f"{100 * metrics['CIDEr']:.2f}" in card and f"{100 * metrics['BLEU-4']:.2f}" in card
    assert f"--model_path {styled_ckpt}" in card and f"--model_path {out}" in card and str(feats) in card
    assert json.loads((out / "config.json").read_text())["eval"]["metrics"]["CIDEr"] == metrics["CIDEr"]
    # evaluating the folder gives the checkpoint's numbers
    assert train.main(["--mode", "eval", "--model_path", str(out), *common, "--output_path", str(tmp_path / "e2")]) == 0
    again = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert {k: again[k] for k in ("BLEU-4", "CIDEr", "ROUGE-L")} == {k: metrics[k] for k in ("BLEU-4", "CIDEr", "ROUGE-L")}


def test_bad_inputs_are_one_line_errors(styled_ckpt, exported, small_models, tmp_path):
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        export.main([str(styled_ckpt), str(exported)])
    (tmp_path / "eval").mkdir()
    with pytest.raises(UserError, match="has no metrics.json"):
        export.main([str(styled_ckpt), str(tmp_path / "a"), "--eval_dir", str(tmp_path / "eval")])
    (tmp_path / "eval" / "metrics.json").write_text("{}")
    (tmp_path / "eval" / "eval_config.json").write_text(json.dumps({"model_path": "other.pt", "checkpoint_step": 7,
                                                                     "model_config": {"prefix_len": 3}}))
    with pytest.raises(UserError, match="evaluated other.pt .step 7., not this checkpoint"):
        export.main([str(styled_ckpt), str(tmp_path / "a"), "--eval_dir", str(tmp_path / "eval")])
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))
    with pytest.raises(UserError, match="not a StyleCap or ClipCap checkpoint .a JPEG image"):
        export.main([str(tmp_path / "photo.jpg"), str(tmp_path / "a")])
    assert not (tmp_path / "a").exists()
    # folders that are not export.py's, as --model_path
    with pytest.raises(UserError, match="not a StyleCap model folder .* is a --gpt2_path"):
        load_model(small_models / "small_gpt2")  # a Hugging Face folder holds config.json too
    with pytest.raises(UserError, match="not an exported StyleCap model"):
        load_model(tmp_path / "eval")
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json is not valid JSON"):
        load_model(broken)
    cfg = json.loads((exported / "config.json").read_text())
    cfg["tokenizer"]["files"].append("../../outside.json")  # a shared folder must not read or write elsewhere
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="lists the tokenizer file '../../outside.json', which is not a plain file"):
        load_model(broken)
    (broken / "config.json").write_text((exported / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_model(broken)


def test_an_interrupted_export_leaves_nothing(styled_ckpt, exported, tmp_path):
    model = load_model(exported)
    with pytest.raises(FileNotFoundError):  # a tokenizer file name in a missing subfolder fails mid-write
        write_model_folder(tmp_path / "out", model, {"vocab.json": "{}", "no/such.json": "{}"}, {}, "card")
    assert list(tmp_path.iterdir()) == []
    out = write_model_folder(tmp_path / "out", model, {"vocab.json": "{}"}, {}, "card one")
    with pytest.raises(FileNotFoundError):  # --overwrite that fails keeps the old folder
        write_model_folder(out, model, {"no/such.json": "{}"}, {}, "card two", overwrite=True)
    assert (out / "README.md").read_text() == "card one" and [p.name for p in tmp_path.iterdir()] == ["out"]
    write_model_folder(out, model, {"vocab.json": "{}"}, {}, "card two", overwrite=True)
    assert (out / "README.md").read_text() == "card two" and [p.name for p in tmp_path.iterdir()] == ["out"]


def train_args(small_models, feats, out, *extra):
    return ["--data_path", str(feats), "--gpt2_path", str(small_models / "small_gpt2"), "--output_path", str(out),
            "--bs_train", "8", "--epochs", "1", "--warmup_steps", "1", "--num_samples", "0", "--eval_subset", "0",
            "--style_mode", "embedding", "--max_len", "8", *extra]


def test_train_resume_from_a_folder_starts_a_new_run_from_its_weights(small_models, tmp_path):
    """--resume FOLDER: a new run (step 0, fresh optimizer) whose initial weights are the folder's. With
    --lr 0 its checkpoint holds exactly the folder's weights; settings that change the weights' shapes are
    refused, and so is a run folder that already has checkpoints."""
    from stylecap.features import load_features
    from stylecap.train.data import style_vocabulary
    feats = synthetic_features(tmp_path / "train.pkl", n_images=24)
    torch.manual_seed(5)  # a model of the data's styles, in the order a run on that data has them
    model = build_model(ModelConfig(gpt2_path=str(small_models / "small_gpt2"), style_mode="embedding", max_len=8,
                                    styles=style_vocabulary(load_features(feats))))
    torch.save(checkpoint_payload(model), tmp_path / "ckpt.pt")
    exported = tmp_path / "folder"
    assert export.main([str(tmp_path / "ckpt.pt"), str(exported)]) == 0
    run = tmp_path / "run"
    assert train.main(train_args(small_models, feats, run, "--finetune_gpt2", "--lr", "0",
                                 "--resume", str(exported))) == 0
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    folder = model.state_dict()
    assert ck["train_state"]["step"] > 0 and ck["model"].keys() == folder.keys()
    assert all(torch.equal(v, folder[k]) for k, v in ck["model"].items())
    with pytest.raises(UserError, match="already has checkpoints; pass --resume auto"):
        train.main(train_args(small_models, feats, run, "--finetune_gpt2", "--resume", str(exported)))
    with pytest.raises(UserError, match="the folder's model has prefix_len 10 .this run: 4."):
        train.main(train_args(small_models, feats, tmp_path / "r2", "--finetune_gpt2", "--prefix_len", "4",
                              "--resume", str(exported)))
    with pytest.raises(UserError, match="freezes the language model .* pass --finetune_gpt2"):
        train.main(train_args(small_models, feats, tmp_path / "r3", "--resume", str(exported)))
