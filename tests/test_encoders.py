"""Issue 18 section 1: image encoders behind one interface (stylecap/encoders.py).

For each backend -- openai-clip (also a ResNet, 640-d like RN50x4), open_clip (a folder in its local-dir layout,
and ARCH:FILE with a model-config .json as ARCH), Hugging Face CLIPModel / CLIPVisionModelWithProjection / SiglipModel / SiglipVisionModel -- the
features that process_flickr.py writes equal what that library's own documented preprocess + encode gives, on
the images of tests/test_features_exact.py; text features equal the library's too. Then, for each backend, one
small pipeline: extract (process_personality.py), train 1 epoch (the mapper follows the width: 512, 640, 768, 64),
eval mode (CLIPScore through the encoder's own text tower) and predict.py on images through the recorded encoder.
The Hugging Face backend runs with torchvision and openai-clip made unimportable (a subprocess). Small random
models of the real classes, built offline (stylecap/demo/small_models.py).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from loguru import logger
from PIL import Image

import predict
import process_flickr
import process_personality
import train
from stylecap.clip_check import same_clip
from stylecap.clip_utils import _import_clip, load_clip
from stylecap.demo.small_models import make_clip_resnet, make_hf_encoder, make_open_clip
from stylecap.encoders import detect_backend, load_encoder
from stylecap.features import clip_record, load_features
from stylecap.utils import UserError
from tests.test_features_exact import _assert_exact, images  # noqa: F401  (the exactness tests' images)

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["a dog on the grass", "Two people playing in the street", "zebra", ""]


@pytest.fixture(scope="module")
def encoders(small_models, tmp_path_factory) -> dict[str, str]:
    """name -> --clip_model_path of a small random encoder of each backend and kind."""
    d = tmp_path_factory.mktemp("encoders")
    oc = make_open_clip(d / "open_clip")
    out = {"openai": str(small_models / "small_clip.pt"), "openai_rn": str(make_clip_resnet(d)), "open_clip": str(oc),
           "open_clip_json": f"{oc / 'model_cfg.json'}:{oc / 'open_clip_pytorch_model.bin'}"}
    for kind in ("clip", "clip_vision", "siglip", "siglip_vision"):
        out[f"hf_{kind}"] = str(make_hf_encoder(d / kind, kind))
    return out


def _hf_reference(folder: str):
    """(model, processor, image -> feature [D]) as transformers documents it: processor(images=..., "pt"), then
    get_image_features (CLIPModel, SiglipModel), image_embeds (CLIPVisionModelWithProjection) or pooler_output
    (SiglipVisionModel). The processor's PIL backend: transformers' own choice where torchvision is missing."""
    import transformers
    kind = json.loads((Path(folder) / "config.json").read_text())["model_type"]
    cls = {"clip": "CLIPModel", "clip_vision_model": "CLIPVisionModelWithProjection", "siglip": "SiglipModel",
           "siglip_vision_model": "SiglipVisionModel"}[kind]
    model = getattr(transformers, cls).from_pretrained(folder).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(folder, backend="pil")

    def encode(img):
        inputs = processor(images=img, return_tensors="pt")
        if kind in ("clip", "siglip"):
            return model.get_image_features(**inputs).pooler_output[0]  # transformers 5: an output object
        out = model(**inputs)
        return (out.image_embeds if kind == "clip_vision_model" else out.pooler_output)[0]
    return model, processor, encode


def _open_clip_reference(folder: str):
    import open_clip
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    return model.eval(), preprocess, lambda img: model.encode_image(preprocess(img).unsqueeze(0))[0]


def _openai_reference(path: str):
    """openai-clip's own: encode_image(clip.clip._transform(resolution)(Image.open(p)))."""
    model, _, info = load_clip(path)
    preprocess = _import_clip().clip._transform(info["input_resolution"])
    return model, preprocess, lambda img: model.encode_image(preprocess(img).unsqueeze(0))[0]


def _reference(encoders: dict, name: str):
    if name.startswith("openai"):
        return _openai_reference(encoders[name])
    if name.startswith("hf_"):
        return _hf_reference(encoders[name])
    return _open_clip_reference(encoders["open_clip"])  # both open_clip forms name the same model


