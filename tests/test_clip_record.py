"""Issue 8 item 4: a checkpoint knows its CLIP, and predict.py / eval mode refuse another one.

Two small CLIPs of the real class with different seeds (so different sha256) stand in for ViT-B/32 and
ViT-B/16: both give 512-d features, so only the record can tell them apart.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import predict
import train
from models import ModelConfig, build_model
from models.captioner import checkpoint_payload
from stylecap.demo.small_models import make_clip
from stylecap.features import clip_record, load_features, save_features
from stylecap.utils import UserError, sha256_file
from tests.helpers import synthetic_features


@pytest.fixture(scope="module")
def clips(small_models, tmp_path_factory) -> dict:
    """'b32' and 'b16': two small CLIPs, same architecture, different weights."""
    d = tmp_path_factory.mktemp("clips")
    shutil.copy(small_models / "small_clip.pt", d / "ViT-B-32-small.pt")  # seed 0
    make_clip(d, seed=1)
    (d / "small_clip.pt").rename(d / "ViT-B-16-small.pt")
    out = {"b32": d / "ViT-B-32-small.pt", "b16": d / "ViT-B-16-small.pt"}
    assert sha256_file(out["b32"]) != sha256_file(out["b16"])
    return out


def features_of(path, clip_path, n_images: int = 8, normalized: bool = False):
    """Synthetic features whose meta names ``clip_path`` as the CLIP that made them (as process_*.py writes)."""
    synthetic_features(path, n_images=n_images)
    d = load_features(path)
    d["meta"].update(clip_model=str(clip_path), clip_sha256=sha256_file(clip_path), normalized=normalized)
    save_features(path, d)
    return path


@pytest.fixture(scope="module")
def trained(small_models, clips, tmp_path_factory) -> dict:
    """A checkpoint trained by train.py on ViT-B-16-small features, and feature files of both CLIPs."""
    d = tmp_path_factory.mktemp("trained")
    feats = {k: features_of(d / f"{k}.pkl", p) for k, p in clips.items()}
    out = d / "run"
    assert train.main(["--data_path", str(feats["b16"]), "--gpt2_path", str(small_models / "small_gpt2"),
                       "--output_path", str(out), "--bs_train", "8", "--epochs", "1", "--warmup_steps", "1",
                       "--num_samples", "1", "--eval_subset", "0", "--finetune_gpt2", "--max_len", "8"]) == 0
    return {"ckpt": out / "checkpoints" / "last.pt", "feats": feats}


def _predict(ckpt, tmp_path, *extra) -> str:
    out = tmp_path / f"pred{len(list(tmp_path.glob('pred*')))}"  # a fresh folder: predict.log appends
    assert predict.main(["--model_path", str(ckpt), "--output_path", str(out), "--style", "Happy",
                         "--num_workers", "0", *extra]) == 0
    return (out / "predict.log").read_text()


def test_checkpoint_records_the_training_features_clip(trained, clips):
    ck = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    assert ck["clip"] == {"clip_model": str(clips["b16"]), "clip_sha256": sha256_file(clips["b16"]),
                          "normalized": False, "clip_backend": "openai", "dim": None}  # issue 18 keys
    assert clip_record(load_features(trained["feats"]["b16"])["meta"]) == ck["clip"]


def test_predict_features_of_another_clip_refused_unless_overridden(trained, clips, tmp_path):
    with pytest.raises(UserError) as e:
        _predict(trained["ckpt"], tmp_path, "--features", str(trained["feats"]["b32"]))
    msg = str(e.value)
    assert "ViT-B-16-small.pt" in msg and "ViT-B-32-small.pt" in msg and "--allow_clip_mismatch" in msg
    assert sha256_file(clips["b16"])[:12] in msg and sha256_file(clips["b32"])[:12] in msg
    assert "\n" not in msg
    log = _predict(trained["ckpt"], tmp_path, "--features", str(trained["feats"]["b32"]), "--allow_clip_mismatch")
    said = "".join(ln for ln in log.splitlines() if "command: python predict.py" not in ln)  # the log's own words
    assert said.count("--allow_clip_mismatch") == 1 and "ViT-B-32-small.pt" in said  # goes on, says so once
    log = _predict(trained["ckpt"], tmp_path, "--features", str(trained["feats"]["b16"]))  # the match
    assert "allow_clip_mismatch" not in log and "cannot check" not in log


def test_predict_images_through_another_clip_refused(trained, clips, demo_data, tmp_path):
    images = sorted((demo_data / "personality" / "yfcc_images").glob("*.jpg"))[0]
    with pytest.raises(UserError, match=r"trained on .*ViT-B-16-small\.pt.* but --clip_model_path is .*"
                                        r"ViT-B-32-small\.pt.*--allow_clip_mismatch"):
        _predict(trained["ckpt"], tmp_path, "--image_path", str(images), "--clip_model_path", str(clips["b32"]))
    assert _predict(trained["ckpt"], tmp_path, "--image_path", str(images), "--clip_model_path", str(clips["b32"]),
                    "--allow_clip_mismatch")
    log = _predict(trained["ckpt"], tmp_path, "--image_path", str(images), "--clip_model_path", str(clips["b16"]))
    assert "cannot check" not in log and "allow_clip_mismatch" not in log


def test_eval_mode_refuses_features_of_another_clip(trained, tmp_path):
    argv = ["--mode", "eval", "--model_path", str(trained["ckpt"]), "--data_path", str(trained["feats"]["b32"]),
            "--output_path", str(tmp_path / "eval"), "--no_java"]
    with pytest.raises(UserError, match=r"ViT-B-16-small\.pt.*ViT-B-32-small\.pt.*--allow_clip_mismatch"):
        train.main(argv)
    assert not (tmp_path / "eval" / "predictions.jsonl").exists()  # refused before any work
    assert train.main(argv + ["--allow_clip_mismatch"]) == 0


def test_normalisation_is_part_of_the_record(trained, clips, tmp_path):
    normed = features_of(tmp_path / "normed.pkl", clips["b16"], normalized=True)
    with pytest.raises(UserError, match="L2-normalised"):
        _predict(trained["ckpt"], tmp_path, "--features", str(normed))


def test_clipcap_weights_and_old_checkpoints_warn_once(small_models, trained, tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(gpt2_path=str(small_models / "small_gpt2"), style_mode="none", max_len=8))
    clipcap = tmp_path / "clipcap.pt"
    torch.save(model.state_dict(), clipcap)  # ClipCap's layout: clip_project.* + gpt.*, no record
    log = _predict(clipcap, tmp_path, "--features", str(trained["feats"]["b32"]), "--gpt2_path",
                   str(small_models / "small_gpt2"))
    assert log.count("ClipCap weights carry no record of their CLIP") == 1

    old = tmp_path / "old.pt"
    torch.save(checkpoint_payload(model), old)  # a checkpoint from before the record existed
    log = _predict(old, tmp_path, "--features", str(trained["feats"]["b32"]))
    assert log.count("records no CLIP") == 1


def test_clip_record_is_part_of_the_model_config(trained, clips, small_models, tmp_path):
    """Issue 16: the record is ModelConfig.clip, beside clip_size; older checkpoints (the record as the
    top-level "clip" key, or none) and ClipCap weights load as before."""
    from models import load_model
    from stylecap.clip_check import trained_clip
    record = {"clip_model": str(clips["b16"]), "clip_sha256": sha256_file(clips["b16"]), "normalized": False,
              "clip_backend": "openai", "dim": None}  # issue 18: backend and width (these synthetic files name none)
    ck = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    assert ck["config"]["clip"] == record == ck["clip"]  # the old key too, for older StyleCap code
    assert load_model(trained["ckpt"]).cfg.clip == record
    older = {**ck, "config": {k: v for k, v in ck["config"].items() if k != "clip"}}
    for top, cfg_clip, kind in ((record, record, "stylecap"), (None, {}, "unrecorded"), ("absent", None, "old")):
        payload = {k: v for k, v in older.items() if k != "clip"} if top == "absent" else {**older, "clip": top}
        torch.save(payload, tmp_path / "older.pt")
        cfg = load_model(tmp_path / "older.pt").cfg
        assert cfg.clip == cfg_clip and trained_clip(cfg) == (kind, cfg_clip or None)
        # and saved again, the config carries what the old key said
        assert checkpoint_payload(load_model(tmp_path / "older.pt")).get("clip", "absent") == top
    torch.manual_seed(0)
    model = build_model(ModelConfig(gpt2_path=str(small_models / "small_gpt2"), style_mode="none", max_len=8))
    torch.save(model.state_dict(), tmp_path / "clipcap.pt")
    cfg = load_model(tmp_path / "clipcap.pt", str(small_models / "small_gpt2")).cfg
    assert cfg.clip is None and trained_clip(cfg) == ("clipcap", None)


def test_predict_uses_the_clip_the_checkpoint_names(trained, clips, demo_data, tmp_path):
    """Issue 16: without --clip_model_path, predict.py encodes with the CLIP the checkpoint records, and says so."""
    image = sorted((demo_data / "personality" / "yfcc_images").glob("*.jpg"))[0]
    log = _predict(trained["ckpt"], tmp_path, "--image_path", str(image))
    assert f"CLIP: {clips['b16']} (recorded in the checkpoint)" in log and "cannot check" not in log
    log = _predict(trained["ckpt"], tmp_path, "--image_path", str(image), "--clip_model_path", str(clips["b16"]))
    assert f"CLIP: {clips['b16']} (--clip_model_path)" in log


def test_predict_without_a_usable_record_falls_back_to_the_default_clip(trained, styled_ckpt, demo_data, tmp_path,
                                                                        capsys):
    """No record (or a record naming a CLIP that is not on this machine): DEFAULT_CLIP, named in the log
    (on stderr: a failed run leaves no predict.log, issue 17)."""
    from stylecap.clip_utils import DEFAULT_CLIP
    image = sorted((demo_data / "personality" / "yfcc_images").glob("*.jpg"))[0]
    ck = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    ck["config"]["clip"] = {**ck["config"]["clip"], "clip_model": str(tmp_path / "elsewhere" / "ViT-B-16.pt")}
    moved = tmp_path / "moved.pt"
    torch.save(ck, moved)
    for ckpt, why in ((styled_ckpt, "the checkpoint records no CLIP"), (moved, "is not on this machine")):
        out = tmp_path / f"fallback-{ckpt.stem}"
        with pytest.raises(UserError, match=DEFAULT_CLIP.replace(".", r"\.")):  # not here: the download hint
            predict.main(["--model_path", str(ckpt), "--output_path", str(out), "--style", "Happy",
                          "--image_path", str(image)])
        log = capsys.readouterr().err
        assert f"CLIP: {DEFAULT_CLIP} (the default" in log and why in log and not out.exists()


@pytest.mark.parametrize("script", ["train", "evaluate"])
def test_eval_mode_reads_the_checkpoint_once(trained, tmp_path, monkeypatch, script):
    """Issue 16: eval mode opens the checkpoint file once (the model, its CLIP record and its training
    settings all come from that one read); it used to open it 3 times."""
    import builtins
    import evaluate
    ckpt = trained["ckpt"].resolve()
    loads, opens = [], []
    real_load, real_open = torch.load, builtins.open

    def is_ckpt(f) -> bool:
        return isinstance(f, (str, os.PathLike)) and Path(f).resolve() == ckpt

    monkeypatch.setattr(torch, "load", lambda f, *a, **k: (loads.append(f) if is_ckpt(f) else None)
                        or real_load(f, *a, **k))
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (opens.append(f) if is_ckpt(f) else None)
                        or real_open(f, *a, **k))
    argv = ["--model_path", str(trained["ckpt"]), "--data_path", str(trained["feats"]["b16"]),
            "--output_path", str(tmp_path / "eval"), "--no_java"]
    assert (train.main(["--mode", "eval", *argv]) if script == "train" else evaluate.main(argv)) == 0
    assert len(loads) == 1 and len(opens) <= 1
    # issue 17 §1: the parameter count of the evaluated model is the one training reported (tied embedding once)
    trained_count = json.loads((trained["ckpt"].parent.parent / "config.json").read_text())["trainable_parameters"]
    assert json.loads((tmp_path / "eval" / "eval_config.json").read_text())["trainable_parameters"] == trained_count
