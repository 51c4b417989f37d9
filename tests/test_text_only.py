"""Issue 19 §1-2: text corpora as training data (process_text.py), several --data_path files, CapDec's noise on
text rows, the normalisation they imply, and a text-only style used through predict.py, eval mode and app.py.
Small random models (tests/conftest.py); 1-2 epochs on tiny corpora."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import process_text
import train
from stylecap.features import load_features, save_features
from stylecap.train.data import noise_seed
from stylecap.train.prepare import encode_datasets, load_training_data
from stylecap.utils import UserError, run_main
from tests.helpers import synthetic_features

PIRATE = [f"arr, a {c} ship on the {w} sea, matey" for c in ("red", "blue", "green", "yellow")
          for w in ("calm", "wild", "grey")]  # 12 sentences


def encode(small_models, corpus: Path, out: Path, *extra: str) -> Path:
    assert process_text.main(["--caption_path", str(corpus), "--output_path", str(out), "--clip_model_path",
                              str(small_models / "small_clip.pt"), "--device", "cpu", *extra]) == 0
    return out


def train_args(small_models, out: Path, *data: str, extra: tuple = ()) -> list[str]:
    return ["--data_path", *data, "--gpt2_path", str(small_models / "small_gpt2"), "--output_path", str(out),
            "--bs_train", "12", "--bs_eval", "16", "--lr", "1e-3", "--warmup_steps", "2",
            "--num_samples", "0", "--eval_subset", "0", "--max_len", "12", "--seed", "3", *extra]


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def pirate_txt(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("corpus") / "pirate.txt"
    f.write_text("\n".join(PIRATE[:6]) + "\n\n" + "\n".join(PIRATE[6:]) + "\n")  # a blank line is skipped
    return f


@pytest.fixture(scope="module")
def text_feats(small_models, pirate_txt) -> Path:
    return encode(small_models, pirate_txt, pirate_txt.parent / "pirate.pkl", "--style", "Pirate")


@pytest.fixture(scope="module")
def image_feats(tmp_path_factory) -> Path:
    return synthetic_features(tmp_path_factory.mktemp("img") / "img.pkl", n_images=24)


@pytest.fixture(scope="module")
def mixed_run(small_models, image_feats, text_feats, tmp_path_factory) -> Path:
    """Images (Happy, Gloomy, Cynical) + the Pirate corpus, CapDec's noise; 2 epochs, every epoch kept."""
    out = tmp_path_factory.mktemp("runs") / "mixed"
    assert train.main(train_args(small_models, out, str(image_feats), str(text_feats), extra=(
        "--epochs", "2", "--noise_variance", "0.016", "--max_checkpoint_num", "0"))) == 0
    return out


# ---------------------------------------------------------------------------------------- process_text.py
def test_corpus_formats_give_one_row_per_sentence(small_models, pirate_txt, text_feats, image_feats, tmp_path):
    from stylecap.clip_utils import load_clip
    from stylecap.extract.text_source import encode_text
    data = load_features(text_feats)
    assert data.texts() == PIRATE and data.image_ids()[:7] == [f"pirate:{n}" for n in (1, 2, 3, 4, 5, 6, 8)]
    assert data.caption_row.tolist() == list(range(12)) and data.present_styles() == ["Pirate"]
    meta = data.meta
    assert meta["modality"] == "text" and meta["train_normalization"] == "l2" and meta["normalized"] is False
    assert meta["extraction"]["modality"] == "text" and meta["clip_sha256"] and meta["dim"] == 512
    # the rows are openai-clip's encode_text of the sentences, not normalised
    model, _, _ = load_clip(str(small_models / "small_clip.pt"), "cpu")
    with torch.inference_mode():
        want = encode_text(model, PIRATE, torch.device("cpu")).float()
    assert torch.allclose(data.clip_embedding, want, atol=1e-5) and not torch.allclose(data.clip_embedding.norm(dim=1),
                                                                                      torch.ones(12))
    # jsonl and csv: process_stylized.py's generic records (style and split optional); --style fills the gaps
    (tmp_path / "c.jsonl").write_text('{"caption": "yay, a red ball", "style": "Happy"}\n{"caption": "a grey day"}\n'
                                      'not json\n{"caption": "", "style": "Happy"}\n')
    j = load_features(encode(small_models, tmp_path / "c.jsonl", tmp_path / "j.pkl", "--style", "Gloomy"))
    assert j.texts() == ["yay, a red ball", "a grey day"] and [j.style_of(i) for i in range(2)] == ["Happy", "Gloomy"]
    assert [m["where"] for m in j.meta["malformed"]] == ["line 3", "line 4"]
    (tmp_path / "c.csv").write_text('caption,style,split\n"arr, red",Pirate,train\nblue sky,Happy,test\n')
    encode(small_models, tmp_path / "c.csv", tmp_path / "s.pkl")
    tr, te = load_features(tmp_path / "s_train.pkl"), load_features(tmp_path / "s_test.pkl")
    assert tr.texts() == ["arr, red"] and te.texts() == ["blue sky"] and te.image_ids() == ["c:3"]
    # a feature file's captions, without its images
    f = load_features(encode(small_models, image_feats, tmp_path / "f.pkl"))
    src = load_features(image_feats)
    assert f.texts() == src.texts() and [f.style_of(i) for i in range(len(f))] == [src.style_of(i) for i in range(len(src))]