@pytest.mark.parametrize("name", ["openai_rn", "open_clip", "hf_clip", "hf_siglip"])
def test_features_equal_the_librarys_own(encoders, images, name, tmp_path):  # noqa: F811
    """process_flickr.py's features == the library's documented preprocess(Image.open(p)) + encode, per image
    (all the exactness tests' images: JPEG sizes, EXIF, grey, CMYK, RGBA, palette, LA)."""
    _, _, encode = _reference(encoders, name)
    with torch.inference_mode():
        ref = {p.stem: encode(Image.open(p)) for p in images.values()}
    token = tmp_path / "caps.token"
    token.write_text("".join(f"{n}#0\ta picture .\n" for n in images))
    out = tmp_path / "f.pkl"
    assert process_flickr.main(["--caption_path", str(token), "--image_path", str(next(iter(images.values())).parent),
                                "--clip_model_path", encoders[name], "--output_path", str(out), "--val_ratio", "0",
                                "--test_ratio", "0", "--batch_size", "4", "--num_workers", "0"]) == 0
    d = load_features(out)
    meta = d["meta"]
    assert meta["counts"]["images"] == len(images) and meta["dim"] == len(next(iter(ref.values())))
    assert meta["clip_backend"] == {"openai_rn": "openai", "open_clip": "open_clip"}.get(name, "hf")
    if name != "openai_rn":  # in the run key: another backend re-extracts; openai-clip's run keys are as before
        assert meta["extraction"]["clip_backend"] == meta["clip_backend"]
    else:
        assert "clip_backend" not in meta["extraction"]
    for c in d["captions"]:
        _assert_exact(d["clip_embedding"][c["clip_embedding"]], ref[c["image_id"]], f"{name} {c['image_id']}")


def test_other_kinds_and_forms_equal_the_librarys_own(encoders, images):  # noqa: F811
    """The vision-only Hugging Face classes and open_clip's MODEL_CFG.json:FILE form, through extract_features
    (predict.py's path), on three of the images."""
    from stylecap.extract.image_encoder import extract_features
    paths = [images[n] for n in ("small.jpg", "rgba.png", "gray.jpg")]
    for name in ("hf_clip_vision", "hf_siglip_vision", "open_clip_json"):
        _, _, encode = _reference(encoders, name)
        enc = load_encoder(encoders[name])
        emb, ok, bad = extract_features([str(p) for p in paths], enc, enc.preprocess, batch_size=2, num_workers=0)
        assert ok == [0, 1, 2] and not bad
        with torch.inference_mode():
            for row, p in enumerate(paths):
                _assert_exact(emb[row], encode(Image.open(p)), f"{name} {p.name}")


def test_text_features_equal_the_librarys_own(encoders):
    import open_clip
    model, _, _ = _open_clip_reference(encoders["open_clip"])
    with torch.no_grad():
        want = model.encode_text(open_clip.get_tokenizer(f"local-dir:{encoders['open_clip']}")(TEXTS))
    torch.testing.assert_close(load_encoder(encoders["open_clip"]).encode_text(TEXTS), want)
    from transformers import AutoTokenizer
    for name, padding in (("hf_clip", True), ("hf_siglip", "max_length")):  # SigLIP: padded to full length
        model, _, _ = _hf_reference(encoders[name])
        tok = AutoTokenizer.from_pretrained(encoders[name])
        inputs = tok(TEXTS, padding=padding, truncation=True, max_length=16, return_tensors="pt")
        if name == "hf_siglip":
            inputs = {"input_ids": inputs["input_ids"]}  # SigLIP reads no attention mask
        with torch.no_grad():
            want = model.get_text_features(**inputs).pooler_output
        torch.testing.assert_close(load_encoder(encoders[name]).encode_text(TEXTS), want)
    for name in ("hf_clip_vision", "hf_siglip_vision"):
        enc = load_encoder(encoders[name])
        assert not enc.has_text
        with pytest.raises(UserError, match="vision model only"):
            enc.encode_text(TEXTS)


