"""predict.py and train.py --mode eval through their real entry points, with a small saved model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

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
    settings = {"train_args": {}, "model_config": {}, "step": None}  # as checkpoint_settings gives them
    write_eval_config(tmp_path, model, settings, styled_ckpt, tmp_path / "f.pkl", DecodeConfig())
    counted = json.loads((tmp_path / "eval_config.json").read_text())["trainable_parameters"]
    assert counted == once
    assert sum(v.numel() for v in model.trainable_state_dict().values()) == once + wte.numel()  # the old figure
    frozen = build_frozen(small_models)
    write_eval_config(tmp_path, frozen, settings, styled_ckpt, tmp_path / "f.pkl", DecodeConfig())
    counted = json.loads((tmp_path / "eval_config.json").read_text())["trainable_parameters"]
    assert counted == sum(p.numel() for p in frozen.clip_project.parameters()) + frozen.style_embedding.weight.numel()


def build_frozen(small_models):
    from models import ModelConfig, build_model
    return build_model(ModelConfig(gpt2_path=str(small_models / "small_gpt2"), style_mode="embedding",
                                   styles=STYLES, finetune_gpt2=False, max_len=8))


# ---- issue 17 §3: predict.py -----------------------------------------------------------------------------
def _run(ckpt, out, *extra):
    return predict.main(["--model_path", str(ckpt), "--output_path", str(out), "--num_workers", "0", *extra])


def test_style_names_match_case_insensitively_and_suggest_substrings_first(styled_ckpt):
    from models import load_model
    from stylecap.eval.captioning import resolve_styles
    model = load_model(styled_ckpt)
    assert resolve_styles(model, ["happy", "GLOOMY", "Happy"]) == ["Happy", "Gloomy"]  # canonical, once each
    with pytest.raises(UserError) as e:
        resolve_styles(model, ["Cynical"])
    assert str(e.value).startswith("unknown style 'Cynical'; closest valid: ['Cynical (Doubtful, Skeptical)',")
    with pytest.raises(UserError, match=r"unknown style 'Hapy'; closest valid: \['Happy'"):
        resolve_styles(model, ["Hapy"])


def test_predict_list_styles_prints_them_and_exits(styled_ckpt, tmp_path, capsys):
    assert _run(styled_ckpt, tmp_path / "out", "--list_styles") == 0
    assert capsys.readouterr().out.splitlines() == STYLES
    assert not (tmp_path / "out").exists()  # nothing captioned, nothing written


def test_predict_several_styles_caption_each_with_a_style_column(styled_ckpt, tmp_path):
    feats = synthetic_features(tmp_path / "f.pkl", n_images=2)
    assert _run(styled_ckpt, tmp_path / "two", "--features", str(feats), "--style", "Happy", "--style",
                "gloomy") == 0
    preds = read_jsonl(tmp_path / "two" / "predictions.jsonl")
    assert [(p["image"], p["style"]) for p in preds] == [("img000", "Happy"), ("img000", "Gloomy"),
                                                         ("img001", "Happy"), ("img001", "Gloomy")]
    lines = (tmp_path / "two" / "caption_generate.txt").read_text().splitlines()
    assert [ln.split("\t") for ln in lines] == [[p["image"], p["style"], p["caption"]] for p in preds]
    assert _run(styled_ckpt, tmp_path / "one", "--features", str(feats), "--style", "Happy") == 0
    lines = (tmp_path / "one" / "caption_generate.txt").read_text().splitlines()
    assert [len(ln.split("\t")) for ln in lines] == [2, 2]  # one style: image<TAB>caption, as before


@pytest.fixture()
def frozen_ckpt_without_gpt2(small_models, tmp_path):
    """A checkpoint of a frozen-GPT-2 model whose GPT-2 folder is gone: loading its GPT-2 would fail."""
    from models import ModelConfig, build_model, checkpoint_payload
    gpt2 = tmp_path / "gpt2_gone"
    shutil.copytree(small_models / "small_gpt2", gpt2)
    model = build_model(ModelConfig(gpt2_path=str(gpt2), style_mode="embedding", styles=STYLES,
                                    finetune_gpt2=False, max_len=8))
    path = tmp_path / "frozen.pt"
    torch.save(checkpoint_payload(model), path)
    shutil.rmtree(gpt2)
    return path


def test_predict_checks_styles_before_loading_clip_or_gpt2(frozen_ckpt_without_gpt2, image_dir, tmp_path):
    """A wrong style name fails right after the checkpoint is read: neither the (missing) GPT-2 folder nor the
    (missing) CLIP is touched, so the style error, not theirs, is what the user sees; no folder is left."""
    d, _ = image_dir
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"unknown style 'Nope'"):
        _run(frozen_ckpt_without_gpt2, out, "--image_path", str(d), "--style", "Nope",
             "--clip_model_path", str(tmp_path / "no_clip.pt"))
    assert not out.exists()
    with pytest.raises(UserError, match="GPT-2 folder"):  # a valid style gets as far as GPT-2
        _run(frozen_ckpt_without_gpt2, out, "--image_path", str(d), "--style", "happy")
    assert not out.exists()  # a failed run leaves no empty log or folder


def test_predict_log_preview_and_plurals(styled_ckpt, tmp_path):
    feats = synthetic_features(tmp_path / "f.pkl", n_images=4)
    out = tmp_path / "out"
    assert _run(styled_ckpt, out, "--features", str(feats), "--style", "all", "--decode", "beam",
                "--beam_size", "2") == 0
    log = (out / "predict.log").read_text()
    assert f"... {4 * len(STYLES) - 5} more" in log  # the preview shows 5
    assert "predict.py --model_path" in log and str(styled_ckpt) in log and "--style all" in log  # the command
    assert "model: " in log and "decode: beam" in log and "beam_size=2" in log
    assert f"{4 * len(STYLES)} captions ->" in log
    one = synthetic_features(tmp_path / "one.pkl", n_images=1)
    assert _run(styled_ckpt, tmp_path / "o1", "--features", str(one), "--style", "Happy") == 0
    log = (tmp_path / "o1" / "predict.log").read_text()
    assert "1 caption ->" in log and " more" not in log


def test_predict_allow_truncated(styled_ckpt, small_models, image_dir, tmp_path):
    d, good = image_dir
    cut = tmp_path / "cut"
    cut.mkdir()
    data = (d / good[0]).read_bytes()
    (cut / "half.jpg").write_bytes(data[:len(data) * 2 // 3])
    (cut / "ok.jpg").write_bytes((d / good[1]).read_bytes())
    clip = ["--clip_model_path", str(small_models / "small_clip.pt")]
    assert _run(styled_ckpt, tmp_path / "a", "--image_path", str(cut), "--style", "Happy", *clip) == 0
    assert [p["image"] for p in read_jsonl(tmp_path / "a" / "predictions.jsonl")] == ["ok.jpg"]
    assert "skipped" in (tmp_path / "a" / "predict.log").read_text()  # with the advice to pass --allow_truncated
    assert _run(styled_ckpt, tmp_path / "b", "--image_path", str(cut), "--style", "Happy", "--allow_truncated",
                *clip) == 0
    assert [p["image"] for p in read_jsonl(tmp_path / "b" / "predictions.jsonl")] == ["half.jpg", "ok.jpg"]


def test_predict_model_path_not_a_checkpoint_or_a_run_folder(styled_ckpt, image_dir, tmp_path):
    d, good = image_dir
    with pytest.raises(UserError, match=r"is not a StyleCap or ClipCap checkpoint") as e:
        _run(d / good[0], tmp_path / "x", "--image_path", str(d), "--style", "Happy")
    assert "pickle" not in str(e.value) and not (tmp_path / "x").exists()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match=r"no checkpoints/best\.pt"):
        _run(run, tmp_path / "x", "--list_styles")
    shutil.copy(styled_ckpt, run / "checkpoints" / "best.pt")
    feats = synthetic_features(tmp_path / "f.pkl", n_images=1)
    assert _run(run, tmp_path / "y", "--features", str(feats), "--style", "Happy") == 0
    assert f"model: {run / 'checkpoints' / 'best.pt'} (the run folder's best checkpoint)" in \
        (tmp_path / "y" / "predict.log").read_text()


def test_predict_subfolders_reported_or_recursive(styled_ckpt, small_models, image_dir, tmp_path):
    d, good = image_dir
    (d / "sub").mkdir()
    shutil.copy(d / good[0], d / "sub" / "inner.jpg")
    clip = ["--clip_model_path", str(small_models / "small_clip.pt"), "--style", "Happy"]
    assert _run(styled_ckpt, tmp_path / "a", "--image_path", str(d), *clip) == 0
    assert "1 subfolder not searched" in (tmp_path / "a" / "predict.log").read_text()
    (tmp_path / "only_sub").mkdir()
    shutil.copytree(d / "sub", tmp_path / "only_sub" / "sub")
    with pytest.raises(UserError, match=r"no images found \(1 subfolder not searched .*--recursive"):
        _run(styled_ckpt, tmp_path / "c", "--image_path", str(tmp_path / "only_sub"), *clip)
    assert {p["image"] for p in read_jsonl(tmp_path / "a" / "predictions.jsonl")} == set(good)
    assert _run(styled_ckpt, tmp_path / "b", "--image_path", str(d), "--recursive", "--save_images", *clip) == 0
    assert {p["image"] for p in read_jsonl(tmp_path / "b" / "predictions.jsonl")} == {*good, "sub/inner.jpg"}
    assert len(list((tmp_path / "b" / "images").iterdir())) == len(good) + 1


def test_docs_demo_predict_example_runs_as_printed(styled_ckpt, small_models, demo_data, tmp_path, monkeypatch):
    """docs/prediction.md's command for the `make demo` model, run word for word in a folder laid out as the
    demo leaves it: the demo model records its CLIP (pre_model/small_clip.pt), so no CLIP flag is needed."""
    import shlex
    from stylecap.utils import sha256_file
    text = (Path(predict.__file__).parent / "docs" / "prediction.md").read_text()
    cmd = next(ln.strip() for ln in text.splitlines() if "predict.py" in ln and "demo_personality" in ln)
    argv = shlex.split(cmd)
    assert argv[:2] == ["python", "predict.py"] and "--clip_model_path" not in argv
    (tmp_path / "pre_model").mkdir()
    shutil.copy(small_models / "small_clip.pt", tmp_path / "pre_model" / "small_clip.pt")
    shutil.copytree(demo_data / "personality" / "yfcc_images", tmp_path / "data/demo/personality/yfcc_images")
    ck = torch.load(styled_ckpt, map_location="cpu", weights_only=True)
    ck["config"]["clip"] = {"clip_model": "pre_model/small_clip.pt", "normalized": False,
                            "clip_sha256": sha256_file(small_models / "small_clip.pt")}
    (tmp_path / "output/demo_personality/checkpoints").mkdir(parents=True)
    torch.save(ck, tmp_path / "output/demo_personality/checkpoints/best.pt")
    monkeypatch.chdir(tmp_path)
    assert predict.main(argv[2:]) == 0
    assert "CLIP: pre_model/small_clip.pt (recorded in the checkpoint)" in (tmp_path / "output/predict/predict.log").read_text()


def test_one_error_prefix_for_flag_errors_and_user_errors(styled_ckpt, tmp_path, capsys, monkeypatch):
    """argparse says 'predict.py: error: ...'; a UserError through run_main now says the same, not 'error: ...'."""
    from stylecap.utils import run_main
    monkeypatch.setattr("sys.argv", ["predict.py"])
    lines = []
    for argv in ([], ["--model_path", str(styled_ckpt), "--features", "f.pkl", "--style", "Nope",
                      "--output_path", str(tmp_path / "a" / "b")]):
        with pytest.raises(SystemExit) as e:
            run_main(lambda: predict.main(argv))
        assert e.value.code == 2
        lines.append(capsys.readouterr().err.strip().splitlines()[-1])
    assert lines[0] == "predict.py: error: the following arguments are required: --model_path"
    assert lines[1].startswith("predict.py: error: unknown style 'Nope'; closest valid: [")
    assert not (tmp_path / "a").exists()  # neither the output folder nor the parent this run made