def test_bad_corpus_input_is_one_line(small_models, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(lambda: process_text.main(["--caption_path", str(tmp_path / "none.txt"), "--output_path",
                                            str(tmp_path / "o.pkl")]))
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"error: caption file {tmp_path / 'none.txt'} not found; check --caption_path")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(UserError, match="blank.txt: no usable sentence"):
        encode(small_models, tmp_path / "blank.txt", tmp_path / "o.pkl")
    (tmp_path / "x.csv").write_text("text,style\nhello,Happy\n")
    with pytest.raises(UserError, match="no caption column"):
        encode(small_models, tmp_path / "x.csv", tmp_path / "o.pkl")
    (tmp_path / "m.jsonl").write_text('{"caption": "b"}\n{"caption": "a", "style": "Happy"}\n')
    with pytest.raises(UserError, match="drop --shard/--merge"):
        encode(small_models, tmp_path / "m.jsonl", tmp_path / "o.pkl", "--shard", "0/2")
    assert not (tmp_path / "o.pkl").exists()
    # a style on some records only: the others are malformed lines (skipped and reported), as in process_stylized.py
    m = load_features(encode(small_models, tmp_path / "m.jsonl", tmp_path / "o.pkl"))
    assert m.texts() == ["a"] and m.meta["malformed"][0]["where"] == "line 1"
    assert "no 'style' while other records have one" in m.meta["malformed"][0]["reason"]
    assert "line 1" in (tmp_path / "o.pkl.skipped.txt").read_text()


def test_resume_reuses_saved_chunks_and_discards_stale_ones(small_models, pirate_txt, text_feats, tmp_path):
    argv = ("--style", "Pirate", "--batch_size", "2", "--chunk_batches", "1")  # 6 chunks of 2 sentences
    clean = load_features(encode(small_models, pirate_txt, tmp_path / "clean.pkl", *argv))
    out = tmp_path / "p.pkl"
    part = Path(f"{out}.partial")
    part.mkdir()
    # the state a kill leaves after 2 chunks; their rows are marked (zeros), so reuse is visible in the file
    (part / "manifest.json").write_text(json.dumps({"run_key": clean.meta["run_key"], "chunk_batches": 1,
                                                    "n_images": 12}))
    for c in range(2):
        torch.save({"first": 2 * c, "count": 2, "ok": torch.arange(2 * c, 2 * c + 2), "emb": torch.zeros(2, 512),
                    "bad_index": [], "bad_reason": []}, part / f"chunk_{c:05d}.pt")
    resumed = load_features(encode(small_models, pirate_txt, out, *argv))
    assert "resuming after 2 of 6 chunks" in (tmp_path / "p.log").read_text() and not part.exists()
    assert torch.equal(resumed.clip_embedding[:4], torch.zeros(4, 512))  # taken from the saved chunks
    assert torch.equal(resumed.clip_embedding[4:], clean.clip_embedding[4:])  # the rest encoded as a clean run
    # a partial folder of other arguments is stale: discarded; an up-to-date file is not redone
    out.unlink()
    part.mkdir()
    (part / "manifest.json").write_text(json.dumps({"run_key": "other"}))
    torch.save({"first": 0, "count": 2}, part / "chunk_00000.pt")
    assert torch.equal(load_features(encode(small_models, pirate_txt, out, *argv)).clip_embedding, clean.clip_embedding)
    mtime = out.stat().st_mtime_ns
    encode(small_models, pirate_txt, out, *argv)
    assert out.stat().st_mtime_ns == mtime


