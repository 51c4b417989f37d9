"""train.py end to end on synthetic features: learning, checkpoints, resume, DDP, bad input."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from stylecap.utils import UserError
from tests.helpers import synthetic_features

ROOT = Path(__file__).resolve().parents[1]


def base_args(small_models, data, out, *extra):
    return ["--data_path", str(data), "--gpt2_path", str(small_models / "small_gpt2"), "--output_path", str(out),
            "--bs_train", "8", "--bs_eval", "16", "--lr", "1e-3", "--warmup_steps", "2", "--finetune_gpt2",
            "--num_samples", "2", "--eval_subset", "0", "--seed", "3", *extra]


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return synthetic_features(tmp_path_factory.mktemp("feat") / "train.pkl", n_images=36)


def test_training_lowers_val_loss_and_writes_run_folder(small_models, features, tmp_path):
    out = tmp_path / "run"
    assert train.main(base_args(small_models, features, out, "--epochs", "3")) == 0
    log = (out / "train.log").read_text()
    losses = [float(line.split("val/loss ")[1].split()[0]) for line in log.splitlines() if "val/loss" in line]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2] and losses[2] < losses[0] - 0.5
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["styles"] == ["Happy", "Cynical (Doubtful, Skeptical)", "Gloomy"]  # published trait order
    assert cfg["model"]["style_mode"] == "embedding" and cfg["code_version"]
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt",
                                                                  "best.pt", "last.pt"}
    assert list(out.glob("events.out.tfevents.*"))
    assert list((out / "cache").glob("tokens_*.pt"))  # token cache lives in the run folder
    # the run's config.json repeats the run (flags override it)
    out2 = tmp_path / "run2"
    assert train.main(["--config", str(out / "config.json"), "--output_path", str(out2), "--epochs", "1"]) == 0
    assert json.loads((out2 / "config.json").read_text())["args"]["lr"] == 1e-3


def test_keep_n_deletes_oldest_checkpoints(small_models, features, tmp_path):
    out = tmp_path / "run"
    train.main(base_args(small_models, features, out, "--epochs", "2", "--save_by", "step", "--save_step", "2",
                         "--max_checkpoint_num", "2"))
    steps = sorted(p.name for p in (out / "checkpoints").glob("step_*.pt"))
    # 2 epochs x 5 steps = 10 steps -> saved at 2,4,6,8,10; the newest two are kept
    assert steps == ["step_00000008.pt", "step_00000010.pt"]


def test_existing_run_needs_resume(small_models, features, tmp_path):
    out = tmp_path / "run"
    train.main(base_args(small_models, features, out, "--epochs", "1"))
    with pytest.raises(UserError, match="--resume auto"):
        train.main(base_args(small_models, features, out, "--epochs", "1"))


def test_kill9_and_resume_equals_uninterrupted(small_models, features, tmp_path):
    args = lambda out: base_args(small_models, features, out, "--epochs", "2", "--save_by", "step", "--save_step", "3")
    assert train.main(args(tmp_path / "a")) == 0
    env = {**os.environ, "STYLECAP_TEST_SIGNAL": "6:KILL", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "train.py", *args(tmp_path / "b")], cwd=ROOT, env=env, capture_output=True)
    assert proc.returncode == -9  # really killed, mid-epoch 2 (5 steps per epoch)
    assert not (tmp_path / "b" / "checkpoints" / "last.pt").exists()
    assert train.main(args(tmp_path / "b") + ["--resume", "auto"]) == 0
    a, b = weights(tmp_path / "a/checkpoints/last.pt"), weights(tmp_path / "b/checkpoints/last.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(small_models, features, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "STYLECAP_TEST_SIGNAL": "3:INT", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "train.py", *base_args(small_models, features, out, "--epochs", "2")],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr
    ck = torch.load(out / "checkpoints" / "step_00000003.pt", weights_only=True)
    assert ck["train_state"]["step"] == 3 and "--resume auto" in proc.stderr


def test_frozen_gpt2_run_saves_only_mapper_and_style(small_models, features, tmp_path):
    out = tmp_path / "run"
    argv = [a for a in base_args(small_models, features, out, "--epochs", "1", "--style_mode", "token")
            if a != "--finetune_gpt2"]
    assert train.main(argv) == 0
    sd = weights(out / "checkpoints/last.pt")
    assert not any(k.startswith("gpt.") for k in sd) and "style_token_embedding.weight" in sd


def test_malicious_pickle_as_data_path_is_refused(small_models, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"clip_embedding": Evil(), "captions": []}))
    with pytest.raises(UserError, match="refused"):
        train.main(base_args(small_models, bad, tmp_path / "run", "--epochs", "1"))
    assert not marker.exists()


def test_nonfinite_loss_stops_loudly(small_models, tmp_path):
    bad = synthetic_features(tmp_path / "nan.pkl", n_images=12)
    data = torch.load(bad, weights_only=True)
    data["clip_embedding"][:] = float("nan")  # corrupted features
    torch.save(data, bad)
    with pytest.raises(UserError, match=r"non-finite loss \(nan\) at step 1 .*last good checkpoint: none yet"):
        train.main(base_args(small_models, bad, tmp_path / "run", "--epochs", "1"))


def test_ddp_two_processes_gloo(small_models, features, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "train.py", *base_args(small_models, features, out, "--epochs", "1", "--device", "cpu")]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["effective_batch_size"] == 16
    assert "effective batch size 16" in (out / "train.log").read_text()
    assert (out / "checkpoints" / "last.pt").is_file()


def test_validation_decodes_in_eval_mode_val_cider_equals_eval_mode(small_models, features, tmp_path):
    """Issue 8 item 1: the epoch-end val/CIDEr is what `train.py --mode eval` reports for last.pt."""
    val = synthetic_features(tmp_path / "val.pkl", n_images=12, seed=1)
    out = tmp_path / "run"
    argv = base_args(small_models, features, out, "--epochs", "2", "--val_path", str(val)) + ["--eval_subset", "100"]
    assert train.main(argv) == 0
    logged = torch.load(out / "checkpoints/last.pt", weights_only=True)["train_state"]["history"][-1]["CIDEr"]
    ev = tmp_path / "eval"
    assert train.main(["--mode", "eval", "--model_path", str(out / "checkpoints/last.pt"), "--data_path", str(val),
                       "--output_path", str(ev)]) == 0
    reported = json.loads((ev / "metrics.json").read_text())["CIDEr"]
    assert reported > 0 and logged == pytest.approx(reported, rel=1e-9, abs=1e-12)