def test_backend_detection_and_override(encoders, small_models, tmp_path):
    got = {n: detect_backend(s) for n, s in encoders.items()}
    assert got == {"openai": "openai", "openai_rn": "openai", "open_clip": "open_clip", "open_clip_json": "open_clip",
                   "hf_clip": "hf", "hf_clip_vision": "hf", "hf_siglip": "hf", "hf_siglip_vision": "hf"}
    assert detect_backend(str(small_models / "small_clip_jit.pt")) == "openai"
    with pytest.raises(UserError, match="neither config.json"):
        detect_backend(str(tmp_path))
    weights = Path(encoders["open_clip"]) / "open_clip_pytorch_model.bin"
    lone = tmp_path / "lone.bin"
    lone.write_bytes(weights.read_bytes())  # an open_clip checkpoint alone: it names no architecture
    said = []
    sink = logger.add(lambda m: said.append(str(m)), level="WARNING")
    try:  # its keys are OpenAI's: it loads as before, but with a warning naming the ARCH:FILE form
        assert load_encoder(str(lone)).backend == "openai"
        load_encoder(str(small_models / "small_clip.pt"))  # OpenAI's fp16 layout: no warning
    finally:
        logger.remove(sink)
    assert len(said) == 1 and f"--clip_model_path ARCH:{lone}" in said[0]
    with pytest.raises(UserError, match="not an open_clip architecture"):
        load_encoder(f"NoSuchArch-7:{lone}")
    with pytest.raises(UserError, match="config.json"):  # --clip_backend overrides the detection
        load_encoder(encoders["open_clip"], backend="hf")
    enc = load_encoder(f"{encoders['open_clip']}/model_cfg.json:{lone}", backend="open_clip")
    assert enc.record["clip_sha256"] == load_encoder(encoders["open_clip"]).record["clip_sha256"]


def test_record_comparison_old_and_new():
    old = {"clip_model": "pre_model/ViT-B-32.pt", "clip_sha256": "ab" * 32, "normalized": False}  # before backends
    new = clip_record({"clip_model": "/elsewhere/ViT-B-32.pt", "clip_sha256": "ab" * 32, "dim": 512,
                       "clip_backend": "openai"})
    assert set(new) == set(old) | {"clip_backend", "dim"} and same_clip(old, new) and same_clip(new, old)
    assert clip_record({"clip_sha256": "ab" * 32, "dim": 512})["clip_backend"] == "openai"  # old files: openai
    assert not same_clip(new, {**new, "clip_backend": "open_clip"})
    assert not same_clip(new, {**new, "dim": 768})
    assert not same_clip(new, {**new, "normalized": True})


E2E = {"open_clip": 640, "hf_clip": 768, "hf_siglip": 64}  # openai-clip (512): the older tests, see docs/encoders.md


@pytest.fixture(scope="module")
def trained(encoders, small_models, demo_data, tmp_path_factory) -> dict:
    """backend name -> (feature folder, last checkpoint): process_personality.py on 8 images per split, then
    train.py for 1 epoch with no --clip_size (built once per backend, on first use)."""
    done = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in done:
            d = tmp_path_factory.mktemp(f"e2e_{name}")
            assert process_personality.main([
                "--data_path", str(demo_data / "personality" / "personality_captions"), "--image_path",
                str(demo_data / "personality" / "yfcc_images"), "--clip_model_path", encoders[name], "--output_path",
                str(d / "feats"), "--batch_size", "8", "--num_workers", "0", "--limit", "8"]) == 0
            assert train.main(["--data_path", str(d / "feats" / "train.pkl"), "--gpt2_path",
                               str(small_models / "small_gpt2"), "--output_path", str(d / "run"), "--bs_train", "8",
                               "--epochs", "1", "--warmup_steps", "1", "--num_samples", "0", "--eval_subset", "0",
                               "--max_len", "6"]) == 0
            done[name] = d / "feats", d / "run" / "checkpoints" / "last.pt"
        return done[name]
    return get


