"""predict.py and train.py --mode eval through their real entry points, with a small saved model."""
from __future__ import annotations

import json
import shutil

import pytest

import predict
import train
from stylecap.utils import UserError
from tests.helpers import STYLES, synthetic_features


@pytest.fixture()
def image_dir(demo_data, tmp_path):
    src = sorted((demo_data / "personality" / "yfcc_images").glob("*.jpg"))[:3]
    d = tmp_path / "images"
    d.mkdir()
    for p in src:
        shutil.copy(p, d / p.name)
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.jpg").write_text("not an image")
    return d, [p.name for p in src]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_folder_skips_bad_images_and_writes_outputs(small_models, styled_ckpt, image_dir, tmp_path):
    d, good = image_dir
    out = tmp_path / "out"
    rc = predict.main(["--model_path", str(styled_ckpt), "--image_path", str(d), "--clip_model_path",
                       str(small_models / "small_clip.pt"), "--style", "Happy", "--output_path", str(out),
                       "--num_workers", "0", "--save_images", "--decode", "beam", "--beam_size", "3",
                       "--num_generate", "2"])
    assert rc == 0
    preds = read_jsonl(out / "predictions.jsonl")
    assert sorted({p["image"] for p in preds}) == sorted(good)          # the two bad files were skipped
    assert len(preds) == 2 * len(good) and {p["style"] for p in preds} == {"Happy"}
    assert all(isinstance(p["score"], float) and p["score"] < 0 for p in preds)
    lines = (out / "caption_generate.txt").read_text().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == [p["image"] for p in preds]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(good)
    assert "empty.jpg" in (out / "predict.log").read_text()              # skipped with a warning


def test_predict_unknown_style_names_closest(small_models, styled_ckpt, image_dir, tmp_path):
    d, _ = image_dir
    with pytest.raises(UserError, match=r"unknown style 'Hapy'.*'Happy'"):
        predict.main(["--model_path", str(styled_ckpt), "--image_path", str(d), "--clip_model_path",
                      str(small_models / "small_clip.pt"), "--style", "Hapy", "--output_path", str(tmp_path)])


def test_predict_style_all_on_feature_file(styled_ckpt, tmp_path):
    feats = synthetic_features(tmp_path / "f.pkl", n_images=4)
    out = tmp_path / "out"
    assert predict.main(["--model_path", str(styled_ckpt), "--features", str(feats), "--style", "all",
                         "--output_path", str(out)]) == 0
    preds = read_jsonl(out / "predictions.jsonl")
    assert len(preds) == 4 * len(STYLES)
    assert {(p["image"], p["style"]) for p in preds} == {(f"img{i:03d}", s) for i in range(4) for s in STYLES}