# ---------------------------------------------------------------------------------------- training
def test_data_path_forms_and_config_override():
    parse = lambda *a: train.parse_args(["--gpt2_path", "g", *a])
    assert parse("--data_path", "a.pkl").data_path == "a.pkl"  # one file: a string, as before
    assert parse("--data_path", "a.pkl", "b.pkl").data_path == ["a.pkl", "b.pkl"]
    assert parse("--data_path", "a.pkl", "--data_path", "b.pkl", "c.pkl").data_path == ["a.pkl", "b.pkl", "c.pkl"]
    assert parse("--data_path", "a.pkl").noise_variance == 0.0  # off by default
    with pytest.raises(UserError, match="eval mode scores one --data_path"):
        parse("--mode", "eval", "--data_path", "a.pkl", "b.pkl")


def test_config_file_list_is_replaced_by_the_command_line(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"args": {"data_path": ["a.pkl", "b.pkl"], "gpt2_path": "g"}}))
    assert train.parse_args(["--config", str(cfg)]).data_path == ["a.pkl", "b.pkl"]
    assert train.parse_args(["--config", str(cfg), "--data_path", "c.pkl"]).data_path == "c.pkl"


def test_mixed_training_records_text_styles_and_resumes_exactly(small_models, image_feats, text_feats, mixed_run,
                                                                tmp_path):
    cfg = json.loads((mixed_run / "config.json").read_text())
    assert cfg["args"]["data_path"] == [str(image_feats), str(text_feats)]
    assert cfg["styles"] == ["Happy", "Cynical (Doubtful, Skeptical)", "Gloomy", "Pirate"]  # traits, then sorted
    assert cfg["model"]["text_styles"] == ["Pirate"] and cfg["model"]["normalize_prefix"] is True
    a = weights(mixed_run / "checkpoints/last.pt")
    # resumed after epoch 1 (noise, data order and dropout restored): the uninterrupted run's weights
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(mixed_run / "checkpoints/epoch_0001.pt", resumed / "checkpoints/epoch_0001.pt")
    assert train.main(train_args(small_models, resumed, str(image_feats), str(text_feats), extra=(
        "--epochs", "2", "--noise_variance", "0.016", "--max_checkpoint_num", "0", "--resume", "auto"))) == 0
    c = weights(resumed / "checkpoints/last.pt")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_noise_on_text_rows_only_and_never_in_validation(small_models, image_feats, text_feats, tmp_path):
    from loguru import logger
    args = train.parse_args(train_args(small_models, tmp_path / "r", str(image_feats), "--data_path", str(text_feats),
                                       extra=("--noise_variance", "0.016")))
    logged: list[str] = []
    sink = logger.add(lambda m: logged.append(m.record["message"]), level="INFO")
    try:
        data = load_training_data(args)
    finally:
        logger.remove(sink)
    assert args.normalize_prefix and any("--normalize_prefix on (CapDec" in m for m in logged)
    from models import ModelConfig, build_model
    model = build_model(ModelConfig(gpt2_path=args.gpt2_path, style_mode="embedding", styles=data.styles))
    train_ds, val_ds = encode_datasets(args, data, model, tmp_path / "cache")
    feats = data.train.clip_embedding
    is_text = data.train_text_rows[train_ds.enc.rows]  # (N,) per sample
    assert 0 < int(is_text.sum()) < len(train_ds)
    noise = []
    for i in range(len(train_ds)):
        row = int(train_ds.enc.rows[i])
        if not is_text[i]:  # image rows: exactly as stored
            assert torch.equal(train_ds[i][0], feats[row])
        else:
            unit = feats[row] / feats[row].norm()
            noise.append(train_ds[i][0] - unit)
            assert torch.equal(train_ds[i][0], train_ds[i][0])  # a pure function of (seed, epoch, index)
    noise = torch.stack(noise)  # (n_text, 512): CapDec's N(0, 0.016 I)
    assert abs(noise.var().item() - 0.016) < 0.002 and abs(noise.mean().item()) < 0.01
    train_ds.set_epoch(1)
    k = int(is_text.nonzero()[0])
    moved = train_ds[k][0]
    train_ds.set_epoch(0)
    assert not torch.allclose(moved, train_ds[k][0])  # another epoch, other noise
    g = torch.Generator().manual_seed(noise_seed(3, 0, k))
    row = int(train_ds.enc.rows[k])
    assert torch.allclose(train_ds[k][0], feats[row] / feats[row].norm() + torch.randn(512, generator=g) * 0.016 ** 0.5)
    # validation: text rows normalised, no noise; image rows as stored
    val_text = data.val_text_rows[val_ds.enc.rows]
    assert val_text.any() and (~val_text).any()
    for i in range(len(val_ds)):
        row = int(val_ds.enc.rows[i])
        want = feats_v = data.val.clip_embedding[row]
        if val_text[i]:
            want = feats_v / feats_v.norm()
        assert torch.allclose(val_ds[i][0], want, atol=1e-7)