@pytest.mark.parametrize("name", list(E2E))
def test_extract_train_eval_predict(trained, encoders, demo_data, name, tmp_path):
    """Each new backend end to end on the CPU; the mapper takes the features' width without --clip_size."""
    feats, ckpt = trained(name)
    meta = load_features(feats / "train.pkl")["meta"]
    assert meta["dim"] == E2E[name] and meta["clip_backend"] == load_encoder(encoders[name]).backend
    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert ck["config"]["clip_size"] == E2E[name] and ck["args"]["clip_size"] == E2E[name]
    assert ck["config"]["clip"] == clip_record(meta)  # backend, model, sha256, width, normalisation
    assert train.main(["--mode", "eval", "--model_path", str(ckpt), "--data_path", str(feats / "train.pkl"),
                       "--output_path", str(tmp_path / "eval"), "--no_java"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["clip_score"]["n"] > 0, metrics["skipped"]  # the features' own encoder's text tower
    photos = tmp_path / "photos"
    photos.mkdir()
    for img in sorted((demo_data / "personality" / "yfcc_images").glob("*.jpg"))[:2]:
        (photos / img.name).write_bytes(img.read_bytes())
    out = tmp_path / "pred"  # no --clip_model_path: the encoder the checkpoint records, loaded by its backend
    assert predict.main(["--model_path", str(ckpt), "--image_path", str(photos), "--output_path", str(out),
                         "--style", "all", "--num_workers", "0", "--max_len", "6"]) == 0
    log = (out / "predict.log").read_text()
    assert "recorded in the checkpoint" in log and "cannot check" not in log
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2 * len(ck["config"]["styles"])


def test_another_encoder_of_the_same_width_is_refused(trained, encoders, small_models, demo_data, tmp_path):
    """hf_clip and hf_clip_vision are both 768-d: only the record tells them apart; a narrower one is refused
    by width. --clip_size given explicitly must still match the features."""
    feats, ckpt = trained("hf_clip")
    with pytest.raises(UserError, match="768-d features but --clip_size is 512"):
        train.main(["--data_path", str(feats / "train.pkl"), "--gpt2_path", str(small_models / "small_gpt2"),
                    "--output_path", str(tmp_path / "bad"), "--clip_size", "512"])
    img = sorted((demo_data / "personality" / "yfcc_images").glob("*.jpg"))[0]
    argv = ["--model_path", str(ckpt), "--image_path", str(img), "--output_path", str(tmp_path / "p"),
            "--style", "all", "--num_workers", "0"]
    with pytest.raises(UserError, match=r"trained on .*hf, sha256 .*768-d.* but --clip_model_path is .*clip_vision"):
        predict.main(argv + ["--clip_model_path", encoders["hf_clip_vision"]])
    with pytest.raises(UserError, match="gives 64-d features but the model expects 768-d"):
        predict.main(argv + ["--clip_model_path", encoders["hf_siglip"]])


def test_hf_backend_needs_neither_torchvision_nor_openai_clip(encoders, images, tmp_path):  # noqa: F811
    """A machine where openai-clip (and torchvision) will not install: both made unimportable in a fresh
    process, process_flickr.py extracts through a Hugging Face folder, to the same values as here."""
    names = ["small.jpg", "rgba.png", "gray.jpg"]
    token = tmp_path / "caps.token"
    token.write_text("".join(f"{n}#0\ta picture .\n" for n in names))
    argv = ["--caption_path", str(token), "--image_path", str(images["small.jpg"].parent), "--clip_model_path",
            encoders["hf_siglip"], "--val_ratio", "0", "--test_ratio", "0", "--batch_size", "2", "--num_workers", "0"]
    code = textwrap.dedent(f"""
        import sys
        for name in ("torchvision", "clip"):
            sys.modules[name] = None  # import fails, importlib.util.find_spec says absent: as if not installed
        sys.path.insert(0, {str(ROOT)!r})
        import process_flickr
        assert process_flickr.main({argv + ['--output_path', str(tmp_path / 'blocked.pkl')]!r}) == 0
        loaded = [m for m in sys.modules if m.split(".")[0] in ("torchvision", "clip") and sys.modules[m] is not None]
        assert not loaded, loaded
    """)
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, timeout=300)
    assert process_flickr.main(argv + ["--output_path", str(tmp_path / "here.pkl")]) == 0
    a, b = load_features(tmp_path / "blocked.pkl"), load_features(tmp_path / "here.pkl")
    assert a["meta"]["run_key"] == b["meta"]["run_key"] and torch.equal(a["clip_embedding"], b["clip_embedding"])