def test_train_eval_mode_writes_predictions_metrics_and_report(styled_ckpt, tmp_path):
    feats = synthetic_features(tmp_path / "test.pkl", n_images=6)
    out = tmp_path / "eval"
    assert train.main(["--mode", "eval", "--model_path", str(styled_ckpt), "--data_path", str(feats),
                       "--output_path", str(out), "--no_java", "--train_captions", str(feats)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for k in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert isinstance(metrics[k], float)
    assert metrics["METEOR"] is None and "Java" in metrics["skipped"]["METEOR"]
    assert metrics["counts"]["scored"] == 6
    assert len(read_jsonl(out / "predictions.jsonl")) == 6  # each image in its own style
    assert "<table" in (out / "report.html").read_text()
    assert list(out.glob("events.out.tfevents.*"))


def _eval_outputs(out) -> dict:
    """predictions, metrics and eval config of an eval folder, the folder's own name replaced."""
    return {name: (out / name).read_text().replace(str(out), "OUT")
            for name in ("predictions.jsonl", "caption_generate.txt", "metrics.json", "eval_config.json")}


def test_evaluate_model_path_equals_train_eval_mode(styled_ckpt, tmp_path):
    """Issue 16: `evaluate.py --model_path --data_path --output_path` runs what `train.py --mode eval` runs:
    the same files with the same contents (sampling too: both default --seed to 42, --bs_eval to 64)."""
    import evaluate
    feats = synthetic_features(tmp_path / "test.pkl", n_images=6)
    common = ["--model_path", str(styled_ckpt), "--data_path", str(feats), "--no_java", "--train_captions",
              str(feats), "--decode", "sample", "--topk", "5", "--num_generate", "2"]
    assert train.main(["--mode", "eval", *common, "--output_path", str(tmp_path / "by_train")]) == 0
    assert evaluate.main([*common, "--output_path", str(tmp_path / "by_evaluate")]) == 0
    t, e = _eval_outputs(tmp_path / "by_train"), _eval_outputs(tmp_path / "by_evaluate")
    assert t == e and len(read_jsonl(tmp_path / "by_evaluate" / "predictions.jsonl")) == 12
    assert json.loads(e["metrics.json"])["counts"]["scored"] == 6
    for out in ("by_train", "by_evaluate"):
        assert (tmp_path / out / "report.html").is_file() and list((tmp_path / out).glob("events.out.tfevents.*"))


def test_decode_batch_size_is_bs_eval_and_batch_size_stays(styled_ckpt, tmp_path):
    """Issue 16: one name (--bs_eval) for the decode batch size; predict.py's --batch_size is an alias."""
    import evaluate
    for parser in (predict.get_parser(), evaluate.build_parser(), train.get_parser()):
        assert parser.parse_args(["--model_path", "m.pt", "--bs_eval", "7"]).bs_eval == 7
    assert predict.get_parser().parse_args(["--model_path", "m.pt", "--batch_size", "7"]).bs_eval == 7
    feats = synthetic_features(tmp_path / "f.pkl", n_images=5)
    outs = []
    for flag in ("--bs_eval", "--batch_size"):
        out = tmp_path / flag.strip("-")
        assert predict.main(["--model_path", str(styled_ckpt), "--features", str(feats), "--style", "all",
                             "--output_path", str(out), flag, "3"]) == 0
        outs.append((out / "predictions.jsonl").read_text())
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == 5 * len(STYLES)


def test_eval_config_counts_a_tied_embedding_once(small_models, styled_ckpt, tmp_path):
    """Issue 17 §1: eval_config.json's trainable_parameters summed every tensor of the state dict, so GPT-2's
    tied input/output embedding counted twice (14.5M where training said 8.1M). It now counts each parameter
    once, from the model, with the function training uses."""
    from models import load_model
    from models.decoding import DecodeConfig
    from stylecap.eval.evaluation import write_eval_config
    model = load_model(styled_ckpt)
    wte = model.gpt.get_input_embeddings().weight
    assert model.gpt.get_output_embeddings().weight is wte  # the tie this is about
    once = sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
    write_eval_config(tmp_path, model, {"train_args": {}, "model_config": {}}, styled_ckpt, tmp_path / "f.pkl",
                      DecodeConfig())
    counted = json.loads((tmp_path / "eval_config.json").read_text())["trainable_parameters"]
    assert counted == once
    assert sum(v.numel() for v in model.trainable_state_dict().values()) == once + wte.numel()  # the old figure
    frozen = build_frozen(small_models)
    write_eval_config(tmp_path, frozen, {"train_args": {}, "model_config": {}}, styled_ckpt, tmp_path / "f.pkl",
                      DecodeConfig())
    counted = json.loads((tmp_path / "eval_config.json").read_text())["trainable_parameters"]
    assert counted == sum(p.numel() for p in frozen.clip_project.parameters()) + frozen.style_embedding.weight.numel()


def build_frozen(small_models):
    from models import ModelConfig, build_model
    return build_model(ModelConfig(gpt2_path=str(small_models / "small_gpt2"), style_mode="embedding",
                                   styles=STYLES, finetune_gpt2=False, max_len=8))