def test_noise_without_text_rows_warns_and_leaves_image_rows(small_models, image_feats, tmp_path):
    args = train.parse_args(train_args(small_models, tmp_path / "r", str(image_feats), extra=("--noise_variance", "0.1")))
    data = load_training_data(args)
    assert data.train_text_rows is None and args.normalize_prefix is False and data.text_styles == []
    with pytest.raises(UserError, match="--noise_variance -1.0 is negative"):
        load_training_data(train.parse_args(train_args(small_models, tmp_path / "r", str(image_feats),
                                                       extra=("--noise_variance", "-1"))))


def test_files_of_different_clips_are_refused(small_models, image_feats, text_feats, tmp_path):
    other = load_features(image_feats)
    other.meta = {"clip_model": "ViT-B/16", "clip_sha256": "0" * 64, "normalized": False}
    save_features(tmp_path / "b16.pkl", other)
    args = train.parse_args(train_args(small_models, tmp_path / "r", str(tmp_path / "b16.pkl"), str(text_feats)))
    with pytest.raises(UserError, match="different CLIPs"):
        load_training_data(args)


# ---------------------------------------------------------------------------------------- using a text-only style
def test_normalisation_recorded_and_applied_at_inference(mixed_run):
    from models import load_model
    model = load_model(mixed_run / "checkpoints/last.pt")
    assert model.cfg.normalize_prefix and model.cfg.text_styles == ["Pirate"]
    x = torch.randn(3, 512)
    style = torch.full((3,), model.style_id("Pirate"))
    with torch.no_grad():  # image features of any norm reach the mapper as unit vectors, as text rows did
        assert torch.allclose(model.prefix(x, style), model.prefix(7.5 * x, style), atol=1e-5)


def test_text_only_style_through_predict_eval_mode_and_app(small_models, demo_data, mixed_run, image_feats, text_feats,
                                                           tmp_path):
    import app
    import predict
    from models import load_model
    from stylecap.eval.captioning import load_clip_for
    ckpt = mixed_run / "checkpoints/last.pt"
    (tmp_path / "images").mkdir()
    images = [shutil.copy(p, tmp_path / "images") for p in sorted((demo_data / "personality" / "yfcc_images").glob("*.jpg"))[:2]]
    out = tmp_path / "pred"
    assert predict.main(["--model_path", str(ckpt), "--image_path", str(tmp_path / "images"),
                         "--clip_model_path", str(small_models / "small_clip.pt"), "--style", "Pirate",
                         "--output_path", str(out), "--num_workers", "0"]) == 0
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 2 and {p["style"] for p in preds} == {"Pirate"} and all(isinstance(p["caption"], str) for p in preds)
    # eval mode: test images with references in a paired style and in the text-only one
    test = load_features(image_feats)
    recs = [{**r, "style": "Pirate" if k % 2 else "Happy"} for k, r in enumerate(test.records()[:8])]
    save_features(tmp_path / "test.pkl", {"clip_embedding": test.clip_embedding, "captions": recs, "meta": {}})
    ev = tmp_path / "eval"
    assert train.main(["--mode", "eval", "--model_path", str(ckpt), "--data_path", str(tmp_path / "test.pkl"),
                       "--output_path", str(ev), "--no_java"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    scored = {json.loads(line)["style"] for line in (ev / "predictions.jsonl").read_text().splitlines()}
    assert scored == {"Happy", "Pirate"} and "CIDEr" in metrics
    # the default training captions: every --data_path file, so the style classifier knows the text-only style
    assert metrics["inputs"]["train_captions"] == f"{image_feats} {text_feats}"
    assert set(metrics["style_fidelity"]["per_style_top1"]) == {"Happy", "Pirate"} and "Pirate" in metrics["style_ppl"]["per_style"]
    assert json.loads((ev / "eval_config.json").read_text())["model_config"]["text_styles"] == ["Pirate"]
    # app.py: the same request handler as the web page
    model = load_model(ckpt, None, "cpu")
    clip_model, preprocess = load_clip_for(model, str(small_models / "small_clip.pt"), "cpu", ckpt)
    demo = app.Demo(model, clip_model, preprocess, torch.device("cpu"), batch_size=16, max_images=4)
    status, page, jsonl = demo.caption([str(p) for p in images], ["Pirate"])
    assert jsonl and {json.loads(line)["style"] for line in open(jsonl)} == {"Pirate"} and "Pirate" in page


def test_ablation_script_parses_and_make_has_its_target():
    import subprocess
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run(["bash", "-n", str(root / "scripts/ablate_text_only.sh")]).returncode == 0
    make = (root / "Makefile").read_text()
    assert "ablation-text:" in make and "scripts/ablate_text_only.sh" in make
